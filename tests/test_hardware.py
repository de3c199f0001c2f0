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
    camera,
    density_mask,
    low_rank,
    optical_matrix,
    optical_project,
    quantize,
    sparsify,
    ternarize,
    transmission_matrix,
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
    ("dfa", {"error_levels": 4}, "must be 2 .* or 3"),
    ("dfa", {"error_threshold": 0.2}, "give it with error_levels: 3"),
    ("dfa", {"error_levels": 2, "error_threshold": 0.2}, "give it with error_levels: 3"),
    ("dfa", {"error_levels": 3, "error_threshold": 1.0}, r"must be in \(0, 1\)"),
    ("dfa", {"error_levels": 3, "error_threshold": 0}, r"must be in \(0, 1\)"),
    ("fa", {"error_levels": 3}, "direct-feedback rules"),
    ("fa", {"optical": True}, "direct-feedback rules"),
    ("dfa", {"optical": {"bitz": 8}}, "optical: unknown key 'bitz'; did you mean 'bits'"),
    ("dfa", {"optical": {"bits": 0}}, "optical bits=0: must be an integer in"),
    ("dfa", {"optical": {"anchor": 2.5}}, "optical anchor=2.5: must be an integer >= 1"),
    ("dfa", {"optical": 8}, "must be true or a mapping"),
    ("dfa", {"optical": True, "b_levels": 3}, "drop b_levels"),
    ("dfa", {"optical": True, "projection": "x:y"}, "drop projection"),
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
    # interleaved shares (rank r of w reads samples r, r + w, ...): offset r, stride w
    for world in (2, 3):
        for r in range(world):
            share = read_noise(signal[r::world], 0.3, key=123, offset=r, stride=world)
            assert torch.equal(share, whole[r::world]), (world, r)
    assert torch.equal(read_noise(signal[4:10:3], 0.3, key=123, offset=4, stride=3), whole[[4, 7]])
    assert torch.equal(read_noise(signal, 0.3, key=123, offset=0, stride=1), whole)


def test_set_step_places_a_processs_samples_in_the_global_batch_and_checks_the_index():
    """Two processes reading every other sample, each a twin of the model with its own share:
    their summed gradients are the one-process gradients of the whole batch (sum loss), the
    read noise included; without the index they are not."""
    x, y = X, Y

    def grads(rule, rows, **index):
        model = falign.convert(Net().double(), rule, seed=4, example_input=x,
                               hardware={"signal_noise": 0.3})
        falign.set_step(model, targets=y[rows], sample_weight=1.0, **index)
        F.cross_entropy(model(x[rows]), y[rows], reduction="sum").backward()
        return {n: p.grad for n, p in model.named_parameters()}

    for rule in ("fa", "dfa"):
        whole = grads(rule, slice(None))
        shares = [grads(rule, slice(r, None, 2), sample_offset=r, sample_stride=2) for r in range(2)]
        for n, g in whole.items():
            torch.testing.assert_close(shares[0][n] + shares[1][n], g, rtol=1e-12, atol=1e-12, msg=n)
        unplaced = [grads(rule, slice(r, None, 2)) for r in range(2)]  # every share at 0, 1, ...: wrong rows
        assert not torch.allclose(unplaced[0]["l1.weight"] + unplaced[1]["l1.weight"], whole["l1.weight"])

    model = falign.convert(Net().double(), "fa", seed=4, example_input=x, hardware={"signal_noise": 0.3})
    hw = model.l1.backward_rule
    falign.set_step(model, sample_offset=1, sample_stride=4)
    assert (hw.sample_offset, hw.sample_stride) == (1, 4)
    falign.set_step(model)  # neither given: as it was
    assert (hw.sample_offset, hw.sample_stride) == (1, 4)
    falign.set_step(model, sample_offset=6)  # one given: the other at its default
    assert (hw.sample_offset, hw.sample_stride) == (6, 1)
    falign.set_step(model, sample_offset=torch.tensor(2), sample_stride=3)
    assert (hw.sample_offset, hw.sample_stride) == (2, 3)
    for bad in ({"sample_stride": 0}, {"sample_offset": -1}, {"sample_offset": 1.5}, {"sample_stride": True}):
        with pytest.raises(ValueError, match="must be an integer"):
            falign.set_step(model, **bad)


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


