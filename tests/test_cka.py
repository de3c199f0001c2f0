"""CKA: invariances, agreement with formulas written out independently, hooks and modes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from falign.analysis.cka import (
    CKAResult,
    MinibatchCKA,
    MinibatchCKAMatrix,
    cka_matrix,
    cka_subsets,
    hsic_unbiased,
    layer_activations,
    linear_cka,
    rbf_cka,
)


def _pair(n: int = 60, p: int = 12, q: int = 9, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    y = x @ torch.randn(p, q, generator=g, dtype=torch.float64)
    y = torch.tanh(y) + 0.7 * torch.randn(n, q, generator=g, dtype=torch.float64)
    return x, y


def _orthogonal(p: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # Haar-distributed orthogonal matrix


def _hsic_biased_numpy(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h)) / (n - 1) ** 2


def _cka_numpy(k: np.ndarray, l: np.ndarray) -> float:
    return _hsic_biased_numpy(k, l) / math.sqrt(_hsic_biased_numpy(k, k) * _hsic_biased_numpy(l, l))


# --------------------------------------------------------------------------- linear CKA


def test_linear_cka_of_a_representation_with_itself_is_one() -> None:
    x, _ = _pair()
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x).dtype == torch.float64


def test_linear_cka_is_invariant_to_orthogonal_maps_and_isotropic_scaling() -> None:
    x, y = _pair()
    base = linear_cka(x, y).item()
    assert 0.05 < base < 0.95  # a non-trivial value, so invariance is a real check
    qx, qy = _orthogonal(x.shape[1], 1), _orthogonal(y.shape[1], 2)
    assert linear_cka(x @ qx, y @ qy).item() == pytest.approx(base, abs=1e-10)
    assert linear_cka(3.7 * x, 0.02 * y).item() == pytest.approx(base, abs=1e-10)
    # Adding a constant per feature is removed by the centring.
    assert linear_cka(x + 5.0, y - 2.0).item() == pytest.approx(base, abs=1e-10)


def test_linear_cka_changes_under_non_isotropic_scaling() -> None:
    x, y = _pair()
    scale = torch.linspace(0.1, 10.0, x.shape[1], dtype=torch.float64)
    assert abs(linear_cka(x * scale, y).item() - linear_cka(x, y).item()) > 1e-2


def test_linear_cka_matches_centring_matrix_formula() -> None:
    x, y = _pair(n=40, p=7, q=11, seed=3)
    xn, yn = x.numpy(), y.numpy()
    expected = _cka_numpy(xn @ xn.T, yn @ yn.T)
    assert linear_cka(x, y).item() == pytest.approx(expected, rel=1e-10)


def test_linear_cka_flattens_and_accepts_float32() -> None:
    x, y = _pair(n=30, p=12, q=8, seed=4)
    expected = linear_cka(x, y).item()
    got = linear_cka(x.float().reshape(30, 3, 2, 2), y.float().reshape(30, 2, 4))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("n", "p", "q"), [(20, 5, 7), (15, 200, 300), (15, 4, 300)])
def test_gram_form_equals_feature_form(n: int, p: int, q: int) -> None:
    x, y = _pair(n=n, p=p, q=q, seed=5)
    feature = linear_cka(x, y, form="feature").item()
    assert linear_cka(x, y, form="gram").item() == pytest.approx(feature, rel=1e-10)
    assert linear_cka(x, y).item() == pytest.approx(feature, rel=1e-10)


def test_linear_cka_rejects_mismatched_examples() -> None:
    with pytest.raises(ValueError):
        linear_cka(torch.randn(10, 3), torch.randn(11, 3))


# --------------------------------------------------------------------------- RBF CKA


def test_rbf_cka_self_is_one_and_values_lie_in_unit_interval() -> None:
    x, y = _pair(n=50, seed=6)
    assert rbf_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)
    for frac in (0.2, 0.8, 2.0):
        value = rbf_cka(x, y, sigma_frac=frac).item()
        assert 0.0 <= value <= 1.0
    g = torch.Generator().manual_seed(7)
    unrelated = rbf_cka(x, torch.randn(50, 9, generator=g, dtype=torch.float64)).item()
    assert 0.0 <= unrelated < rbf_cka(x, y).item()


def test_rbf_cka_matches_explicit_kernel_and_centring_matrix() -> None:
    x, y = _pair(n=31, seed=8)

    def kernel(a: np.ndarray, frac: float) -> np.ndarray:
        n = a.shape[0]
        d = np.array([[np.linalg.norm(a[i] - a[j]) for j in range(n)] for i in range(n)])
        sigma = frac * np.median(d[np.triu_indices(n, 1)])
        return np.exp(-(d**2) / (2 * sigma**2))

    expected = _cka_numpy(kernel(x.numpy(), 0.8), kernel(y.numpy(), 0.8))
    assert rbf_cka(x, y).item() == pytest.approx(expected, rel=1e-9)
    # Orthogonal maps and isotropic scaling keep distances' ratios, hence RBF CKA too.
    q = _orthogonal(x.shape[1], 9)
    assert rbf_cka(2.5 * x @ q, y).item() == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------- unbiased HSIC


def _hsic_u_statistic(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. 2012: the U-statistic over ordered 4-tuples of distinct indices of
    k_ij l_ij + k_ij l_qr - 2 k_ij l_iq, the unbiased estimator of HSIC."""
    n = k.shape[0]
    total = 0.0
    count = 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
        count += 1
    assert count == n * (n - 1) * (n - 2) * (n - 3)
    return total / count


