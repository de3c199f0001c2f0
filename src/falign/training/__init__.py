"""Typed configs, train()/evaluate(), checkpoints, comparisons and sweeps. No argparse, no plots."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, ExperimentConfig, load_config, parse_config
from .loop import RunDirError, evaluate, load_model, train

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ExperimentConfig",
    "RunDirError",
    "evaluate",
    "load_checkpoint",
    "load_config",
    "load_model",
    "parse_config",
    "save_checkpoint",
    "train",
]
