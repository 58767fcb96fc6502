"""Public functional API: ``soft_sort``, ``soft_topk``, ``soft_rank``, ``soft_permutation``, ``soft_topk_mask``.

Data path of every op: validation -> move ``dim`` last and flatten to
``[R, n]`` in the compute dtype (float32 for fp16/bf16/fp32, float64 kept) ->
backend choice (:func:`fastsort._dispatch.resolve_backend`) -> the method's
autograd Function -> back to the caller's shape and dtype.

Conventions (SPEC.md): sorting is ascending along ``dim``; the relaxed
permutation matrix has row ``j`` = output position ``j`` (ascending) and
columns = inputs, so ``soft_sort(x) == soft_permutation(x) @ x``;
``soft_topk`` returns the rows of the ``k`` largest positions, the largest
first.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from ._autograd import Relaxation, network_apply
from ._cache import device_constant
from ._dispatch import resolve_backend
from ._torch_softmax_sorts import neuralsort_rows, softsort_rows
from ._validate import as_int, as_positive, as_real
from .relaxations import DISTRIBUTIONS

__all__ = ["METHODS", "soft_sort", "soft_topk", "soft_rank", "soft_permutation", "soft_topk_mask"]

NETWORK_METHODS = ("odd_even", "bitonic", "splitter_selection")
SOFTMAX_METHODS = ("neuralsort", "softsort")
METHODS = NETWORK_METHODS + SOFTMAX_METHODS + ("sinkhorn",)

_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "odd_even": dict(steepness=10.0, distribution="cauchy", art_lambda=0.25),
    "bitonic": dict(steepness=10.0, distribution="cauchy", art_lambda=0.25),
    "splitter_selection": dict(steepness=10.0, distribution="cauchy", art_lambda=0.25),
    "neuralsort": dict(tau=1.0),
    "softsort": dict(tau=1.0, pow=1.0),
    "sinkhorn": dict(epsilon=1e-2, max_iter=None, threshold=1e-3, squash=True),
}


# --------------------------------------------------------------------------- validation
def check_method(method: str, op: str) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "splitter_selection" and op not in ("soft_topk", "soft_topk_mask", "loss"):
        raise ValueError(
            f"method='splitter_selection' is a top-k selection network: it only places the k largest, so it "
            f"supports soft_topk, soft_topk_mask and TopKCrossEntropyLoss, not {op}; use 'bitonic' or 'odd_even'"
        )
    return method


#: the losses' ``reduction`` values
REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """A per-row loss ``[B]`` reduced by ``mean``, ``sum`` or ``none``."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def check_logits_labels(logits, labels, name: str = "n_classes") -> None:
    """``logits [B, C]`` floating and ``labels [B]`` integer class indices in ``[0, C)`` on the same device
    (the losses' inputs; ``name``: how the caller's messages call ``C``)."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point torch.Tensor, got {getattr(logits, 'dtype', type(logits))}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D [batch, {name}], got shape {tuple(logits.shape)}")
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype.is_complex \
            or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of class indices, got "
                        f"{getattr(labels, 'dtype', type(labels))}; use labels.long()")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must have shape [batch] = {tuple(logits.shape[:1])}, got {tuple(labels.shape)}")
    if labels.device != logits.device:  # the kernels would read a host address on the GPU
        raise ValueError(f"labels must be on the device of logits ({logits.device}), got {labels.device}")
    check_label_range(labels, logits.shape[1], name)


def check_label_range(labels: torch.Tensor, n_classes: int, name: str = "n_classes") -> None:
    """Labels must lie in ``[0, n_classes)`` (``name``: how the caller's messages call ``n_classes``).
    Checked for CPU labels only: on CUDA the check needs the values on the host, a device sync in
    every training step, so the kernels and ops flag a bad label themselves there (NaN rows in the
    top-k loss).  Skipped while ``torch.compile`` traces."""
    if labels.device.type == "cpu" and labels.numel() and not torch.compiler.is_compiling():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(f"labels must be in [0, {name}) = [0, {n_classes}), got values in [{lo}, {hi}]")


def parse_params(method: str, params: Dict[str, Any]) -> Dict[str, Any]:
    """Fill in defaults for ``method`` and check every parameter."""
    defaults = _DEFAULTS[method]
    unknown = set(params) - set(defaults)
    if unknown:
        raise TypeError(
            f"unexpected parameter(s) {sorted(unknown)} for method={method!r}; it takes {sorted(defaults)}"
        )
    out = dict(defaults, **params)
    if method in NETWORK_METHODS:
        out["steepness"] = as_positive(out["steepness"], "steepness")
        if out["distribution"] not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {out['distribution']!r}")
        out["art_lambda"] = as_real(out["art_lambda"], "art_lambda")
    elif method in SOFTMAX_METHODS:
        out["tau"] = as_positive(out["tau"], "tau")
        if method == "softsort":
            out["pow"] = as_positive(out["pow"], "pow")
    return out


def check_input(x, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension to sort along, got a scalar")


def check_k(k, n: int) -> int:
    k = as_int(k, "k")
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= n (the size of the sorted dim, {n}), got k={k}")
    return k


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _flatten(x: torch.Tensor, dim: int) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    dim = as_int(dim, "dim")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim={dim} is out of range for a tensor with {x.dim()} dimensions")
    xm = x.movedim(dim, -1)
    n = xm.shape[-1]
    if n == 0:
        raise ValueError(f"x has 0 elements along dim={dim}; there is nothing to sort")
    lead = tuple(xm.shape[:-1])
    x2 = xm.reshape(-1, n).to(compute_dtype(x.dtype))
    return x2, lead


# --------------------------------------------------------------------------- method kernels on [R, n]
def _network(x2: torch.Tensor, method: str, p: Dict[str, Any], init: Optional[torch.Tensor], backend: str, k=None):
    relax = Relaxation(p["distribution"], p["steepness"], p["art_lambda"])
    return network_apply(x2, init, method, k if method == "splitter_selection" else None, relax, backend)


_INITS: Dict[tuple, torch.Tensor] = {}


def sweep_init(kind: str, n: int, k: int, dtype: torch.dtype, device, weights: Tuple[float, ...] = ()) -> torch.Tensor:
    """The block ``S^D [C, n]`` that the reverse sweep multiplies by ``X`` (built once, cached per device).

    * ``topk``: unit rows of the top ``k`` positions, the largest first (``[k, n]``);
    * ``ranks``: the positions ``1..n`` (``[1, n]``);
    * ``mask``: the indicator of the top ``k`` positions (``[1, n]``);
    * ``weights``: ``weights[r]`` at rank ``r + 1``, i.e. position ``n - 1 - r`` (``[1, n]``).
    """
    return device_constant(_INITS, (kind, n, k, weights, dtype, str(device)),
                           lambda: _sweep_init_block(kind, n, k, dtype, weights).to(device))


def _sweep_init_block(kind: str, n: int, k: int, dtype: torch.dtype, weights: Tuple[float, ...]) -> torch.Tensor:
    if kind == "topk":
        init = torch.zeros(k, n, dtype=dtype)
        init[torch.arange(k), n - 1 - torch.arange(k)] = 1
    elif kind == "ranks":
        init = torch.arange(1, n + 1, dtype=dtype).unsqueeze(0)
    elif kind == "mask":
        init = torch.zeros(1, n, dtype=dtype)
        init[:, n - k:] = 1
    else:
        init = torch.zeros(1, n, dtype=dtype)
        init[0, n - len(weights):] = torch.tensor(weights[::-1], dtype=dtype)
    return init


def _rows_desc(x2: torch.Tensor, k: int, method: str, p: Dict[str, Any], backend: str) -> torch.Tensor:
    """The top ``k`` rows of P (descending ranks) for ``x2 [R, n]``: ``[R, k, n]``."""
    n = x2.shape[-1]
    if method in NETWORK_METHODS:
        return _network(x2, method, p, sweep_init("topk", n, k, x2.dtype, x2.device), backend, k)[1]
    if method == "neuralsort":
        return neuralsort_rows(x2, k, p["tau"])
    if method == "softsort":
        return softsort_rows(x2, k, p["tau"], p["pow"])
    from . import sinkhorn

    return sinkhorn.sinkhorn_topk(x2, k, backend=backend, **_sinkhorn_kw(p))


def _sinkhorn_kw(p: Dict[str, Any]) -> Dict[str, Any]:
    kw = dict(p)
    if kw.get("max_iter") is None:
        kw.pop("max_iter", None)
    return kw


def _start(x, method, op, dim, backend, params):
    check_input(x)
    check_method(method, op)
    p = parse_params(method, params)
    x2, lead = _flatten(x, dim)
    return p, x2, lead, kernel_backend(x2, backend)


def kernel_backend(x2: torch.Tensor, backend: str, n: Optional[int] = None) -> str:
    """:func:`resolve_backend`, except that float64 always runs on the torch path (the
    kernels compute in float32; float64 is for references and gradcheck), and that
    ``auto`` runs rows longer than the kernels hold in registers (``n > 8192``) on the
    torch path too (``n``: the row length the kernels will see, default ``x2``'s last dim);
    an explicit ``backend="triton"`` raises for them instead."""
    be = resolve_backend(x2, backend)
    if x2.dtype == torch.float64:
        return "torch"
    if be == "triton" and backend == "auto":
        from .kernels.launch import MAX_LANES

        if (x2.shape[-1] if n is None else n) > MAX_LANES:
            return "torch"
    return be


# --------------------------------------------------------------------------- public ops
def soft_sort(x: torch.Tensor, method: str = "bitonic", *, dim: int = -1, descending: bool = False,
              backend: str = "auto", **params) -> torch.Tensor:
    """Relaxed sorted values of ``x`` along ``dim``.

    Args:
        x: ``[..., n, ...]`` floating tensor (fp16/bf16 computed in float32).
        method: ``"bitonic"`` (default), ``"odd_even"``, ``"neuralsort"``, ``"softsort"`` or ``"sinkhorn"``.
        dim: the dim to sort along.
        descending: largest first instead of ascending.
        backend: ``"auto"`` (Triton on CUDA, torch otherwise), ``"torch"`` or ``"triton"``.
        **params: the method's parameters: networks ``steepness=10.0``,
            ``distribution="cauchy"``, ``art_lambda=0.25``; NeuralSort ``tau=1.0``;
            SoftSort ``tau=1.0, pow=1.0``; Sinkhorn ``epsilon, max_iter, threshold, squash``.

    Returns:
        Same shape and dtype as ``x``.

    Example:
        >>> fastsort.soft_sort(torch.tensor([[1., 8., -1., 9., 5.]]), steepness=100.0)
        tensor([[-0.9955,  1.0029,  4.9963,  7.9998,  9.0001]])
    """
    p, x2, lead, be = _start(x, method, "soft_sort", dim, backend, params)
    n = x2.shape[-1]
    if method in NETWORK_METHODS:
        y = _network(x2, method, p, None, be)[0]
    elif method == "sinkhorn":
        from . import sinkhorn

        y = sinkhorn.sinkhorn_sort(x2, backend=be, **_sinkhorn_kw(p))
    else:
        y = (_rows_desc(x2, n, method, p, be) @ x2.unsqueeze(-1)).squeeze(-1).flip(-1)
    if descending:
        y = y.flip(-1)
    return y.reshape(lead + (n,)).movedim(-1, dim).to(x.dtype)


def soft_topk(x: torch.Tensor, k: int, method: str = "bitonic", *, dim: int = -1, backend: str = "auto",
              **params) -> torch.Tensor:
    """Top-``k`` rows of the relaxed permutation matrix.

    Returns ``[..., k, n]`` (``dim`` removed from the leading dims, then ranks,
    then inputs): row ``r`` is rank ``r + 1`` (row 0 = the largest), so
    ``soft_topk(x, k) @ x.unsqueeze(-1)`` gives the ``k`` largest soft values,
    largest first.  Network methods cost ``O(n k D)``, never ``O(n^2)``.
    ``method="splitter_selection"`` uses the cheaper selection network.

    Example:
        >>> P = fastsort.soft_topk(torch.tensor([[1., 8., -1., 9., 5.]]), k=2, steepness=100.0)
        >>> P.shape
        torch.Size([1, 2, 5])
        >>> P.argmax(-1)
        tensor([[3, 1]])
    """
    p, x2, lead, be = _start(x, method, "soft_topk", dim, backend, params)
    n = x2.shape[-1]
    k = check_k(k, n)
    P = _rows_desc(x2, k, method, p, be)
    return P.reshape(lead + (k, n)).to(x.dtype)


def soft_rank(x: torch.Tensor, method: str = "bitonic", *, dim: int = -1, backend: str = "auto",
              **params) -> torch.Tensor:
    """Soft ranks in ``[1, n]`` along ``dim``, 1 = the smallest (torchsort's convention).

    Network methods run one vector through the reverse sweep: ``O(n D)``.

    Example:
        >>> fastsort.soft_rank(torch.tensor([[1., 8., -1., 9., 5.]]), steepness=100.0).round()
        tensor([[2., 4., 1., 5., 3.]])
    """
    p, x2, lead, be = _start(x, method, "soft_rank", dim, backend, params)
    n = x2.shape[-1]
    positions = sweep_init("ranks", n, n, x2.dtype, x2.device)
    if method in NETWORK_METHODS:
        r = _network(x2, method, p, positions, be)[1].squeeze(1)
    elif method == "sinkhorn":
        from . import sinkhorn

        r = sinkhorn.sinkhorn_rank(x2, backend=be, **_sinkhorn_kw(p))
    else:
        P = _rows_desc(x2, n, method, p, be)  # rank order: row 0 = position n - 1
        r = (positions[0].flip(0).unsqueeze(-1) * P).sum(-2)
    return r.reshape(lead + (n,)).movedim(-1, dim).to(x.dtype)


def soft_permutation(x: torch.Tensor, method: str = "bitonic", *, dim: int = -1, backend: str = "auto",
                     **params) -> torch.Tensor:
    """The full relaxed permutation matrix ``[..., n, n]``: row ``j`` = output position ``j`` (ascending),
    columns = inputs; ``soft_sort(x) == soft_permutation(x) @ x``.

    Example:
        >>> fastsort.soft_permutation(torch.tensor([[3., 1.]]), steepness=1e4)
        tensor([[[0., 1.],
                 [1., 0.]]])
    """
    p, x2, lead, be = _start(x, method, "soft_permutation", dim, backend, params)
    n = x2.shape[-1]
    if method in NETWORK_METHODS:
        eye = torch.eye(n, dtype=x2.dtype, device=x2.device)
        P = _network(x2, method, p, eye, be)[1]
    elif method == "sinkhorn":
        from . import sinkhorn

        P = sinkhorn.sinkhorn_permutation(x2, backend=be, **_sinkhorn_kw(p))
    else:
        P = _rows_desc(x2, n, method, p, be).flip(-2)
    return P.reshape(lead + (n, n)).to(x.dtype)


def soft_topk_mask(x: torch.Tensor, k: int, method: str = "sinkhorn", *, dim: int = -1, backend: str = "auto",
                   **params) -> torch.Tensor:
    """For each element, the soft probability of being among the ``k`` largest; same shape as ``x``.

    ``sinkhorn`` solves OTT's two-target problem; the other methods return the
    column sums of :func:`soft_topk`.

    Example:
        >>> fastsort.soft_topk_mask(torch.tensor([1., 8., -1., 9., 5.]), 2, method="bitonic", steepness=100.0).round()
        tensor([0., 1., 0., 1., 0.])
    """
    p, x2, lead, be = _start(x, method, "soft_topk_mask", dim, backend, params)
    n = x2.shape[-1]
    k = check_k(k, n)
    if method == "sinkhorn":
        from . import sinkhorn

        mask = sinkhorn.sinkhorn_topk_mask(x2, k, backend=be, **_sinkhorn_kw(p))
    elif method in NETWORK_METHODS:
        # one vector through the sweep: the indicator of the top k positions
        mask = _network(x2, method, p, sweep_init("mask", n, k, x2.dtype, x2.device), be, k)[1].squeeze(1)
    else:
        mask = _rows_desc(x2, k, method, p, be).sum(-2)
    return mask.reshape(lead + (n,)).movedim(-1, dim).to(x.dtype)
