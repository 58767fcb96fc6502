"""What a differentiable sorting method is, for the registry (docs/design.md, "Methods and the registry").

Every method family (``fastsort/networks/``, ``fastsort/softmax_sorts.py``,
``fastsort/sinkhorn.py``, ``fastsort/permutahedron.py``) defines a subclass of
:class:`Method`, and ``fastsort/registry.py`` lists one instance per method
name: that list is ``fastsort.METHODS``.  A method object carries

* its parameters and their defaults (:attr:`Method.defaults`), parsed and
  checked by :meth:`Method.parse`;
* the operations it supports (:attr:`Method.ops`, keys of :data:`OPS`), each a
  method on rows ``x [R, n]`` that are already validated, flattened and in the
  compute dtype (float32, or float64 on the torch path), for a resolved backend;
* the backends it has kernels for besides the torch reference
  (:attr:`Method.kernels`: ``"triton"``, ``"numba"``).

The public ops in ``fastsort/functional.py`` and ``fastsort/losses.py`` do the
rest: validate, flatten, pick the backend, call ``METHODS[name].<op>``, and
restore the caller's shape and dtype.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ._cache import device_constant

__all__ = ["OPS", "Method", "RowsMethod"]

#: the registry's operation names and the public function of each
OPS: Dict[str, str] = {
    "sort": "soft_sort",
    "rank": "soft_rank",
    "topk": "soft_topk",
    "permutation": "soft_permutation",
    "topk_mask": "soft_topk_mask",
    "loss": "topk_cross_entropy",
}


class Method:
    """Base class of a sorting method.

    Subclasses set :attr:`defaults`, :attr:`ops` and :attr:`kernels`, override
    :meth:`check` to validate parameter values, and implement the ops they list.
    Every op takes rows ``x [R, n]`` (float32 or float64), the parsed parameters
    ``p`` and a resolved backend (``"torch"``, ``"triton"`` or ``"numba"``; a backend
    not in :attr:`kernels` never reaches the method except ``"triton"`` for methods
    whose torch ops run on CUDA as they are).
    """

    #: parameter name -> default value
    defaults: Mapping[str, Any] = {}
    #: the supported operations (keys of :data:`OPS`)
    ops: Tuple[str, ...] = ()
    #: backends besides ``"torch"`` that have kernels for this method
    kernels: Tuple[str, ...] = ()
    #: backends with kernels for its top-k loss, when they differ from :attr:`kernels` (the loss's
    #: backend choice reads this; e.g. a fused loss kernel on a backend its other ops lack)
    loss_kernels: Optional[Tuple[str, ...]] = None
    #: appended to the error for an unsupported op: why the method cannot give it
    limitation: str = ""
    #: the ops that see ``+-inf`` entries as they are (``True``: all of them); the others get the finite
    #: stand-ins of ``fastsort.functional.finite_stand_ins`` (docs/design.md, "Infinities and guaranteed
    #: ranges")
    native_infinities: Any = False

    #: its soft sort (when in :attr:`native_infinities`) already returns exactly ``-inf`` / ``+inf`` at the
    #: ends of a row holding them, so the public ``soft_sort`` skips its host-side finiteness test and
    #: ``fastsort.functional.restore_infinities``
    exact_sort_infinities: bool = False

    def handles_infinities(self, op: str, backend: str) -> bool:
        """Whether op ``op`` on ``backend`` takes ``+-inf`` entries itself (:attr:`native_infinities`;
        a method whose kernels handle more ops than its other backends overrides this)."""
        native = self.native_infinities
        return native if isinstance(native, bool) else op in native

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<fastsort method {self.name!r}: ops={list(self.ops)}, defaults={dict(self.defaults)}>"

    # ------------------------------------------------------------------ parameters
    def parse(self, params: Mapping[str, Any]) -> Dict[str, Any]:
        """The defaults updated by ``params``, each value checked (``TypeError`` for an unknown name)."""
        defaults = self.defaults
        if not params.keys() <= defaults.keys():
            unknown = set(params) - set(defaults)
            raise TypeError(f"unexpected parameter(s) {sorted(unknown)} for method={self.name!r}; "
                            f"it takes {sorted(self.defaults)}")
        return self.check({**defaults, **params})

    def check(self, p: Dict[str, Any]) -> Dict[str, Any]:
        """Validate and normalise the parameter values (override)."""
        return p

    def loss_params(self, inverse_temperature: float, distribution: str, art_lambda: float) -> Dict[str, Any]:
        """The parameters that :func:`fastsort.topk_cross_entropy`'s arguments stand for (override)."""
        raise NotImplementedError(f"method {self.name!r} lists 'loss' in its ops but defines no loss_params")

    def fused_loss(self, p: Dict[str, Any], backend: str) -> Optional[Tuple[str, float, float]]:
        """``(distribution, steepness, art_lambda)`` for the fused top-k loss kernel of ``backend``
        (``fastsort/_fused_loss.py``, used with top-m preselection) when it serves this method with
        parameters ``p``, else None: the loss then runs :meth:`loss_column` (override)."""
        return None

    def kernel_row_length(self, n: int) -> int:
        """The row length its kernels see for ``n`` inputs (``auto`` runs rows that are too long on torch)."""
        return n

    # ------------------------------------------------------------------ the ops (rows in, rows out)
    def sort(self, x: torch.Tensor, p: Dict[str, Any], backend: str) -> torch.Tensor:
        """Soft sorted values ``[R, n]``, ascending."""
        raise NotImplementedError(f"method {self.name!r} lists 'sort' in its ops but does not implement it")

    def sort_descending(self, x: torch.Tensor, p: Dict[str, Any], backend: str) -> torch.Tensor:
        """Soft sorted values ``[R, n]``, largest first: the ascending sort reversed unless the method
        defines its own descending relaxation."""
        return self.sort(x, p, backend).flip(-1)

    def rank(self, x: torch.Tensor, p: Dict[str, Any], backend: str) -> torch.Tensor:
        """Soft ranks ``[R, n]`` in ``[1, n]``, 1 = the smallest."""
        raise NotImplementedError(f"method {self.name!r} lists 'rank' in its ops but does not implement it")

    def topk(self, x: torch.Tensor, k: int, p: Dict[str, Any], backend: str) -> torch.Tensor:
        """The top ``k`` rows of the relaxed permutation matrix ``[R, k, n]``, row 0 = rank 1."""
        raise NotImplementedError(f"method {self.name!r} lists 'topk' in its ops but does not implement it")

    def permutation(self, x: torch.Tensor, p: Dict[str, Any], backend: str) -> torch.Tensor:
        """The full relaxed permutation ``[R, n, n]``, row ``j`` = ascending position ``j``."""
        raise NotImplementedError(f"method {self.name!r} lists 'permutation' in its ops but does not implement it")

    def topk_mask(self, x: torch.Tensor, k: int, p: Dict[str, Any], backend: str) -> torch.Tensor:
        """The soft probability ``[R, n]`` of each element to be among the ``k`` largest."""
        raise NotImplementedError(f"method {self.name!r} lists 'topk_mask' in its ops but does not implement it")

    def loss_column(self, x: torch.Tensor, labels: torch.Tensor, c: Tuple[float, ...], p: Dict[str, Any],
                    backend: str) -> torch.Tensor:
        """``sum_r c[r] P[r, labels]`` per row ``[R]``: the weighted column the top-k loss needs."""
        raise NotImplementedError(f"method {self.name!r} lists 'loss' in its ops but does not implement it")


