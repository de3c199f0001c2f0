"""Character-level text from any UTF-8 file, for language models.

``load_dataset("text", path=...)`` reads the whole file, maps each distinct character to a
class (the vocabulary: the file's characters, sorted), cuts the text into three contiguous
blocks -- train, validation, test, in that order (default 90 / 5 / 5 %) -- and each block into
non-overlapping windows of ``seq_len + 1`` characters: ``x`` is a window's first ``seq_len``
characters, ``y`` the same shifted by one (the next character at every position).  Contiguous
blocks keep the test text unseen (no window straddles two splits).  ``limit`` keeps only the
first ``limit`` characters of the file (the vocabulary still comes from the whole file, so a
model's output size does not depend on it).  The default file is the
plays and poems of Shakespeare shipped with the data (``shakespeare/shakespeare.txt`` under the
data root).  Models report cross-entropy in nats; bits per character is that divided by ln 2.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor

from .core import DatasetError, Loaded, Split

DEFAULT_TEXT = "shakespeare/shakespeare.txt"


class Tokens:
    """The stored (N, T) int64 character ids, as they are (a model embeds them)."""

    def __call__(
        self, x: Tensor, generator: torch.Generator | None = None, *,
        rows: tuple[int, int] | None = None,
    ) -> Tensor:
        return x

    def __repr__(self) -> str:
        return "Tokens()"


def _windows(ids: Tensor, seq_len: int) -> Split:
    n = (ids.numel() - 1) // seq_len
    if n < 1:
        raise DatasetError(f"text: a split of {ids.numel()} characters holds no window of {seq_len + 1}")
    x = ids[: n * seq_len].view(n, seq_len)
    y = ids[1: n * seq_len + 1].view(n, seq_len)
    return Split(x.clone(), y.clone(), torch.arange(n))


def load_text(root: Path, *, path: str = DEFAULT_TEXT, seq_len: int = 128,
              val_fraction: float = 0.05, test_fraction: float = 0.05,
              limit: int | None = None) -> Loaded:
    """Character-level windows of a UTF-8 text file (``path`` absolute, or under ``root``)."""
    file = Path(path) if Path(path).is_absolute() else root / path
    if not file.is_file():
        raise DatasetError(f"text: {file} not found (give data.options.path: a UTF-8 file, absolute "
                           f"or under the data root; the default is {DEFAULT_TEXT})")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"text: {file} is not UTF-8 text") from None
    if not (isinstance(seq_len, int) and seq_len >= 1):
        raise DatasetError(f"text: seq_len must be a positive integer, got {seq_len!r}")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DatasetError(f"text: val_fraction={val_fraction} and test_fraction={test_fraction} must be "
                           "in (0, 1) and sum below 1")
    if limit is not None and not (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1):
        raise DatasetError(f"text: limit must be a positive number of characters or null, got {limit!r}")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    whole = len(text)
    if limit is not None:
        text = text[:limit]
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    n = ids.numel()
    a, b = int(n * (1 - val_fraction - test_fraction)), int(n * (1 - test_fraction))
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Loaded(
        title=(f"text {file.name} ({n} characters{'' if n == whole else f' of {whole}'}, "
               f"{len(vocab)} distinct, sha256 {digest}...)"),
        train=_windows(ids[:a], seq_len),
        val=_windows(ids[a:b], seq_len),
        test=_windows(ids[b:], seq_len),
        classes=vocab,
        input_shape=(seq_len,),
        train_transform=Tokens(),
        eval_transform=Tokens(),
    )
