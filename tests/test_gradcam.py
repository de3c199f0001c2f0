"""Grad-CAM and exemplars: agreement with autograd by hand and with closed forms, the two gradients
through a converted net, known activation orderings, hooks and modes on error, the exemplar grid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

import falign
from falign.analysis.gradcam import (
    ExemplarSet,
    channel_importance,
    exemplars,
    gradcam_map,
    top_activating,
    top_channels,
)
from falign.plots import plot_exemplar_grid

H = W = 6  # spatial size of every test activation (padding keeps it)


class TinyCNN(nn.Module):
    """conv -> relu -> conv -> relu -> global average pool -> linear."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=inplace)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 3)
        self.fail = False

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        if self.fail:
            raise RuntimeError("boom")
        return self.fc(self.pool(h).flatten(1))


def _model(seed: int = 0, inplace: bool = False) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN(inplace).double()


def _inputs(n: int = 7, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, H, W, generator=g, dtype=torch.float64)


def _by_hand(model: nn.Module, layer: str, x: Tensor, c: int) -> tuple[Tensor, Tensor]:
    """A (N, C, H, W) and alpha (N, C) for class c: forward hook + torch.autograd.grad."""
    store: list[Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _a, out: store.append(out))
    try:
        out = model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(out[:, c].sum(), store[0])
    return store[0].detach(), grad.mean((2, 3))


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_importance_and_map_equal_autograd_by_hand(layer: str) -> None:
    model, x = _model(), _inputs()
    for c in range(3):
        act, alpha = _by_hand(model, layer, x, c)
        got = channel_importance(model, layer, x, c, batch_size=3)  # 3 chunks: 3, 3, 1
        assert got.shape == (7, act.shape[1])
        torch.testing.assert_close(got, alpha, rtol=1e-12, atol=1e-14)
        cam = (alpha[:, :, None, None] * act).sum(1)  # (N, H, W)
        torch.testing.assert_close(gradcam_map(model, layer, x, c, batch_size=4), F.relu(cam))
        torch.testing.assert_close(gradcam_map(model, layer, x, c, relu=False), cam)
        up = gradcam_map(model, layer, x, c, upsample_to=(12, 9))
        expected = F.interpolate(F.relu(cam)[:, None], size=(12, 9), mode="bilinear", align_corners=False)
        torch.testing.assert_close(up, expected[:, 0])


def test_per_example_and_predicted_targets() -> None:
    model, x = _model(), _inputs()
    with torch.no_grad():  # class c reads one pooled channel, centred: predictions vary with x
        pooled = model.pool(model.relu2(model.conv2(model.relu1(model.conv1(x))))).flatten(1)
        model.fc.weight.zero_()
        model.fc.weight[[0, 1, 2], [1, 4, 3]] = 1.0
        model.fc.bias.copy_(-pooled.mean(0)[[1, 4, 3]])
    y = torch.tensor([2, 0, 1, 1, 0, 2, 2])
    per_class = torch.stack([channel_importance(model, "conv2", x, c) for c in range(3)])  # (3, N, C)
    rows = torch.arange(7)
    torch.testing.assert_close(channel_importance(model, "conv2", x, y), per_class[y, rows])
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert len(set(pred.tolist())) > 1  # the default differs from any single class
    torch.testing.assert_close(channel_importance(model, "conv2", x), per_class[pred, rows])
    torch.testing.assert_close(gradcam_map(model, "conv2", x, None), gradcam_map(model, "conv2", x, pred))


def test_layer_under_pool_and_head_has_alpha_w_over_hw() -> None:
    """A after the last ReLU feeds mean-pool then fc: dy_c/dA_k(i,j) = W[c, k] / (H W) for every
    example; through FA the feedback signal puts B[c, k] there instead, through DFA B[k, c]."""
    model, x = _model(), _inputs()
    for c in range(3):
        expected = (model.fc.weight[c] / (H * W)).detach().expand(7, -1)
        torch.testing.assert_close(channel_importance(model, "relu2", x, c), expected)
    fa = falign.convert(model, "fa")
    dfa = falign.convert(model, "dfa")
    for c in range(3):
        true = (model.fc.weight[c] / (H * W)).detach().expand(7, -1)
        torch.testing.assert_close(channel_importance(fa, "relu2", x, c, gradient="true"), true)
        torch.testing.assert_close(channel_importance(dfa, "relu2", x, c, gradient="true"), true)
        fa_signal = channel_importance(fa, "relu2", x, c, gradient="feedback")
        torch.testing.assert_close(fa_signal, (fa.fc.effective_feedback()[c] / (H * W)).expand(7, -1))
        dfa_signal = channel_importance(dfa, "relu2", x, c, gradient="feedback")
        torch.testing.assert_close(dfa_signal, (dfa.fc.effective_feedback()[:, c] / (H * W)).expand(7, -1))


