"""``train()`` and ``evaluate()``: one function that reads top to bottom, no callbacks.

A run directory holds ``tracking.json`` (the :class:`~falign.training.record.RunRecord` that
``train()`` returns: config, per-epoch metrics, best epoch, test accuracy, status, environment,
alignment probes), ``config.yaml``, ``last.pt`` (everything needed to resume), ``best.pt``
(the best-validation model) and, optionally, ``epoch_000.pt`` (before training) ... one per
epoch.  ``train(..., resume=True)`` after a kill at any moment continues from the last
complete epoch and ends with the numbers of an uninterrupted run.  A run stopped by a signal
(Ctrl-C's SIGINT, a scheduler's SIGTERM) records ``"status": "interrupted"``.  ``train()`` of a
finished run again -- the same config, or ``resume`` -- reads it back and trains nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import math
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from .. import __version__
from ..analysis.alignment import Probe, StepProbe
from ..data import Dataset, Split, batches, load_dataset
from ..data.core import share_rows
from ..data.registry import dataset_options
from ..errors import FalignError
from ..layers import StepContext, learned_feedback, train_step
from ..layers.scope import eval_mode
from ..models import InputTooSmallError, create_model, model_from_spec
from ..provenance import git_commit
from . import distributed
from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import ConfigError, ExperimentConfig, ScheduleConfig, parse_config
from .loggers import Logger, make_loggers
from .record import AlignmentRecord, EpochRecord, RecordError, RunRecord
from .record import write_json as write_json  # its home before record.py


class RunDirError(FalignError, ValueError):
    """The output directory holds another run (and neither resume nor overwrite was asked), or a
    run that cannot be resumed."""


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal other than Ctrl-C's (SIGTERM); ``signum`` names it.  A
    KeyboardInterrupt, so whatever stops on Ctrl-C stops on it too."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def signals_interrupt():
    """SIGTERM raises :class:`Interrupted` inside the block, as SIGINT raises KeyboardInterrupt,
    so that a run stopped by a scheduler or ``kill`` records it; SIGTERM's default comes back
    afterwards, also on error.  Only where SIGTERM has its default (ending the process at once:
    a handler of the caller's own is left alone) and in the main thread (which signals reach)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum, frame):
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "falign": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "platform": platform.platform(), "device": str(device), "threads": torch.get_num_threads(),
        "git": git_commit(),  # the code that trained the run (None outside a git checkout)
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


# -- pieces built from the config -------------------------------------------------------------

def build_dataset(cfg: ExperimentConfig, device: torch.device) -> Dataset:
    d = cfg.data
    return load_dataset(d.name, d.root, device=device, download=d.download, val_size=d.val_size,
                        split_seed=d.split_seed, subset=d.subset, **d.options)


def rule_options(cfg: ExperimentConfig) -> dict[str, Any]:
    return {"seed": cfg.seed, **cfg.rule.options}


def build_model(cfg: ExperimentConfig, data: Dataset) -> nn.Module:
    try:
        return create_model(cfg.model.name, rule=cfg.rule.name, num_classes=data.num_classes,
                            in_shape=tuple(data.input_shape), rule_options=rule_options(cfg),
                            **cfg.model.options)
    except InputTooSmallError as err:
        raise InputTooSmallError(f"{err}{_padding_hint(cfg, data)}") from None


def _padding_hint(cfg: ExperimentConfig, data: Dataset) -> str:
    """The end of the message of a model too big for the images: the smallest side N the
    dataset can pad its square images to (an even number of pixels more) that the model takes,
    as ``data.options.pad_to: N``; "" when there is none."""
    if len(data.input_shape) != 3 or "pad_to" not in dataset_options(cfg.data.name):
        return ""
    c, h, w = data.input_shape
    if h != w:
        return ""
    for side in range(h + 2, 4 * h + 1, 2):
        try:
            create_model(cfg.model.name, num_classes=data.num_classes, in_shape=(c, side, side),
                         **cfg.model.options)
        except InputTooSmallError:
            continue
        except Exception:  # another reason: no hint
            return ""
        return f"; the images are {h}x{w}: set data.options.pad_to: {side} to pad them to fit"
    return ""


def check_config(cfg: ExperimentConfig, data: Dataset | None = None) -> Dataset:
    """Build what :func:`train` builds before it writes a file -- the dataset, the model, its
    optimizer -- on the CPU, and drop them: a config that cannot train fails here as it would in
    train(), with nothing written.  ``data``: a dataset built from the same ``data`` section,
    reused.  Returns the dataset."""
    if data is None:
        data = build_dataset(cfg, torch.device("cpu"))
    model = build_model(cfg, data)
    build_optimizer(cfg, model)
    build_feedback_optimizer(cfg, model)
    return data


class FastPath:
    """The GPU fast path of a config: autocast (bf16 / fp16), channels-last memory format.
    fp16 uses a gradient scaler; bf16 needs none.  All are no-ops when off."""

    def __init__(self, cfg: ExperimentConfig, device: torch.device) -> None:
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp)
        self.channels_last = cfg.train.channels_last
        self.scaler = None
        if self.dtype is torch.float16:
            self.scaler = torch.amp.GradScaler(device.type)

    def backward(self, loss: Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def loss_scale(self) -> float:
        """The factor ``backward`` multiplies the loss by."""
        return 1.0 if self.scaler is None else float(self.scaler.get_scale())

    def step(self, *optimizers: torch.optim.Optimizer) -> None:
        """Step each optimizer (W's, then B's own where there is one); one scaler update."""
        if self.scaler is None:
            for optimizer in optimizers:
                optimizer.step()
        else:
            for optimizer in optimizers:
                self.scaler.step(optimizer)
            self.scaler.update()

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def input(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def _optimizer(o, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The torch optimizer an ``optim`` (or ``optim.feedback``) section names, over ``params``."""
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


def build_optimizer(cfg: ExperimentConfig, model: nn.Module) -> torch.optim.Optimizer:
    """W's optimizer: every trainable parameter, less the trained feedback B where
    ``optim.feedback`` gives B an optimizer of its own (:func:`build_feedback_optimizer`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optim.feedback is not None:
        own = {id(b) for b in learned_feedback(model)}
        params = [p for p in params if id(p) not in own]
    return _optimizer(cfg.optim, params)


def build_feedback_optimizer(cfg: ExperimentConfig, model: nn.Module) -> torch.optim.Optimizer | None:
    """The optimizer of the trained feedback B (``optim.feedback``); None where the config
    gives B none of its own."""
    if cfg.optim.feedback is None:
        return None
    params = learned_feedback(model)
    if not params:
        raise ConfigError(f"optim.feedback: model '{cfg.model.name}' under rule '{cfg.rule.name}' "
                          "has no trained feedback B to step; remove optim.feedback")
    return _optimizer(cfg.optim.feedback, params)


def lr_factor(cfg: ExperimentConfig) -> Callable[[int], float]:
    """Multiplier of the base lr at epoch ``e`` (0-based): warm-up, then the schedule."""
    return schedule_factor(cfg.schedule, cfg.optim.lr, cfg.train.epochs)


def feedback_lr_factor(cfg: ExperimentConfig) -> Callable[[int], float]:
    """:func:`lr_factor` of the trained feedback's own optimizer (``optim.feedback.schedule``)."""
    fb = cfg.optim.feedback
    return schedule_factor(fb.schedule, fb.lr, cfg.train.epochs)


def schedule_factor(s: ScheduleConfig, base: float, epochs: int) -> Callable[[int], float]:
    """Multiplier of the base lr ``base`` at epoch ``e`` (0-based) under schedule ``s``."""
    total = max(epochs, 1)

    def factor(e: int) -> float:
        if s.warmup_epochs and e < s.warmup_epochs:
            return (e + 1) / (s.warmup_epochs + 1)
        if s.name == "multistep":
            return s.gamma ** sum(e >= m for m in s.milestones)
        if s.name == "exponential":
            return s.gamma ** (e - s.warmup_epochs)
        if s.name == "cosine":
            span = max(total - s.warmup_epochs, 1)
            t = min(max(e - s.warmup_epochs, 0), span) / span
            floor = s.min_lr / base
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

    return factor


def share_loss(kind: str, reduction: str, num_classes: int, world: int, global_n: int):
    """This process's share of a global batch's loss: its examples' summed loss times a factor
    chosen so that the gradient DDP averages over ``world`` shares is the gradient of the whole
    batch's loss (a mean over ``global_n`` examples or a sum), whatever the share sizes."""
    fn = loss_and_target(kind, "sum", num_classes)
    factor = world / global_n if reduction == "mean" else float(world)

    def share(out: Tensor, y: Tensor) -> Tensor:
        return fn(out, y) * factor

    share.factor = factor
    return share


def flat(out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(N, T, K) outputs and (N, T) labels (a language model: one label a position) as
    (N T, K) and (N T,); classification outputs as they are."""
    if out.dim() > 2 and y.dim() == out.dim() - 1:
        return out.reshape(-1, out.shape[-1]), y.reshape(-1)
    return out, y


def loss_and_target(kind: str, reduction: str, num_classes: int):
    """The loss of ``(output, labels)``; ``fn.reduction`` says how :func:`batch_total` sums it.
    A language model's loss counts every position (its "examples" are tokens)."""

    def fn(out: Tensor, y: Tensor) -> Tensor:
        out, y = flat(out, y)
        if kind == "cross_entropy":
            return F.cross_entropy(out, y, reduction=reduction)
        onehot = F.one_hot(y, num_classes).to(out.dtype)
        if kind == "mse":
            return F.mse_loss(out, onehot, reduction=reduction)
        return F.binary_cross_entropy_with_logits(out, onehot, reduction=reduction)

    fn.reduction = reduction
    return fn


def batch_total(loss: Tensor, batch: int, reduction: str) -> float:
    """The loss summed over the batch's ``batch`` examples (tokens), whatever the reduction."""
    return float(loss.detach()) * (batch if reduction == "mean" else 1)


def hits(out: Tensor, y: Tensor) -> int:
    """Correct predictions (positions, for a language model)."""
    out, y = flat(out, y)
    return int((out.argmax(-1) == y).sum())


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, transform, *, batch_size: int = 1000,
             loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> dict[str, float]:
    """Mean loss (if ``loss_fn``) and accuracy of ``model`` on ``split``, in eval mode."""
    total, correct, loss_sum = 0, 0, 0.0
    with eval_mode(model):
        for x, y in batches(split, batch_size, transform=transform, shuffle=False):
            out = model(x)
            correct += hits(out, y)
            total += y.numel()
            if loss_fn is not None:
                reduction = getattr(loss_fn, "reduction", "mean")  # a plain callable: a mean
                loss_sum += batch_total(loss_fn(out, y), y.numel(), reduction)
    result = {"acc": correct / max(total, 1)}
    if loss_fn is not None:
        result["loss"] = loss_sum / max(total, 1)
    return result


# -- the loop ---------------------------------------------------------------------------------

def prepare_run_dir(out: Path, cfg: ExperimentConfig, *, resume: bool,
                    overwrite: bool) -> RunRecord | None:
    """What ``out`` holds decides what :func:`train` does; nothing is written here.

    None: train, from epoch 1 (``out`` holds no run, or ``overwrite``) or continued from
    ``last.pt`` (``resume``).  A record: ``out`` holds this run, finished (``cfg`` is its config,
    or ``resume`` and nothing left to train: no larger ``train.epochs``), read back as it is.
    :class:`RunDirError` for another run without ``resume`` or ``overwrite``, for this run
    unfinished without ``resume``, and for an unfinished run whose ``last.pt`` is gone."""
    tracking, last = out / "tracking.json", out / "last.pt"
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a directory")
    if overwrite or not (tracking.exists() or last.exists()):
        return None
    if resume:
        try:
            record = RunRecord.read(tracking) if tracking.exists() else None
        except RecordError:
            if not last.exists():
                raise
            record = None  # last.pt alone resumes the run (and rewrites its record)
        if record is not None and record.finished and not _more_epochs(record, cfg):
            _check_same_config(record.config, cfg, tracking)
            return record
        if last.exists():
            return None  # continued from it; its config is checked against cfg when it is read
        if record is None or not record.epochs:  # stopped in its first epoch: nothing to lose
            if record is not None and not record.finished:
                _check_same_config(record.config, cfg, tracking)
            return None
        done = f"{len(record.epochs)} of {cfg.train.epochs} epochs"
        if record.finished:
            raise RunDirError(f"{last}: missing, so the finished run in {out} ({done}) cannot be "
                              "continued; --overwrite trains it again from epoch 1")
        raise RunDirError(f"{last}: missing, so the {record.status} run in {out} ({done}) cannot "
                          "be resumed; --overwrite trains it again from epoch 1")
    if not _same_run_config(out / "config.yaml", cfg):
        raise RunDirError(f"{out}: holds another run (use --resume to continue it or "
                          "--overwrite to replace it)")
    record = RunRecord.read(tracking) if tracking.exists() else None
    if record is None or not record.finished:
        state = "no record" if record is None else \
            f"{record.status}, {len(record.epochs)} of {cfg.train.epochs} epochs"
        raise RunDirError(f"{out}: holds this run, not finished ({state}); use --resume to "
                          "continue it or --overwrite to start again")
    return record


def _more_epochs(record: RunRecord, cfg: ExperimentConfig) -> bool:
    """Whether ``cfg`` asks a completed run for epochs it has not trained (``--resume`` with a
    larger ``train.epochs`` continues it)."""
    return record.status == "completed" and not record.stopped_early and \
        cfg.train.epochs > len(record.epochs)


def _same_run_config(path: Path, cfg: ExperimentConfig) -> bool:
    """Whether the run's ``config.yaml`` is ``cfg`` (older keys migrated)."""
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(saved, dict) and same_config(saved, cfg)


def same_config(saved: dict[str, Any], cfg: ExperimentConfig) -> bool:
    """Whether a config saved by a run, a comparison or a checkpoint is ``cfg``, every value of
    it (a saved one of an earlier falign in today's form)."""
    return _as_current(saved) == cfg.to_dict()


#: the thread count :func:`using_threads` sets for the runs trained inside its ``with``
_THREADS: contextvars.ContextVar[int | None] = contextvars.ContextVar("falign_threads", default=None)


@contextlib.contextmanager
def using_threads(threads: int | None) -> Iterator[None]:
    """Inside the ``with``, every run trained without its own ``threads`` (a comparison's, a
    sweep's, a reproduction's) takes ``threads`` in place of :func:`default_threads`' other
    sources (None: as outside); the user's ``$FALIGN_THREADS`` is neither read nor written."""
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive number of threads, not {threads!r}")
    token = _THREADS.set(threads if threads is not None else _THREADS.get())
    try:
        yield
    finally:
        _THREADS.reset(token)


def default_threads() -> int:
    """Intra-op threads when none are asked for: those of an enclosing :func:`using_threads`
    (``--threads``), else ``$FALIGN_THREADS``, else half the CPUs this process may use (at least
    one, at most 8) -- deterministic, and leaving room on a shared machine, where more threads
    than free cores make every op wait for its slowest thread."""
    if _THREADS.get() is not None:
        return _THREADS.get()
    env = os.environ.get("FALIGN_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"FALIGN_THREADS must be a positive number of threads, not {env!r}")
        return n
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus // 2))


def _partial_counts(partial: dict[str, Any], ddp) -> tuple[int, int, float]:
    """This process's running (examples, correct, loss sum) of an epoch a mid-epoch checkpoint
    left unfinished: its own, when the process count is the checkpoint's; else the first
    process takes the totals (the epoch's sums are equal; the float order of the loss is not)."""
    n, correct, loss = partial["n"], partial["correct"], partial["loss"]
    if not isinstance(n, list):  # one process wrote it
        n, correct, loss = [n], [correct], [loss]
    if len(n) == ddp.world:
        return n[ddp.rank], correct[ddp.rank], loss[ddp.rank]
    if ddp.rank == 0:
        return sum(n), sum(correct), math.fsum(loss)
    return 0, 0, 0.0


def train(cfg: ExperimentConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False,
          progress: bool | None = None, log: Callable[[str], None] | None = print,
          stop_after: int | None = None, threads: int | None = None,
          loggers: Sequence[Logger] = (), probes: Sequence[Probe] = ()) -> RunRecord:
    """Train as ``cfg`` says, writing the run to ``out``; returns its record (also written to
    ``out/tracking.json`` after every epoch).

    ``threads``: torch's intra-op threads for the run (None: the run's own when resuming, else
    :func:`default_threads`); recorded in ``environment.threads``.  The same config, seed and
    thread count give bit-identical numbers on a CPU.  ``loggers``: trackers of one's own
    (:class:`falign.training.loggers.Logger`) besides the config's ``train.loggers``.
    ``probes``: side measurements of training steps (:class:`falign.analysis.alignment.Probe`,
    e.g. ``StepProbe(every=5)``), besides the alignment probe ``train.alignment_every`` makes;
    each is bound to the model and asked ``due(step)`` on every step.
    ``stop_after`` ends the process-equivalent early after that many epochs of this call
    (used by tests to simulate a kill between epochs).
    """
    out = Path(out)
    device = resolve_device(cfg.device)
    if threads is None and resume and (out / "tracking.json").is_file():
        with contextlib.suppress(Exception):
            threads = int(RunRecord.read(out / "tracking.json").environment.get("threads") or 0) or None
    before = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads())
    ddp = distributed.setup(device)
    try:
        with signals_interrupt():
            return _train(cfg, out, ddp, distributed.device_for(ddp, device), resume=resume,
                          overwrite=overwrite, progress=progress, log=log, stop_after=stop_after,
                          extra_loggers=list(loggers), extra_probes=list(probes))
    finally:
        distributed.teardown(ddp)
        torch.set_num_threads(before)


def _train(cfg: ExperimentConfig, out: Path, ddp: distributed.DistInfo, device: torch.device, *,
           resume: bool, overwrite: bool, progress: bool | None,
           log: Callable[[str], None] | None, stop_after: int | None,
           extra_loggers: list[Logger], extra_probes: list[Probe]) -> RunRecord:
    finished = prepare_run_dir(out, cfg, resume=resume, overwrite=overwrite)
    if finished is not None:
        if ddp.main and log is not None:
            log(f"{out}: finished ({finished.status}, {len(finished.epochs)} epochs), read back; "
                "nothing trained")
        return finished
    last_path = out / "last.pt"
    saved = None
    if resume and last_path.exists():
        saved = load_checkpoint(last_path)
        _check_same_config(saved["config"], cfg, last_path)
    main = ddp.main

    torch.manual_seed(cfg.seed)
    data = build_dataset(cfg, device)
    last_batch = len(data.train) % cfg.train.batch_size
    if ddp.enabled and 0 < last_batch < ddp.world:
        raise ConfigError(f"the last batch of each epoch holds {last_batch} examples, too few to "
                          f"share among {ddp.world} processes; choose another train.batch_size")
    model = build_model(cfg, data).to(device)
    fast = FastPath(cfg, device)
    model = fast.prepare(model)
    net = model
    if ddp.enabled:
        from torch.nn.parallel import DistributedDataParallel

        if cfg.train.sync_batchnorm:
            distributed.sync_batchnorm(model)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        net = torch.compile(net)
    optimizer = build_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    # the trained feedback's own optimizer and schedule (optim.feedback), or none
    fb_optimizer = build_feedback_optimizer(cfg, model)
    fb_scheduler = None if fb_optimizer is None else \
        torch.optim.lr_scheduler.LambdaLR(fb_optimizer, feedback_lr_factor(cfg))
    optimizers = [optimizer] if fb_optimizer is None else [optimizer, fb_optimizer]
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    loss_fn = loss_and_target(cfg.train.loss, cfg.train.loss_reduction, data.num_classes)
    reduce = distributed.reduce_sum(ddp)
    select_name = cfg.train.select_on
    if select_name == "val" and data.val is None:
        select_name = "test"

    record = RunRecord(config=cfg.to_dict(), model_spec=model.falign_spec, dataset=data.description,
                       selected_on=select_name, status="running", environment=environment(device))
    # side measurements of training steps: objects with bind(model), due(step), capture() and
    # finish(...); the config's alignment probe first, then the caller's
    probes = [*([StepProbe(every=cfg.train.alignment_every)] if cfg.train.alignment_every else []),
              *extra_probes]
    for p in probes:
        p.bind(model, world=ddp.world, reduce=reduce)
    start_epoch = 1
    partial = None  # an epoch a mid-epoch checkpoint left unfinished
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if fb_optimizer is not None:
            fb_optimizer.load_state_dict(saved["feedback_optimizer"])
            fb_scheduler.load_state_dict(saved["feedback_scheduler"])
        set_rng_state(saved["rng"], gen)
        record.resume(saved["tracking"])
        start_epoch = saved["epoch"] + 1
        partial = saved.get("partial")
    distributed.barrier(ddp)  # every rank has read the run directory before rank 0 writes
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if saved is None:
            # a fresh start: forget the files of a replaced run
            for old in [out / "best.pt", out / "last.pt", *out.glob("epoch_*.pt")]:
                old.unlink(missing_ok=True)
            if cfg.train.checkpoint_every_epoch:
                _save_model(out / "epoch_000.pt", model, cfg, 0)
        record.write(out / "tracking.json")
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    say = (log or (lambda s: None)) if main else (lambda s: None)
    show_bar = (sys.stderr.isatty() if progress is None else progress) and main
    steps_per_epoch = math.ceil(len(data.train) / cfg.train.batch_size)
    step = steps_per_epoch * len(record.epochs) + (partial["batches"] if partial else 0)
    trackers = (make_loggers(cfg.train.loggers) + extra_loggers) if main else []
    for t in trackers:
        t.start(out, record, step)

    def checkpoint(epoch_done: int, part: dict[str, Any] | None = None) -> None:
        save_checkpoint(last_path, {
            "config": cfg.to_dict(), "model_spec": model.falign_spec, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": rng_state(gen), "epoch": epoch_done, "tracking": record.resumable(),
            **({"partial": part} if part else {}),
            **({} if fb_optimizer is None else {"feedback_optimizer": fb_optimizer.state_dict(),
                                                "feedback_scheduler": fb_scheduler.state_dict()}),
        })

    prev_errors = record.epochs[-1].train_errors if record.epochs else None
    epochs_this_call = 0
    last_epoch = start_epoch - 1 if record.stopped_early else cfg.train.epochs
    try:
        for epoch in range(start_epoch, last_epoch + 1):
            model.train()
            t0 = time.perf_counter()
            n, correct, loss_sum, diverged, skip = 0, 0, 0.0, False, 0
            if partial is not None and partial["epoch"] == epoch:
                # a mid-epoch checkpoint: the epoch's data order and augmentation draws come from
                # the generator as it was at the epoch's start; the batches done are drawn again
                # and skipped, then the random state of the checkpoint takes over
                gen.set_state(partial["gen"])
                n, correct, loss_sum = _partial_counts(partial, ddp)
                skip = partial["batches"]
                t0 -= partial["seconds"]
            epoch_gen = gen.get_state()
            lr = optimizer.param_groups[0]["lr"]
            fb_lr = None if fb_optimizer is None else fb_optimizer.param_groups[0]["lr"]
            # under several processes each loads and transforms only its share of a global batch
            part = (ddp.rank, ddp.world) if ddp.enabled else None
            it = batches(data.train, cfg.train.batch_size, transform=data.train_transform, shuffle=True,
                         generator=gen, part=part)
            if show_bar:
                from tqdm import tqdm

                it = tqdm(it, total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.train.epochs}", leave=False)
            for k, (x, y, *whole) in enumerate(it):
                if k < skip:
                    continue
                if k == skip and partial is not None and partial["epoch"] == epoch:
                    set_rng_state(partial["rng"], None)
                global_batch = whole[0] if ddp.enabled else y.shape[0]  # examples in all shares
                share = loss_fn
                if ddp.enabled:  # labels of the global batch: examples x positions (a language model)
                    share = share_loss(cfg.train.loss, cfg.train.loss_reduction, data.num_classes,
                                       ddp.world, global_batch * math.prod(y.shape[1:]))
                for o in optimizers:
                    o.zero_grad(set_to_none=True)
                ctx = StepContext(loss_fn=lambda o, t, f=share: f(o.float(), t), backward=fast.backward,
                                  world=ddp.world, reduce=reduce, autocast=fast.autocast, batch=global_batch,
                                  loss_scale=fast.loss_scale,
                                  sample_offset=share_rows(global_batch, ddp.rank, ddp.world)[0])
                due = [p for p in probes if p.due(step)]
                with contextlib.ExitStack() as measuring:
                    for p in due:
                        measuring.enter_context(p.capture())
                    out_b, loss = train_step(model, net, fast.input(x), y, ctx)
                if not torch.isfinite(loss):
                    diverged = True
                    break
                for p in due:
                    stats = p.finish(fast.input(x), y, ctx.loss_fn)
                    if stats is not None:
                        record.alignment.append(AlignmentRecord(step=step, epoch=epoch, layers={
                            name: a.to_dict() for name, a in stats.items()}))
                fast.step(*optimizers)
                step += 1
                tokens = y.numel()
                if ddp.enabled:
                    loss_sum += float(loss.detach()) / share.factor
                else:
                    loss_sum += batch_total(loss, tokens, cfg.train.loss_reduction)
                correct += hits(out_b.detach(), y)
                n += tokens
                if show_bar and k % 10 == 0:
                    it.set_postfix(loss=f"{loss_sum / max(n, 1):.4f}")
                if cfg.train.log_every and step % cfg.train.log_every == 0:
                    for t in trackers:
                        t.step(step, {"loss": float(loss.detach())})
                if cfg.train.checkpoint_steps and step % cfg.train.checkpoint_steps == 0 and \
                        k + 1 < steps_per_epoch:
                    # each process's own running counts (they are summed at the epoch's end)
                    counts = distributed.all_gather(ddp, float(n), float(correct), loss_sum)
                    part = {"epoch": epoch, "batches": k + 1, "gen": epoch_gen,
                            "n": [int(c[0]) for c in counts], "correct": [int(c[1]) for c in counts],
                            "loss": [c[2] for c in counts], "seconds": time.perf_counter() - t0,
                            "rng": rng_state(None)}
                    if main:
                        checkpoint(epoch - 1, part)
                    distributed.barrier(ddp)
            partial = None
            seconds = time.perf_counter() - t0
            loss_sum, correct, n, bad = distributed.all_sum(ddp, loss_sum, correct, n, float(diverged))
            correct, n, diverged = int(correct), int(n), bad > 0
            if diverged or not math.isfinite(loss_sum):
                record.status = "diverged"
                say(f"epoch {epoch}: loss is not finite: run diverged")
                break
            scheduler.step()
            if fb_scheduler is not None:
                fb_scheduler.step()
            done = EpochRecord(epoch=epoch, train_loss=loss_sum / n, train_acc=correct / n,
                               train_errors=n - correct, lr=lr, seconds=seconds)
            if data.val is not None:
                v = evaluate(model, data.val, data.eval_transform, batch_size=cfg.train.eval_batch_size,
                             loss_fn=loss_fn)
                done.val_loss, done.val_acc = v["loss"], v["acc"]
            if select_name == "last":
                better, sel = True, done.val_acc
            else:
                sel = done.val_acc if select_name == "val" else evaluate(
                    model, data.test, data.eval_transform, batch_size=cfg.train.eval_batch_size)["acc"]
                better = record.best_val_acc is None or sel > record.best_val_acc
            if better:
                record.best_val_acc, record.best_epoch = sel, epoch
                if main:
                    _save_model(out / "best.pt", model, cfg, epoch)
            record.epochs.append(done)
            change = None if prev_errors is None else abs(done.train_errors - prev_errors)
            stop = cfg.train.early_stop_tol is not None and change is not None and \
                change <= cfg.train.early_stop_tol
            record.stopped_early = stop  # saved, so a resume does not train past the stop
            if main and cfg.train.checkpoint_every_epoch:
                _save_model(out / f"epoch_{epoch:03d}.pt", model, cfg, epoch)
            if main:
                checkpoint(epoch)
                record.write(out / "tracking.json")
                for t in trackers:
                    t.epoch(record, done)
            distributed.barrier(ddp)
            val_txt = "" if done.val_acc is None else (
                f" val_loss {done.val_loss:.4f} val_acc {100 * done.val_acc:.2f}%")
            say(f"epoch {epoch}/{cfg.train.epochs} train_loss {done.train_loss:.4f} "
                f"train_acc {100 * done.train_acc:.2f}%{val_txt} lr {lr:.3g}"
                + ("" if fb_lr is None else f" feedback lr {fb_lr:.3g}") + f" {seconds:.1f}s")
            epochs_this_call += 1
            if stop:
                say(f"early stop: training errors changed by {change} <= tol {cfg.train.early_stop_tol}")
                break
            prev_errors = done.train_errors
            if stop_after is not None and epochs_this_call >= stop_after:
                return record

        if record.status == "running":
            record.status = "completed"
        distributed.barrier(ddp)
        if (out / "best.pt").exists():
            best = load_checkpoint(out / "best.pt", map_location=device)
            model.load_state_dict(best["model"])
            test = evaluate(model, data.test, data.eval_transform, batch_size=cfg.train.eval_batch_size,
                            loss_fn=loss_fn)
            record.test_acc, record.test_loss = test["acc"], test["loss"]
        if main:
            record.write(out / "tracking.json")
        if record.test_acc is not None:
            chosen = "last epoch" if select_name == "last" else \
                f"best epoch {record.best_epoch} ({select_name} acc {100 * record.best_val_acc:.2f}%)"
            say(f"{chosen}, test acc {100 * record.test_acc:.2f}%")
        return record
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (signals_interrupt): the record says so
        if main:
            _mark_interrupted(out / "tracking.json")
        raise
    finally:
        for t in trackers:
            t.close()


def _mark_interrupted(path: Path) -> None:
    """Set the status of the record last written (the epochs that last.pt holds) to
    ``interrupted``; the partial epoch in memory is not the run's."""
    with contextlib.suppress(RecordError, OSError):
        record = RunRecord.read(path)
        if record.status == "running":
            record.status = "interrupted"
            record.write(path)


def _save_model(path: Path, model: nn.Module, cfg: ExperimentConfig, epoch: int) -> None:
    save_checkpoint(path, {"config": cfg.to_dict(), "model_spec": model.falign_spec,
                           "model": model.state_dict(), "epoch": epoch})


def _check_same_config(saved: dict[str, Any], cfg: ExperimentConfig, where: Path) -> None:
    current = cfg.to_dict()
    saved = _as_current(saved)
    for section, values in current.items():
        old = saved.get(section)
        if section == "train" and isinstance(old, dict):
            old = {k: v for k, v in old.items() if k != "epochs"}
            values = {k: v for k, v in values.items() if k != "epochs"}
        if old != values:
            raise CheckpointError(f"{where}: the run was made with a different '{section}' "
                                  "config; resume with the run's own config.yaml")


def _as_current(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config in today's form (older keys migrated, newer ones at their defaults), so a
    run started by an earlier falign resumes; as saved when it no longer validates."""
    try:
        return parse_config(copy.deepcopy(saved), where="saved config").to_dict()
    except ConfigError:
        return saved


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from any falign checkpoint (epoch_*.pt, best.pt, last.pt)."""
    ckpt = load_checkpoint(path, map_location=map_location)
    if "model_spec" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path}: checkpoint holds no model")
    try:
        model = model_from_spec(ckpt["model_spec"])
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError, TypeError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:200]
        raise CheckpointError(f"{path}: the checkpoint does not fit its own model ({first})") from None
    return model.to(map_location)


def config_from_run(run_dir: str | Path) -> ExperimentConfig:
    path = Path(run_dir) / "config.yaml"
    return parse_config(yaml.safe_load(path.read_text()), where=str(path))
