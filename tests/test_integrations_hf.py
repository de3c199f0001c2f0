"""falign inside the Hugging Face Trainer: every rule trained on a tiny GPT-2 (built from its
config, no download) by ``transformers.Trainer`` with
:class:`falign.integrations.hf.FalignCallback` ends with the weights of a plain loop written
here by hand -- the same batches in the same order, the same seed and optimizer, the logits'
cross-entropy against the shifted labels (-100 ignored) summed and divided by the labels of the
whole accumulated batch as the Trainer's loss is, gradient clipping, ``falign.set_step`` with
the shifted labels and a label's weight -- in float64, with gradient
accumulation; the probe's logged values are the hand loop's ``measure_alignment`` on the same
step; two processes end where one process does on the global batches, read noise keyed by a
sample's global position included.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ONE_THREAD

import falign
from falign.analysis.alignment import measure_alignment

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from falign.integrations.hf import FalignCallback  # noqa: E402

if "train_sampling_strategy" not in transformers.TrainingArguments.__dataclass_fields__:
    pytest.skip("the Trainer's sequential sampling needs transformers >= 5", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_thread")
transformers.logging.set_verbosity_error()

DT = torch.float64
VOCAB, LENGTH, BATCH, ACCUMULATE, STEPS = 64, 8, 3, 2, 4
HELPER = Path(__file__).parent / "helpers" / "ddp_integrations.py"


def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=16,
                                  bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg).to(DT)


def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n sequences; the first label of each is -100 (nothing predicts it) and the last 0-3
    too (padding), so micro-batches count unequal labels."""
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, VOCAB, (n, LENGTH), generator=gen)
    labels = ids.clone()
    labels[:, 0] = -100
    for i in range(n):
        if i % 4:
            labels[i, LENGTH - i % 4:] = -100
    return ids, labels


class Sequences(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.ids, self.labels = data(n)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


#: named cases beyond the registered rules: (rule, its options, the callback's options)
CASES = {
    "dfa+read-noise": ("dfa", {"hardware": {"signal_noise": 0.2}}, {}),
    # the same without the sample index: each process draws the rows of global positions 0, 1, ...
    "dfa+read-noise,unplaced": ("dfa", {"hardware": {"signal_noise": 0.2}}, {"sample_index": None}),
}


def converted(rule: str) -> torch.nn.Module:
    name, options, _ = CASES.get(rule, (rule, {}, {}))
    return falign.convert(gpt2(), name, seed=1, example_input=data(2)[0], warn=False, **options)


def optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)


def build(rule: str, out: str, *, world: int = 1, accumulate: int = ACCUMULATE, loss_kwargs: bool = True):
    """(trainer, model) for STEPS optimizer steps of the Trainer, in sequence order."""
    model = converted(rule)
    opt = optimizer(model)
    args = transformers.TrainingArguments(
        output_dir=out, per_device_train_batch_size=BATCH, gradient_accumulation_steps=accumulate,
        max_steps=STEPS, use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
        train_sampling_strategy="sequential", seed=0, disable_tqdm=True, dataloader_num_workers=0)
    data_set = Sequences(BATCH * accumulate * STEPS * world)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data_set,
                                   optimizers=(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)))
    trainer.model_accepts_loss_kwargs = loss_kwargs
    return trainer, model


def train(rule: str, *, alignment_every: int = 0, callback: bool = True, **options):
    """(trainer, model) after training, with the callback (``build``'s options)."""
    with tempfile.TemporaryDirectory() as out:
        trainer, model = build(rule, out, **options)
        if callback:
            options = CASES.get(rule, (rule, {}, {}))[2]
            trainer.add_callback(FalignCallback(trainer, alignment_every=alignment_every, **options))
        trainer.train()
    return trainer, model


def hand_loop(rule: str, *, world: int = 1, accumulate: int = ACCUMULATE, every: int = 0,
              loss_kwargs: bool = True):
    """The plain loop: a global micro-batch is the processes' consecutive batches; the loss of
    each is its summed cross-entropy over the shifted labels divided by the labels of the whole
    step (``loss_kwargs``; else its mean divided by the accumulation steps); clipping at 1.  One
    backward of the whole micro-batch a micro-batch: read noise draws each sequence's rows by
    its position 0 .. N-1 in it (rank r's sequence j, of batches of B, at r x B + j)."""
    model = converted(rule)
    opt = optimizer(model)
    ids, labels = data(BATCH * accumulate * STEPS * world)
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # position t predicts token t + 1
    micro = BATCH * world
    measured = {}
    for t in range(STEPS):
        window = slice(t * accumulate * micro, (t + 1) * accumulate * micro)
        n = int((targets[window] != -100).sum())
        opt.zero_grad()
        for j in range(accumulate):
            s = slice((t * accumulate + j) * micro, (t * accumulate + j + 1) * micro)
            x, y = ids[s], targets[s]
            logits = model(x).logits.float()  # transformers' loss takes the cross-entropy in float32
            if loss_kwargs:
                loss, weight = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / n, 1 / n
            else:
                m = int((y != -100).sum())
                loss = F.cross_entropy(logits.flatten(0, 1), y.flatten()) / accumulate
                weight = 1 / (m * accumulate)
            falign.set_step(model, targets=y, sample_weight=weight)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if every and t % every == 0:
            falign.set_step(model, targets=y, sample_weight=1 / int((y != -100).sum()))
            measured[t] = measure_alignment(
                model, x, y, lambda out, y: F.cross_entropy(out.logits.float().flatten(0, 1), y.flatten()))
        opt.step()
    return model, measured


