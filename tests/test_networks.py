"""Network structure: fastsort's layer lists and integer tables vs the oracles.

Every comparator list is checked against the comparators read out of the
reference packages' dense layer matrices (diffsort's ``bitonic_network`` /
``odd_even_network``, difftopk's ``sparse_splitter_selection_network``): a row
``c`` of ``split_a`` / ``split_b`` with different wires ``a != b`` is a
comparator, and the column ``c`` of ``combine_min`` tells which wire receives
the minimum (the higher wire -> a descending comparator).
"""
import math

import numpy as np
import pytest
import torch

import fastsort
from fastsort import networks

diffsort_networks = pytest.importorskip("diffsort.networks")
difftopk_networks = pytest.importorskip("difftopk.networks")

NS = list(range(2, 71))
KS_MAX = 9


# --------------------------------------------------------------------------- helpers
def oracle_layers(matrices):
    """Comparators ``(lo, hi, descending)`` of every layer of a reference network, sorted.

    ``matrices`` is the reference list of per-layer tuples whose first four
    entries are ``split_a [c, n], split_b [c, n], combine_min [n, c], combine_max [n, c]``.
    """
    layers = []
    for split_a, split_b, combine_min, combine_max, *_ in matrices:
        comps = []
        for c in range(split_a.shape[0]):
            a, b = int(np.argmax(split_a[c])), int(np.argmax(split_b[c]))
            assert split_a[c].sum() == 1 and split_b[c].sum() == 1
            if a == b:  # pass-through row (0.5 + 0.5 identity)
                continue
            min_wire = int(np.argmax(combine_min[:, c]))
            max_wire = int(np.argmax(combine_max[:, c]))
            assert {min_wire, max_wire} == {a, b}
            lo, hi = min(a, b), max(a, b)
            comps.append((lo, hi, min_wire == hi))
        layers.append(sorted(comps))
    return layers


def normalized(layers):
    """fastsort layers as sorted lists of ``(lo, hi, bool)`` (duplicates kept, so they show)."""
    return [sorted((int(a), int(b), bool(d)) for a, b, d in layer) for layer in layers]


def assert_disjoint(layers, n):
    for l, layer in enumerate(layers):
        wires = [w for a, b, _ in layer for w in (a, b)]
        assert len(wires) == len(set(wires)), f"layer {l} uses a wire twice: {layer}"
        assert all(0 <= w < n for w in wires), f"layer {l} has a wire outside [0, {n}): {layer}"
        assert all(a < b for a, b, _ in layer), f"layer {l} has a comparator with lo >= hi: {layer}"


def splitter_oracle(n, k, capsys=None):
    net = difftopk_networks.sparse_splitter_selection_network(n, k)  # prints a line: swallow it
    if capsys is not None:
        capsys.readouterr()
    return oracle_layers(net)


def hard_run(layers, values):
    """Run a layer list with exact min/max comparators on a list of numbers."""
    v = list(values)
    for layer in layers:
        for lo, hi, desc in layer:
            small, big = min(v[lo], v[hi]), max(v[lo], v[hi])
            v[lo], v[hi] = (big, small) if desc else (small, big)
    return v


def splitter_cases():
    return [(n, k) for n in NS for k in range(1, min(n, KS_MAX) + 1)]


# --------------------------------------------------------------------------- layer structure vs oracle
@pytest.mark.parametrize("n", NS)
def test_bitonic_layers_match_diffsort(n):
    mine = normalized(networks.bitonic_layers(n))
    assert mine == oracle_layers(diffsort_networks.bitonic_network(n))
    assert_disjoint(mine, n)


@pytest.mark.parametrize("n", NS)
def test_odd_even_layers_match_diffsort(n):
    mine = normalized(networks.odd_even_layers(n))
    assert mine == oracle_layers(diffsort_networks.odd_even_network(n))
    assert_disjoint(mine, n)
    assert all(not d for layer in mine for _, _, d in layer)


