"""The error a converted model raises when it is used in a way its rule cannot honour."""

from __future__ import annotations

from ..errors import FalignError


class FeedbackError(FalignError, ValueError):
    """A converted model used in a way its rule cannot honour (a trained B left out of the
    optimizer that steps W, an averaged DFA loop on a model that is not an MLP); one line."""


FeedbackError.__module__ = "falign.layers.feedback"  # where it has always been imported from
