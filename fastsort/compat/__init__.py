"""Drop-in replacements for the reference packages ``difftopk`` and ``diffsort`` (0.2.0).

Replace ::

    import difftopk
    import diffsort

by ::

    from fastsort.compat import difftopk
    from fastsort.compat import diffsort

and the code runs unchanged -- same classes, arguments, output shapes,
layouts and numbers (to float tolerance) -- on fastsort's kernels:

* ``diffsort.DiffSortNet``;
* ``difftopk.DiffTopkNet`` (``sparse=True`` needs no ``torch_sparse``),
  ``difftopk.TopKCrossEntropyLoss``, ``difftopk.NeuralSort``,
  ``difftopk.SoftSort``, ``difftopk.SmoothTopKLoss``,
  ``difftopk.SmoothHardTopKLoss``.

The reference packages' low-level helpers that take their dense per-layer
matrices (``sort``, ``topk``, ``get_sorting_network``, ...) are not provided:
fastsort stores networks as integer tables (:func:`fastsort.get_network`).
For new code prefer the native API (:func:`fastsort.soft_topk`,
:func:`fastsort.topk_cross_entropy`, ...), whose layouts are documented in
:mod:`fastsort.functional`.
"""
from . import diffsort, difftopk

__all__ = ["diffsort", "difftopk"]