@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_fa_feedback_differs_and_true_equals_plain(layer: str) -> None:
    model, x = _model(), _inputs()
    y = torch.tensor([2, 0, 1, 1, 0, 2, 2])
    fa = falign.convert(model, "fa")
    plain = channel_importance(model, layer, x, y)
    true = channel_importance(fa, layer, x, y, gradient="true")
    feedback = channel_importance(fa, layer, x, y, gradient="feedback")
    assert torch.equal(true, plain)
    assert (feedback - true).abs().max() > 0.05 * true.abs().max()
    assert torch.equal(gradcam_map(fa, layer, x, y, gradient="true"), gradcam_map(model, layer, x, y))
    signal_map = gradcam_map(fa, layer, x, y, gradient="feedback")
    assert not torch.allclose(signal_map, gradcam_map(model, layer, x, y))
    # exact_backward was left: autograd through fa is the rule's signal again
    assert all(not m.exact for _, m in falign.feedback_layers(fa))
    _, by_hand_signal = _by_hand(fa.eval(), layer, x, 1)
    torch.testing.assert_close(channel_importance(fa, layer, x, 1, gradient="feedback"), by_hand_signal)


def test_inplace_relu_after_the_layer_changes_nothing() -> None:
    x = _inputs()
    plain, inplace = _model(), _model(inplace=True)
    for layer in ("conv1", "conv2"):
        expected = channel_importance(plain, layer, x, 0)
        torch.testing.assert_close(channel_importance(inplace, layer, x, 0), expected)
        torch.testing.assert_close(gradcam_map(inplace, layer, x, 0), gradcam_map(plain, layer, x, 0))