# -- ternary errors ---------------------------------------------------------------------------------

def test_ternary_errors_keep_the_entries_above_a_fraction_of_each_samples_max():
    e = torch.tensor([[0.5, -0.04, 0.2, -0.6], [0.001, 0.0, -0.002, 0.0005]], dtype=DT)
    t, c = ternarize(e, 0.1)  # thresholds 0.06 and 0.0002: each sample its own
    assert torch.equal(t, torch.tensor([[1.0, 0, 1, -1], [1, 0, -1, 1]], dtype=DT))
    assert torch.equal(c, torch.tensor([[0.6], [0.002]], dtype=DT))
    assert torch.equal(ternarize(e, 0.5)[0], torch.tensor([[1.0, 0, 0, -1], [0, 0, -1, 0]], dtype=DT))
    already = torch.tensor([[0.25, 0, -0.25], [0, 0, 0]], dtype=DT)  # on {-c, 0, c}: as it is
    t, c = ternarize(already, 0.9)
    assert torch.equal(t * c, already)


def test_dfa_with_ternary_errors_projects_them_with_a_samples_weight():
    model, grads = _grads("dfa", hardware={"error_levels": 3, "error_threshold": 0.3})
    e = F.softmax(model(X), 1) - F.one_hot(Y, 5).to(DT)
    keep = e.abs() > 0.3 * e.abs().amax(1, keepdim=True)
    t = torch.sign(e) * keep
    assert (t == 0).any() and (t != 0).sum(1).min() >= 1  # the threshold drops entries, never all
    h1 = torch.tanh(model.l1(X))
    delta = (t / 16) @ model.l3.effective_feedback().T * (1 - torch.tanh(model.l2(h1)) ** 2)
    torch.testing.assert_close(grads["l2.weight"], delta.T @ h1)


def test_ternary_errors_with_a_vanishing_threshold_are_sign_dfa_bit_for_bit():
    _, sdfa = _grads("sdfa")
    _, dfa3 = _grads("dfa", hardware={"error_levels": 3, "error_threshold": 1e-12})
    assert sdfa.keys() == dfa3.keys() and all(torch.equal(sdfa[k], dfa3[k]) for k in sdfa)


# -- a simulated optical co-processor ------------------------------------------------------------------

#: a hand-set transmission matrix on 3 error pixels for 2 camera pixels, and a reference field
T_E = torch.tensor([[1 + 1j, 2 - 1j, 0.5j], [-1, 1j, 2]], dtype=torch.complex128)
A = torch.tensor([1j, 2], dtype=torch.complex128)


def test_exact_intensities_give_the_linear_projection_re_conj_a_over_abs_a():
    t = torch.tensor([[1.0, -1, 0], [0, 0, 1], [0, 0, 0]], dtype=DT)
    # by hand: T t = (-1 + 2i, -1 - i), (0.5i, 2); conj(a)/|a| = (-i, 1)
    expected = torch.tensor([[2.0, -1], [0.5, 2], [0, 0]], dtype=DT)
    torch.testing.assert_close(optical_project(t, T_E, A, bits=None), expected, rtol=1e-12, atol=1e-12)
    p = optical_matrix(T_E, A)
    torch.testing.assert_close(p, torch.tensor([[1.0, -1, 0.5], [-1, 0, 2]], dtype=DT))
    torch.testing.assert_close(t @ p.T, expected)
    # the four camera frames, written out
    fp, fn = T_E[:, 0], T_E[:, 1]  # the frames of t+ = (1, 0, 0) and t- = (0, 1, 0)
    frames = ((fp + A).abs() ** 2 - fp.abs() ** 2 - (fn + A).abs() ** 2 + fn.abs() ** 2) / (2 * A.abs())
    torch.testing.assert_close(frames, expected[0])