@pytest.mark.parametrize("n", [4, 6, 7])
def test_unbiased_hsic_equals_u_statistic_sum(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.randn(n, 5, generator=g, dtype=torch.float64) + x[:, :1]
    k, l = x @ x.T, torch.exp(-(torch.cdist(y, y) ** 2))
    expected = _hsic_u_statistic(k.numpy(), l.numpy())
    assert hsic_unbiased(k, l).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_unbiased_hsic_needs_four_examples() -> None:
    k = torch.eye(3)
    with pytest.raises(ValueError):
        hsic_unbiased(k, k)
    with pytest.raises(ValueError):
        MinibatchCKA().update(torch.randn(3, 2), torch.randn(3, 2))


def test_minibatch_cka_can_be_negative() -> None:
    values = []
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        cka = MinibatchCKA()
        cka.update(torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g))
        values.append(cka.compute().item())
    assert min(values) < 0.0  # not clamped


def test_minibatch_cka_converges_to_full_linear_cka() -> None:
    x, y = _pair(n=4000, p=20, q=15, seed=10)
    full = linear_cka(x, y).item()
    cka = MinibatchCKA()
    for xb, yb in zip(x.split(200), y.split(200), strict=True):
        cka.update(xb, yb)
    assert cka.num_batches == 20 and cka.num_examples == 4000
    assert abs(cka.compute().item() - full) < 0.02
    # One batch of 200 is an estimate too, but a rougher one is allowed to miss by more.
    one = MinibatchCKA()
    one.update(x[:200], y[:200])
    assert abs(one.compute().item() - full) < 0.2


def test_minibatch_matrix_matches_pairwise_estimators() -> None:
    g = torch.Generator().manual_seed(11)
    batches = [
        (
            [torch.randn(16, 5, generator=g), torch.randn(16, 2, 3, generator=g)],
            [torch.randn(16, 4, generator=g)],
        )
        for _ in range(3)
    ]
    matrix = MinibatchCKAMatrix(2, 1)
    pairs = [MinibatchCKA(), MinibatchCKA()]
    for acts_a, acts_b in batches:
        matrix.update(acts_a, acts_b)
        for i, single in enumerate(pairs):
            single.update(acts_a[i], acts_b[0])
    got = matrix.compute()
    assert got.shape == (2, 1)
    for i, single in enumerate(pairs):
        assert got[i, 0].item() == pytest.approx(single.compute().item(), rel=1e-10)


# --------------------------------------------------------------------------- models


class _Net(nn.Module):
    def __init__(self, seed: int, fail: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(8, 16)
        self.act1 = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(16, 12)
        self.act2 = nn.Tanh()
        self.out = nn.Linear(12, 3)
        self.unused = nn.Linear(2, 2)
        self.fail = fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act2(self.fc2(self.drop(self.act1(self.fc1(x)))))
        if self.fail:
            raise RuntimeError("boom")
        return self.out(h)


LAYERS = ["fc1", "act1", "fc2", "out"]


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def _eval_out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train()
    return out


def _inputs(n: int = 64, seed: int = 12) -> torch.Tensor:
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))


