"""The run record, at home in :mod:`falign.records.run` (the records package, below training,
plots and report); its names stay importable from here."""

from ..records.run import (
    RESUMED,
    SCHEMA_VERSION,
    STATUSES,
    AlignmentRecord,
    EpochRecord,
    RecordError,
    RunRecord,
    new_file_mode,
    write_json,
)

__all__ = ["RESUMED", "SCHEMA_VERSION", "STATUSES", "AlignmentRecord", "EpochRecord", "RecordError",
           "RunRecord", "new_file_mode", "write_json"]
