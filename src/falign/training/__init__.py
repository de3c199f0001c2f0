"""Typed configs, train()/evaluate(), checkpoints, comparisons and sweeps. No argparse, no plots."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, ExperimentConfig, load_config, parse_config
from .loop import RunDirError, evaluate, load_model, train
from .record import AlignmentRecord, EpochRecord, RecordError, RunRecord
from .run import OpenRun, RunOpenError, evaluate_checkpoint, open_run

__all__ = [
    "AlignmentRecord",
    "CheckpointError",
    "ConfigError",
    "EpochRecord",
    "ExperimentConfig",
    "OpenRun",
    "RecordError",
    "RunDirError",
    "RunOpenError",
    "RunRecord",
    "evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "load_config",
    "load_model",
    "open_run",
    "parse_config",
    "save_checkpoint",
    "train",
]
