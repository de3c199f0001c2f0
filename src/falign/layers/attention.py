"""``nn.MultiheadAttention`` with a learning rule on every projection.

torch's attention calls its projections functionally (``F.multi_head_attention_forward``), out of
reach of a module swap; :class:`FeedbackMultiheadAttention` is the same module (a subclass: same
parameters, buffers, ``state_dict`` keys and arguments) whose forward computes the same thing
with the q, k and v projections as :class:`~falign.layers.feedback.FeedbackSlot` s (blocks of
rows of the packed ``in_proj_weight``, or the separate ``q/k/v_proj_weight``) and ``out_proj``
as a :class:`~falign.layers.FeedbackLinear`.  Each projection has its own B: a rule that
normalises B (uSF SN) normalises each projection's.  The products of two activations (Q K^T,
attention x V), the softmax, dropout and masks carry no transported weight and stay exact;
scaled dot-product attention runs on ``F.scaled_dot_product_attention`` (the fast path)
unless attention weights are asked for.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..rules import Rule
from .feedback import FeedbackLinear, FeedbackSlot, from_plain


def _float_mask(mask: Tensor | None, dtype) -> Tensor | None:
    """A boolean mask (True = not attended) as an additive float mask; a float one as is."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


class FeedbackMultiheadAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention whose projections learn with a rule (see the module docstring)."""

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None,
                average_attn_weights: bool = True, is_causal: bool = False):
        batched = query.dim() == 3
        # the projections run in the caller's layout, so their inputs line up, position by
        # position, with the model's output (token-wise direct feedback)
        slots = self.falign_slots
        q, k, v = slots["q"](query), slots["k"](key), slots["v"](value)
        if self.in_proj_bias is not None:
            bq, bk, bv = self.in_proj_bias.chunk(3)
            q, k, v = q + bq, k + bk, v + bv
        if not batched:
            q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            q, k, v = (t.transpose(0, 1) for t in (q, k, v))
        tgt_len, bsz, embed = q.shape  # (L, N, E) from here on
        heads, head_dim = self.num_heads, self.head_dim

        kpm = _float_mask(key_padding_mask, q.dtype)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")
        sdpa_causal = is_causal and kpm is None and not need_weights
        mask = None if sdpa_causal else _float_mask(attn_mask, q.dtype)
        if mask is not None and mask.dim() == 2:
            mask = mask.unsqueeze(0)  # (1, L, S)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.repeat(1, bsz, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, bsz, 1)])
            mask = None if mask is None else F.pad(mask, (0, 1))
            kpm = None if kpm is None else F.pad(kpm, (0, 1))
        q = q.reshape(tgt_len, bsz * heads, head_dim).transpose(0, 1)  # (N H, L, d)
        k = k.reshape(k.shape[0], bsz * heads, head_dim).transpose(0, 1)  # (N H, S, d)
        v = v.reshape(v.shape[0], bsz * heads, head_dim).transpose(0, 1)
        if self.add_zero_attn:
            zeros = torch.zeros(bsz * heads, 1, head_dim, dtype=k.dtype, device=k.device)
            k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
            mask = None if mask is None else F.pad(mask, (0, 1))
            kpm = None if kpm is None else F.pad(kpm, (0, 1))
        src_len = k.shape[1]
        if kpm is not None:
            kpm = kpm.view(bsz, 1, 1, src_len).expand(-1, heads, -1, -1).reshape(bsz * heads, 1, src_len)
            mask = kpm if mask is None else mask + kpm
        dropout_p = self.dropout if self.training else 0.0

        if need_weights:
            scores = (q * math.sqrt(1.0 / head_dim)) @ k.transpose(-2, -1)  # (N H, L, S)
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            if dropout_p > 0:
                weights = F.dropout(weights, p=dropout_p)
            out = weights @ v  # (N H, L, d)
            out = out.transpose(0, 1).reshape(tgt_len, bsz, embed)
            weights = weights.view(bsz, heads, tgt_len, src_len)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            if mask is not None:
                mask = mask.unsqueeze(0) if mask.shape[0] == 1 else mask.view(bsz, heads, -1, src_len)
            out = F.scaled_dot_product_attention(
                q.view(bsz, heads, tgt_len, head_dim), k.view(bsz, heads, src_len, head_dim),
                v.view(bsz, heads, src_len, head_dim), mask, dropout_p, sdpa_causal)
            out = out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, embed)
            weights = None
        if not batched:
            out = out.squeeze(1)
            weights = None if weights is None else weights.squeeze(0)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return self.out_proj(out), weights


def convert_attention(module: nn.MultiheadAttention, rule: Rule, name: str) -> FeedbackMultiheadAttention:
    """A FeedbackMultiheadAttention sharing ``module``'s parameters and attributes."""
    new = FeedbackMultiheadAttention.__new__(FeedbackMultiheadAttention)
    new.__dict__.update(module.__dict__)
    for attr in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"):
        new.__dict__[attr] = type(module.__dict__[attr])(module.__dict__[attr])
    out = module.out_proj
    linear = nn.Linear.__new__(nn.Linear)  # torch's NonDynamicallyQuantizableLinear, as a Linear
    linear.__dict__.update(out.__dict__)
    new.out_proj = from_plain(linear, rule, f"{name}.out_proj" if name else "out_proj")
    e = module.embed_dim
    slots = nn.ModuleDict()
    for i, key in enumerate(("q", "k", "v")):
        qname = f"{name}.falign_slots.{key}" if name else f"falign_slots.{key}"
        if module._qkv_same_embed_dim:
            slots[key] = FeedbackSlot(module.in_proj_weight, rule, qname, rows=slice(i * e, (i + 1) * e))
        else:
            slots[key] = FeedbackSlot(getattr(module, f"{key}_proj_weight"), rule, qname)
    new.falign_slots = slots
    return new


__all__ = ["FeedbackLinear", "FeedbackMultiheadAttention", "convert_attention"]
