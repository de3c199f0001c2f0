"""convert(): copies, sharing, patterns, the report and its warnings, errors; exact_backward();
and a tiny ResNet converted with every rule."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import falign
from falign.layers import ConversionWarning

DT = torch.float64
RULES = sorted(falign.rules())
pytestmark = pytest.mark.usefixtures("one_thread")


def randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=DT), nn.ReLU(),
                               nn.Conv2d(3, 4, 3, stride=2, padding=1, dtype=DT), nn.ReLU()),
        flat=nn.Flatten(),
        head=nn.Sequential(nn.Linear(4 * 3 * 3, 5, dtype=DT), nn.Tanh(), nn.Linear(5, 2, dtype=DT)),
    ))


ALL_LAYERS = ["features.0", "features.2", "head.0", "head.2"]


def _grads(model, x, *, exact: bool = False) -> list[torch.Tensor]:
    model.zero_grad()
    falign.set_step(model, targets=torch.arange(x.shape[0]) % 2)  # for rules that project targets
    x = x.detach().clone().requires_grad_(True)

    def step():
        out = model(x)
        F.mse_loss(out, randn(*out.shape, seed=9)).backward()

    if exact:
        with falign.exact_backward(model):
            step()
    else:
        step()
    # a trained B (KP) gets no gradient from true backprop: only the model's own weights count
    return [x.grad] + [p.grad.clone() for n, p in model.named_parameters() if not n.endswith("feedback")]


# --------------------------------------------------------------------------- 8. convert


def test_convert_returns_a_converted_copy_and_leaves_the_original_plain() -> None:
    plain = _net()
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    model = falign.convert(plain, "fa")
    assert model is not plain
    assert not falign.feedback_layers(plain) and not hasattr(plain, "falign_conversion")
    assert type(plain.features[0]) is nn.Conv2d and type(plain.head[2]) is nn.Linear
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in before.items())
    assert [n for n, _ in falign.feedback_layers(model)] == ALL_LAYERS
    assert isinstance(model.features[0], falign.FeedbackConv2d)
    assert isinstance(model.head[0], falign.FeedbackLinear)
    assert all(p is not q for p, q in zip(plain.parameters(), model.parameters(), strict=True))
    for (kp, p), (kq, q) in zip(plain.named_parameters(), model.named_parameters(), strict=True):
        assert kp == kq and torch.equal(p, q)  # same names, same values: state_dicts stay compatible
    with torch.no_grad():
        model.head[2].weight.add_(1.0)
    assert torch.equal(plain.head[2].weight, before["head.2.weight"])
    report = model.falign_conversion
    assert report.rule == "fa"
    assert report.converted == [("features.0", "Conv2d"), ("features.2", "Conv2d"), ("head.0", "Linear"),
                                ("head.2", "Linear")]
    assert report.excluded == [] and report.unreachable == []
    assert "converted 4 layers" in str(report)


def test_inplace_conversion_shares_the_parameter_objects() -> None:
    plain = _net()
    params = {n: p for n, p in plain.named_parameters()}
    model = falign.convert(plain, "usf", inplace=True)
    assert model is plain
    assert isinstance(plain.features[2], falign.FeedbackConv2d)
    for n, p in model.named_parameters():
        assert p is params[n]
    opt = torch.optim.SGD(params.values(), lr=0.1)  # an optimiser built before conversion still trains
    _grads(model, randn(2, 2, 6, 6, seed=1))
    w = model.head[0].weight.detach().clone()
    opt.step()
    assert not torch.equal(model.head[0].weight, w)


@pytest.mark.parametrize("kwargs,converted,excluded", [
    ({"include": ["features.*"]}, ["features.0", "features.2"], ["head.0", "head.2"]),
    ({"exclude": ["head.*"]}, ["features.0", "features.2"], ["head.0", "head.2"]),
    ({"exclude": ["features.0", "head.2"]}, ["features.2", "head.0"], ["features.0", "head.2"]),
    ({"include": ["*.0"], "exclude": ["head.*"]}, ["features.0"], ["features.2", "head.0", "head.2"]),
])
def test_include_and_exclude_patterns(kwargs, converted, excluded) -> None:
    plain = _net()
    model = falign.convert(plain, "fa", **kwargs)
    assert [n for n, _ in falign.feedback_layers(model)] == converted
    assert [n for n, _ in model.falign_conversion.converted] == converted
    assert sorted(model.falign_conversion.excluded) == excluded
    for name in excluded:
        assert type(model.get_submodule(name)) in (nn.Linear, nn.Conv2d)
    assert model.falign_conversion.unreachable == []  # excluded layers are not "unreachable"
    # excluded layers learn by backprop: with every B copied from W the model is exactly BP again
    for _, layer in falign.feedback_layers(model):
        with torch.no_grad():
            layer.feedback.copy_(layer.weight)
    x = randn(2, 2, 6, 6, seed=1)
    for a, b in zip(_grads(model, x), _grads(plain, x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


class _RawLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4, dtype=DT))

    def forward(self, x):
        return F.linear(x, self.weight)


class _MyLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 4, dtype=DT)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True, dtype=DT)
        self.raw = _RawLinear()
        self.sub = _MyLinear(4, 4, dtype=DT)
        self.out = nn.Linear(4, 2, dtype=DT)

    def forward(self, x):
        h = self.inp(x)
        h = self.attn(h, h, h, need_weights=False)[0]
        return self.out(self.sub(self.raw(h)))


def test_unreachable_weights_are_reported_and_warned() -> None:
    with pytest.warns(ConversionWarning) as record:
        model = falign.convert(_Mixed(), "fa")
    report = model.falign_conversion
    unreachable = dict(report.unreachable)
    assert set(unreachable) == {"raw.weight", "sub"}
    assert [n for n, _ in report.converted] == ["inp", "attn", "out"]  # attention is converted
    message = " ".join(str(w.message) for w in record)
    assert "raw.weight" in message and "sub" in message
    out = model(randn(2, 5, 3, seed=1))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        falign.convert(_Mixed(), "fa", warn=False)


class _Tokens(nn.Module):
    """A class token and positions (added) beside a weight used functionally (multiplied)."""

    def __init__(self) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, 4, dtype=DT))
        self.pos = nn.Parameter(torch.zeros(6, 4, dtype=DT))  # 2-D, added: only a trace can tell
        self.raw = nn.Parameter(torch.randn(4, 4, dtype=DT))
        self.out = nn.Linear(4, 2, dtype=DT)

    def forward(self, x):  # (N, 5, 4)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.out(F.linear(h, self.raw).mean(1))


def test_a_traced_example_tells_added_parameters_from_multiplied_ones() -> None:
    x = randn(2, 5, 4, seed=1)
    with pytest.warns(ConversionWarning):
        traced = falign.convert(_Tokens(), "fa", example_input=x).falign_conversion
    assert [n for n, _ in traced.unreachable] == ["raw"] and "multiplies" in dict(traced.unreachable)["raw"]
    assert {n for n, _ in traced.exact} == {"cls", "pos"}
    with pytest.warns(ConversionWarning):
        static = falign.convert(_Tokens(), "fa").falign_conversion  # no example: the shape decides
    assert {n for n, _ in static.exact} == {"cls"}
    assert {n for n, _ in static.unreachable} == {"pos", "raw"}


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(72, 8, dtype=DT), nn.Tanh(), nn.Linear(8, 2, dtype=DT))


@pytest.mark.parametrize("example", [False, True], ids=["static", "traced"])
@pytest.mark.parametrize("rule", RULES)
def test_a_rules_own_feedback_is_neither_unreachable_nor_exact(rule, example) -> None:
    """Kolen-Pollack's B is a parameter, direct KP's and weight mirror's B are learned: each is
    the rule's own, so converting a plain MLP or CNN reports nothing beyond the layers."""
    for make in (_mlp, _net):
        kwargs = {"example_input": randn(2, 2, 6, 6, seed=1)} if example else {}
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a ConversionWarning fails the test
            model = falign.convert(make(), rule, **kwargs)
        report = model.falign_conversion
        assert report.unreachable == [] and report.exact == []
        listed = " ".join(n for n, _ in report.exact + report.unreachable)
        assert ".feedback" not in listed and ".feedback" not in str(report)
        assert len(report.converted) == sum(type(m) in (nn.Linear, nn.Conv2d) for m in make().modules())


