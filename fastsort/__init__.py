"""fastsort: fast differentiable sorting and top-k learning for PyTorch.

Public API:

* functional ops: :func:`soft_sort`, :func:`soft_topk`, :func:`soft_rank`,
  :func:`soft_permutation`, :func:`soft_topk_mask`;
* :data:`METHODS`: the registry of methods (name -> method object with its
  parameters, defaults and supported ops);
* losses: :func:`topk_cross_entropy`, :class:`TopKCrossEntropyLoss`,
  :class:`SmoothTopKLoss`, :class:`SmoothHardTopKLoss`;
* drop-in replacements for the reference packages:
  ``from fastsort.compat import difftopk`` / ``from fastsort.compat import diffsort``.

See docs/design.md for the math and the design.
"""
from ._version import __version__
from .functional import soft_permutation, soft_rank, soft_sort, soft_topk, soft_topk_mask
from .losses import TopKCrossEntropyLoss, topk_cross_entropy
from .networks import get_network
from .registry import METHODS
from .relaxations import DISTRIBUTIONS
from .sinkhorn import SinkhornConvergenceError, SinkhornConvergenceWarning

__all__ = [
    "__version__",
    "METHODS",
    "DISTRIBUTIONS",
    "SinkhornConvergenceWarning",
    "SinkhornConvergenceError",
    "soft_sort",
    "soft_topk",
    "soft_rank",
    "soft_permutation",
    "soft_topk_mask",
    "topk_cross_entropy",
    "TopKCrossEntropyLoss",
    "SmoothTopKLoss",
    "SmoothHardTopKLoss",
    "get_network",
]


def __getattr__(name):
    # the smooth top-k SVM losses live in their own module (imported on first use)
    if name in ("SmoothTopKLoss", "SmoothHardTopKLoss"):
        from . import smooth_topk

        return getattr(smooth_topk, name)
    raise AttributeError(f"module 'fastsort' has no attribute {name!r}")
