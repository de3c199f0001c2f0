"""Typed, versioned records of what one stage of falign writes and a later one reads: a run
(``tracking.json``), a comparison (``compare.json``), a sweep (``sweep.json``), a
reproduction's summary (``results.json``, ``results/NAME.json``), the spread of its final runs
over seeds and its finals at the paper's hyper-parameters (a summary's measures) and the
re-check of its committed runs (``results/checks/NAME.json``).

Each record is a dataclass with ``to_dict`` / ``from_dict`` (and ``save`` / ``load`` for its
file, ``write`` / ``read`` for a run's): it writes the newest form with its version and reads
every older form falign has written; a malformed file or one of a newer version is refused with
a one-line :class:`RecordError`.  This package sits below training, plots and report, and
imports nothing of falign but its errors.
"""

from .analyses import ANALYSES_VERSION, AnalysesRecord, ModelRetrain
from .base import RecordError, new_file_mode, read_json, write_json
from .compare import COMPARE_VERSION, ComparedRun, CompareRecord, SeedSummary
from .paper_config import PAPER_CONFIG_VERSION, ConfigRun, PaperConfig, PaperConfigMethod
from .recheck import RECHECK_VERSION, RecheckRecord, RunCheck
from .results import (
    RESULTS_SCHEMA,
    MethodSummary,
    ReproductionSummary,
    RunSummary,
    TrialSummary,
    UnitsSummary,
)
from .run import RESUMED, SCHEMA_VERSION, STATUSES, AlignmentRecord, EpochRecord, RunRecord
from .spread import SPREAD_VERSION, SeedSpread, SpreadMethod
from .sweep import SWEEP_VERSION, FinalRun, SweepFinal, SweepRecord, SweepRule, SweepTrial

__all__ = [
    "ANALYSES_VERSION", "AnalysesRecord", "ModelRetrain",
    "COMPARE_VERSION", "RECHECK_VERSION", "RESULTS_SCHEMA", "RESUMED", "SCHEMA_VERSION", "STATUSES",
    "SPREAD_VERSION", "SWEEP_VERSION", "SeedSpread", "SpreadMethod",
    "PAPER_CONFIG_VERSION", "ConfigRun", "PaperConfig", "PaperConfigMethod",
    "AlignmentRecord", "CompareRecord", "ComparedRun", "EpochRecord", "FinalRun",
    "MethodSummary", "RecheckRecord", "RecordError", "ReproductionSummary", "RunCheck", "RunRecord",
    "RunSummary", "SeedSummary", "SweepFinal", "SweepRecord", "SweepRule", "SweepTrial",
    "TrialSummary", "UnitsSummary", "new_file_mode", "read_json", "write_json",
]
