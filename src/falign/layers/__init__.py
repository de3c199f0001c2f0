"""nn.Modules that carry W and the feedback B; ``convert``; ``exact_backward``."""

from .convert import (
    ConversionReport,
    ConversionWarning,
    convert,
    exact_backward,
    feedback_layers,
    learned_feedback,
    train_step,
)
from .export import export
from .feedback import (
    FeedbackConv1d,
    FeedbackConv2d,
    FeedbackConv3d,
    FeedbackError,
    FeedbackLayer,
    FeedbackLinear,
)
from .pathways import StepContext
from .pathways.direct import set_step, set_targets

__all__ = [
    "ConversionReport",
    "ConversionWarning",
    "FeedbackConv1d",
    "FeedbackConv2d",
    "FeedbackConv3d",
    "FeedbackError",
    "FeedbackLayer",
    "FeedbackLinear",
    "convert",
    "exact_backward",
    "export",
    "feedback_layers",
    "learned_feedback",
    "set_step",
    "set_targets",
    "train_step",
    "StepContext",
]