def test_the_camera_reads_2_to_the_bits_levels_up_to_the_exposure():
    frames = torch.rand(4, 10000, generator=torch.Generator().manual_seed(0), dtype=DT) * 3
    full = frames.amax(1, keepdim=True)
    q = camera(frames, full, bits=3)
    for row, top in zip(q, full[:, 0], strict=True):
        values = torch.unique(row)
        assert values.numel() == 8
        torch.testing.assert_close(values, torch.arange(8, dtype=DT) * top / 7)
    assert (q - frames).abs().max() <= full.max() / 14 + 1e-12  # half a level
    assert torch.equal(camera(frames, full, bits=None), frames)


def test_an_8_bit_camera_gives_the_projection_within_its_rounding():
    t_full = transmission_matrix(400, 60, std=0.1, seed=3)
    t_e, a = t_full[:, :30], t_full[:, 30:].sum(1)
    t = ternarize(torch.randn(32, 30, generator=torch.Generator().manual_seed(1), dtype=DT), 0.3)[0]
    exact = optical_project(t, t_e, a, bits=None)
    torch.testing.assert_close(exact, t @ optical_matrix(t_e, a).T)
    errors = [((optical_project(t, t_e, a, bits=b) - exact).norm() / exact.norm()).item()
              for b in (4, 8, 12, 16)]
    # rounding errors, divided by the reference's amplitude: largest where a pixel's reference is dim
    assert errors == sorted(errors, reverse=True) and 0 < errors[1] < 0.2 and errors[3] < 0.01


def test_the_transmission_matrix_is_complex_gaussian_and_its_projection_real_gaussian():
    t = transmission_matrix(500, 400, std=0.2, seed=9)
    assert torch.equal(t, transmission_matrix(500, 400, std=0.2, seed=9))
    assert not torch.equal(t, transmission_matrix(500, 400, std=0.2, seed=10))
    assert abs(t.real.std().item() - 0.2) < 0.005 and abs(t.imag.std().item() - 0.2) < 0.005
    p = optical_matrix(t[:, :300], t[:, 300:].sum(1))
    assert abs(p.mean().item()) < 0.002 and abs(p.std().item() - 0.2) < 0.005


@pytest.mark.parametrize("hardware", [{"optical": {"bits": None}, "error_levels": 3},
                                      {"optical": {"bits": None, "anchor": 3}},
                                      {"optical": {"bits": None}, "error_levels": 2}])
def test_without_rounding_the_backward_is_the_projection_effective_feedback_reports(hardware):
    model, grads = _grads("dfa", hardware=hardware)
    p3 = model.l3.effective_feedback()
    assert p3.shape == model.l3.feedback.shape and not torch.equal(p3, model.l3.feedback)
    rms = [b.pow(2).mean().sqrt() for b in (p3, model.l3.feedback)]  # T is scaled to B's RMS
    torch.testing.assert_close(rms[0], rms[1], rtol=0.2, atol=0)
    e = F.softmax(model(X), 1) - F.one_hot(Y, 5).to(DT)
    if hardware.get("error_levels") == 2:
        s = torch.sign(e) / 16
    elif hardware.get("error_levels") == 3:
        s = torch.sign(e) * (e.abs() > 0.1 * e.abs().amax(1, keepdim=True)) / 16
    else:  # e itself, ternarised on the device and scaled back by each sample's max |e|
        t, c = ternarize(e / 16, 0.1)
        s = t * c
    h1 = torch.tanh(model.l1(X))
    delta = s @ p3.T * (1 - torch.tanh(model.l2(h1)) ** 2)
    torch.testing.assert_close(grads["l2.weight"], delta.T @ h1)


