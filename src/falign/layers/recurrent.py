"""``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` and their cells with a learning rule on every weight.

torch's recurrent layers run their weights inside one fused kernel (cuDNN / oneDNN), out of
reach of a module swap.  The Feedback versions are the same modules (subclasses: same
parameters -- ``weight_ih_l0``, ``weight_hh_l0_reverse``, ... --, ``state_dict`` keys and
arguments) whose forward unrolls the recurrence in time, with each weight that multiplies an
activation (``weight_ih``, ``weight_hh``, and an LSTM's projection ``weight_hr``) a
:class:`~falign.layers.feedback.FeedbackSlot`.  The input projection of a whole sequence is one
product; the recurrent one is one product a step.  Gates, the cell state and the elementwise
products carry no transported weight and stay exact, so a rule like FA makes backpropagation
through time with B in W_hh's place.  All layers, both directions, ``batch_first``, ``bias``,
``dropout``, ``proj_size`` and packed sequences are supported; an unrolled loop is slower than
the fused kernel, and ``bench/`` compares each rule with BP through the same unrolled loop.

Direct feedback (DFA) on a recurrent layer: ``weight_ih``'s input receives, at every time step,
the projection of that step's error (token-wise); the recurrent weight ``weight_hh`` is no
feedback point by default (the hidden state receives nothing through it: no signal through
time but the cell state's exact path), or, with the DFA option ``recurrent="step"``, the hidden
state h_{t-1} receives the projection of the error at step t - 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..rules import Rule
from .feedback import FeedbackSlot

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _slots_for(module: nn.Module, names: list[str], rule: Rule, prefix: str) -> nn.ModuleDict:
    slots = nn.ModuleDict()
    for n in names:
        slots[n] = FeedbackSlot(getattr(module, n), rule, f"{prefix}falign_slots.{n}")
    return slots


def _cell(mode: str, x_proj: Tensor, h: Tensor, c: Tensor | None, hh, b_hh: Tensor | None,
          step: int | None = None):
    """One step from the input projection (W_ih x + b_ih) and the state; (h', c')."""
    gates_h = hh(h, step)
    if b_hh is not None:
        gates_h = gates_h + b_hh
    if mode == "LSTM":
        i, f, g, o = (x_proj + gates_h).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if mode == "GRU":
        xr, xz, xn = x_proj.chunk(3, -1)
        hr, hz, hn = gates_h.chunk(3, -1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h, None
    act = torch.tanh if mode == "RNN_TANH" else torch.relu
    return act(x_proj + gates_h), None


class _Recurrent:
    """Mixin for the RNN / LSTM / GRU modules: the unrolled forward."""

    def _suffixes(self) -> list[str]:
        return [f"_l{k}{d}" for k in range(self.num_layers)
                for d in ([""] + (["_reverse"] if self.bidirectional else []))]

    def _slot_names(self) -> list[str]:
        names = []
        for s in self._suffixes():
            names += [f"weight_ih{s}", f"weight_hh{s}"]
            if getattr(self, "proj_size", 0) > 0:
                names.append(f"weight_hr{s}")
        return names

    def forward(self, input, hx=None):
        packed = isinstance(input, PackedSequence)
        lengths = None
        if packed:  # padded, in the batch's own order (as hx and h_n are)
            x, lengths = pad_packed_sequence(input, batch_first=False)  # (T, N, D), (N,)
            lengths = lengths.to(x.device)
        else:
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)  # (T, N, D)
        seq_len, batch = x.shape[0], x.shape[1]
        bf = self.batch_first and not packed and input.dim() == 3
        dirs = 2 if self.bidirectional else 1
        lstm = self.mode == "LSTM"
        real_h = self.proj_size if getattr(self, "proj_size", 0) > 0 else self.hidden_size
        h0 = c0 = None
        if hx is not None:
            h0, c0 = hx if lstm else (hx, None)
            if not packed and input.dim() == 2:
                h0 = h0.unsqueeze(1)
                c0 = None if c0 is None else c0.unsqueeze(1)
        valid = None
        if lengths is not None:
            valid = (torch.arange(seq_len, device=x.device)[:, None] < lengths[None, :])  # (T, N)
        slots = self.falign_slots
        h_n, c_n = [], []
        layer_in = x
        for k in range(self.num_layers):
            outs = []
            for d in range(dirs):
                s = f"_l{k}{'_reverse' if d else ''}"
                idx = k * dirs + d
                h = h0[idx] if h0 is not None else x.new_zeros(batch, real_h)
                c = (c0[idx] if c0 is not None else x.new_zeros(batch, self.hidden_size)) if lstm else None
                # the whole sequence at once, in the caller's layout (so that, under token-wise
                # direct feedback, each step's input lines up with that step's error)
                ih = slots[f"weight_ih{s}"]
                x_proj = ih(layer_in.transpose(0, 1)).transpose(0, 1) if bf else ih(layer_in)  # (T, N, G H)
                if self.bias:
                    x_proj = x_proj + getattr(self, f"bias_ih{s}")
                b_hh = getattr(self, f"bias_hh{s}") if self.bias else None
                hh_slot = slots[f"weight_hh{s}"]
                hr_slot = slots[f"weight_hr{s}"] if f"weight_hr{s}" in slots else None

                def hh(state, step, hh_slot=hh_slot):
                    return hh_slot.step(state, step)

                steps = range(seq_len - 1, -1, -1) if d else range(seq_len)
                out = [None] * seq_len
                for t in steps:
                    prev = t + 1 if d else t - 1  # the step whose state h holds
                    new_h, new_c = _cell(self.mode, x_proj[t], h, c, hh, b_hh,
                                         prev if 0 <= prev < seq_len else None)
                    if hr_slot is not None:
                        new_h = hr_slot(new_h)
                    if valid is not None:
                        m = valid[t][:, None]
                        new_h = torch.where(m, new_h, h)
                        if lstm:
                            new_c = torch.where(m, new_c, c)
                        out[t] = new_h * m
                    else:
                        out[t] = new_h
                    h, c = new_h, new_c
                outs.append(torch.stack(out))  # (T, N, H)
                h_n.append(h)
                if lstm:
                    c_n.append(c)
            layer_in = outs[0] if dirs == 1 else torch.cat(outs, -1)
            if self.dropout and self.training and k < self.num_layers - 1:
                layer_in = F.dropout(layer_in, p=self.dropout)
        output = layer_in
        h_n = torch.stack(h_n)  # (L D, N, H)
        c_n = torch.stack(c_n) if lstm else None
        if packed:
            output = pack_padded_sequence(output, lengths.cpu(), enforce_sorted=input.sorted_indices is None)
        else:
            if input.dim() == 2:
                output, h_n = output.squeeze(1), h_n.squeeze(1)
                c_n = None if c_n is None else c_n.squeeze(1)
            elif self.batch_first:
                output = output.transpose(0, 1)
        return output, ((h_n, c_n) if lstm else h_n)


class FeedbackRNN(_Recurrent, nn.RNN):
    """nn.RNN whose weights learn with a rule (unrolled; see the module docstring)."""


class FeedbackLSTM(_Recurrent, nn.LSTM):
    """nn.LSTM whose weights learn with a rule (unrolled; see the module docstring)."""


class FeedbackGRU(_Recurrent, nn.GRU):
    """nn.GRU whose weights learn with a rule (unrolled; see the module docstring)."""


class _Cell:
    def forward(self, input: Tensor, hx=None):
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        lstm = isinstance(self, nn.LSTMCell)
        if hx is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            hx = (zeros, zeros) if lstm else zeros
        elif not batched:
            hx = tuple(t.unsqueeze(0) for t in hx) if lstm else hx.unsqueeze(0)
        h, c = hx if lstm else (hx, None)
        x_proj = self.falign_slots["weight_ih"](x)
        if self.bias:
            x_proj = x_proj + self.bias_ih
        mode = "LSTM" if lstm else "GRU" if isinstance(self, nn.GRUCell) else (
            "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU")
        hh_slot = self.falign_slots["weight_hh"]
        new_h, new_c = _cell(mode, x_proj, h, c, lambda s, step: hh_slot.step(s, step),
                             self.bias_hh if self.bias else None)
        if not batched:
            new_h = new_h.squeeze(0)
            new_c = None if new_c is None else new_c.squeeze(0)
        return (new_h, new_c) if lstm else new_h


class FeedbackRNNCell(_Cell, nn.RNNCell):
    """nn.RNNCell whose weights learn with a rule."""


class FeedbackLSTMCell(_Cell, nn.LSTMCell):
    """nn.LSTMCell whose weights learn with a rule."""


class FeedbackGRUCell(_Cell, nn.GRUCell):
    """nn.GRUCell whose weights learn with a rule."""


RECURRENT_TYPES: dict[type[nn.Module], type[nn.Module]] = {
    nn.RNN: FeedbackRNN, nn.LSTM: FeedbackLSTM, nn.GRU: FeedbackGRU,
    nn.RNNCell: FeedbackRNNCell, nn.LSTMCell: FeedbackLSTMCell, nn.GRUCell: FeedbackGRUCell,
}


def convert_recurrent(module: nn.Module, rule: Rule, name: str) -> nn.Module:
    """The Feedback twin of an RNN / LSTM / GRU (or cell), sharing its parameters."""
    cls = RECURRENT_TYPES[type(module)]
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    for attr in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"):
        new.__dict__[attr] = type(module.__dict__[attr])(module.__dict__[attr])
    names = ["weight_ih", "weight_hh"] if isinstance(new, _Cell) else new._slot_names()
    new.falign_slots = _slots_for(new, names, rule, f"{name}." if name else "")
    for n, slot in new.falign_slots.items():
        if n.startswith("weight_hh"):
            slot.recurrent = True  # its input is the previous state
            slot.time_dim = 1 if getattr(new, "batch_first", False) else 0
    return new