@pytest.mark.parametrize("n", NS)
def test_splitter_selection_layers_match_difftopk(n, capsys):
    for k in range(1, min(n, KS_MAX) + 1):
        mine = normalized(networks.splitter_selection_layers(n, k))
        oracle = splitter_oracle(n, k, capsys)
        assert len(mine) == len(oracle), (n, k)
        for l, (a, b) in enumerate(zip(mine, oracle)):
            assert a == b, f"n={n} k={k} layer {l}: {a} != {b}"
        assert_disjoint(mine, n)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 32, 33, 64, 65, 100, 128, 129])
def test_bitonic_depth_formula(n):
    L = math.ceil(math.log2(n))
    assert len(networks.bitonic_layers(n)) == L * (L + 1) // 2
    assert fastsort.get_network("bitonic", n).depth == L * (L + 1) // 2


@pytest.mark.parametrize("n", [2, 3, 10, 33])
def test_odd_even_depth_is_n(n):
    assert len(networks.odd_even_layers(n)) == n
    assert fastsort.get_network("odd_even", n).depth == n


def test_splitter_selection_is_shallower_than_full_sort():
    for n, k in [(16, 1), (32, 2), (64, 5), (70, 9)]:
        assert len(networks.splitter_selection_layers(n, k)) < len(networks.bitonic_layers(n))


@pytest.mark.parametrize("kind,n,k", [("odd_even", 1, None), ("bitonic", 1, None), ("splitter_selection", 1, 1)])
def test_single_wire_network_has_one_pass_through_layer(kind, n, k):
    t = fastsort.get_network(kind, n, k=k)
    assert t.depth == 1
    assert t.partner.tolist() == [[0]]
    assert t.desc.tolist() == [[False]]


@pytest.mark.parametrize("kind,k", [("heap", None), ("splitter_selection", None)])
def test_network_layers_bad_arguments(kind, k):
    with pytest.raises(ValueError, match="unknown network kind|needs k"):
        networks.network_layers(kind, 8, k)


@pytest.mark.parametrize("k", [0, 9])
def test_splitter_selection_k_out_of_range(k):
    with pytest.raises(ValueError, match="1 <= k <= n"):
        networks.splitter_selection_layers(8, k)


@pytest.mark.parametrize("kind,n,k,exc,match", [
    ("bitonic", 0, None, ValueError, "n must be an int >= 1"),
    ("odd_even", 4.5, None, TypeError, "n must be an int, got float 4.5"),
    ("bitonic", True, None, TypeError, "n must be an int, got a bool"),
    ("splitter_selection", 8, None, ValueError, "1 <= k <= n = 8, got k=None"),
    ("splitter_selection", 8, 9, ValueError, "1 <= k <= n = 8, got k=9"),
    ("splitter_selection", 8, 2.0, TypeError, "k must be an int, got float 2.0"),
    ("heap", 8, None, ValueError, "unknown network kind 'heap'"),
])
def test_get_network_bad_arguments(kind, n, k, exc, match):
    """Wrong values are ValueErrors, wrong types TypeErrors (as every other entry point)."""
    with pytest.raises(exc, match=match):
        fastsort.get_network(kind, n, k=k)


def test_get_network_docstring_example():
    t = fastsort.get_network("bitonic", 4)
    assert (t.depth, t.partner.tolist()) == (3, [[1, 0, 3, 2], [2, 3, 0, 1], [1, 0, 3, 2]])


# --------------------------------------------------------------------------- integer tables
TABLE_CASES = (
    [("odd_even", n, None) for n in (2, 3, 8, 13)]
    + [("bitonic", n, None) for n in (2, 3, 5, 8, 13, 33)]
    + [("splitter_selection", n, k) for n, k in ((2, 1), (5, 2), (13, 3), (33, 5), (70, 9))]
)