def test_an_optical_device_is_fixed_by_the_seed_and_a_state_dict_carries_it():
    a, ga = _grads("dfa", hardware={"optical": True})
    b, gb = _grads("dfa", hardware={"optical": True})
    assert all(torch.equal(ga[k], gb[k]) for k in ga)
    other = falign.convert(Net().double(), "dfa", seed=9, example_input=X, hardware={"optical": True})
    assert not torch.equal(other.l3.effective_feedback(), a.l3.effective_feedback())
    other.load_state_dict(a.state_dict())
    assert torch.equal(other.l3.effective_feedback(), a.l3.effective_feedback())
    falign.set_step(other, targets=Y)
    F.cross_entropy(other(X), Y).backward()
    assert all(torch.equal(p.grad, ga[n]) for n, p in other.named_parameters())
    _, rounded = _grads("dfa", hardware={"optical": {"bits": None}})
    assert not torch.equal(rounded["l1.weight"], ga["l1.weight"])  # the camera rounds
    cosine = F.cosine_similarity(rounded["l1.weight"].flatten(), ga["l1.weight"].flatten(), dim=0)
    assert cosine > 0.9


def test_dfa_learns_through_the_optical_device():
    torch.manual_seed(0)
    x = torch.randn(64, 20, dtype=DT)
    y = (x[:, :5].argmax(1))
    model = falign.convert(Net().double(), "dfa", seed=2, example_input=x, hardware={"optical": True})
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        falign.set_step(model, targets=y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_a_checkpoint_keeps_ternary_errors_and_the_optical_device(tmp_path):
    from falign.training import load_model
    from falign.training.checkpoint import save_checkpoint

    hardware = {"error_levels": 3, "error_threshold": 0.2, "optical": {"bits": 6, "anchor": 4}}
    torch.manual_seed(0)
    model = falign.create_model("mlp", rule="dfa", num_classes=5, in_shape=(20,), sizes=[20, 16, 5],
                                rule_options={"seed": 3, "hardware": hardware})
    save_checkpoint(tmp_path / "m.pt", {"model_spec": model.falign_spec, "model": model.state_dict()})
    loaded = load_model(tmp_path / "m.pt")
    layers = [m for m in loaded.modules() if hasattr(m, "backward_rule")]
    assert layers and all(m.rule.options()["hardware"] == hardware for m in layers)
    x = X.float()
    grads = []
    for m in (model, loaded):
        falign.set_step(m, targets=Y)
        F.cross_entropy(m(x), Y).backward()
        grads.append([p.grad for p in m.parameters()])
    assert all(torch.equal(g, h) for g, h in zip(*grads, strict=True))


def test_a_config_takes_optical_and_the_command_line_refuses_a_bad_one(tmp_path, capsys):
    from falign.cli.main import main
    from falign.training import parse_config

    cfg = parse_config({"rule": {"name": "dfa", "hardware": {"optical": {"bits": 6}}}})
    assert cfg.rule.options["hardware"] == {"optical": {"bits": 6}}
    assert falign.get_rule("dfa", **cfg.rule.options).options()["hardware"] == {"optical": {"bits": 6}}
    assert falign.get_rule("dfa", hardware={"optical": True}).options()["hardware"] == {"optical": True}
    path = tmp_path / "c.yaml"
    path.write_text("rule: {name: dfa, hardware: {optical: {bitz: 8}}}\n")
    code = main(["train", str(path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "unknown key 'bitz'" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_read_noise_on_a_cuda_signal_is_the_cpu_signals_noise() -> None:
    """The noise is drawn on the CPU from its key, whatever device the signal is on."""
    from falign.rules.hardware import read_noise

    signal = torch.randn(6, 5, dtype=torch.float64)
    on_cpu = read_noise(signal, 0.2, key=11, offset=3, stride=2)
    on_gpu = read_noise(signal.cuda(), 0.2, key=11, offset=3, stride=2)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu)