def test_cka_matrix_of_a_model_with_itself_has_unit_diagonal() -> None:
    a = _Net(0)
    a.train()
    a.fc2.eval()  # a mixed mode that must come back module by module
    before = {name: m.training for name, m in a.named_modules()}
    res = cka_matrix(a, a, _inputs(), LAYERS, LAYERS)
    assert isinstance(res, CKAResult)
    assert res.matrix.shape == (4, 4) and res.n == 64
    torch.testing.assert_close(res.diagonal(), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(res.matrix, res.matrix.T)
    assert _no_hooks(a)
    assert {name: m.training for name, m in a.named_modules()} == before


def test_cka_matrix_between_models_matches_linear_cka_on_activations() -> None:
    a, b = _Net(0), _Net(1)
    x = _inputs(50)
    res = cka_matrix(a, b, x, ["act1", "out"], ["fc1", "fc2", "out"], batch_size=16)
    with torch.no_grad():  # what eval mode computes: no dropout
        acts_a = {"act1": a.act1(a.fc1(x)), "out": _eval_out(a, x)}
        acts_b = {"fc1": b.fc1(x), "fc2": b.fc2(b.act1(b.fc1(x))), "out": _eval_out(b, x)}
    for i, la in enumerate(res.layers_a):
        for j, lb in enumerate(res.layers_b):
            expected = linear_cka(acts_a[la], acts_b[lb]).item()
            assert res.matrix[i, j].item() == pytest.approx(expected, rel=1e-5)
    assert _no_hooks(a) and _no_hooks(b)
    assert a.training and b.training  # nn.Module default, restored


def test_cka_matrix_accepts_batches_and_generators() -> None:
    a, b = _Net(0), _Net(1)
    x = _inputs(48)
    y = torch.zeros(48, dtype=torch.long)
    ref = cka_matrix(a, b, x, LAYERS, LAYERS)
    pairs = list(zip(x.split(12), y.split(12), strict=True))
    from_pairs = cka_matrix(a, b, pairs, LAYERS, LAYERS)
    from_gen = cka_matrix(a, b, (xb for xb in x.split(10)), LAYERS, LAYERS, kernel="rbf")
    torch.testing.assert_close(from_pairs.matrix, ref.matrix)
    assert from_gen.kernel == "rbf" and from_gen.n == 48
    assert torch.all((from_gen.matrix >= 0) & (from_gen.matrix <= 1 + 1e-9))


def test_layer_activations_shapes_and_cleanup() -> None:
    a = _Net(0)
    acts = layer_activations(a, _inputs(20), ["fc1", "out"], batch_size=7)
    assert acts["fc1"].shape == (20, 16) and acts["out"].shape == (20, 3)
    assert _no_hooks(a) and a.training


def test_activations_are_not_changed_by_later_in_place_ops() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=True))
    x = _inputs(20)
    acts = layer_activations(model, x, ["0"])
    with torch.no_grad():
        torch.testing.assert_close(acts["0"], model[0](x))
    assert (acts["0"] < 0).any()  # the ReLU that ran afterwards did not reach the copy


def test_cka_matrix_minibatch_is_close_to_exact() -> None:
    a, b = _Net(0), _Net(1)
    x = _inputs(1200)
    exact = cka_matrix(a, b, x, LAYERS, LAYERS)
    approx = cka_matrix(a, b, x, LAYERS, LAYERS, minibatch=True, batch_size=200)
    assert approx.minibatch and approx.n == 1200
    assert (approx.matrix - exact.matrix).abs().max().item() < 0.05


def test_hooks_removed_and_modes_restored_after_an_exception() -> None:
    good, other, bad = _Net(0), _Net(2), _Net(1, fail=True)
    with pytest.raises(RuntimeError, match="boom"):  # raised inside model B's forward
        cka_matrix(good, bad, _inputs(), LAYERS, LAYERS)
    with pytest.raises(RuntimeError, match="did not run"):  # a hooked layer that never runs
        cka_matrix(good, other, _inputs(), ["fc1"], ["fc1", "unused"])
    with pytest.raises(ValueError, match="no submodule"):  # A is hooked before B's name fails
        cka_matrix(good, bad, _inputs(), ["fc1"], ["no_such_layer"])
    for model in (good, other, bad):
        assert _no_hooks(model)
        assert all(m.training for m in model.modules())