@pytest.mark.parametrize("kind,n,k", TABLE_CASES)
def test_get_network_tables(kind, n, k):
    t = fastsort.get_network(kind, n, k=k)
    layers = normalized(networks.network_layers(kind, n, k))
    assert (t.kind, t.n) == (kind, n)
    assert t.depth == len(layers)
    assert t.partner.dtype == torch.int32 and t.index.dtype == torch.int64 and t.desc.dtype == torch.bool
    assert t.partner.shape == t.index.shape == t.desc.shape == (len(layers), n)
    assert torch.equal(t.partner.long(), t.index)
    ar = torch.arange(n)
    for l, layer in enumerate(layers):
        p, d = t.index[l], t.desc[l]
        assert torch.equal(p[p], ar), "partner must be an involution"
        assert torch.equal(d, d[p]), "both wires of a comparator share the direction"
        expected_p, expected_d = ar.clone(), torch.zeros(n, dtype=torch.bool)
        for lo, hi, desc in layer:
            expected_p[lo], expected_p[hi] = hi, lo
            expected_d[lo] = expected_d[hi] = desc
        assert torch.equal(p, expected_p)
        assert torch.equal(d, expected_d)


def test_get_network_cache_per_device():
    a = fastsort.get_network("bitonic", 12)
    assert fastsort.get_network("bitonic", 12, "cpu") is a
    assert fastsort.get_network("bitonic", 12, torch.device("cpu")) is a
    # k is ignored by the full sorting networks
    assert fastsort.get_network("bitonic", 12, k=3) is a
    # a different device builds its own tables on that device
    m = fastsort.get_network("bitonic", 12, "meta")
    assert m is not a and m.partner.device.type == "meta" and m.index.device.type == "meta"
    assert fastsort.get_network("bitonic", 12, "meta") is m
    assert a.partner.device.type == "cpu"
    # selection networks are cached per k
    s2 = fastsort.get_network("splitter_selection", 12, k=2)
    s3 = fastsort.get_network("splitter_selection", 12, k=3)
    assert s2 is not s3 and s2.k == 2 and s3.k == 3
    assert fastsort.get_network("splitter_selection", 12, k=2) is s2
    assert fastsort.get_network("odd_even", 12) is not a


# --------------------------------------------------------------------------- hard limit
@pytest.mark.parametrize("n,k", [c for c in splitter_cases() if c[0] % 7 in (0, 2, 3) or c[0] < 12])
def test_splitter_layers_select_top_k_exactly(n, k):
    """Exact comparators: the k largest end on wires n-k..n-1 in ascending order (random permutations)."""
    gen = torch.Generator().manual_seed(n * 100 + k)
    layers = networks.splitter_selection_layers(n, k)
    for _ in range(5):
        v = torch.randperm(n, generator=gen).tolist()
        out = hard_run(layers, v)
        assert out[n - k:] == list(range(n - k, n)), (n, k, v, out)
        assert sorted(out) == list(range(n))


@pytest.mark.parametrize("kind", ["odd_even", "bitonic"])
@pytest.mark.parametrize("n", [2, 3, 5, 6, 7, 8, 11, 16, 23, 37])
def test_sorting_layers_sort_exactly(kind, n):
    gen = torch.Generator().manual_seed(n)
    layers = networks.network_layers(kind, n)
    for _ in range(5):
        v = torch.randperm(n, generator=gen).tolist()
        assert hard_run(layers, v) == list(range(n))


@pytest.mark.parametrize("n,k", [(2, 1), (5, 2), (8, 3), (13, 5), (24, 9), (33, 4), (70, 9)])
def test_splitter_soft_topk_hard_limit(n, k):
    """steepness 1e4 on inputs 1 apart: soft top-k rows are the hard top-k one-hots, in order."""
    gen = torch.Generator().manual_seed(k)
    x = torch.stack([torch.randperm(n, generator=gen) for _ in range(3)]).double()
    P = fastsort.soft_topk(x, k, "splitter_selection", steepness=1e4, distribution="logistic", backend="torch")
    top = torch.topk(x, k, dim=-1)
    hard = torch.nn.functional.one_hot(top.indices, n).double()
    torch.testing.assert_close(P, hard, atol=1e-6, rtol=0)
    torch.testing.assert_close(P @ x.unsqueeze(-1), top.values.unsqueeze(-1), atol=1e-5, rtol=0)