class _Standardised(nn.Module):
    """Every kind of norm torch has beside the layers, one of them over a whole (C, H, W) map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, dtype=DT)
        self.bn2d = nn.BatchNorm2d(4, dtype=DT)
        self.gn = nn.GroupNorm(2, 4, dtype=DT)
        self.ln_map = nn.LayerNorm([4, 6, 6], dtype=DT)  # a 3-D weight, used elementwise
        self.fc = nn.Linear(4 * 6 * 6, 5, dtype=DT)
        self.bn1d = nn.BatchNorm1d(5, dtype=DT)
        self.plain_bn = nn.BatchNorm1d(5, affine=False, dtype=DT)
        self.ln = nn.LayerNorm(5, dtype=DT)
        self.out = nn.Linear(5, 2, dtype=DT)

    def forward(self, x):
        h = self.ln_map(self.gn(self.bn2d(self.conv(x)).relu()))
        return self.out(self.ln(self.plain_bn(self.bn1d(self.fc(h.flatten(1))))))


@pytest.mark.parametrize("example", [False, True], ids=["static", "traced"])
def test_the_report_lists_norms_as_exact(example) -> None:
    plain = _Standardised()
    norms = {n for n, m in plain.named_modules() if "Norm" in type(m).__name__}  # by class name
    assert len(norms) == 6
    kwargs = {"example_input": randn(3, 2, 6, 6, seed=1)} if example else {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = falign.convert(plain, "fa", **kwargs)
    report = model.falign_conversion
    assert {n for n, _ in report.exact} == norms
    assert report.unreachable == []
    assert [n for n, _ in report.converted] == ["conv", "fc", "out"]
    for name in norms:
        assert f"  exact       {name}: {type(plain.get_submodule(name)).__name__}" in str(report)


def test_the_docstring_names_what_convert_converts() -> None:
    """The layer kinds ``convert``'s docstring says it converts are those of its own table, and
    no text names one of them as out of reach."""
    import inspect
    import re
    from pathlib import Path

    from falign.layers.convert import CONVERTERS

    doc = inspect.getdoc(falign.convert)
    first = doc.split("\n\n")[0]
    table = {t.__name__ for t in CONVERTERS}
    assert all(getattr(nn, n) in CONVERTERS for n in table)
    assert set(re.findall(r"``nn\.(\w+)``", first)) == table
    assert "``Conv1D``" in first  # Hugging Face's, recognised without importing transformers
    converted = re.compile(r"\bnn\.(?:" + "|".join(sorted(table, key=len, reverse=True)) + r")\b")
    unreached = doc[doc.index("could not be reached"):].split("\n\n")[0]
    assert "functional" in unreached and not converted.search(unreached), unreached
    quickstart = (Path(__file__).resolve().parents[1] / "docs" / "quickstart.md").read_text()
    bullet = quickstart[quickstart.index("* `falign.convert("):].split("\n* ")[0]
    unreached = bullet[bullet.index("could not reach"):]
    assert "functional" in unreached and not converted.search(unreached), unreached


def test_converting_twice_raises() -> None:
    model = falign.convert(_net(), "fa")
    with pytest.raises(ValueError, match="already converted"):
        falign.convert(model, "kp")
    with pytest.raises(ValueError, match="already converted"):
        falign.convert(model, "fa", inplace=True)


def test_unknown_rule_suggests_the_nearest_name() -> None:
    with pytest.raises(falign.RuleError, match="did you mean 'fa'") as info:
        falign.convert(_net(), "fq")
    assert isinstance(info.value, ValueError)
    with pytest.raises(falign.RuleError, match="unknown rule"):
        falign.get_rule("zzzzzz")


def test_unknown_or_invalid_option_names_the_valid_ones() -> None:
    with pytest.raises(falign.RuleError) as info:
        falign.convert(_net(), "fa", sclae=0.1)
    msg = str(info.value)
    assert "sclae" in msg and "did you mean 'scale'" in msg
    assert all(opt in msg for opt in ("scale", "seed", "conv_feedback"))
    with pytest.raises(falign.RuleError, match="period"):
        falign.convert(_net(), "kp", period=3)
    with pytest.raises(falign.RuleError, match="kernel, dense"):
        falign.get_rule("fa", conv_feedback="toeplitz")
    with pytest.raises(falign.RuleError, match="fro, spectral"):
        falign.get_rule("usf_norm", norm="nuclear")
    with pytest.raises(falign.RuleError, match="positive"):
        falign.get_rule("fa", scale=-1.0)
    with pytest.raises(falign.RuleError, match="period"):
        falign.get_rule("sign_tracking", period=0)


def test_get_rule_accepts_names_classes_and_instances() -> None:
    rule = falign.get_rule("FA", scale=0.5)
    assert rule.name == "fa" and rule.scale == 0.5
    assert falign.get_rule(rule) is rule
    assert falign.get_rule(type(rule)).scale is None
    assert falign.get_rule(rule, seed=3).seed == 3 and rule.seed is None
    model = falign.convert(_net(), rule)
    assert model.head[0].rule.scale == 0.5 and model.head[0].feedback_std == 0.5


def test_a_model_without_convertible_layers_warns() -> None:
    with pytest.warns(ConversionWarning, match="no nn.Linear"):
        falign.convert(nn.Sequential(nn.ReLU()), "fa")


# --------------------------------------------------------------------------- 7. exact_backward


@pytest.mark.parametrize("rule", RULES)
def test_exact_backward_gives_backprop_and_restores_the_flags(rule) -> None:
    plain = _net()
    x = randn(2, 2, 6, 6, seed=1)
    model = falign.convert(plain, rule, example_input=x)  # rules that train a lazy B need it

    ref = _grads(plain, x)
    _grads(model, x)  # lazy B made, state advanced: exact must still be exact
    inside = _grads(model, x, exact=True)
    for a, b in zip(inside, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    layers = [m for _, m in falign.feedback_layers(model)]
    assert not any(m.exact for m in layers)
    after = _grads(model, x)
    if rule != "bp":
        assert not torch.allclose(after[1], ref[1])  # the rule is back


def test_exact_backward_restores_flags_after_an_exception_and_when_nested() -> None:
    model = falign.convert(_net(), "fa")
    layers = [m for _, m in falign.feedback_layers(model)]
    layers[1].exact = True  # a flag set by hand survives the block
    with pytest.raises(RuntimeError, match="boom"):
        with falign.exact_backward(model) as m:
            assert m is model and all(layer.exact for layer in layers)
            raise RuntimeError("boom")
    assert [layer.exact for layer in layers] == [False, True, False, False]
    with falign.exact_backward(model):
        with falign.exact_backward(model):
            pass
        assert all(layer.exact for layer in layers)
    assert [layer.exact for layer in layers] == [False, True, False, False]


# --------------------------------------------------------------------------- 9. tiny ResNet


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False, dtype=DT)
        self.bn1 = nn.BatchNorm2d(c, dtype=DT)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False, dtype=DT)
        self.bn2 = nn.BatchNorm2d(c, dtype=DT)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(h)))


class _TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False, dtype=DT),
                                  nn.BatchNorm2d(4, dtype=DT), nn.ReLU())
        self.blocks = nn.Sequential(_Block(4), _Block(4))
        self.fc = nn.Linear(4, 3, dtype=DT)

    def forward(self, x):
        h = self.blocks(self.stem(x))
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("rule,opts", [(r, {}) for r in RULES] + [("fa", {"conv_feedback": "dense"})],
                         ids=lambda v: str(v))
def test_tiny_resnet_trains_with_every_rule(rule, opts) -> None:
    torch.manual_seed(0)
    plain = _TinyResNet()
    model = falign.convert(plain, rule, example_input=randn(4, 3, 6, 6, seed=1), **opts)
    assert len(model.falign_conversion.converted) == 6 and not model.falign_conversion.unreachable
    x, y = randn(4, 3, 6, 6, seed=1), torch.tensor([0, 1, 2, 1])
    F.cross_entropy(plain(x), y).backward()
    falign.set_step(model, targets=y)  # the labels, for a rule that projects them
    F.cross_entropy(model(x), y).backward()
    names = [n for n, _ in plain.named_parameters()]
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    ref = dict(plain.named_parameters())
    got = dict(model.named_parameters())
    for n in set(got) - set(ref):  # a trained B: KP's receives its W's gradient
        assert falign.get_rule(rule).learned and n.endswith(".feedback"), n
        if falign.get_rule(rule).pathway == "kernel":
            torch.testing.assert_close(got[n].grad, got[n[: -len("feedback")] + "weight"].grad)
    early = ["stem.0.weight", "blocks.0.conv1.weight", "blocks.0.conv2.weight"]
    for n in names:
        same = torch.allclose(got[n].grad, ref[n].grad, rtol=1e-10, atol=1e-12)
        if rule == "bp" or n == "fc.bias" or n == "fc.weight":
            assert same, n  # bp everywhere; the last layer's local gradient is the true one
        elif n in early:
            assert not same, n
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
