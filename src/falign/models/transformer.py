"""Small transformers made of torch layers: a GPT-style character language model and a ViT.

Both are pre-norm (LayerNorm before attention and before the MLP, residual around each), use
``nn.MultiheadAttention`` (which falign converts), GELU MLPs of width ``mlp_ratio * dim`` and a
final LayerNorm ``ln_f``.  Every block ends in an identity module ``out`` and has ``mid`` (the
residual stream after attention) and ``mlp.act`` (the MLP's hidden activation): the places
Launay et al. 2020 put direct-feedback points -- at block outputs ("macro": ``points:
["blocks.*.out"]``) or three a block ("micro": ``["blocks.*.mid", "blocks.*.mlp.act",
"blocks.*.out"]``) --, and ``ln_f`` is the last hidden state, their tap (``output: ln_f``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import image_shape
from .registry import ModelError, register_model

__all__ = ["Block", "CharTransformer", "ViT", "char_transformer", "vit"]


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """x -> mid = x + attn(ln1(x)) -> out = mid + mlp(ln2(mid))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.mid = nn.Identity()
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio * dim, dropout)
        self.out = nn.Identity()
        self.causal = causal

    def forward(self, x):  # (N, T, D)
        h = self.ln1(x)
        mask = None
        if self.causal:
            t = x.shape[1]
            mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1)
        a, _ = self.attn(h, h, h, attn_mask=mask, need_weights=False, is_causal=self.causal)
        x = self.mid(x + self.drop(a))
        return self.out(x + self.mlp(self.ln2(x)))


class CharTransformer(nn.Module):
    """A GPT-style decoder: token + learned position embeddings, ``depth`` causal blocks,
    ``ln_f``, a linear head to the vocabulary; logits (N, T, V)."""

    def __init__(self, vocab: int, seq_len: int, *, dim: int = 128, depth: int = 4, heads: int = 4,
                 mlp_ratio: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ModelError(f"model 'char_transformer': dim={dim} is not divisible by heads={heads}")
        self.num_classes, self.in_shape = vocab, (seq_len,)
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(seq_len, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout, causal=True) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.apply(_init)

    def example_input(self, n: int = 2) -> torch.Tensor:
        return torch.zeros(n, self.in_shape[0], dtype=torch.long, device=self.head.weight.device)

    def forward(self, ids):  # (N, T) int64
        t = ids.shape[1]
        x = self.drop(self.tok(ids) + self.pos(torch.arange(t, device=ids.device)))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class ViT(nn.Module):
    """A small vision transformer (Dosovitskiy et al. 2021): patches by a strided convolution,
    a class token, learned positions, ``depth`` blocks, ``ln_f``; logits from the class token."""

    def __init__(self, num_classes: int, in_shape: Sequence[int], *, patch: int = 4, dim: int = 128,
                 depth: int = 4, heads: int = 4, mlp_ratio: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        c, h, w = image_shape("vit", in_shape)
        if h % patch or w % patch or dim % heads:
            raise ModelError(f"model 'vit': image {h}x{w} must be divisible by patch={patch}, dim={dim} "
                             f"by heads={heads}")
        self.num_classes, self.in_shape = num_classes, (c, h, w)
        self.patches = nn.Conv2d(c, dim, patch, stride=patch)
        tokens = (h // patch) * (w // patch) + 1
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout, causal=False) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.apply(_init)

    def forward(self, x):  # (N, C, H, W)
        p = self.patches(x).flatten(2).transpose(1, 2)  # (N, P, D)
        x = torch.cat([self.cls.expand(p.shape[0], -1, -1), p], 1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x)[:, 0])  # the class token


def _init(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)


@register_model("char_transformer")
def char_transformer(*, num_classes: int | None = None, in_shape: tuple[int, ...] | None = None,
                     dim: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: int = 4,
                     dropout: float = 0.1) -> CharTransformer:
    """GPT-style character LM; ``num_classes`` is the vocabulary, ``in_shape`` (seq_len,), as a
    text dataset gives (84 characters and 128 positions when not given: the Shakespeare text)."""
    in_shape = in_shape or (128,)
    if len(in_shape) != 1:
        raise ModelError(f"model 'char_transformer' needs in_shape=(seq_len,), got {tuple(in_shape)}")
    return CharTransformer(num_classes or 84, in_shape[0], dim=dim, depth=depth, heads=heads,
                           mlp_ratio=mlp_ratio, dropout=dropout)


@register_model("vit")
def vit(*, num_classes: int | None = None, in_shape: tuple[int, ...] | None = None, patch: int = 4,
        dim: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: int = 2, dropout: float = 0.0) -> ViT:
    """A small ViT; CIFAR-10 shapes by default."""
    return ViT(num_classes or 10, in_shape or (3, 32, 32), patch=patch, dim=dim, depth=depth,
               heads=heads, mlp_ratio=mlp_ratio, dropout=dropout)
