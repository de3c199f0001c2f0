"""The Hugging Face ``Trainer``: :class:`FalignCallback`.

    model = falign.convert(GPT2LMHeadModel(config), "dfa")    # DFA taps transformer.ln_f
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.add_callback(FalignCallback(trainer, alignment_every=100))
    trainer.train()
    falign.export(trainer.model).save_pretrained("out")       # a plain GPT2LMHeadModel

A converted model trains with the Trainer's own loop and an ordinary ``loss.backward()``.  A
``TrainerCallback`` sees no batch, so the callback reads each training forward's keyword
arguments through a forward pre-hook (``register_forward_pre_hook(..., with_kwargs=True)``) that
it puts on ``trainer.model`` at ``on_train_begin`` and removes at ``on_train_end``, and from
them gives the step, through :func:`falign.set_step`, before its forward:

* the labels the model is called with -- for a causal language model shifted as its loss shifts
  them (position t is scored against label t + 1; the last position, and every label -100,
  counts in no loss), or the collator's ``shift_labels`` where it gives them;
* a sample's weight in the loss the optimizer steps on, as the Trainer makes that loss: where it
  passes ``num_items_in_batch`` (the labels of the whole accumulated batch; every Hugging Face
  model whose forward takes ``**kwargs``), the model's loss is its sum over labels divided by
  that number, times the number of processes when tokens are averaged across devices
  (``average_tokens_across_devices``), so a label weighs processes / num_items_in_batch;
  otherwise the loss is the mean over the micro-batch's labels divided by the accumulation
  steps of the current optimizer step, 1 / (N x steps);
* the loss scale: the accelerator's GradScaler's scale under fp16 (1 without one);
* under several processes, where the process's samples sit in the global micro-batch, for the
  hardware model's read noise (``signal_noise``, keyed by a sample's global index):
  ``sample_index(trainer)`` -> (offset, stride).  The default, :func:`batches_in_turn`, is the
  layout of the Trainer's default data loading (accelerate's ``BatchSamplerShard``): whole
  batches of B = ``per_device_train_batch_size`` go to the processes in turn, so rank r's
  sample j sits at r x B + j of the global micro-batch, (offset, stride) = (r x B, 1).  With
  other loading (``split_batches``, ``auto_find_batch_size``, a sampler of your own), pass its
  layout, or ``sample_index=None`` and call ``falign.set_step(model, sample_offset=..., sample_stride=...)``
  yourself before the backward.

The Trainer pops ``labels`` before calling the model when it has a ``label_smoother`` or a
``compute_loss_func``: the model, and so the callback, then sees none, and rules that project
the target (DRTP) refuse the step.  A Trainer subclass whose ``compute_loss`` computes another
loss should call ``falign.set_step`` itself.

The rules' own state (brsf redraws, sign tracking, weight mirror) advances once per optimizer
step by itself (falign counts W's in-place updates), whatever the accumulation, a skipped fp16
step or the number of processes.

The alignment probe (``alignment_every=N``) runs at ``on_pre_optimizer_step`` of every N-th
optimizer step -- after the step's last backward and the gradient clipping, before the
optimizer -- as :func:`falign.analysis.alignment.measure_alignment` on the step's last
micro-batch (the model called with the same arguments, its own loss): a rule pass and a
backprop pass of its own, so what ``.grad`` holds (a sum over micro-batches) does not matter,
and under several processes its records are those of the whole global micro-batch.  The values
go through ``Trainer.log`` (so to ``state.log_history`` and every reporting integration) as
``falign/<layer>/<measure>``, and stay in :attr:`FalignCallback.last`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback

from ..analysis.alignment import measure_alignment
from ..layers.pathways.direct import IGNORE_INDEX, set_step
from ._common import MEASURES, as_metrics, check_measures, label_count, processes, scale_of


def is_causal_lm(model: nn.Module) -> bool:
    """Whether the model's own loss shifts its labels: a causal language model (a class of
    transformers' causal-LM mapping, or a model whose ``loss_type`` says so)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return (type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
            or getattr(model, "loss_type", None) == "ForCausalLM")


def shifted(labels: Tensor) -> Tensor:
    """A causal LM's labels where its logits are: position t holds label t + 1, the last -100."""
    return F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)


def batches_in_turn(trainer: Trainer) -> tuple[int, int]:
    """(offset, stride) = (rank x B, 1): accelerate gives whole batches of B (the per-device
    batch size) to the processes in turn, so rank r's sample j sits at r x B + j of the global
    micro-batch."""
    return trainer.args.process_index * trainer.args.per_device_train_batch_size, 1


class _Call(nn.Module):
    """The model called with a batch's keyword arguments: ``measure_alignment`` calls a model on
    one input."""

    def __init__(self, model: nn.Module, args: tuple) -> None:
        super().__init__()
        self.model = model
        self.args = args

    def forward(self, kwargs: dict[str, Any]):
        return self.model(*self.args, **kwargs)


def _model_loss(output: Any) -> Tensor:
    loss = output["loss"] if isinstance(output, dict) else output[0]
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError("FalignCallback: the alignment probe needs the model's own loss; the model "
                         "returned none (the Trainer popped the labels?)")
    return loss


