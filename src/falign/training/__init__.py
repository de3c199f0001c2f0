"""Typed configs, train()/evaluate(), checkpoints, comparisons and sweeps. No argparse, no plots."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, ExperimentConfig, load_config, parse_config
from .loop import RunDirError, evaluate, load_model, train
from .record import AlignmentRecord, EpochRecord, RecordError, RunRecord

__all__ = [
    "AlignmentRecord",
    "CheckpointError",
    "ConfigError",
    "EpochRecord",
    "ExperimentConfig",
    "RecordError",
    "RunDirError",
    "RunRecord",
    "evaluate",
    "load_checkpoint",
    "load_config",
    "load_model",
    "parse_config",
    "save_checkpoint",
    "train",
]
