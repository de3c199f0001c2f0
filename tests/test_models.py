"""Reference-model registry: shapes, parameter counts by formula, gradients, specs, errors."""

from __future__ import annotations

import importlib
import json
import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import falign.layers
from falign.models import (
    MLP,
    CharTransformer,
    CifarResNet,
    ModelError,
    PadShortcut,
    available_models,
    create_model,
    model_from_spec,
    model_summary,
    register_model,
)
from falign.models import registry as registry_module

# Captured at import, before any test monkeypatches a stand-in onto falign.layers.
REAL_CONVERT = getattr(falign.layers, "convert", None)
needs_convert = pytest.mark.skipif(REAL_CONVERT is None, reason="falign.layers.convert is not available yet")


# --- parameter counts written out by formula ---------------------------------------------


def conv(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # weight and bias; running stats are buffers


def resnet_params(depth: int, num_classes: int = 10, shortcut: str = "A") -> int:
    n = (depth - 2) // 6
    total = conv(3, 16, 3, bias=False) + bn(16)
    c_in = 16
    for planes in (16, 32, 64):
        for _ in range(n):
            total += conv(c_in, planes, 3, False) + bn(planes) + conv(planes, planes, 3, False)
            total += bn(planes)
            if shortcut == "B" and c_in != planes:
                total += conv(c_in, planes, 1, False) + bn(planes)
            c_in = planes
    return total + linear(64, num_classes)


def resnet18_params(num_classes: int = 1000) -> int:
    total = conv(3, 64, 7, bias=False) + bn(64)
    c_in = 64
    for planes in (64, 128, 256, 512):
        for _ in range(2):
            total += conv(c_in, planes, 3, False) + bn(planes) + conv(planes, planes, 3, False)
            total += bn(planes)
            if c_in != planes:  # projection shortcut (option B)
                total += conv(c_in, planes, 1, False) + bn(planes)
            c_in = planes
    return total + linear(512, num_classes)


ARCH1 = conv(3, 64, 5) + conv(64, 64, 5) + linear(576, 384) + linear(384, 192) + linear(192, 10)
LENET_MNIST = conv(1, 6, 5) + conv(6, 16, 5) + conv(16, 120, 5) + linear(120, 84) + linear(84, 10)
LENET_CIFAR = conv(3, 32, 3) + conv(32, 64, 3) + conv(64, 128, 3) + linear(128, 256) + linear(256, 10)

# (name, options, expected parameter count)
PARAM_CASES = [
    ("mlp", {}, linear(784, 1000) + linear(1000, 10)),
    ("mlp", {"sizes": [784, 200, 10], "activation": "tanh", "output": "sigmoid"}, 159010),
    ("mlp", {"sizes": [20, 30, 40, 5], "bias": False}, 20 * 30 + 30 * 40 + 40 * 5),
    ("arch1", {}, ARCH1),
    ("lenet", {"in_shape": (1, 32, 32)}, LENET_MNIST),
    ("lenet", {}, LENET_CIFAR),
    ("lenet", {"in_shape": (1, 32, 32), "variant": "cifar"}, LENET_CIFAR - 2 * 32 * 9),
    ("dkp_cnn", {}, conv(3, 32, 3) + bn(32) + conv(32, 32, 3) + bn(32) + linear(6272, 128) + linear(128, 10)),
    ("resnet20", {}, resnet_params(20)),
    ("resnet20", {"shortcut": "B"}, resnet_params(20, shortcut="B")),
    ("resnet56", {}, resnet_params(56)),
    ("resnet", {"depth": 8, "num_classes": 100}, resnet_params(8, num_classes=100)),
    ("resnet18", {}, resnet18_params()),
    ("resnet18", {"num_classes": 10, "in_shape": (3, 32, 32)}, resnet18_params(10)),
    # embeddings 84*16 + 8*16; a block: 2 LN (4*16), attention 4*(16*16+16), MLP 16*64+64+64*16+16;
    # ln_f 2*16; head 16*84+84
    ("char_transformer", {"dim": 16, "depth": 1, "heads": 2, "in_shape": (8,)},
     84 * 16 + 8 * 16 + 4 * 16 + 4 * (16 * 16 + 16) + 16 * 64 + 64 + 64 * 16 + 16 + 2 * 16 + 16 * 84 + 84),
    # patches 3*4*4*16+16, class token 16, positions (4+1)*16, a block (mlp_ratio 2) 4*16 +
    # 4*(16*16+16) + 16*32+32+32*16+16, ln_f 2*16, head 16*10+10
    ("vit", {"dim": 16, "depth": 1, "heads": 2, "in_shape": (3, 8, 8)},
     3 * 16 * 16 + 16 + 16 + 5 * 16 + 4 * 16 + 4 * (16 * 16 + 16) + 16 * 32 + 32 + 32 * 16 + 16 + 2 * 16
     + 16 * 10 + 10),
]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, options, expected", PARAM_CASES)
def test_parameter_count_matches_formula(name, options, expected):
    assert n_params(create_model(name, **options)) == expected


def test_every_registered_model_has_a_parameter_count_case():
    assert set(available_models()) == {case[0] for case in PARAM_CASES}


def test_published_counts():
    # Arch 1 written out; CIFAR ResNets: option A 0.27M / 0.85M (He et al. 2016, Table 6);
    # 272,474 is ResNet-20 with projection (option B) shortcuts, not option A.
    # The models equal these formulas (test_parameter_count_matches_formula).
    assert ARCH1 == 404_746
    assert resnet_params(20) == 269_722
    assert resnet_params(20, shortcut="B") == 272_474
    assert resnet_params(56) == 853_018
    assert resnet18_params() == 11_689_512  # torchvision's resnet18


# --- forward and backward over every registered model -------------------------------------


def _input(model: nn.Module, n: int = 3) -> torch.Tensor:
    if len(model.in_shape) == 1 and isinstance(model, CharTransformer):  # token ids
        return torch.randint(0, model.num_classes, (n, *model.in_shape))
    return torch.randn(n, *model.in_shape)


def _logits(out: torch.Tensor) -> torch.Tensor:
    """(N, K) logits; a language model's last position."""
    return out[:, -1] if out.dim() == 3 else out


# The ResNets pool globally, so a small input keeps these tests fast.
SMALL = {"resnet": (3, 8, 8), "resnet20": (3, 8, 8), "resnet56": (3, 8, 8), "vit": (3, 8, 8),
         "char_transformer": (8,), "resnet18": (3, 32, 32)}


@pytest.mark.parametrize("name", available_models())
def test_forward_shape(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_shape=SMALL.get(name))
    out = _logits(model(_input(model)))
    assert out.shape == (3, 7)
    assert model.num_classes == 7


@pytest.mark.parametrize("name", available_models())
def test_backward_gives_finite_grad_for_every_parameter(name):
    torch.manual_seed(0)
    model = create_model(name, in_shape=SMALL.get(name))
    x = _input(model)
    loss = nn.functional.cross_entropy(_logits(model(x)), torch.tensor([0, 1, 2]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_dkp_cnn_is_the_network_of_webster_choi_and_ahn():
    """Their ConvNetwork written out with functional ops: valid 3x3 convolutions, batch norm and
    ReLU after each, one 2x2 max-pool, FC 6272->128 + ReLU, 128->10."""
    model = create_model("dkp_cnn").train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    m = dict(model.named_modules())
    h = torch.relu(F.batch_norm(F.conv2d(x, m["conv1"].weight, m["conv1"].bias), None, None,
                                m["bn1"].weight, m["bn1"].bias, training=True))
    assert h.shape == (4, 32, 30, 30)
    h = torch.relu(F.batch_norm(F.conv2d(h, m["conv2"].weight, m["conv2"].bias), None, None,
                                m["bn2"].weight, m["bn2"].bias, training=True))
    assert h.shape == (4, 32, 28, 28)
    h = F.max_pool2d(h, 2).flatten(1)  # (4, 6272)
    h = torch.relu(h @ m["fc1"].weight.T + m["fc1"].bias)
    want = h @ m["fc2"].weight.T + m["fc2"].bias
    assert torch.allclose(model(x), want, atol=1e-5)


def test_expected_layer_names():
    arch1 = dict(create_model("arch1").named_modules())
    for key in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        assert key in arch1
    assert isinstance(arch1["conv1"], nn.Conv2d) and arch1["conv1"].padding == (0, 0)
    assert isinstance(arch1["fc1"], nn.Linear) and arch1["fc1"].in_features == 576

    mlp = dict(create_model("mlp", sizes=[10, 8, 6, 4]).named_modules())
    assert [k for k, m in mlp.items() if isinstance(m, nn.Linear)] == [
        "layers.0",
        "layers.1",
        "layers.2",
    ]
    assert isinstance(mlp["acts.0"], nn.ReLU) and isinstance(mlp["acts.1"], nn.ReLU)

    resnet = dict(create_model("resnet20").named_modules())
    assert isinstance(resnet["layer2.0.shortcut"], PadShortcut)
    assert isinstance(resnet["layer1.0.shortcut"], nn.Identity)
    assert isinstance(resnet["fc"], nn.Linear)


def test_mlp_flattens_any_input_and_applies_output():
    torch.manual_seed(0)
    model = create_model("mlp", in_shape=(1, 4, 5), sizes=[20, 6, 3], output="softmax")
    out = model(torch.randn(2, 1, 4, 5))
    assert out.shape == (2, 3)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2))

    model = create_model("mlp", sizes=[4, 3], activation="tanh", output="log_softmax")
    x = torch.randn(5, 4)
    expected = torch.log_softmax(x @ model.layers[0].weight.T + model.layers[0].bias, dim=1)
    torch.testing.assert_close(model(x), expected)

    model = create_model("mlp", sizes=[4, 3, 2], activation="tanh", output="sigmoid")
    w0, b0 = model.layers[0].weight, model.layers[0].bias
    w1, b1 = model.layers[1].weight, model.layers[1].bias
    expected = torch.sigmoid(torch.tanh(x @ w0.T + b0) @ w1.T + b1)
    torch.testing.assert_close(model(x), expected)


def test_mlp_default_sizes_follow_in_shape_and_num_classes():
    model = create_model("mlp", in_shape=(3, 8, 8), num_classes=5)
    assert model.sizes == [192, 1000, 5]


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(16, 32, stride=2)(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_lenet_variant_follows_channels():
    assert create_model("lenet", in_shape=(1, 32, 32)).variant == "mnist"
    assert create_model("lenet", in_shape=(3, 32, 32)).variant == "cifar"
    out = create_model("lenet", in_shape=(1, 32, 32))(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 10)


# --- initialisation -----------------------------------------------------------------------


def test_init_schemes():
    torch.manual_seed(0)
    w = create_model("mlp", init="default").layers[0].weight  # PyTorch: U(-1/sqrt(784), ...)
    assert w.abs().max() <= 1 / math.sqrt(784)

    layer = create_model("mlp", init="xavier").layers[0]
    assert layer.weight.abs().max() <= math.sqrt(6 / (784 + 1000))
    assert layer.weight.abs().max() > 0.9 * math.sqrt(6 / (784 + 1000))
    assert layer.bias.abs().sum() == 0

    w = create_model("mlp", init="kaiming").layers[0].weight  # N(0, 2 / fan_in)
    assert w.std().item() == pytest.approx(math.sqrt(2 / 784), rel=0.02)

    conv = create_model("resnet20").layer3[0].conv2  # resnet default: kaiming
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    conv = create_model("resnet20", init="xavier").layer3[0].conv2
    bound = math.sqrt(6 / (64 * 9 + 64 * 9))
    assert conv.weight.abs().max() <= bound
    assert conv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


# --- specs --------------------------------------------------------------------------------

SPEC_CASES = [(name, {}) for name in available_models()] + [
    ("mlp", {"sizes": (12, 7, 3), "activation": "leaky_relu", "output": "softmax"}),
    ("lenet", {"in_shape": (1, 32, 32), "num_classes": 4}),
    ("resnet", {"depth": 14, "shortcut": "B", "init": "xavier"}),
]


@pytest.mark.parametrize("name, options", SPEC_CASES)
def test_spec_round_trip(name, options):
    torch.manual_seed(0)
    model = create_model(name, **options)
    spec = model.falign_spec
    assert set(spec) == {"name", "rule", "rule_options", "num_classes", "in_shape", "options"}
    assert json.loads(json.dumps(spec)) == spec  # JSON-serialisable, canonical

    torch.manual_seed(0)
    rebuilt = model_from_spec(json.loads(json.dumps(spec)))
    assert rebuilt.falign_spec == spec
    a, b = model.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        torch.testing.assert_close(a[key], b[key])


def test_spec_records_arguments():
    model = create_model("mlp", in_shape=(1, 28, 28), sizes=(784, 50, 10), activation="tanh")
    spec = model.falign_spec
    assert spec["name"] == "mlp" and spec["rule"] is None and spec["rule_options"] is None
    assert spec["in_shape"] == [1, 28, 28] and spec["num_classes"] == 10
    assert spec["options"]["sizes"] == [784, 50, 10]
    assert spec["options"]["activation"] == "tanh"
    assert spec["options"]["init"] == "default"  # defaults are pinned too


def test_class_passes_through_and_rebuilds_from_spec():
    model = create_model(MLP, sizes=[4, 3, 2])
    assert type(model) is MLP
    assert model.falign_spec["name"] == "falign.models.mlp:MLP"
    rebuilt = model_from_spec(model.falign_spec)
    assert type(rebuilt) is MLP and rebuilt.sizes == [4, 3, 2]
    assert isinstance(create_model(CifarResNet, depth=8), CifarResNet)


def test_spec_refuses_imports_outside_the_contract():
    with pytest.raises(ModelError):
        model_from_spec({"name": "os:system", "options": {"command": "true"}})
    from falign.rules import RuleError

    with pytest.raises((ModelError, RuleError), match="os:system"):  # not a Rule subclass: refused
        model_from_spec({"name": "arch1", "rule": "os:system", "options": {}})


# --- registry -----------------------------------------------------------------------------


def test_register_model(monkeypatch):
    monkeypatch.setattr(registry_module, "_REGISTRY", registry_module._REGISTRY.copy())

    @register_model("tiny_test_net")
    def tiny(*, num_classes=None, in_shape=None, width: int = 3):
        return MLP([4, width, num_classes or 2])

    assert "tiny_test_net" in available_models()
    model = create_model("tiny_test_net", num_classes=5, width=6)
    assert model.sizes == [4, 6, 5]
    assert model.falign_spec["name"] == "tiny_test_net"
    with pytest.raises(ModelError, match="already registered"):
        register_model("tiny_test_net")(lambda **kw: MLP([2, 2]))


def _one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ModelError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    assert isinstance(info.value, ValueError)
    return message


def test_unknown_model_suggests_nearest():
    assert "'resnet20'" in _one_line_error(create_model, "resnet21")
    assert "did you mean 'lenet'" in _one_line_error(create_model, "lenett")
    assert "did you mean 'arch1'" in _one_line_error(create_model, "arch_1")
    assert "available" in _one_line_error(create_model, "vgg16")


def test_unknown_option_names_model_and_accepted_options():
    message = _one_line_error(create_model, "mlp", activaton="tanh")
    assert "'mlp'" in message and "'activaton'" in message
    assert "did you mean 'activation'" in message
    for option in ("activation", "bias", "init", "output", "sizes"):
        assert option in message
    message = _one_line_error(create_model, "arch1", depth=3)
    assert "'arch1'" in message and "init" in message


@pytest.mark.parametrize(
    "name, kwargs, fragment",
    [
        ("mlp", {"activation": "tan"}, "tanh"),
        ("mlp", {"output": "softmx"}, "softmax"),
        ("mlp", {"in_shape": (3, 32, 32), "sizes": [784, 10]}, "sizes[0]"),
        ("mlp", {"num_classes": 5, "sizes": [784, 10]}, "num_classes"),
        ("mlp", {"sizes": [784]}, "sizes"),
        ("mlp", {"sizes": "784"}, "sizes"),
        ("mlp", {"bias": "yes"}, "bias"),
        ("resnet", {"depth": 21}, "6n+2"),
        ("resnet20", {"shortcut": "C"}, "shortcut"),
        ("lenet", {"variant": "imagenet"}, "variant"),
        ("arch1", {"in_shape": (3, 8, 8)}, "too small"),
        ("lenet", {"in_shape": (1, 28, 28)}, "too small"),
        ("arch1", {"in_shape": (24, 24)}, "(C, H, W)"),
        ("arch1", {"num_classes": 0}, "num_classes"),
        ("arch1", {"in_shape": (3, -1, 24)}, "in_shape"),
        ("arch1", {"init": "he"}, "kaiming"),
        ("arch1", {"rule_options": {"scale": 0.1}}, "without a rule"),
    ],
)
def test_bad_options_are_one_line_model_errors(name, kwargs, fragment):
    assert fragment in _one_line_error(create_model, name, **kwargs)


def test_non_json_options_are_refused():
    _one_line_error(create_model, MLP, sizes=[4, 2], linear_layer=nn.Linear)


# --- summary ------------------------------------------------------------------------------


def test_mlp_summary_rows_and_total():
    model = create_model("mlp", sizes=[20, 30, 5], activation="tanh")
    model.train()
    text = model.summary()
    lines = text.splitlines()

    def row(name: str) -> list[str]:
        (line,) = [ln for ln in lines if ln.split()[:1] == [name]]
        return line.split()

    assert row("layers.0")[1] == "Linear" and row("layers.0")[-1] == f"{20 * 30 + 30:,}"
    assert "(N, 30)" in " ".join(row("layers.0"))
    assert row("acts.0")[1] == "Tanh" and row("acts.0")[-1] == "0"
    assert row("layers.1")[-1] == f"{30 * 5 + 5:,}" and "(N, 5)" in " ".join(row("layers.1"))
    assert f"Total params: {20 * 30 + 30 + 30 * 5 + 5:,}" in lines
    # the forward pass it runs leaves no trace
    assert model.training and all(m.training for m in model.modules())
    assert not any(m._forward_hooks for m in model.modules())


def test_default_mlp_summary_total():
    assert "Total params: 795,010" in create_model("mlp").summary()


def test_model_summary_of_a_cnn():
    model = create_model("arch1")
    text = model_summary(model)
    assert re.search(r"^fc1\s+Linear\s+\(N, 384\)\s+221,568$", text, re.MULTILINE)
    assert re.search(r"^pool2\s+MaxPool2d\s+\(N, 64, 3, 3\)\s+0$", text, re.MULTILINE)
    assert f"Total params: {ARCH1:,}" in text


# --- conversion ---------------------------------------------------------------------------


def test_rule_is_applied_through_convert(monkeypatch):
    calls = []

    def fake_convert(model, rule, inplace=False, example_input=None, **options):
        calls.append((rule, inplace, options))
        return model

    monkeypatch.setattr(falign.layers, "convert", fake_convert, raising=False)
    model = create_model("arch1", "fa", rule_options={"scale": 0.05})
    assert calls == [("fa", True, {"scale": 0.05})]
    assert model.falign_spec["rule"] == "fa"
    assert model.falign_spec["rule_options"] == {"scale": 0.05}
    model_from_spec(model.falign_spec)
    assert calls[-1] == ("fa", True, {"scale": 0.05})
    assert create_model("mlp").falign_spec["rule"] is None and len(calls) == 2


def _rule_names() -> list[str]:
    rules = importlib.import_module("falign.rules")
    names = getattr(rules, "rule_names", None) or getattr(rules, "available_rules", None)
    return list(names()) if callable(names) else ["fa"]


RULE_MODELS = [
    ("mlp", {"sizes": [12, 8, 4]}),
    ("arch1", {}),
    ("lenet", {"in_shape": (1, 32, 32)}),
    ("lenet", {}),
    ("resnet", {"depth": 8, "in_shape": (3, 8, 8)}),
]


@needs_convert
@pytest.mark.parametrize("rule", _rule_names())
@pytest.mark.parametrize("name, options", RULE_MODELS)
def test_converted_models_train_and_round_trip(name, options, rule):
    torch.manual_seed(0)
    model = create_model(name, rule, **options)
    assert model.falign_spec["rule"] == rule
    torch.manual_seed(0)
    rebuilt = model_from_spec(json.loads(json.dumps(model.falign_spec)))

    x = _input(model)
    for net in (model, rebuilt):  # the same forward, so lazily made buffers (DFA) exist in both
        out = net(x)
        assert _logits(out).shape == (3, model.num_classes)
        falign.layers.set_targets(net, torch.zeros(out.shape[:-1], dtype=torch.long))  # drtp's targets
        out.square().sum().backward()
        for pname, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    a, b = model.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert "Total params" in model_summary(model)


@needs_convert
def test_rule_instance_is_recorded_by_name_with_its_options():
    from falign.rules import get_rule

    rule = get_rule("fa", scale=0.25, seed=3)
    torch.manual_seed(0)
    model = create_model("mlp", rule, sizes=[6, 5, 4])
    spec = model.falign_spec
    assert spec["rule"] == "fa"
    assert spec["rule_options"]["scale"] == 0.25 and spec["rule_options"]["seed"] == 3
    torch.manual_seed(0)
    rebuilt = model_from_spec(json.loads(json.dumps(spec)))
    a, b = model.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert create_model("mlp", type(rule), sizes=[6, 5, 4]).falign_spec["rule"] == "fa"


# ------------------------------------------------------------------------ transformers


def test_char_transformer_and_vit_build_convert_and_train_a_step() -> None:
    from falign.models import create_model

    lm = create_model("char_transformer", rule="fa", num_classes=20, in_shape=(12,), dim=16, depth=2, heads=2)
    assert lm.falign_conversion.unreachable == []
    ids = torch.randint(0, 20, (3, 12))
    out = lm(ids)
    assert out.shape == (3, 12, 20)
    nn.functional.cross_entropy(out.reshape(-1, 20), ids.reshape(-1)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lm.parameters())
    vit = create_model("vit", rule="dfa", num_classes=10, in_shape=(3, 8, 8), patch=4, dim=16, depth=1,
                       heads=2)
    logits = vit(torch.randn(2, 3, 8, 8))
    assert logits.shape == (2, 10)
    nn.functional.cross_entropy(logits, torch.tensor([1, 2])).backward()
    assert vit.falign_conversion.unreachable == []  # the class token and positions: added, by shape


def test_char_transformer_is_causal() -> None:
    from falign.models import create_model

    torch.manual_seed(0)
    lm = create_model("char_transformer", num_classes=9, in_shape=(6,), dim=8, depth=1, heads=2, dropout=0.0)
    ids = torch.randint(0, 9, (1, 6))
    other = ids.clone()
    other[0, 4:] = (ids[0, 4:] + 1) % 9  # change the future
    assert torch.allclose(lm(ids)[0, :4], lm(other)[0, :4])
