"""Run reports: one self-contained HTML page, a plain-text results table and the figures.

``write_report(paths, out)`` takes run directories, comparison directories (``falign compare``
output, every seed), sweep directories (their final runs) and reproduction directories (every
comparison, sweep and run in them), and reads their ``tracking.json`` files; on request it also
analyses the runs' best models (confusion matrices, CKA, Grad-CAM: `falign.report.analyses`).
"""

from falign.report.html import write_report
from falign.report.runs import ReportError, Run, load_runs, load_sources

__all__ = ["ReportError", "Run", "load_runs", "load_sources", "write_report"]