class FalignCallback(TrainerCallback):
    """What a training step of a converted model needs from the Hugging Face Trainer, and the
    alignment probe (see the module docstring).  Add it with ``trainer.add_callback``: it reads
    the trainer's accelerator, arguments and accumulation, and logs through ``trainer.log``.

    Args:
        trainer: the ``transformers.Trainer`` that trains the converted model.
        alignment_every: run the probe every this many optimizer steps (0: never).
        measures: the fields of :class:`~falign.analysis.alignment.LayerAlignment` to log.
        prefix: the first part of every logged name.
        causal_lm: whether the model's loss shifts its labels (None: from the model's class).
        sample_index: under several processes, (offset, stride) of the process's samples in
            the global micro-batch, a function of the trainer (default: :func:`batches_in_turn`,
            accelerate's layout); None: leave it to your own ``falign.set_step``.
    """

    def __init__(self, trainer: Trainer, *, alignment_every: int = 0, measures: Sequence[str] = MEASURES,
                 prefix: str = "falign", causal_lm: bool | None = None,
                 sample_index: Callable[[Trainer], tuple[int, int]] | None = batches_in_turn) -> None:
        if alignment_every < 0:
            raise ValueError(f"FalignCallback: alignment_every must be >= 0, got {alignment_every}")
        self.trainer = trainer
        self.alignment_every = alignment_every
        self.measures = check_measures(measures)
        self.prefix = prefix
        self.causal_lm = causal_lm
        self.sample_index = sample_index
        #: the last probe's values, as logged
        self.last: dict[str, float] = {}
        self._handle = None
        self._causal = False
        self._call: tuple[tuple, dict] | None = None  # the last training forward's arguments

    # -- what a step needs ---------------------------------------------------------------------
    def targets(self, kwargs: dict[str, Any]) -> Tensor | None:
        """The labels where the model's logits are (shifted for a causal LM)."""
        if kwargs.get("shift_labels") is not None:
            return kwargs["shift_labels"]
        labels = kwargs.get("labels")
        if labels is None or not self._causal or labels.is_floating_point():
            return labels
        return shifted(labels)

    def loss_factor(self, kwargs: dict[str, Any]) -> float:
        """What the Trainer multiplies the model's loss by before backward (its loss scale
        aside): the number of processes where the model divided its sum by the labels of every
        process (``num_items_in_batch``, tokens averaged across devices), else 1 / the
        accumulation steps of the current optimizer step."""
        trainer = self.trainer
        if kwargs.get("num_items_in_batch") is not None:
            world = trainer.accelerator.num_processes
            # (transformers < 4.46 has no such argument: it never scaled the loss by the processes)
            return world if world > 1 and getattr(trainer.args, "average_tokens_across_devices", False) else 1
        # (the steps of this optimizer step: fewer at an epoch's end; older transformers: the argument)
        steps = getattr(trainer, "current_gradient_accumulation_steps", None)
        return 1 / (steps or trainer.args.gradient_accumulation_steps)

    def sample_weight(self, kwargs: dict[str, Any], targets: Tensor | None) -> float | None:
        """A label's weight in the loss the Trainer steps on (see the module docstring)."""
        items = kwargs.get("num_items_in_batch")
        if items is not None:
            return self.loss_factor(kwargs) / float(items)
        if targets is None:
            return None
        return self.loss_factor(kwargs) / label_count(targets)

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return None  # evaluation, prediction
        targets = self.targets(kwargs)
        offset = stride = None
        if self.sample_index is not None and self.trainer.accelerator.num_processes > 1:
            offset, stride = self.sample_index(self.trainer)
        set_step(module, targets=targets, sample_weight=self.sample_weight(kwargs, targets),
                 loss_scale=scale_of(self.trainer.accelerator.scaler), sample_offset=offset,
                 sample_stride=stride)
        self._call = (args, kwargs)
        return None

    def _remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    # -- the Trainer's events ------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self._remove()
        model = self.trainer.model
        self._causal = is_causal_lm(model) if self.causal_lm is None else self.causal_lm
        self._handle = model.register_forward_pre_hook(self._before_forward, with_kwargs=True)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        every = self.alignment_every
        if not every or state.global_step % every or self._call is None:
            return
        model = self.trainer.model
        call_args, call_kwargs = self._call
        world, reduce = processes()
        factor = self.loss_factor(call_kwargs)

        def loss(output, _targets):  # the micro-batch's loss as the Trainer backpropagates it
            return _model_loss(output) * factor

        # (each of the probe's forwards passes the pre-hook: the step's labels and weight again)
        stats = measure_alignment(_Call(model, call_args), call_kwargs, None, loss, world=world,
                                  reduce=reduce)
        self.last = as_metrics(stats, self.measures, self.prefix, strip="model.")
        self.trainer.log(dict(self.last))

    def on_step_end(self, args, state, control, **kwargs):
        self._call = None
        set_step(self.trainer.model)  # no labels, weight or scale left for a later forward

    def on_train_end(self, args, state, control, **kwargs):
        self._remove()
        self._call = None
        set_step(self.trainer.model)
