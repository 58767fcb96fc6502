"""Drop-in replacements for the reference packages ``difftopk``, ``diffsort`` (0.2.0) and ``torchsort`` (0.1.10).

Replace ::

    import difftopk
    import diffsort

by ::

    from fastsort.compat import difftopk
    from fastsort.compat import diffsort
    from fastsort.compat import torchsort   # instead of: import torchsort (0.1.10)

and the code runs unchanged -- same classes, arguments, output shapes,
layouts and numbers (to float tolerance) -- on fastsort's kernels:

* ``diffsort``: ``DiffSortNet``, ``sort``, ``bitonic_network``,
  ``odd_even_network``, ``get_sorting_network`` and the submodules
  ``diffsort.diffsort``, ``.functional``, ``.networks``;
* ``difftopk``: ``DiffTopkNet`` (``sparse=True`` needs no ``torch_sparse``),
  ``TopKCrossEntropyLoss`` (with its ``top_k_net`` / ``sort_fn``), ``NeuralSort``,
  ``SoftSort``, ``SmoothTopKLoss``, ``SmoothHardTopKLoss``, ``topk``,
  ``get_sorting_network`` and the submodules ``difftopk.difftopk``,
  ``.functional``, ``.networks``, ``.losses``, ``.neuralsort``, ``.softsort``,
  ``.smooth_topk``.

The network descriptions (the references' dense per-layer matrices, and
difftopk's sparse layers) are built from fastsort's own network tables
(:func:`fastsort.networks.network_layers`) and equal the references'; the
functions and attributes that take one (``sort``, ``topk``, an assigned
``sorting_network``) accept any description of one of fastsort's networks and
run fastsort's table of it.  Attributes are read as the references read them:
``steepness``, ``distribution`` and ``art_lambda`` of the networks at every
call, ``TopKCrossEntropyLoss``'s ``inverse_temperature`` only at construction
(anneal ``loss.top_k_net.steepness``).  For new code prefer the native API
(:func:`fastsort.soft_topk`, :func:`fastsort.topk_cross_entropy`, ...), whose
layouts are documented in :mod:`fastsort.functional`.
"""
from . import diffsort, difftopk, torchsort

__all__ = ["diffsort", "difftopk", "torchsort"]
