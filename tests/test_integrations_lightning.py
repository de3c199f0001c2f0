"""falign inside PyTorch Lightning: every rule trained by ``L.Trainer`` with
:class:`falign.integrations.lightning.FalignCallback` ends with the weights of a plain loop
written here by hand -- the same batches in the same order, the same seed and optimizer, the
loss divided over the accumulated micro-batches, ``falign.set_step`` called with the labels,
the weight of one label in the accumulated loss and the loss scale, a GradScaler where the
Lightning run has one -- in float64, with gradient accumulation; the probe's logged values are
the hand loop's ``measure_alignment`` on the same step; two processes under DDP end where one
process does on the global batches, read noise keyed by a sample's global position included.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ONE_THREAD
from torch import nn

import falign
from falign.analysis.alignment import measure_alignment
from falign.rules.hardware import hardware_from

L = pytest.importorskip("lightning.pytorch")
from falign.integrations.lightning import FalignCallback  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

DT = torch.float64
BATCH, ACCUMULATE, STEPS = 6, 2, 4
HELPER = Path(__file__).parent / "helpers" / "ddp_integrations.py"


def mlp() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 8, dtype=DT), nn.Tanh(), nn.Linear(8, 7, dtype=DT), nn.Tanh(),
                         nn.Linear(7, 3, dtype=DT))


def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n samples; every fifth label is -100 (in no loss), so micro-batches count unequal labels."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(n, 6, generator=gen, dtype=DT)
    y = torch.randint(0, 3, (n,), generator=gen)
    y[::5] = -100
    return x, y


#: named cases beyond the registered rules: (rule, its options, the callback's options)
CASES = {
    "dfa+read-noise": ("dfa", {"hardware": {"signal_noise": 0.2}}, {}),
    # the same without the sample index: each process draws the rows of global positions 0, 1, ...
    "dfa+read-noise,unplaced": ("dfa", {"hardware": {"signal_noise": 0.2}}, {"sample_index": None}),
}


def converted(rule: str) -> nn.Module:
    x, _ = data(2)
    name, options, _ = CASES.get(rule, (rule, {}, {}))
    return falign.convert(mlp(), name, seed=1, example_input=x, warn=False, **options)


def callback_options(rule: str) -> dict:
    return CASES.get(rule, (rule, {}, {}))[2]


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, ignore_index=-100)


class Lit(L.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return loss_fn(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)


class Memory(L.loggers.Logger):
    """The metrics Lightning hands its loggers, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.records.append((step, dict(metrics)))


def fit(rule: str, *, callback: FalignCallback | None, accumulate: int = ACCUMULATE, steps: int = STEPS,
        scaler: torch.amp.GradScaler | None = None, logger=False) -> nn.Module:
    x, y = data(BATCH * accumulate * steps)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
    plugins = []
    if scaler is not None:  # autocast leaves float64 alone: only the loss scaling acts
        plugins.append(L.plugins.precision.MixedPrecision("16-mixed", "cpu", scaler=scaler))
    trainer = L.Trainer(max_steps=steps, accumulate_grad_batches=accumulate, accelerator="cpu", devices=1,
                        logger=logger, callbacks=[callback] if callback else [], plugins=plugins,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, log_every_n_steps=1)
    lit = Lit(converted(rule))
    trainer.fit(lit, loader)
    return lit.net


