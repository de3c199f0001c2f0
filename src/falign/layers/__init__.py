"""nn.Modules that carry W and the feedback B; ``convert``; ``exact_backward``."""

from .convert import (
    ConversionReport,
    ConversionWarning,
    convert,
    exact_backward,
    feedback_layers,
    frozen_feedback,
)
from .feedback import (
    FeedbackConv1d,
    FeedbackConv2d,
    FeedbackConv3d,
    FeedbackLayer,
    FeedbackLinear,
)

__all__ = [
    "ConversionReport",
    "ConversionWarning",
    "FeedbackConv1d",
    "FeedbackConv2d",
    "FeedbackConv3d",
    "FeedbackLayer",
    "FeedbackLinear",
    "convert",
    "exact_backward",
    "feedback_layers",
    "frozen_feedback",
]