def assert_same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-8, atol=1e-11, msg=k)


def expected_metrics(measured, measures) -> dict[str, float]:
    return {f"falign/{layer}/{m}": getattr(a, m) for layer, a in measured.items() for m in measures
            if getattr(a, m) is not None}


@pytest.mark.parametrize("rule", list(falign.rules()))
def test_every_rule_trained_by_the_trainer_with_accumulation_equals_the_hand_written_loop(rule) -> None:
    _, model = train(rule)
    twin, _ = hand_loop(rule)
    assert_same_weights(model, twin)
    start = converted(rule)
    w = "transformer.h.0.mlp.c_fc.weight"
    assert not torch.allclose(model.state_dict()[w], start.state_dict()[w])  # it trained
    layer = model.transformer.h[0].mlp.c_fc.falign_slot
    if layer.rule.stateful:  # one state change per optimizer step, not per micro-batch
        assert int(layer.feedback_step) == STEPS


@pytest.mark.parametrize("rule", ["sdfa", "drtp"])
def test_a_model_that_takes_no_loss_kwargs_has_its_mean_loss_divided_over_the_micro_batches(rule) -> None:
    """Without ``num_items_in_batch`` the Trainer divides each micro-batch's mean loss by the
    accumulation steps: a label weighs 1 / (N x steps), N the micro-batch's labels."""
    _, model = train(rule, loss_kwargs=False)
    assert_same_weights(model, hand_loop(rule, loss_kwargs=False)[0])
    assert not torch.allclose(model.lm_head.weight, hand_loop(rule)[0].lm_head.weight)


@pytest.mark.parametrize("rule", ["sdfa", "drtp"])
def test_the_accelerators_loss_scale_reaches_the_rules_whose_signal_drops_es_magnitude(rule) -> None:
    """Under fp16 accelerate multiplies the loss by its GradScaler's scale before backward; the
    callback passes the scale on, so the hidden gradients of sign-DFA and DRTP scale with the
    loss like every other rule's.  (On CPU accelerate makes no GradScaler and gives the clipping
    the scaled gradients, so a whole fp16 run is not comparable here: one forward and backward,
    scaled by hand, shows the scale arriving.)"""
    grads = {}
    for scale in (None, 1024.0):
        with tempfile.TemporaryDirectory() as out:
            trainer, model = build(rule, out)
        callback = FalignCallback(trainer)
        trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=scale) if scale else None
        callback.on_train_begin(trainer.args, trainer.state, trainer.control)
        model.train()
        model.zero_grad()
        ids, labels = data(BATCH)
        loss = model(input_ids=ids, labels=labels).loss
        (loss * (scale or 1.0)).backward()
        callback.on_train_end(trainer.args, trainer.state, trainer.control)
        grads[scale] = model.transformer.h[0].mlp.c_fc.weight.grad.clone()
    torch.testing.assert_close(grads[1024.0], 1024.0 * grads[None], rtol=1e-9, atol=0)


def test_without_the_callback_sdfa_takes_other_steps_and_drtp_is_refused() -> None:
    _, model = train("sdfa", callback=False)
    w = "transformer.h.0.mlp.c_fc.weight"
    assert not torch.allclose(model.state_dict()[w], hand_loop("sdfa")[0].state_dict()[w])
    with pytest.raises(falign.layers.FeedbackError, match="set_step"):
        train("drtp", callback=False)


