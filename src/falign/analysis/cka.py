"""Centred kernel alignment (CKA) between layer representations.

Linear and RBF CKA follow Kornblith et al. 2019, "Similarity of Neural Network Representations
Revisited". The minibatch estimator follows Nguyen et al. 2021, "Do Wide and Deep Networks Learn
the Same Things?": it averages the unbiased HSIC_1 of Song et al. 2012 over minibatches, so
memory does not grow with the number of examples. The subset analysis is that of Lance & Kieu
2026 (all test images, both models correct, reference correct and other wrong).

Why `cka_subsets` uses the unbiased minibatch estimator by default: the full-batch estimator
HSIC_0 = tr(KHLH) / (n-1)^2 carries a positive bias of order tr(K) tr(L) / n^3 that does not
cancel in the ratio, so for independent representations with p and q features its CKA is about
sqrt(pq / ((n + p)(n + q))) and rises towards 1 as n falls (64 features: 0.39 at n = 100, 0.03
at n = 2000; 4096 features: 0.98 and 0.67). The three subsets have different sizes, so their
full-batch values are not comparable. HSIC_1 is unbiased at every n >= 4; averaged over
minibatches of one fixed size its expectation does not depend on how many examples a subset has
(independent representations score about 0, and the estimate can be negative). The full-batch
estimator stays selectable (``estimator="full"``) for comparisons at equal n.

Everything here returns tensors or dataclasses; nothing is written to disk.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from itertools import chain
from typing import Literal

import torch
from torch import Tensor, nn

from ..layers.scope import capture, eval_mode

__all__ = [
    "DEFAULT_MINIBATCH_SIZE",
    "CKAResult",
    "MinibatchCKA",
    "MinibatchCKAMatrix",
    "cka_matrix",
    "cka_subsets",
    "hsic_unbiased",
    "layer_activations",
    "linear_cka",
    "rbf_cka",
]

Kernel = Literal["linear", "rbf"]
# "minibatch": mean unbiased HSIC_1 over minibatches (Nguyen et al. 2021); "full": biased HSIC_0
# on all examples at once (Kornblith et al. 2019).
Estimator = Literal["minibatch", "full"]
# A tensor of inputs (n, ...), or an iterable of batches: x tensors or (x, y, ...) tuples.
Inputs = Tensor | Iterable[Tensor | Sequence[Tensor]]

_MIN_UNBIASED_N = 4
DEFAULT_MINIBATCH_SIZE = 256  # examples per minibatch of `cka_subsets`' default estimator


# --------------------------------------------------------------------------- kernels and HSIC


def _as_features(x: Tensor) -> Tensor:
    """(n, ...) -> (n, features) in float64."""
    if x.dim() < 1:
        raise ValueError("a representation needs a leading example dimension (n, ...)")
    return x.detach().reshape(x.shape[0], -1).to(torch.float64)


def _check_same_n(x: Tensor, y: Tensor, minimum: int = 2) -> int:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y hold different numbers of examples: {x.shape[0]} vs {y.shape[0]}")
    if x.shape[0] < minimum:
        raise ValueError(f"CKA needs at least {minimum} examples, got {x.shape[0]}")
    return x.shape[0]


def _centre_gram(k: Tensor) -> Tensor:
    """H K H with H = I - 11^T/n, without forming H."""
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def _median(values: Tensor) -> Tensor:
    """Median that averages the two middle values (numpy's convention); works on large inputs."""
    m = values.numel()
    lo = torch.kthvalue(values, (m + 1) // 2).values
    if m % 2:
        return lo
    return (lo + torch.kthvalue(values, m // 2 + 1).values) / 2


def _sq_distances(x: Tensor) -> Tensor:
    """(n, p) -> (n, n) squared Euclidean distances, clamped at 0."""
    sq_norms = x.square().sum(1)
    d2 = sq_norms[:, None] + sq_norms[None, :] - 2.0 * (x @ x.T)
    d2.fill_diagonal_(0.0)
    return d2.clamp_min_(0.0)


def _rbf_gram(x: Tensor, sigma_frac: float) -> Tensor:
    """RBF kernel exp(-d^2 / (2 sigma^2)), sigma = sigma_frac * median pairwise distance.

    The median is over distinct pairs i < j. (Kornblith's reference code takes the median of the
    squared distances over the full n x n matrix, zeros on the diagonal included; that shifts the
    bandwidth slightly for small n.)
    """
    if sigma_frac <= 0:
        raise ValueError(f"sigma_frac must be positive, got {sigma_frac}")
    d2 = _sq_distances(x)
    n = d2.shape[0]
    iu = torch.triu_indices(n, n, offset=1, device=d2.device)
    sigma = sigma_frac * _median(d2[iu[0], iu[1]].sqrt())
    # sigma == 0 (all examples identical) gives NaN downstream, like any zero-variance input.
    return torch.exp(-d2 / (2.0 * sigma**2))


def _zero_diag(k: Tensor) -> Tensor:
    """(..., n, n) -> copy with a zero diagonal."""
    k = k.clone()
    k.diagonal(dim1=-2, dim2=-1).zero_()
    return k


def _hsic1_pairs(ks: Tensor, ls: Tensor) -> Tensor:
    """Unbiased HSIC_1 for every pair of kernels: (a, n, n), (b, n, n) -> (a, b).

    Song et al. 2012, eq. (5), with K~, L~ the kernels with zeroed diagonals:
    [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)).
    """
    n = ks.shape[-1]
    if n < _MIN_UNBIASED_N:
        raise ValueError(f"unbiased HSIC needs n >= {_MIN_UNBIASED_N} examples, got {n}")
    kt = _zero_diag(ks)
    lt = _zero_diag(ls)
    rk = kt.sum(-1)  # (a, n) row sums K~1
    rl = lt.sum(-1)  # (b, n)
    trace_kl = kt.flatten(1) @ lt.flatten(1).T  # (a, b) tr(K~ L~) for symmetric kernels
    sums = torch.outer(rk.sum(1), rl.sum(1)) / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * (rk @ rl.T)  # 1'K~L~1 = (K~1).(L~1) for symmetric K~
    return (trace_kl + sums - cross) / (n * (n - 3))


def hsic_unbiased(k: Tensor, l: Tensor) -> Tensor:
    """Unbiased HSIC_1 of Song et al. 2012 between two symmetric (n, n) kernel matrices.

    Returns a float64 scalar tensor; it can be negative. Raises ValueError for n < 4.
    """
    if k.dim() != 2 or k.shape[0] != k.shape[1] or k.shape != l.shape:
        raise ValueError(f"need two square kernels of the same size, got {tuple(k.shape)}, {tuple(l.shape)}")
    k64 = k.detach().to(torch.float64)
    l64 = l.detach().to(device=k.device, dtype=torch.float64)
    return _hsic1_pairs(k64[None], l64[None])[0, 0]


# --------------------------------------------------------------------------- full-batch CKA


class _LinearRep:
    """One centred representation held in the cheaper form for linear CKA.

    Feature form keeps X (n, p) and uses ||Y^T X||_F^2; Gram form keeps K = X X^T (n, n) and uses
    tr(K L) = ||Y^T X||_F^2. ``self_norm`` is ||X^T X||_F = ||X X^T||_F.
    """

    def __init__(self, x: Tensor, form: Literal["auto", "feature", "gram"] = "auto") -> None:
        x = _as_features(x)
        x = x - x.mean(0, keepdim=True)
        n, p = x.shape
        use_gram = form == "gram" or (form == "auto" and p > n)
        self.feat: Tensor | None = None if use_gram else x
        self.gram: Tensor | None = x @ x.T if use_gram else None
        if self.gram is not None:
            self.self_norm = torch.linalg.matrix_norm(self.gram)
        else:
            self.self_norm = torch.linalg.matrix_norm(x.T @ x)

    def cross(self, other: _LinearRep) -> Tensor:
        """||Y^T X||_F^2 with X = self, Y = other."""
        if self.feat is not None and other.feat is not None:
            return (other.feat.T @ self.feat).square().sum()
        if self.gram is not None and other.gram is not None:
            return (self.gram * other.gram).sum()
        feat, gram = (self.feat, other.gram) if self.feat is not None else (other.feat, self.gram)
        assert feat is not None and gram is not None
        return (feat * (gram @ feat)).sum()  # tr(X^T L X)


def linear_cka(x: Tensor, y: Tensor, *, form: Literal["auto", "feature", "gram"] = "auto") -> Tensor:
    """Linear CKA (Kornblith et al. 2019) between x (n, ...) and y (n, ...), float64 scalar.

    Inputs are flattened from dim 1 and column-centred; CKA = ||Y^T X||_F^2 /
    (||X^T X||_F ||Y^T Y||_F). ``form="auto"`` uses the Gram form (n x n) for a representation
    with more features than examples; "feature" and "gram" force one form (same value).
    A representation with zero variance gives NaN.
    """
    _check_same_n(x, y)
    rx, ry = _LinearRep(x, form), _LinearRep(y, form)
    return rx.cross(ry) / (rx.self_norm * ry.self_norm)


def _rbf_rep(x: Tensor, sigma_frac: float) -> tuple[Tensor, Tensor]:
    kc = _centre_gram(_rbf_gram(_as_features(x), sigma_frac))
    return kc, torch.linalg.matrix_norm(kc)


def rbf_cka(x: Tensor, y: Tensor, sigma_frac: float = 0.8) -> Tensor:
    """RBF-kernel CKA (Kornblith et al. 2019), float64 scalar in [0, 1].

    sigma = sigma_frac * median pairwise Euclidean distance, per representation;
    CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with HSIC(K, L) = tr(K H L H) / (n-1)^2.
    """
    _check_same_n(x, y)
    kc, kn = _rbf_rep(x, sigma_frac)
    lc, ln = _rbf_rep(y, sigma_frac)
    return (kc * lc).sum() / (kn * ln)


# --------------------------------------------------------------------------- minibatch CKA


def _linear_grams(acts: Sequence[Tensor], device: torch.device) -> Tensor:
    """Layer activations, each (n, ...) -> stacked linear kernels (layers, n, n) in float64."""
    feats = [_as_features(a.to(device)) for a in acts]
    return torch.stack([f @ f.T for f in feats])


class MinibatchCKAMatrix:
    """Minibatch linear CKA between every layer of A and every layer of B (Nguyen et al. 2021).

    Each ``update`` takes one minibatch of activations for all layers (the same examples in the
    same order for A and B) and adds HSIC_1(K_i, L_j), HSIC_1(K_i, K_i), HSIC_1(L_j, L_j);
    ``compute`` returns mean HSIC_1(K, L) / sqrt(mean HSIC_1(K, K) mean HSIC_1(L, L)) as a
    (layers_a, layers_b) float64 matrix. Batches are weighted equally. Because HSIC_1 is
    unbiased, the estimate can be slightly negative for unrelated representations.
    """

    def __init__(self, num_layers_a: int, num_layers_b: int) -> None:
        self.num_layers_a = num_layers_a
        self.num_layers_b = num_layers_b
        self.reset()

    def reset(self) -> None:
        self._kl = torch.zeros(self.num_layers_a, self.num_layers_b, dtype=torch.float64)
        self._kk = torch.zeros(self.num_layers_a, dtype=torch.float64)
        self._ll = torch.zeros(self.num_layers_b, dtype=torch.float64)
        self.num_batches = 0
        self.num_examples = 0

    def update(self, acts_a: Sequence[Tensor], acts_b: Sequence[Tensor]) -> None:
        """Add one minibatch: ``acts_a[i]`` (n, ...) for layer i of A, ``acts_b[j]`` likewise."""
        if len(acts_a) != self.num_layers_a or len(acts_b) != self.num_layers_b:
            raise ValueError(
                f"expected {self.num_layers_a} and {self.num_layers_b} layers, "
                f"got {len(acts_a)} and {len(acts_b)}"
            )
        ns = {a.shape[0] for a in chain(acts_a, acts_b)}
        if len(ns) != 1:
            raise ValueError(f"all activations of a minibatch need the same n, got {sorted(ns)}")
        n = ns.pop()
        if n < _MIN_UNBIASED_N:
            raise ValueError(f"minibatch CKA needs batches of n >= {_MIN_UNBIASED_N}, got {n}")
        device = acts_a[0].device
        ks = _linear_grams(acts_a, device)  # (a, n, n)
        ls = _linear_grams(acts_b, device)  # (b, n, n)
        self._kl += _hsic1_pairs(ks, ls).cpu()
        self._kk += torch.diagonal(_hsic1_pairs(ks, ks)).cpu()
        self._ll += torch.diagonal(_hsic1_pairs(ls, ls)).cpu()
        self.num_batches += 1
        self.num_examples += n

    def compute(self) -> Tensor:
        if self.num_batches == 0:
            raise RuntimeError("compute() called before any update()")
        # The 1/num_batches of the three means cancels.
        return self._kl / torch.sqrt(torch.outer(self._kk, self._ll))


class MinibatchCKA:
    """Minibatch linear CKA between two representations; see `MinibatchCKAMatrix`."""

    def __init__(self) -> None:
        self._matrix = MinibatchCKAMatrix(1, 1)

    def reset(self) -> None:
        self._matrix.reset()

    @property
    def num_batches(self) -> int:
        return self._matrix.num_batches

    @property
    def num_examples(self) -> int:
        return self._matrix.num_examples

    def update(self, x_batch: Tensor, y_batch: Tensor) -> None:
        self._matrix.update([x_batch], [y_batch])

    def compute(self) -> Tensor:
        return self._matrix.compute()[0, 0]


# --------------------------------------------------------------------------- model activations


@dataclass
class CKAResult:
    """CKA between layers of two models: ``matrix[i, j]`` compares layers_a[i] with layers_b[j].

    ``minibatch`` says which estimator made it (see `estimator`); for the minibatch estimator
    ``minibatch_size`` is the number of examples in every minibatch (None if they differed) and
    ``dropped`` the examples left out (a final partial minibatch, or batches of fewer than 4).
    ``skipped`` says why nothing was computed (then ``matrix`` is all NaN).
    """

    matrix: Tensor  # (len(layers_a), len(layers_b)) float64
    layers_a: list[str]
    layers_b: list[str]
    n: int  # examples used
    kernel: str = "linear"
    minibatch: bool = False
    skipped: str | None = None
    minibatch_size: int | None = None
    dropped: int = 0

    @property
    def estimator(self) -> Estimator:
        """The estimator: "minibatch" (mean unbiased HSIC_1 over minibatches) or "full" (biased)."""
        return "minibatch" if self.minibatch else "full"

    def diagonal(self) -> Tensor:
        """CKA of layers_a[i] with layers_b[i] (for models of the same architecture)."""
        return torch.diagonal(self.matrix)


def _model_device(model: nn.Module) -> torch.device | None:
    first = next(chain(model.parameters(), model.buffers()), None)
    return None if first is None else first.device


@contextmanager
def _hooked(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Eval mode plus a copy of each named submodule's output for one pass (hooks removed and
    every module's own train/eval flag restored on exit, also on error)."""
    with eval_mode(model), capture(model, layers, what="CKA representation") as store:
        yield store


def _iter_batches(inputs: Inputs, batch_size: int) -> Iterator[Tensor]:
    """Yield input tensors: a Tensor is cut into chunks (no trailing chunk below 4 examples)."""
    if isinstance(inputs, Tensor):
        n = inputs.shape[0]
        starts = list(range(0, n, batch_size))
        if len(starts) > 1 and n - starts[-1] < _MIN_UNBIASED_N:
            starts.pop()  # fold a tiny remainder into the previous chunk
        for i, start in enumerate(starts):
            stop = starts[i + 1] if i + 1 < len(starts) else n
            yield inputs[start:stop]
        return
    for item in inputs:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, Tensor):
            raise TypeError(f"a batch must be a Tensor or an (x, y, ...) sequence, got {type(x)}")
        yield x


def _run_models(
    model_a: nn.Module,
    layers_a: Sequence[str],
    model_b: nn.Module | None,
    layers_b: Sequence[str],
    inputs: Inputs,
    batch_size: int,
    on_batch: Callable[[dict[str, Tensor], dict[str, Tensor], Tensor, Tensor | None], None],
) -> None:
    """One pass over the inputs; each batch goes through A and then B (same examples, same order).

    ``on_batch(acts_a, acts_b, out_a, out_b)`` sees the hooked outputs of this batch. A model
    compared with itself runs once. Both models run in eval mode under ``torch.no_grad``.
    """
    same = model_b is model_a
    with ExitStack() as stack, torch.no_grad():
        store_a = stack.enter_context(_hooked(model_a, layers_a))
        store_b = store_a
        if model_b is not None:
            store_b = stack.enter_context(_hooked(model_b, layers_b))
        dev_a = _model_device(model_a)
        dev_b = None if model_b is None else _model_device(model_b)
        for x in _iter_batches(inputs, batch_size):
            store_a.clear()
            store_b.clear()
            out_a = model_a(x if dev_a is None else x.to(dev_a))
            out_b = None
            if model_b is not None:
                out_b = out_a if same else model_b(x if dev_b is None else x.to(dev_b))
            for store, layers in ((store_a, layers_a), (store_b, layers_b)):
                silent = [name for name in layers if name not in store]
                if silent:
                    raise RuntimeError(f"layers {silent} did not run in the forward pass")
            on_batch(store_a, store_b, out_a, out_b)


def layer_activations(
    model: nn.Module, inputs_or_batches: Inputs, layers: Sequence[str], *, batch_size: int = 256
) -> dict[str, Tensor]:
    """Outputs of the named submodules over all inputs, concatenated on the CPU: name -> (n, ...).

    The model runs in eval mode under ``torch.no_grad``; its modes are restored afterwards.
    """
    parts: dict[str, list[Tensor]] = {name: [] for name in layers}

    def collect(acts: dict[str, Tensor], _b: dict[str, Tensor], _o: Tensor, _ob: object) -> None:
        for name in parts:
            parts[name].append(acts[name].cpu())

    _run_models(model, layers, None, [], inputs_or_batches, batch_size, collect)
    return {name: torch.cat(chunks) for name, chunks in parts.items() if chunks}


def _full_cka_matrix(
    acts_a: Sequence[Tensor], acts_b: Sequence[Tensor], kernel: Kernel, sigma_frac: float
) -> Tensor:
    """CKA for every pair of layers, each representation prepared once."""
    out = torch.empty(len(acts_a), len(acts_b), dtype=torch.float64)
    if kernel == "linear":
        reps_a = [_LinearRep(a) for a in acts_a]
        reps_b = [_LinearRep(b) for b in acts_b]
        for i, ra in enumerate(reps_a):
            for j, rb in enumerate(reps_b):
                out[i, j] = ra.cross(rb) / (ra.self_norm * rb.self_norm)
    else:
        grams_a = [_rbf_rep(a, sigma_frac) for a in acts_a]
        grams_b = [_rbf_rep(b, sigma_frac) for b in acts_b]
        for i, (ka, na) in enumerate(grams_a):
            for j, (kb, nb) in enumerate(grams_b):
                out[i, j] = (ka * kb).sum() / (na * nb)
    return out


def cka_matrix(
    model_a: nn.Module,
    model_b: nn.Module,
    inputs_or_batches: Inputs,
    layers_a: list[str],
    layers_b: list[str],
    *,
    kernel: Kernel = "linear",
    minibatch: bool = False,
    batch_size: int = 256,
    sigma_frac: float = 0.8,
) -> CKAResult:
    """CKA between the outputs of ``layers_a`` of model A and ``layers_b`` of model B.

    ``inputs_or_batches`` is a Tensor (n, ...) (cut into ``batch_size`` chunks) or an iterable of
    batches (x or (x, y, ...)); it is read once and each batch goes through both models, so a
    shuffling loader still gives both the same examples in the same order. Use un-augmented
    inputs. ``minibatch=False`` keeps all activations (on the CPU) and computes exact CKA;
    ``minibatch=True`` (linear only) accumulates the unbiased estimator per batch in constant
    memory, skipping batches of fewer than 4 examples with a warning (counted in ``dropped``).
    A minibatch estimate weights every batch equally; the result's ``minibatch_size`` is the
    common batch size, or None if the batches differed in size.
    """
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
    if minibatch and kernel != "linear":
        raise ValueError("minibatch CKA is defined here for kernel='linear' only")
    if not layers_a or not layers_b:
        raise ValueError("layers_a and layers_b must name at least one layer each")

    if minibatch:
        acc = MinibatchCKAMatrix(len(layers_a), len(layers_b))
        dropped = 0
        sizes: set[int] = set()

        def accumulate(sa: dict[str, Tensor], sb: dict[str, Tensor], _o: Tensor, _ob: object) -> None:
            nonlocal dropped
            n = sa[layers_a[0]].shape[0]
            if n < _MIN_UNBIASED_N:
                dropped += n
                return
            acc.update([sa[name] for name in layers_a], [sb[name] for name in layers_b])
            sizes.add(n)

        _run_models(model_a, layers_a, model_b, layers_b, inputs_or_batches, batch_size, accumulate)
        if dropped:
            warnings.warn(
                f"minibatch CKA skipped {dropped} examples in batches of fewer than {_MIN_UNBIASED_N}",
                stacklevel=2,
            )
        matrix = acc.compute()
        n = acc.num_examples
        size = next(iter(sizes)) if len(sizes) == 1 else None
        return CKAResult(
            matrix, list(layers_a), list(layers_b), n, kernel, True, minibatch_size=size, dropped=dropped
        )
    else:
        parts_a: dict[str, list[Tensor]] = {name: [] for name in layers_a}
        parts_b: dict[str, list[Tensor]] = {name: [] for name in layers_b}

        def collect(sa: dict[str, Tensor], sb: dict[str, Tensor], _o: Tensor, _ob: object) -> None:
            for name in parts_a:
                parts_a[name].append(sa[name].cpu())
            for name in parts_b:
                parts_b[name].append(sb[name].cpu())

        _run_models(model_a, layers_a, model_b, layers_b, inputs_or_batches, batch_size, collect)
        if not parts_a[layers_a[0]]:
            raise ValueError("no inputs were given")
        acts_a = [torch.cat(parts_a[name]) for name in layers_a]
        acts_b = [torch.cat(parts_b[name]) for name in layers_b]
        n = acts_a[0].shape[0]
        if n < 2:
            raise ValueError(f"CKA needs at least 2 examples, got {n}")
        matrix = _full_cka_matrix(acts_a, acts_b, kernel, sigma_frac)
    return CKAResult(matrix, list(layers_a), list(layers_b), n, kernel, False)


def _predictions(
    model_ref: nn.Module, model_other: nn.Module, x: Tensor, batch_size: int
) -> tuple[Tensor, Tensor]:
    preds_ref: list[Tensor] = []
    preds_other: list[Tensor] = []

    def collect(_a: dict[str, Tensor], _b: dict[str, Tensor], out: Tensor, out_b: object) -> None:
        assert isinstance(out_b, Tensor)
        preds_ref.append(out.argmax(1).cpu())
        preds_other.append(out_b.argmax(1).cpu())

    _run_models(model_ref, [], model_other, [], x, batch_size, collect)
    return torch.cat(preds_ref), torch.cat(preds_other)


def cka_subsets(
    model_ref: nn.Module,
    model_other: nn.Module,
    x: Tensor,
    y: Tensor,
    layers_ref: list[str],
    layers_other: list[str],
    *,
    estimator: Estimator = "minibatch",
    minibatch_size: int = DEFAULT_MINIBATCH_SIZE,
    seed: int = 0,
    kernel: Kernel = "linear",
    batch_size: int = 256,
    sigma_frac: float = 0.8,
    min_examples: int = _MIN_UNBIASED_N,
) -> dict[str, CKAResult]:
    """CKA on the three test subsets of Lance & Kieu 2026, comparable across subset sizes.

    Keys: "all" (every example), "both_correct" (both models predict y) and
    "ref_correct_other_wrong". Predictions are the argmax of each model's output (n, classes),
    computed in eval mode in chunks of ``batch_size``. ``x`` must be un-augmented inputs.

    ``estimator="minibatch"`` (the default; linear kernel only): unbiased minibatch CKA. A
    subset's examples are put in the order ``torch.randperm(n, generator=torch.Generator()
    .manual_seed(seed))`` and cut into n // minibatch_size minibatches of exactly
    ``minibatch_size``; the final partial minibatch (n % minibatch_size examples, a random set
    because of the permutation) is dropped and counted in the result's ``dropped``, so every
    term of the mean is HSIC_1 at one batch size. A subset with fewer than ``minibatch_size``
    examples (but at least 4) is one minibatch of all its examples; its result's
    ``minibatch_size`` then says how many. ``estimator="full"``: the biased full-batch estimator
    on every example of the subset (linear or RBF); its value rises as n falls, so use it only to
    compare subsets of equal size.

    A subset with fewer than max(``min_examples``, 4 (minibatch) or 2 (full)) examples gets a NaN
    matrix and ``skipped`` set.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y hold different numbers of examples: {x.shape[0]} vs {y.shape[0]}")
    if estimator not in ("minibatch", "full"):
        raise ValueError(f"estimator must be 'minibatch' or 'full', got {estimator!r}")
    minibatch = estimator == "minibatch"
    if minibatch and kernel != "linear":
        raise ValueError("the minibatch estimator is linear only; use estimator='full' for kernel='rbf'")
    if minibatch and minibatch_size < _MIN_UNBIASED_N:
        raise ValueError(f"minibatch_size must be at least {_MIN_UNBIASED_N}, got {minibatch_size}")
    y = y.cpu()
    pred_ref, pred_other = _predictions(model_ref, model_other, x, batch_size)
    ref_ok = pred_ref == y
    other_ok = pred_other == y
    subsets = {
        "all": (torch.ones_like(ref_ok), "all examples"),
        "both_correct": (ref_ok & other_ok, "examples both models classify correctly"),
        "ref_correct_other_wrong": (
            ref_ok & ~other_ok,
            "examples the reference gets right and the other wrong",
        ),
    }
    threshold = max(min_examples, _MIN_UNBIASED_N if minibatch else 2)
    results: dict[str, CKAResult] = {}
    for key, (mask, what) in subsets.items():
        count = int(mask.sum())
        if count < threshold:
            nan = torch.full((len(layers_ref), len(layers_other)), math.nan, dtype=torch.float64)
            results[key] = CKAResult(
                nan,
                list(layers_ref),
                list(layers_other),
                count,
                kernel,
                minibatch,
                skipped=f"only {count} {what} (fewer than {threshold})",
            )
            continue
        idx = mask.nonzero().squeeze(1)
        if not minibatch:
            results[key] = cka_matrix(
                model_ref,
                model_other,
                x.index_select(0, idx.to(x.device)),
                layers_ref,
                layers_other,
                kernel=kernel,
                batch_size=batch_size,
                sigma_frac=sigma_frac,
            )
            continue
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
        size = min(minibatch_size, count)
        used = count - count % size
        idx = idx[order[:used]].to(x.device)  # `used` is a multiple of `size`: equal chunks
        result = cka_matrix(
            model_ref,
            model_other,
            x.index_select(0, idx),
            layers_ref,
            layers_other,
            kernel="linear",
            minibatch=True,
            batch_size=size,
        )
        results[key] = replace(result, dropped=result.dropped + count - used)
    return results
