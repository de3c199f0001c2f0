"""Run reports: one self-contained HTML page, a plain-text results table and the figures.

``write_report(paths, out)`` takes run directories and comparison directories (``falign compare``
output, expanded into its runs) and reads only their ``tracking.json`` files.
"""

from falign.report.html import write_report
from falign.report.runs import ReportError, Run, load_runs

__all__ = ["ReportError", "Run", "load_runs", "write_report"]