class RowsMethod(Method):
    """A method whose every op follows from its top rows of ``P`` (NeuralSort, SoftSort).

    Subclasses implement :meth:`topk`; sorted values, ranks, the permutation, the
    top-k mask and the loss column are derived from it, at ``O(n k)`` for ``k`` rows.
    """

    ops = ("sort", "rank", "topk", "permutation", "topk_mask", "loss")

    def sort(self, x, p, backend):
        n = x.shape[-1]
        return (self.topk(x, n, p, backend) @ x.unsqueeze(-1)).squeeze(-1).flip(-1)

    def rank(self, x, p, backend):
        n = x.shape[-1]
        by_rank = torch.arange(n, 0, -1, dtype=x.dtype, device=x.device)  # rank r + 1 sits at position n - r
        return (by_rank.unsqueeze(-1) * self.topk(x, n, p, backend)).sum(-2)

    def permutation(self, x, p, backend):
        return self.topk(x, x.shape[-1], p, backend).flip(-2)

    def topk_mask(self, x, k, p, backend):
        return self.topk(x, k, p, backend).sum(-2)

    def loss_column(self, x, labels, c, p, backend):
        K = len(c)
        rows = self.topk(x, K, p, backend)  # [B, K, n]
        col = rows.gather(2, labels.view(-1, 1, 1).expand(-1, K, 1)).squeeze(2)
        weights = device_constant(_WEIGHTS, (tuple(c), x.dtype, str(x.device)),
                                  lambda: torch.tensor(c, dtype=x.dtype, device=x.device))
        return col @ weights


_WEIGHTS: Dict[tuple, torch.Tensor] = {}


def unsupported(method: Method, op: str, supporting) -> str:
    """The error message for ``op`` on a method that does not list it."""
    msg = f"method={method.name!r} does not support {OPS[op]}"
    if method.limitation:
        msg += f" ({method.limitation})"
    return msg + f"; methods that do: {', '.join(supporting)}"
