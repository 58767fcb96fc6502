"""Drop-in replacement for ``difftopk`` (0.2.0): ``from fastsort.compat import difftopk``.

Same modules and names as the reference package (``difftopk.difftopk``,
``.functional``, ``.networks``, ``.losses``, ``.neuralsort``, ``.softsort``,
``.smooth_topk``):

* :class:`DiffTopkNet` -- ``forward(vectors [B, n])`` returns ``(None, X_topk [B, n, k])``,
  the last ``k`` columns of diffsort's relaxed permutation matrix (ascending:
  column ``-1`` is rank 1).  ``sparse=True`` gives the same numbers without
  ``torch_sparse``; ``'splitter_selection'`` is accepted with either value of ``sparse``.
* :class:`TopKCrossEntropyLoss` -- the differentiable top-k loss, computed by
  :func:`fastsort.topk_cross_entropy` (only the weighted label column of the
  top ``K`` rows is ever formed; fused Triton kernel on CUDA), with the
  reference's ``top_k_net`` / ``sort_fn`` attributes.
* :class:`NeuralSort`, :class:`SoftSort` -- the relaxed permutation modules with
  the reference's output layouts (incl. ``hard=True`` straight-through).
* :class:`SmoothTopKLoss`, :class:`SmoothHardTopKLoss` -- the smooth top-k SVM
  losses of Berrada et al., computed by :mod:`fastsort.smooth_topk`.
* :func:`topk` and :func:`get_sorting_network` -- difftopk's functional form on a
  network description (dense or sparse format).

The reference computes every network layer as dense ``n x n`` products
(``O(n^2 D)`` for the top-k); fastsort runs the network once and sweeps only
the ``k`` needed columns back (``O(n k D)``), with hand-written backward
passes.  Differences that cannot break working code: modules hold no network
tensors and are device-agnostic (``device=`` is accepted; the descriptions are
built there when read); ``float16``/``bfloat16`` are computed in float32 and
float64 works throughout; invalid arguments raise at construction with a clear
message (:class:`CompatError` where the reference fails an ``assert``,
:class:`UnsupportedOptionError` where it raises ``NotImplementedError`` --
both are ``ValueError``\\ s and subclasses of the reference's exception); the
deprecation notice of ``interpolation_type`` is a ``DeprecationWarning``
instead of a ``print``.
"""
from .._common import CompatError, UnsupportedOptionError
from ...losses import TOP1_MODES
from .difftopk import TOPK_NETWORKS, DiffTopkNet
from .functional import topk
from .losses import DIFFSORT_METHODS, TopKCrossEntropyLoss
from .networks import get_sorting_network
from .neuralsort import NeuralSort
from .smooth_topk import SmoothHardTopKLoss, SmoothTopKLoss
from .softsort import SoftSort

__all__ = [
    "DiffTopkNet",
    "topk",
    "get_sorting_network",
    "TopKCrossEntropyLoss",
    "NeuralSort",
    "SoftSort",
    "SmoothTopKLoss",
    "SmoothHardTopKLoss",
    "CompatError",
    "UnsupportedOptionError",
    "TOPK_NETWORKS",
    "DIFFSORT_METHODS",
    "TOP1_MODES",
]