class Copier(nn.Module):
    """1x1 conv with identity weights: channel j of the output is input channel j."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3)[:, :, None, None])
        self.relu = nn.ReLU(inplace=True)  # must not leak into the recorded activation
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


def test_top_activating_follows_the_known_channel_means() -> None:
    g = torch.Generator().manual_seed(3)
    scale = torch.randn(12, 3, generator=g)  # (N, channel) distinct, half negative
    pattern = torch.randn(12, 3, 5, 5, generator=g)
    pattern = pattern - pattern.mean((2, 3), keepdim=True)  # zero spatial mean
    x = scale[:, :, None, None] + 0.3 * pattern  # mean activation of channel j on example i: scale[i, j]
    model = Copier()
    got = top_activating(model, "conv", x, [2, 0], n=12, batch_size=5)
    assert list(got) == [2, 0]
    for j in (2, 0):
        assert got[j].tolist() == torch.argsort(scale[:, j], descending=True).tolist()
    few = top_activating(model, "conv", x, [1], n=4)
    assert few[1].tolist() == torch.argsort(scale[:, 1], descending=True)[:4].tolist()
    with pytest.raises(ValueError, match="out of range"):
        top_activating(model, "conv", x, [3])
    with pytest.raises(ValueError, match="n must"):
        top_activating(model, "conv", x, [0], n=13)


def test_top_channels_ranks_class_means() -> None:
    model = _model()
    x = _inputs(n=20, seed=4)
    y = torch.tensor([0, 2] * 10)  # class 1 absent
    importance = channel_importance(model, "conv2", x, y)
    ranking = top_channels(model, "conv2", x, y, k=3, label="BP")
    assert ranking.layer == "conv2" and ranking.method == "BP"
    assert set(ranking.per_class) == {0, 2}
    assert ranking.mean_importance.shape == (3, 5)
    assert torch.isnan(ranking.mean_importance[1]).all()
    for c, ids in ranking.per_class.items():
        mean = importance[y == c].mean(0)
        torch.testing.assert_close(ranking.mean_importance[c], mean)
        assert len(ids) == 3 and len(set(ids)) == 3
        values = mean[ids]
        assert (values[:-1] >= values[1:]).all()
        rest = [i for i in range(5) if i not in ids]
        assert values.min() >= mean[rest].max()
    assert top_channels(model, "conv2", x, y, k=1, gradient="true").method == "Grad-CAM (true gradient)"
    with pytest.raises(ValueError, match="k must"):
        top_channels(model, "conv2", x, y, k=6)


def test_exemplars_pick_top_abs_channels_and_their_images() -> None:
    model = _model()
    x = _inputs(n=15, seed=5)
    y = torch.arange(15) % 3
    result = exemplars(model, "conv2", x, y, k=2, n=4, label="FA")
    score = channel_importance(model, "conv2", x, y).abs().mean(0)
    assert result.channels == torch.argsort(score, descending=True)[:2].tolist()
    assert result.method == "FA" and result.layer == "conv2"
    direct = top_activating(model, "conv2", x, result.channels, n=4)
    for c in result.channels:
        assert torch.equal(result.indices[c], direct[c])
        assert torch.equal(result.images[c], x[direct[c]])


def test_hooks_removed_and_modes_restored_on_error() -> None:
    model = falign.convert(_model(), "fa")
    x = _inputs()
    model.train()
    model.relu1.eval()  # mixed modes come back per module
    modes = {name: m.training for name, m in model.named_modules()}

    def check() -> None:
        assert _no_hooks(model)
        assert {name: m.training for name, m in model.named_modules()} == modes
        assert all(not m.exact for _, m in falign.feedback_layers(model))

    with pytest.raises(ValueError, match="nearby names") as info:
        channel_importance(model, "conv3", x, 0)
    assert "\n" not in str(info.value) and "'conv1'" in str(info.value) and "'conv2'" in str(info.value)
    for call in (gradcam_map, top_channels, exemplars):
        with pytest.raises(ValueError, match="nearby names"):
            call(model, "conv3", x, torch.zeros(7, dtype=torch.long))
    with pytest.raises(ValueError, match="nearby names"):
        top_activating(model, "conv3", x, [0])
    check()
    with pytest.raises(ValueError, match="gradient must"):
        channel_importance(model, "conv1", x, 0, gradient="approx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target classes"):
        channel_importance(model, "conv1", x, 3)
    check()
    model.fail = True  # raises inside the forward, after the hooked layer ran
    for gradient in ("true", "feedback"):
        with pytest.raises(RuntimeError, match="boom"):
            channel_importance(model, "conv1", x, 0, gradient=gradient)
        with pytest.raises(RuntimeError, match="boom"):
            gradcam_map(model, "conv1", x, 0, gradient=gradient)
    with pytest.raises(RuntimeError, match="boom"):
        top_activating(model, "conv1", x, [0], n=2)
    check()
    model.fail = False
    channel_importance(model, "conv1", x, 0)
    top_activating(model, "conv1", x, [0], n=2)
    check()


def test_import_stays_light() -> None:
    code = (
        "import sys, falign.analysis.gradcam, falign.plots.exemplars; "
        "assert 'captum' not in sys.modules and 'matplotlib' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plot_exemplar_grid_writes_png_and_pdf(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(6)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    rgb = ExemplarSet(
        "conv2", "BP", [4, 1],
        {4: torch.arange(5), 1: torch.arange(5)},
        {4: torch.randn(5, 3, 8, 8, generator=g), 1: torch.randn(5, 3, 8, 8, generator=g)},
    )
    short = ExemplarSet(
        "conv2", "FA (feedback gradient)", [0, 2, 3],
        {c: torch.arange(3) for c in (0, 2, 3)},
        {c: torch.randn(3, 3, 8, 8, generator=g) for c in (0, 2, 3)},
    )
    stem = tmp_path / "figs" / "exemplars"
    paths = plot_exemplar_grid({"BP": rgb, "FA": short}, stem, mean=mean, std=std)
    assert paths == [stem.parent / "exemplars.png", stem.parent / "exemplars.pdf"]
    png, pdf = paths
    assert png.stat().st_size > 1000 and pdf.stat().st_size > 1000
    assert pdf.read_bytes().startswith(b"%PDF")
    with Image.open(png) as image:
        image.load()
        assert image.size[0] > 300 and image.size[1] > 300
    grey = ExemplarSet("conv1", "BP", [0], {0: torch.arange(2)}, {0: torch.rand(2, 1, 8, 8, generator=g)})
    grey_paths = plot_exemplar_grid({"BP": grey}, tmp_path / "grey.png", title="")
    assert all(p.stat().st_size > 500 for p in grey_paths)
    bad = ExemplarSet("conv1", "BP", [0], {0: torch.arange(2)}, {0: torch.rand(2, 2, 8, 8, generator=g)})
    with pytest.raises(ValueError, match="1 or 3"):
        plot_exemplar_grid({"BP": bad}, tmp_path / "bad")
