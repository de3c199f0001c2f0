"""The hardware model of the feedback path (falign.rules.hardware): each transform's stated
statistics on a large B, every key off = the base rule bit for bit, dfa with binary errors =
sign-DFA bit for bit, the backward reads the B effective_feedback() reports, and keys a rule
cannot honour are refused in one line.  The contract suite runs every rule with a
representative setting (tests/test_contract.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import falign
from falign.rules.hardware import (
    Hardware,
    HardwareError,
    density_mask,
    low_rank,
    quantize,
    sparsify,
    vary,
)

DT = torch.float64


def _b(m=400, n=300, seed=0):
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=DT) * 0.05


def _rms(t):
    return t.pow(2).mean().sqrt()


# -- each transform alone --------------------------------------------------------------------------

@pytest.mark.parametrize("levels", [16, 4, 3, 2])
def test_levels_are_uniform_clipped_and_keep_the_rms(levels):
    b = _b()
    q = quantize(b, levels, clip=2.5)
    values = torch.unique(q)
    assert values.numel() == levels
    steps = values.diff()
    torch.testing.assert_close(steps, steps.mean().expand_as(steps))  # uniform levels
    torch.testing.assert_close(values, -values.flip(0))  # symmetric: odd L holds 0
    if levels % 2:
        assert values[levels // 2].abs() < 1e-12
    torch.testing.assert_close(_rms(q), _rms(b))
    if levels == 2:  # sign(B) mean|B|, rescaled: sign(B) RMS(B)
        torch.testing.assert_close(q, torch.sign(b) * _rms(b))


def test_levels_clip_at_b_clip_rms():
    b = _b()
    b[0, 0] = 100.0  # an outlier far beyond the clip
    c = 1.0 * _rms(b)
    q = quantize(b, 5, clip=1.0)
    scale = _rms(b) / _rms(torch.round((b.clamp(-c, c) + c) / (c / 2)) * (c / 2) - c)
    assert torch.allclose(q.abs().max(), c * scale)


@pytest.mark.parametrize("density, expected", [(1.0, 300), (0.5, 150), (0.1, 30), (1e-6, 1)])
def test_density_keeps_the_same_count_in_every_row_and_the_rms(density, expected):
    b = _b()
    mask = density_mask(tuple(b.shape), density, seed=3)
    assert (mask.sum(1) == expected).all()
    s = sparsify(b, density, seed=3)
    assert ((s != 0).sum(1) == expected).all()
    torch.testing.assert_close(_rms(s), _rms(b))
    assert torch.equal(s, sparsify(b, density, seed=3))
    if density < 1:
        assert not torch.equal(mask, density_mask(tuple(b.shape), density, seed=4))


@pytest.mark.parametrize("rank", [1, 4, 16, 64])
def test_rank_is_the_rank_asked_and_keeps_the_rms(rank):
    b = _b()
    r = low_rank(b, rank, seed=5)
    assert torch.linalg.matrix_rank(r).item() == rank
    torch.testing.assert_close(_rms(r), _rms(b))
    assert torch.equal(low_rank(b, 300, seed=5), b)  # full rank: B as it is


def test_variation_has_the_stated_std_and_is_fixed_by_the_seed():
    b = _b(1000, 1000)
    v = vary(b, 0.2, seed=7)
    xi = (v / b - 1) / 0.2
    assert abs(xi.mean().item()) < 0.01 and abs(xi.std().item() - 1) < 0.01
    assert torch.equal(v, vary(b, 0.2, seed=7)) and not torch.equal(v, vary(b, 0.2, seed=8))


def test_transforms_apply_in_the_stated_order():
    b = _b()
    hw = Hardware(b_rank=8, b_density=0.5, b_levels=3, b_noise=0.1)
    out = hw.transform(b, seed=11)
    from falign.rules.hardware import _seed

    expected = vary(quantize(sparsify(low_rank(b, 8, _seed(11, "rank")), 0.5, _seed(11, "density")), 3, 2.5),
                    0.1, _seed(11, "noise"))
    assert torch.equal(out, expected)


# -- on converted models ----------------------------------------------------------------------------

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2, self.l3 = nn.Linear(20, 64), nn.Linear(64, 64), nn.Linear(64, 5)

    def forward(self, x):
        return self.l3(torch.tanh(self.l2(torch.tanh(self.l1(x)))))


X = torch.randn(16, 20, generator=torch.Generator().manual_seed(1), dtype=DT)
Y = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(2))


def _grads(rule, **options):
    model = falign.convert(Net().double(), rule, seed=4, example_input=X, **options)
    falign.set_step(model, targets=Y)
    F.cross_entropy(model(X), Y).backward()
    return model, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("rule", ["fa", "usf", "kp", "dfa", "drtp", "dkp"])
def test_every_key_off_is_the_base_rule_bit_for_bit(rule):
    _, base = _grads(rule)
    for off in (None, {}, {"b_clip": 2.5}):
        model, got = _grads(rule, hardware=off)
        assert model.l2.backward_rule is model.l2.rule  # the rule's own code path
        assert got.keys() == base.keys() and all(torch.equal(got[k], base[k]) for k in base)


def test_dfa_with_binary_errors_is_sign_dfa_bit_for_bit():
    _, sdfa = _grads("sdfa")
    _, dfa2 = _grads("dfa", hardware={"error_levels": 2})
    assert sdfa.keys() == dfa2.keys() and all(torch.equal(sdfa[k], dfa2[k]) for k in sdfa)


@pytest.mark.parametrize("rule, hardware", [
    ("fa", {"b_levels": 3}), ("usf", {"b_levels": 4, "b_density": 0.5}),
    ("kp", {"b_rank": 4, "b_noise": 0.1}), ("dfa", {"b_rank": 2, "b_levels": 3}),
])
def test_the_backward_reads_the_b_effective_feedback_reports(rule, hardware):
    model, grads = _grads(rule, hardware=hardware)
    b3 = model.l3.effective_feedback()
    if rule == "dfa":  # l3's input receives B_3 e (B_3: (64, 5)), e the error at the logits
        out = model(X)
        e = F.softmax(out, 1) - F.one_hot(Y, 5).to(DT)
        h1 = torch.tanh(model.l1(X))
        a2 = model.l2(h1)
        assert torch.unique(b3).numel() == 3
        delta = (e / 16) @ b3.T * (1 - torch.tanh(a2) ** 2)
        torch.testing.assert_close(grads["l2.weight"], delta.T @ h1)
        return
    levels = hardware.get("b_levels")
    if levels is not None and "b_noise" not in hardware:
        assert torch.unique(b3).numel() <= levels + (1 if hardware.get("b_density") else 0)
    h1 = torch.tanh(model.l1(X))
    a2 = model.l2(h1)
    h2 = torch.tanh(a2)
    g3 = (F.softmax(model.l3(h2), 1) - F.one_hot(Y, 5).to(DT)) / 16
    delta2 = (g3 @ b3) * (1 - h2 ** 2)
    torch.testing.assert_close(grads["l2.weight"], delta2.T @ h1)


def test_a_learned_b_stays_full_precision_and_the_backward_reads_it_quantised():
    model, _ = _grads("kp", hardware={"b_levels": 3})
    assert torch.unique(model.l3.feedback).numel() > 100
    assert torch.unique(model.l3.effective_feedback()).numel() == 3


def test_a_fixed_b_is_transformed_once_and_b_from_w_once_a_step():
    fa, _ = _grads("fa", hardware={"b_levels": 3})
    made = fa.l3.backward_rule._value
    opt = torch.optim.SGD(fa.parameters(), lr=0.1)
    opt.step()
    F.cross_entropy(fa(X), Y).backward()
    assert fa.l3.backward_rule._value is made  # B is fixed: never made again
    usf, _ = _grads("usf", hardware={"b_levels": 3})
    first = usf.l3.backward_rule._value
    F.cross_entropy(usf(X), Y).backward()  # same step (accumulation): the same B
    assert usf.l3.backward_rule._value is first
    torch.optim.SGD(usf.parameters(), lr=0.1).step()
    F.cross_entropy(usf(X), Y).backward()
    assert usf.l3.backward_rule._value is not first


def test_same_seed_same_device_and_a_state_dict_carries_it():
    a, ga = _grads("fa", hardware={"b_noise": 0.3, "b_density": 0.5})
    b, gb = _grads("fa", hardware={"b_noise": 0.3, "b_density": 0.5})
    assert all(torch.equal(ga[k], gb[k]) for k in ga)
    other = falign.convert(Net().double(), "fa", seed=9, hardware={"b_noise": 0.3, "b_density": 0.5})
    assert not torch.equal(other.l3.effective_feedback(), a.l3.effective_feedback())
    other.load_state_dict(a.state_dict())
    assert torch.equal(other.l3.effective_feedback(), a.l3.effective_feedback())


@pytest.mark.parametrize("rule, hardware, message", [
    ("bp", {"b_levels": 3}, "backprop has none"),
    ("fa", {"error_levels": 2}, "direct-feedback rules"),
    ("fa", {"b_lvls": 3}, "unknown key 'b_lvls'; did you mean 'b_levels'"),
    ("dfa", {"b_density": 0}, r"b_density=0: must be in \(0, 1\]"),
    ("dfa", {"b_levels": 1}, "must be an integer >= 2"),
    ("fa", {"b_rank": 2.5}, "must be an integer >= 1"),
    ("fa", {"b_noise": -1}, "must be a number >= 0"),
    ("fa", [3], "must be a mapping"),
])
def test_keys_a_rule_cannot_honour_and_bad_values_are_one_line(rule, hardware, message):
    with pytest.raises(HardwareError, match=message) as err:
        falign.convert(copy.deepcopy(Net()), rule, hardware=hardware)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, falign.FalignError)


def test_the_layers_take_the_same_keyword_and_the_rule_reports_it():
    layer = falign.FeedbackLinear(30, 20, rule="fa", seed=1, hardware={"b_levels": 2})
    assert torch.unique(layer.effective_feedback()).numel() == 2
    assert "hardware={'b_levels': 2}" in repr(layer)
    assert layer.rule.options()["hardware"] == {"b_levels": 2}
    assert "hardware" not in falign.get_rule("fa").options()  # off: not an option at all


def test_a_config_takes_rule_hardware_and_refuses_a_bad_key():
    from falign.training import parse_config
    from falign.training.config import ConfigError

    cfg = parse_config({"rule": {"name": "dfa", "hardware": {"b_levels": 3}}})
    assert cfg.rule.options["hardware"] == {"b_levels": 3}
    with pytest.raises((ConfigError, ValueError), match="b_lvls"):
        parse_config({"rule": {"name": "dfa", "hardware": {"b_lvls": 3}}})


# -- a device in the loop ---------------------------------------------------------------------------

def test_a_projection_is_what_the_layers_receive():
    """A projection that computes falign's own product from the same B gives DFA bit for bit;
    it is called once per feedback point per backward with e (N, E)."""
    reference, base = _grads("dfa")
    bs = {name: m.effective_feedback() for name, m in reference.named_modules() if name in ("l2", "l3")}
    calls = []

    def device(e, point, out_features):
        calls.append((point, tuple(e.shape), out_features))
        return e @ bs[point].T

    model, got = _grads("dfa", hardware={"projection": device})
    assert sorted(calls) == [("l2", (16, 5), 64), ("l3", (16, 5), 64)]
    assert got.keys() == base.keys() and all(torch.equal(got[k], base[k]) for k in base)
    _, halved = _grads("dfa", hardware={"projection": lambda e, p, n: 0.5 * (e @ bs[p].T)})
    torch.testing.assert_close(halved["l1.weight"], 0.5 * base["l1.weight"])


def test_a_projection_by_name_from_a_config_and_a_bad_one(tmp_path, monkeypatch):
    (tmp_path / "mydevice.py").write_text(
        "import torch\n\n\ndef opu(e, point, out_features):\n"
        "    g = torch.Generator().manual_seed(len(point))\n"
        "    b = torch.randn(out_features, e.shape[1], generator=g, dtype=e.dtype)\n"
        "    return e @ b.T\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from falign.training import parse_config

    cfg = parse_config({"rule": {"name": "dfa", "hardware": {"projection": "mydevice:opu"}}})
    model = falign.convert(Net().double(), cfg.rule.name, seed=1, **cfg.rule.options)
    assert model.l2.rule.options()["hardware"] == {"projection": "mydevice:opu"}
    F.cross_entropy(model(X), Y).backward()
    assert model.l1.weight.grad.abs().sum() > 0
    with pytest.raises(HardwareError, match="cannot import it"):
        falign.convert(Net(), "dfa", hardware={"projection": "mydevice:nothing"})
    with pytest.raises(HardwareError, match="direct-feedback rules"):
        falign.convert(Net(), "fa", hardware={"projection": "mydevice:opu"})


def test_the_command_line_refuses_a_bad_device_in_one_line(tmp_path, capsys):
    from falign.cli.main import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("rule: {name: bp, hardware: {b_levels: 3}}\n")
    code = main(["train", str(cfg), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "backprop has none" in err
    assert not (tmp_path / "r").exists()


# -- read noise ---------------------------------------------------------------------------------------

def test_read_noise_is_fixed_by_each_samples_global_index():
    from falign.rules.hardware import read_noise

    signal = _b(10, 50)
    whole = read_noise(signal, 0.3, key=123)
    assert torch.equal(read_noise(signal[3:7], 0.3, key=123, offset=3), whole[3:7])  # a share
    assert not torch.equal(read_noise(signal, 0.3, key=124), whole)


def _noisy_layer(sigma, seed=1):
    layer = falign.FeedbackLinear(2000, 50, rule="fa", seed=seed, dtype=DT,
                                  hardware={"signal_noise": sigma})
    opt = torch.optim.SGD(layer.parameters(), lr=0.0)  # steps W (its version) without moving it
    return layer, opt


def _input_grad(layer, g):
    x = torch.zeros(64, 2000, dtype=DT, requires_grad=True)
    (layer(x) * g).sum().backward()
    return x.grad


def test_read_noise_has_the_stated_std_per_sample_and_is_fresh_each_step():
    layer, opt = _noisy_layer(0.2)
    g = torch.randn(64, 50, generator=torch.Generator().manual_seed(3), dtype=DT)
    clean = g @ layer.effective_feedback()
    first = _input_grad(layer, g)
    rms = clean.pow(2).mean(1, keepdim=True).sqrt()
    z = (first - clean) / rms
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 0.2) < 0.005
    again = _input_grad(layer, g)  # a second backward in the same step: its own draw
    assert not torch.equal(again, first)
    opt.step()
    later = _input_grad(layer, g)
    assert not torch.equal(later, first) and not torch.equal(later, again)
    twin, twin_opt = _noisy_layer(0.2)  # the same seed: the same draws, step by step
    assert torch.equal(_input_grad(twin, g), first) and torch.equal(_input_grad(twin, g), again)
    twin_opt.step()
    assert torch.equal(_input_grad(twin, g), later)


def test_read_noise_on_direct_feedback_and_refused_with_points():
    model, noisy = _grads("dfa", hardware={"signal_noise": 0.1})
    _, clean = _grads("dfa")
    assert not torch.equal(noisy["l1.weight"], clean["l1.weight"])
    torch.testing.assert_close(noisy["l3.weight"], clean["l3.weight"])  # the output layer: e itself
    with pytest.raises(falign.FalignError, match="feedback points"):
        falign.convert(Net(), "dfa", hardware={"signal_noise": 0.1}, points=["l2"])


@pytest.mark.slow
def test_two_processes_draw_the_read_noise_one_process_draws():
    import falign.testing as contract

    specs = [("fa", {"hardware": {"signal_noise": 0.3}}), ("dfa", {"hardware": {"signal_noise": 0.3}})]
    assert contract.compare_processes(specs) == [None, None]