@pytest.mark.parametrize("rule", ["fa", "dfa", "drtp"])
def test_the_logged_alignment_is_falign_measure_on_the_same_step(rule) -> None:
    trainer, _ = train(rule, alignment_every=2)
    _, measured = hand_loop(rule, every=2)
    history = trainer.state.log_history
    logged = [{k: v for k, v in entry.items() if k.startswith("falign/")} for entry in history]
    steps = [entry["step"] for entry, m in zip(history, logged, strict=True) if m]
    logged = [m for m in logged if m]
    assert steps == sorted(measured) == [0, 2]
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, FalignCallback))
    for values, step in zip(logged, steps, strict=True):
        expected = expected_metrics(measured[step], callback.measures)
        assert values.keys() == expected.keys()
        for k, v in expected.items():
            assert values[k] == pytest.approx(v, rel=1e-8, abs=1e-8), (step, k)
    assert callback.last == logged[-1]


def test_labels_are_shifted_for_a_causal_lm_and_the_hook_is_removed_after_training() -> None:
    trainer, model = train("fa")
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, FalignCallback))
    assert not model._forward_pre_hooks  # on_train_end removed it
    assert torch.equal(callback.targets({"labels": torch.tensor([[5, 6, 7]])}), torch.tensor([[6, 7, -100]]))
    assert torch.equal(callback.targets({"labels": torch.tensor([[5]]), "shift_labels": torch.tensor([[9]])}),
                       torch.tensor([[9]]))


def test_the_sample_index_is_accelerates_layout_and_reaches_the_read_noise() -> None:
    """Under w processes the callback places rank r's sample j of a micro-batch at r x B + j of
    the global one -- where accelerate's BatchSamplerShard puts it -- for the read noise; with
    one process or ``sample_index=None`` it leaves the index alone."""
    from types import SimpleNamespace

    from accelerate.data_loader import BatchSamplerShard

    from falign.integrations.hf import batches_in_turn

    world, n = 3, BATCH * 3 * 4
    batches = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(range(n)), BATCH, False)

    def fake(rank, processes=world):
        args = SimpleNamespace(process_index=rank, per_device_train_batch_size=BATCH,
                               gradient_accumulation_steps=1)
        return SimpleNamespace(args=args, accelerator=SimpleNamespace(num_processes=processes, scaler=None))

    for rank in range(world):
        offset, stride = batches_in_turn(fake(rank))
        for m, batch in enumerate(BatchSamplerShard(batches, num_processes=world, process_index=rank)):
            assert [i - m * BATCH * world for i in batch] == [offset + stride * j for j in range(BATCH)]
    model = converted("dfa+read-noise")
    model.train()
    hw = model.transformer.h[0].mlp.c_fc.falign_slot.backward_rule
    ids, labels = data(BATCH)

    def step(callback):  # what the callback's pre-hook does before a training forward
        callback._before_forward(model, (), {"input_ids": ids, "labels": labels})

    step(FalignCallback(fake(2)))
    assert (hw.sample_offset, hw.sample_stride) == (2 * BATCH, 1)
    falign.set_step(model, sample_offset=1, sample_stride=2)
    step(FalignCallback(fake(2), sample_index=None))
    assert (hw.sample_offset, hw.sample_stride) == (1, 2)  # left to the user
    step(FalignCallback(fake(0, processes=1)))
    assert (hw.sample_offset, hw.sample_stride) == (1, 2)  # one process: not touched


def test_two_processes_end_where_one_process_does_on_the_global_batches(tmp_path) -> None:
    """torchrun, 2 processes, gloo: process r reads the batches r, r + 2, ...; the Trainer
    counts the labels of every process's accumulated batches and scales each process's loss by
    2 (``average_tokens_across_devices``), DDP averages; the hand loop takes both processes'
    batches of every micro-batch in one process.  The probe's records are those of the global
    micro-batch.  Read noise: the callback places each process's sequences at their global
    positions (rank r's sequence j at r x BATCH + j), so the processes draw the noise of one
    process; without the index they draw other rows."""
    rules = ["fa", "sdfa", "drtp", "brsf", "kp", "dfa+read-noise", "dfa+read-noise,unplaced"]
    out = tmp_path / "weights.pt"
    # (the tests' folder, then the caller's path: the falign under test, not an installed one)
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": path}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", str(HELPER), "hf", str(out), *rules],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    saved = torch.load(out, weights_only=True)
    for rule in rules:
        twin, measured = hand_loop(rule, world=2, every=2)
        model = converted(rule)
        model.load_state_dict(saved["weights"][rule])
        if rule.endswith("unplaced"):
            w = "transformer.h.0.mlp.c_fc.weight"
            assert not torch.allclose(model.state_dict()[w], twin.state_dict()[w])  # the test can fail
            continue
        assert_same_weights(model, twin)
        expected = expected_metrics(measured[2], FalignCallback(None).measures)
        assert saved["alignment"][rule].keys() == expected.keys()
        for k, v in expected.items():
            assert saved["alignment"][rule][k] == pytest.approx(v, rel=1e-8, abs=1e-8), (rule, k)