def test_cka_subsets_partition_and_skip() -> None:
    a, b = _Net(0), _Net(1)
    x = _inputs(200)
    pred_a, pred_b = _eval_out(a, x).argmax(1), _eval_out(b, x).argmax(1)
    y = pred_a.clone()  # the reference is right ...
    y[:5] = (y[:5] + 1) % 3  # ... except on five examples
    res = cka_subsets(a, b, x, y, ["fc1", "out"], ["fc1", "out"])
    assert set(res) == {"all", "both_correct", "ref_correct_other_wrong"}
    assert res["all"].n == 200 and res["all"].skipped is None
    assert res["both_correct"].n == int(((pred_b == y) & (pred_a == y)).sum())
    assert res["ref_correct_other_wrong"].n == int((pred_b != y)[5:].sum())
    assert 4 <= res["ref_correct_other_wrong"].n < 195  # both subsets are non-trivial here
    # Every subset is smaller than the default minibatch (256): one minibatch of all of it, whose
    # HSIC_1 does not depend on the order of the examples.
    subset = x[5:][pred_b[5:] != y[5:]]
    layers = ["fc1", "out"]
    one_batch = cka_matrix(a, b, subset, layers, layers, minibatch=True, batch_size=len(subset))
    torch.testing.assert_close(res["ref_correct_other_wrong"].matrix, one_batch.matrix)
    full = cka_subsets(a, b, x, y, ["fc1", "out"], ["fc1", "out"], estimator="full")
    expected = cka_matrix(a, b, subset, ["fc1", "out"], ["fc1", "out"])
    torch.testing.assert_close(full["ref_correct_other_wrong"].matrix, expected.matrix)
    # A reference that is never right leaves two subsets empty: skipped, with a reason.
    res = cka_subsets(a, b, x, (pred_a + 1) % 3, ["fc1"], ["fc1"])
    assert res["both_correct"].n == 0 and "fewer than 4" in str(res["both_correct"].skipped)
    assert res["ref_correct_other_wrong"].skipped
    assert torch.isnan(res["both_correct"].matrix).all()
    assert _no_hooks(a) and _no_hooks(b) and a.training and b.training


# --------------------------------------------------------------------------- subsets of unequal size


class _Columns(nn.Module):
    """Passes on columns [lo, hi) of its input: a representation whose distribution we choose."""

    def __init__(self, lo: int, hi: int) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.lo : self.hi]