def hand_loop(rule: str, *, accumulate: int = ACCUMULATE, steps: int = STEPS, init_scale: float | None = None,
              every: int = 0, world: int = 1, tell_scale: bool = True) -> tuple[nn.Module, dict[int, dict]]:
    """The plain loop: k micro-batches a step, each loss divided by k (times the scaler's scale),
    set_step with a label's weight in the accumulated loss; under ``world`` processes a global
    micro-batch is BATCH x world consecutive samples, of which rank r reads r, r + world, ...
    (DistributedSampler's interleaving), each process's loss the mean of its share.

    A rule with read noise draws it once per backward, each sample's rows by its position in
    the global micro-batch: one backward of the whole micro-batch (positions 0 .. N-1) a
    micro-batch, as each process makes one; its rule reads everything off e (the shares' label
    weights are in the loss).  The others take one backward per share."""
    net = converted(rule)
    opt = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale) if init_scale else None
    x, y = data(BATCH * accumulate * steps * world)
    micro = BATCH * world
    hardware = hardware_from(net[0].rule.hardware)
    together = hardware is not None and hardware.signal_noise is not None
    assert not (together and net[0].rule.weighs_signal)

    def shares_loss(out, y):  # each process's mean over its share, averaged over the processes
        return sum(loss_fn(out[r::world], y[r::world]) for r in range(world)) / world

    measured = {}
    for t in range(steps):
        opt.zero_grad()
        for j in range(accumulate):
            s = slice((t * accumulate + j) * micro, (t * accumulate + j + 1) * micro)
            xb, yb = x[s], y[s]
            if together:
                loss = shares_loss(net(xb), yb) / accumulate
                loss = scaler.scale(loss) if scaler else loss
                falign.set_step(net, targets=yb)
                loss.backward()
                continue
            # each process's mean, averaged: a label's weight is 1/(world x its share's labels)
            for xr, yr in zip([xb[r::world] for r in range(world)], [yb[r::world] for r in range(world)],
                              strict=True):
                n = int((yr != -100).sum())
                loss = loss_fn(net(xr), yr) / (accumulate * world)
                loss = scaler.scale(loss) if scaler else loss
                # (given after the forward: the labels belong to the forward just made)
                falign.set_step(net, targets=yr, sample_weight=1 / (n * accumulate * world),
                                loss_scale=scaler.get_scale() if scaler and tell_scale else 1.0)
                loss.backward()
        if every and t % every == 0:  # the step's last micro-batch; each process's loss a mean of its share
            falign.set_step(net, targets=yb, sample_weight=1 / int((yb != -100).sum()))
            measured[t] = measure_alignment(net, xb, yb, shares_loss)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
    return net, measured


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-9, atol=1e-12, msg=k)


@pytest.mark.parametrize("rule", list(falign.rules()))
def test_every_rule_trained_by_lightning_with_accumulation_equals_the_hand_written_loop(rule) -> None:
    net = fit(rule, callback=FalignCallback())
    twin, _ = hand_loop(rule)
    assert_same_weights(net, twin)
    start = converted(rule)
    assert not torch.allclose(net[0].weight, start[0].weight)  # it trained
    if net[0].rule.stateful:  # one state change per optimizer step, not per micro-batch
        assert int(net[0].feedback_step) == STEPS


@pytest.mark.parametrize("rule", ["sdfa", "drtp"])
def test_the_lightning_scalers_loss_scale_reaches_the_rules_whose_signal_drops_es_magnitude(rule) -> None:
    """Under fp16 the loss is multiplied by the GradScaler's scale (1024 here) before backward;
    sign-DFA and DRTP multiply their signal by it so that unscaling is exact: the same weights
    as without a scaler."""
    net = fit(rule, callback=FalignCallback(), scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    twin, _ = hand_loop(rule, init_scale=1024.0)
    assert_same_weights(net, twin)
    assert_same_weights(net, hand_loop(rule)[0])
    untold, _ = hand_loop(rule, init_scale=1024.0, tell_scale=False)  # the test can fail
    assert not torch.allclose(untold[0].weight, net[0].weight)


def test_without_the_callback_sdfa_takes_other_steps_and_drtp_is_refused() -> None:
    """The twin comparison can fail: Lightning alone gives sign-DFA the weight of one micro-batch
    (its signal is then k times too large) and DRTP no labels."""
    twin, _ = hand_loop("sdfa")
    assert not torch.allclose(fit("sdfa", callback=None)[0].weight, twin[0].weight)
    with pytest.raises(falign.layers.FeedbackError, match="set_step"):
        fit("drtp", callback=None)


@pytest.mark.parametrize("rule", ["fa", "dfa", "drtp"])
def test_the_logged_alignment_is_falign_measure_on_the_same_step(rule) -> None:
    logger = Memory()
    callback = FalignCallback(alignment_every=2, measures=("update_angle", "signal_angle", "delta_angle",
                                                           "feedback_angle", "norm_ratio",
                                                           "sign_concordance"))
    fit(rule, callback=callback, logger=logger)
    _, measured = hand_loop(rule, every=2)
    logged = {step: {k: v for k, v in m.items() if k.startswith("falign/")} for step, m in logger.records}
    logged = {step: m for step, m in logged.items() if m}
    assert sorted(logged) == sorted(measured) == [0, 2]
    for step, stats in measured.items():
        expected = {f"falign/net.{layer}/{m}": getattr(a, m) for layer, a in stats.items()
                    for m in callback.measures if getattr(a, m) is not None}
        assert logged[step].keys() == expected.keys()
        for k, v in expected.items():
            assert logged[step][k] == pytest.approx(v, rel=1e-9, abs=1e-9), (step, k)
    assert callback.last == logged[2]


def test_two_processes_under_ddp_end_where_one_process_does_on_the_global_batches(tmp_path) -> None:
    """torchrun, 2 processes, gloo: each process reads every other sample (a DistributedSampler),
    and DDP averages; the hand loop takes both shares of every micro-batch in one process.  The
    probe's records under DDP are those of the global micro-batch.  Read noise: the callback
    places each process's samples at their global positions (rank r's sample j at 2j + r), so
    the processes draw the noise of one process; without the index they draw other rows."""
    rules = ["fa", "sdfa", "drtp", "brsf", "kp", "dfa+read-noise", "dfa+read-noise,unplaced"]
    out = tmp_path / "weights.pt"
    # (the tests' folder, then the caller's path: the falign under test, not an installed one)
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": path}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", str(HELPER), "lightning", str(out), *rules],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    saved = torch.load(out, weights_only=True)
    for rule in rules:
        twin, measured = hand_loop(rule, world=2, every=2)
        net = converted(rule)
        net.load_state_dict(saved["weights"][rule])
        if rule.endswith("unplaced"):
            assert not torch.allclose(net[0].weight, twin[0].weight)  # the test can fail
            continue
        assert_same_weights(net, twin)
        if rule in ("sdfa", "drtp"):
            # their signal carries each process's own label weight (its shares count different
            # labels): one process with one weight for the whole micro-batch measures another loss
            continue
        expected = {f"falign/net.{layer}/{m}": getattr(a, m) for layer, a in measured[2].items()
                    for m in FalignCallback().measures if getattr(a, m) is not None}
        assert saved["alignment"][rule].keys() == expected.keys()
        for k, v in expected.items():
            assert saved["alignment"][rule][k] == pytest.approx(v, rel=1e-9, abs=1e-9), (rule, k)


