"""Drop-in replacement for ``diffsort`` (0.2.0): ``from fastsort.compat import diffsort``.

Same modules and names as the reference package: :class:`DiffSortNet`
(``diffsort.diffsort``), :func:`sort` (``diffsort.functional``), and
:func:`bitonic_network`, :func:`odd_even_network`, :func:`get_sorting_network`
(``diffsort.networks``)::

    sorter = diffsort.DiffSortNet("bitonic", size=n, steepness=10.0, distribution="cauchy")
    sorted_values, X = sorter(vectors)          # [B, n], [B, n, n]

with ``X[b, i, j]`` the weight of input ``i`` at (ascending) output position
``j``, so ``sorted_values == (vectors.unsqueeze(1) @ X).squeeze(1)``.

What differs is only how it is computed: diffsort multiplies a dense
``[B, n, n]`` matrix by dense per-layer matrices (``O(n^3 D)``); here one
pass of fastsort's network op computes the mixing weights and a single
reverse sweep of the identity gives ``X`` (``O(n^2 D)``; Triton on CUDA,
compiled or torch code on the CPU), with a hand-written backward.  Further
differences, all harmless for working code:

* the module holds no network tensors and is device-agnostic: ``device=`` is
  accepted and ignored (it is where ``sorting_network`` is built when read),
  inputs may live on any device;
* ``float16``/``bfloat16`` inputs are computed in float32 (returned in the
  input dtype); float64 stays float64;
* diffsort's ``assert``\\ s and its ``NotImplementedError`` for unknown
  options are raised at construction as :class:`CompatError` /
  :class:`UnsupportedOptionError`, which are ``ValueError``\\ s (and still
  ``AssertionError`` / ``NotImplementedError`` so that code catching the
  reference's exceptions keeps working);
* the network descriptions (``sorting_network``, :func:`get_sorting_network`)
  are diffsort's matrices, built from fastsort's own tables; :func:`sort`
  accepts any description of one of fastsort's networks (the references' own
  included) and runs fastsort's table of it.
"""
from .._common import DISTRIBUTIONS, CompatError, UnsupportedOptionError
from .diffsort import SORTING_NETWORKS, DiffSortNet
from .functional import sort
from .networks import bitonic_network, get_sorting_network, odd_even_network

__all__ = [
    "DiffSortNet",
    "sort",
    "bitonic_network",
    "odd_even_network",
    "get_sorting_network",
    "CompatError",
    "UnsupportedOptionError",
    "SORTING_NETWORKS",
    "DISTRIBUTIONS",
]