class _Mix(nn.Module):
    """tanh(2 h M) + 0.7 noise with a fixed M: a non-linear function of h plus independent noise."""

    def __init__(self, width: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(123)
        self.register_buffer("m", torch.randn(width, width, generator=g, dtype=torch.float64) / width**0.5)

    def forward(self, h: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return torch.tanh(2.0 * h @ self.m.to(h.dtype)) + 0.7 * noise


class _Probe(nn.Module):
    """Layers read chosen input columns: ``narrow`` [start, start + p), ``wide`` the q after it,
    and ``mixed`` = _Mix(narrow, the first p columns of wide), correlated with ``narrow``.

    The head ignores them: the reference always predicts class 0, the other predicts class 0
    where x[:, 0] > 0 and class 1 elsewhere, so x[:, 0] and y fix the subsets' sizes.
    """

    def __init__(self, start: int, widths: tuple[int, int], reference: bool) -> None:
        super().__init__()
        p, q = widths
        assert q >= p
        self.narrow = _Columns(start, start + p)
        self.wide = _Columns(start + p, start + p + q)
        self.mixed = _Mix(p)
        self.p = p
        self.reference = reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = self.wide(x)
        self.mixed(self.narrow(x), wide[:, : self.p])
        logits = torch.zeros(x.shape[0], 3, dtype=x.dtype)
        logits[:, 0] = 1.0 if self.reference else x[:, 0]
        return logits


SIZES = {"all": 2000, "both_correct": 500, "ref_correct_other_wrong": 100}


def _subset_data(width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x (2000, width) standard normal with x[:, 0] and y set so the subsets hold SIZES examples."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SIZES["all"], width, generator=g)
    n_both, n_rw = SIZES["both_correct"], SIZES["ref_correct_other_wrong"]
    x[:, 0] = -1.0
    x[:n_both, 0] = 1.0  # the other model agrees with the reference (class 0) here only
    y = torch.full((SIZES["all"],), 2)
    y[: n_both + n_rw] = 0  # both right on the first 500, only the reference on the next 100
    return x, y


def _null_bound(n: int, batch: int = 256) -> float:
    """Four standard deviations of minibatch CKA between independent representations, at most 0.05.

    For independent x, y the unbiased HSIC_1(K, L) of one batch of b has standard deviation
    about sqrt(2 HSIC(K, K) HSIC(L, L)) / b (its U-statistic is degenerate), so CKA's is
    sqrt(2) / b, divided by sqrt(k) for k batches. Measured over 40 seeds of this test's data:
    0.012-0.017 at n = 100 (one batch of 100), 0.004-0.006 at n = 500 (one of 256) and
    0.0020-0.0025 at n = 2000 (7 of 256), as predicted.
    """
    b = min(batch, n)
    k = n // b
    return min(0.05, 4 * math.sqrt(2) / (b * math.sqrt(k)))


def test_cka_subsets_independent_representations_score_zero_at_every_size() -> None:
    widths = (64, 4096)  # conv1's channels, and a layer with more features than examples
    x, y = _subset_data(1 + 2 * sum(widths))
    ref = _Probe(1, widths, reference=True)
    other = _Probe(1 + sum(widths), widths, reference=False)  # reads other, independent columns
    layers = ["narrow", "wide"]
    unbiased = cka_subsets(ref, other, x, y, layers, layers)
    biased = cka_subsets(ref, other, x, y, layers, layers, estimator="full")
    for key, size in SIZES.items():
        res = unbiased[key]
        assert res.estimator == "minibatch" and res.minibatch_size == min(256, size)
        assert res.n == size - size % min(256, size) and res.n + res.dropped == size
        assert res.matrix.abs().max().item() < _null_bound(size), (key, res.matrix)
        assert biased[key].estimator == "full" and biased[key].n == size and biased[key].dropped == 0
        # The biased estimator of independent representations with p and q features is about
        # sqrt(pq / ((n + p)(n + q))): 0.39 for 64 features at n = 100, 0.98 for 4096.
        p = torch.tensor([[a * b / ((size + a) * (size + b)) for b in widths] for a in widths]).sqrt()
        torch.testing.assert_close(biased[key].matrix, p.double(), atol=0.03, rtol=0.0)
    # It rises as n falls, far past the bound the unbiased estimate meets: the test can fail.
    for i, j in itertools.product(range(2), range(2)):
        values = [biased[key].matrix[i, j].item() for key in SIZES]  # n = 2000, 500, 100
        assert values[0] < values[1] < values[2]
    assert biased["ref_correct_other_wrong"].matrix[0, 0].item() > 0.3
    assert biased["all"].matrix[1, 1].item() > 0.6


def test_cka_subsets_value_of_correlated_representations_does_not_depend_on_n() -> None:
    x, y = _subset_data(1 + 2 * 64)
    ref, other = _Probe(1, (64, 64), reference=True), _Probe(1, (64, 64), reference=False)
    m = other.mixed.m.float()
    # The population value, another way: full-batch CKA on 50,000 fresh examples, whose upward
    # bias at 64 features is about 0.0003.
    big = torch.randn(50_000, 1 + 2 * 64, generator=torch.Generator().manual_seed(99))
    truth = linear_cka(big[:, 1:65], torch.tanh(2.0 * big[:, 1:65] @ m) + 0.7 * big[:, 65:129]).item()
    assert 0.3 < truth < 0.6  # neither trivial end
    unbiased = cka_subsets(ref, other, x, y, ["narrow"], ["mixed"])
    biased = cka_subsets(ref, other, x, y, ["narrow"], ["mixed"], estimator="full")
    # 0.05 is four standard deviations of the one-batch estimate at n = 100 (measured 0.012
    # over 40 seeds; 0.008 at n = 500 and 0.003 at n = 2000). Over those seeds the mean at each n
    # stayed within 0.001 of the truth, while the biased estimator's mean moved from 0.442
    # (n = 2000) to 0.485 (500) and 0.634 (100).
    values = {key: unbiased[key].matrix.item() for key in SIZES}
    for key, value in values.items():
        assert abs(value - truth) < 0.05, (key, value, truth)
    assert max(values.values()) - min(values.values()) < 0.05
    assert biased["ref_correct_other_wrong"].matrix.item() - truth > 0.15
    assert biased["all"].matrix.item() < biased["both_correct"].matrix.item()


def test_cka_subsets_minibatch_estimate_equals_hsic_u_statistics_of_seeded_batches() -> None:
    # all: 17 examples -> 3 minibatches of 5, 2 dropped; both_correct: 9 -> 1 of 5, 4 dropped;
    # ref_correct_other_wrong: 4 (< 5) -> one minibatch of all 4.
    n_all, n_both, n_rw, m, seed = 17, 9, 4, 5, 3
    x = torch.randn(n_all, 1 + 2 + 3, generator=torch.Generator().manual_seed(20), dtype=torch.float64)
    x[:, 0] = -1.0
    x[:n_both, 0] = 1.0
    y = torch.full((n_all,), 2)
    y[: n_both + n_rw] = 0
    ref, other = _Probe(1, (2, 3), reference=True), _Probe(1, (2, 3), reference=False)
    res = cka_subsets(ref, other, x, y, ["narrow", "wide"], ["mixed"], minibatch_size=m, seed=seed)
    xn = x.numpy()
    reps_a = [xn[:, 1:3], xn[:, 3:6]]
    rep_b = np.tanh(2.0 * xn[:, 1:3] @ other.mixed.m.numpy()) + 0.7 * xn[:, 3:5]
    rows = torch.arange(n_all)
    masks = {
        "all": rows >= 0,
        "both_correct": rows < n_both,
        "ref_correct_other_wrong": (rows >= n_both) & (rows < n_both + n_rw),
    }
    for key, mask in masks.items():
        idx = mask.nonzero().squeeze(1)
        count = len(idx)
        size = min(m, count)
        order = idx[torch.randperm(count, generator=torch.Generator().manual_seed(seed))]
        batches = order[: count - count % size].reshape(-1, size).numpy()  # the documented batches
        got = res[key]
        assert (got.n, got.dropped, got.minibatch_size) == (batches.size, count - batches.size, size)
        for i, rep_a in enumerate(reps_a):
            kl = kk = ll = 0.0
            for batch in batches:
                k = rep_a[batch] @ rep_a[batch].T  # linear kernels, not centred
                l = rep_b[batch] @ rep_b[batch].T
                kl += _hsic_u_statistic(k, l)
                kk += _hsic_u_statistic(k, k)
                ll += _hsic_u_statistic(l, l)
            expected = kl / math.sqrt(kk * ll)  # the 1/batches of the three means cancels
            assert got.matrix[i, 0].item() == pytest.approx(expected, rel=1e-9, abs=1e-12), key


def test_cka_subsets_reports_estimator_and_is_deterministic() -> None:
    a, b = _Net(0), _Net(1)
    x = _inputs(300)
    y = _eval_out(a, x).argmax(1)  # the reference is always right
    first = cka_subsets(a, b, x, y, ["fc1"], ["fc2"], minibatch_size=64)
    again = cka_subsets(a, b, x, y, ["fc1"], ["fc2"], minibatch_size=64)
    other_seed = cka_subsets(a, b, x, y, ["fc1"], ["fc2"], minibatch_size=64, seed=1)
    res = first["all"]
    assert (res.estimator, res.minibatch, res.minibatch_size, res.n, res.dropped) == (
        "minibatch",
        True,
        64,
        256,
        44,
    )
    torch.testing.assert_close(res.matrix, again["all"].matrix, rtol=0, atol=0)
    assert not torch.equal(res.matrix, other_seed["all"].matrix)  # another order, other batches
    assert abs(res.matrix.item() - other_seed["all"].matrix.item()) < 0.1
    full = cka_subsets(a, b, x, y, ["fc1"], ["fc2"], estimator="full")["all"]
    assert (full.estimator, full.minibatch_size, full.n, full.dropped) == ("full", None, 300, 0)
    with pytest.raises(ValueError, match="estimator"):
        cka_subsets(a, b, x, y, ["fc1"], ["fc2"], estimator="biased")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="linear only"):
        cka_subsets(a, b, x, y, ["fc1"], ["fc2"], kernel="rbf")
    with pytest.raises(ValueError, match="minibatch_size"):
        cka_subsets(a, b, x, y, ["fc1"], ["fc2"], minibatch_size=3)
    rbf = cka_subsets(a, b, x, y, ["fc1"], ["fc2"], estimator="full", kernel="rbf")["all"]
    assert rbf.kernel == "rbf" and 0.0 <= rbf.matrix.item() <= 1.0


def test_cka_matrix_minibatch_reports_its_batch_size() -> None:
    a, b = _Net(0), _Net(1)
    x = _inputs(100)
    assert cka_matrix(a, b, x, ["fc1"], ["fc1"], minibatch=True, batch_size=25).minibatch_size == 25
    uneven = cka_matrix(a, b, x, ["fc1"], ["fc1"], minibatch=True, batch_size=30)  # 30, 30, 40
    assert uneven.minibatch_size is None and uneven.n == 100
    with pytest.warns(UserWarning, match="skipped 2"):
        tail = cka_matrix(a, b, [x[:50], x[50:52]], ["fc1"], ["fc1"], minibatch=True)
    assert (tail.n, tail.dropped, tail.minibatch_size) == (50, 2, 50)