def test_the_sample_index_is_distributed_samplers_layout_and_reaches_the_read_noise() -> None:
    """Under w processes the callback places rank r's sample j of a micro-batch at j x w + r of
    the global one -- where torch's DistributedSampler puts it -- for the read noise; with one
    process or ``sample_index=None`` it leaves the index alone."""
    from types import SimpleNamespace

    from falign.integrations.lightning import interleaved

    world, n = 3, BATCH * 3 * 4
    for rank in range(world):
        trainer = SimpleNamespace(global_rank=rank, world_size=world, accumulate_grad_batches=1,
                                  precision_plugin=None)
        offset, stride = interleaved(trainer)
        sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False)
        batches = torch.tensor(list(sampler)).view(-1, BATCH)
        for m, batch in enumerate(batches):  # global micro-batch m: samples m x BATCH x w, ...
            assert (batch - m * BATCH * world).tolist() == [offset + stride * j for j in range(BATCH)]
    lit = Lit(converted("dfa+read-noise"))
    hw = lit.net[0].backward_rule
    x, y = data(BATCH)
    trainer = SimpleNamespace(global_rank=1, world_size=3, accumulate_grad_batches=1, precision_plugin=None)
    FalignCallback().on_train_batch_start(trainer, lit, (x, y), 0)
    assert (hw.sample_offset, hw.sample_stride) == (1, 3)
    falign.set_step(lit, sample_offset=5)
    FalignCallback(sample_index=None).on_train_batch_start(trainer, lit, (x, y), 0)
    assert (hw.sample_offset, hw.sample_stride) == (5, 1)  # left to the user
    alone = SimpleNamespace(global_rank=0, world_size=1, accumulate_grad_batches=1, precision_plugin=None)
    FalignCallback().on_train_batch_start(alone, lit, (x, y), 0)
    assert (hw.sample_offset, hw.sample_stride) == (5, 1)  # one process: not touched
    custom = FalignCallback(sample_index=lambda t: (t.global_rank * BATCH, 1))
    custom.on_train_batch_start(trainer, lit, (x, y), 0)
    assert (hw.sample_offset, hw.sample_stride) == (BATCH, 1)


def test_the_defaults_read_tuples_and_mappings() -> None:
    from falign.integrations.lightning import default_inputs, default_targets

    x, y = torch.zeros(2, 3), torch.tensor([1, 2])
    assert default_targets((x, y)) is y and default_inputs((x, y)) is x
    assert default_targets({"input_ids": x, "labels": y}) is y
    assert default_inputs({"input_ids": x, "labels": y}) is x
    with pytest.raises(TypeError, match="targets="):
        default_targets(x)
    with pytest.raises(ValueError, match="unknown alignment measure"):
        FalignCallback(measures=("update_angel",))
    assert copy.copy(FalignCallback()).reduction == "mean"
