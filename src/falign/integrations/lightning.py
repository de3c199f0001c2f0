"""PyTorch Lightning: :class:`FalignCallback`.

    model = falign.convert(net, "drtp")                 # inside your LightningModule
    trainer = L.Trainer(callbacks=[FalignCallback(alignment_every=100)], accumulate_grad_batches=4)

A LightningModule whose network was converted by ``falign.convert`` trains with Lightning's own
loop and an ordinary ``loss.backward()``; what the loop cannot know, this callback gives each
step through :func:`falign.set_step`, at ``on_train_batch_start``:

* the step's labels (``targets(batch)``), which rules that project the target (DRTP) need;
* a sample's weight in the loss Lightning steps on: Lightning divides the loss of each of its
  ``accumulate_grad_batches`` micro-batches by their number, so the weight of one label in a
  mean loss is 1 / (N x accumulate_grad_batches), N the labels of the micro-batch (-100 not
  counted); sign-DFA and DRTP scale their signal by it;
* the loss scale: the GradScaler's scale under ``precision="16-mixed"``;
* under several processes, where the process's samples sit in the global micro-batch, for the
  hardware model's read noise (``signal_noise``, keyed by a sample's global index):
  ``sample_index(trainer)`` -> (offset, stride).  The default, :func:`interleaved`, is the
  layout of the sampler Lightning puts in by default (``use_distributed_sampler=True``), torch's
  ``DistributedSampler``: rank r of w reads samples r, r + w, ... of the (shuffled) order, so
  its sample j is global position j x w + r, (offset, stride) = (r, w).  With a sampler of your
  own that shares otherwise, pass its layout (a process reading contiguous batches of B
  samples: ``sample_index=lambda trainer: (trainer.global_rank * B, 1)``), or
  ``sample_index=None`` and call ``falign.set_step(model, sample_offset=..., sample_stride=...)``
  yourself before the backward.

Under DDP each process gives its own micro-batch (Lightning's DDP averages the gradients, as
it averages the loss's).  The rules' own state (brsf redraws, sign tracking, weight mirror)
advances once per optimizer step by itself (falign counts W's in-place updates), whatever the
accumulation, a skipped fp16 step or the number of processes.

The alignment probe (``alignment_every=N``) runs at ``on_before_optimizer_step`` of every N-th
optimizer step -- after the step's last backward, before the optimizer (after unscaling under
fp16) -- as :func:`falign.analysis.alignment.measure_alignment` on the step's last
micro-batch: a rule pass and a backprop pass of its own, so what ``.grad`` holds (a sum over
micro-batches, not yet averaged across processes inside an accumulation window) does not
matter, and under DDP its records are those of the whole global batch.  It calls the
LightningModule on ``inputs(batch)`` and takes ``loss_fn(output, targets(batch))``; the values
go to every logger of the trainer (``logger.log_metrics``, at ``trainer.global_step``) as
``falign/<layer>/<measure>``, and stay in :attr:`FalignCallback.last`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..analysis.alignment import measure_alignment
from ..layers.pathways.direct import IGNORE_INDEX, set_step
from ._common import MEASURES, as_metrics, check_measures, label_count, processes, scale_of

try:
    from lightning.pytorch import Callback
except ImportError:  # the standalone package
    from pytorch_lightning import Callback


def default_targets(batch: Any) -> Tensor:
    """``batch[1]`` of a tuple or list, ``batch["labels"]`` of a mapping."""
    if isinstance(batch, Mapping):
        return batch["labels"]
    if isinstance(batch, Sequence) and len(batch) > 1:
        return batch[1]
    raise TypeError("FalignCallback: pass targets=<a function of the batch> (the batch is neither "
                    "(inputs, labels, ...) nor a mapping with 'labels')")


def default_inputs(batch: Any) -> Any:
    """``batch[0]`` of a tuple or list, ``batch["input_ids"]`` of a mapping."""
    if isinstance(batch, Mapping):
        return batch["input_ids"]
    return batch[0]


def interleaved(trainer) -> tuple[int, int]:
    """(offset, stride) = (rank, processes): torch's ``DistributedSampler`` gives rank r of w the
    samples r, r + w, ..., so its sample j sits at j x w + r of the global batch."""
    return trainer.global_rank, trainer.world_size


def cross_entropy(output: Tensor, targets: Tensor) -> Tensor:
    """The mean cross-entropy over every sample (position): logits (..., K), class indices
    (...) with -100 ignored, or class probabilities (..., K)."""
    labels = targets.reshape(-1, targets.shape[-1]) if targets.is_floating_point() else targets.reshape(-1)
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), labels, ignore_index=IGNORE_INDEX)


class FalignCallback(Callback):
    """What a training step of a converted model needs from Lightning, and the alignment probe
    (see the module docstring).

    Args:
        targets: the labels of a batch (default: ``batch[1]``, or ``batch["labels"]``).
        reduction: ``"mean"`` when the loss is a mean over the labels (a label's weight is
            1 / (N x accumulate_grad_batches)), ``"sum"`` when it is their sum
            (1 / accumulate_grad_batches).
        alignment_every: run the probe every this many optimizer steps (0: never).
        inputs: what the probe calls the LightningModule on (default: ``batch[0]``, or
            ``batch["input_ids"]``).
        loss_fn: the probe's loss of (output, targets) (default: mean cross-entropy over the last
            axis, -100 ignored).
        measures: the fields of :class:`~falign.analysis.alignment.LayerAlignment` to log.
        prefix: the first part of every logged name.
        sample_index: under several processes, (offset, stride) of the process's samples in
            the global batch, a function of the trainer (default: :func:`interleaved`,
            ``DistributedSampler``'s layout); None: leave it to your own ``falign.set_step``.
    """

    def __init__(self, *, targets: Callable[[Any], Tensor] = default_targets, reduction: str = "mean",
                 alignment_every: int = 0, inputs: Callable[[Any], Any] = default_inputs,
                 loss_fn: Callable[[Any, Tensor], Tensor] = cross_entropy,
                 measures: Sequence[str] = MEASURES, prefix: str = "falign",
                 sample_index: Callable[[Any], tuple[int, int]] | None = interleaved) -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"FalignCallback: reduction is 'mean' or 'sum', not {reduction!r}")
        if alignment_every < 0:
            raise ValueError(f"FalignCallback: alignment_every must be >= 0, got {alignment_every}")
        self.targets = targets
        self.reduction = reduction
        self.alignment_every = alignment_every
        self.inputs = inputs
        self.loss_fn = loss_fn
        self.measures = check_measures(measures)
        self.prefix = prefix
        self.sample_index = sample_index
        #: the last probe's values, as logged
        self.last: dict[str, float] = {}
        self._batch: Any = None

    def sample_weight(self, targets: Tensor, accumulate: int) -> float:
        """A label's weight in the loss the optimizer steps on."""
        per_batch = 1.0 / label_count(targets) if self.reduction == "mean" else 1.0
        return per_batch / accumulate

    # -- Lightning's hooks -----------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        targets = self.targets(batch)
        # (the scaler of a mixed-precision plugin; other precision plugins have none)
        scale = scale_of(getattr(trainer.precision_plugin, "scaler", None))
        offset = stride = None
        if self.sample_index is not None and trainer.world_size > 1:
            offset, stride = self.sample_index(trainer)
        set_step(pl_module, targets=targets,
                 sample_weight=self.sample_weight(targets, trainer.accumulate_grad_batches), loss_scale=scale,
                 sample_offset=offset, sample_stride=stride)
        self._batch = batch

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        every = self.alignment_every
        if not every or trainer.global_step % every or self._batch is None:
            return
        targets = self.targets(self._batch)
        # the probe's rule pass is a step of its own: its labels and the weight of its loss
        set_step(pl_module, targets=targets, sample_weight=self.sample_weight(targets, 1))
        world, reduce = processes()
        try:
            stats = measure_alignment(pl_module, self.inputs(self._batch), targets, self.loss_fn,
                                      world=world, reduce=reduce)
        finally:
            set_step(pl_module)
        self.last = as_metrics(stats, self.measures, self.prefix)
        for logger in trainer.loggers:
            logger.log_metrics(self.last, step=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        set_step(pl_module)  # no labels, weight or scale left for a later forward

    def on_train_end(self, trainer, pl_module) -> None:
        set_step(pl_module)
        self._batch = None
