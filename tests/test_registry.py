"""The method registry, the relaxation table and the custom-op helper (docs/design.md, "Methods and the registry").

* every registered method parses its defaults, rejects unknown parameters, and
  every op it lists runs through the public function (shapes checked here; the
  values are checked against references in the method's own test module);
* an op a method does not list raises a ``ValueError`` generated from the
  registry, naming the methods that do;
* the relaxation table has one code per relaxation, and the Triton switch
  rejects an unknown code at compile time;
* :class:`fastsort._kernel_op.KernelOp`: eager Function, no-grad path and
  custom op agree, and gradients reach only the differentiable inputs.
"""
import pytest
import torch
import triton
import triton.language as tl

import fastsort
from fastsort import relaxations
from fastsort._kernel_op import KernelOp
from fastsort.kernels.relaxations import relax
from fastsort.method import OPS

OP_CALLS = {
    "sort": lambda x, m, **p: fastsort.soft_sort(x, m, **p),
    "rank": lambda x, m, **p: fastsort.soft_rank(x, m, **p),
    "topk": lambda x, m, **p: fastsort.soft_topk(x, 2, m, **p),
    "permutation": lambda x, m, **p: fastsort.soft_permutation(x, m, **p),
    "topk_mask": lambda x, m, **p: fastsort.soft_topk_mask(x, 2, m, **p),
    "loss": lambda x, m, **p: fastsort.topk_cross_entropy(x, torch.tensor([0, 3]), [0.5, 0.5], m),
}
SHAPES = {"sort": (2, 5), "rank": (2, 5), "topk": (2, 2, 5), "permutation": (2, 5, 5), "topk_mask": (2, 5),
          "loss": ()}


def test_registry_is_a_mapping_of_method_objects():
    assert list(fastsort.METHODS) == ["odd_even", "bitonic", "splitter_selection", "neuralsort", "softsort",
                                      "sinkhorn"] + [m for m in fastsort.METHODS if m == "permutahedron"]
    for name, method in fastsort.METHODS.items():
        assert method.name == name
        assert set(method.ops) <= set(OPS)
        assert set(method.kernels) <= {"triton", "numba"}
        assert method.parse({}) == method.check(dict(method.defaults))


@pytest.mark.parametrize("name,op", [(name, op) for name, m in fastsort.METHODS.items() for op in OPS])
def test_every_listed_op_runs_and_the_others_raise(name, op):
    x = torch.randn(2, 5)
    method = fastsort.METHODS[name]
    if op in method.ops:
        assert OP_CALLS[op](x, name).shape == SHAPES[op]
        return
    with pytest.raises(ValueError) as err:
        OP_CALLS[op](x, name)
    msg = str(err.value)
    assert f"method={name!r} does not support {OPS[op]}" in msg
    assert ", ".join(fastsort.METHODS.supporting(op)) in msg


def test_splitter_selection_names_its_limitation_and_the_alternatives():
    with pytest.raises(ValueError, match="top-k selection network.*methods that do: odd_even, bitonic"):
        fastsort.soft_sort(torch.randn(2, 5), "splitter_selection")


@pytest.mark.parametrize("name", list(fastsort.METHODS))
def test_unknown_parameter_is_a_type_error_listing_the_real_ones(name):
    with pytest.raises(TypeError, match=r"unexpected parameter\(s\) \['bogus'\].*it takes"):
        fastsort.METHODS[name].parse({"bogus": 1})


def test_unknown_method_lists_the_registry():
    with pytest.raises(ValueError, match="method must be one of .*'bitonic'"):
        fastsort.soft_sort(torch.randn(2, 5), "quicksort")
    assert fastsort.METHODS.supporting("permutation")[:2] == ("odd_even", "bitonic")


# --------------------------------------------------------------------------- relaxation table
def test_relaxation_table_codes_are_unique_and_dense():
    codes = [r.code for r in relaxations.RELAXATIONS.values()]
    assert sorted(codes) == list(range(len(codes)))
    assert relaxations.DISTRIBUTIONS == tuple(relaxations.RELAXATIONS)
    with pytest.raises(ValueError, match="distribution must be one of"):
        relaxations.relax_alpha(torch.zeros(1), "laplace", 1.0, 0.25)
    with pytest.raises(ValueError, match="distribution must be one of"):
        relaxations.relaxation_code("laplace")


@triton.jit
def _relax_probe(X, Y, DIST: tl.constexpr):
    a, s = relax(tl.load(X + tl.arange(0, 4)), 1.0, 0.25, DIST)
    tl.store(Y + tl.arange(0, 4), a + s)


def test_triton_relaxation_switch_rejects_an_unknown_code():
    """The Triton switch compiles the relaxation of a code only; a code outside the table fails
    instead of silently running the last branch."""
    x, y = torch.randn(4), torch.empty(4)
    _relax_probe[(1,)](x, y, DIST=relaxations.relaxation_code("optimal"))  # the last code still runs
    a = relaxations.relax_alpha(x, "optimal", 1.0, 0.25) + relaxations.relax_slope(x, "optimal", 1.0, 0.25)
    torch.testing.assert_close(y, a)
    with pytest.raises(Exception, match="unknown relaxation code"):
        _relax_probe[(1,)](x, y, DIST=len(relaxations.RELAXATIONS))


# --------------------------------------------------------------------------- KernelOp
def _square_fwd(x: torch.Tensor, scale: float, need_grad: bool) -> tuple:
    y = x * x * scale
    return (y, x.clone() if need_grad else x.new_empty(0))


def _square_bwd(gy: torch.Tensor, x: torch.Tensor, scale: float) -> torch.Tensor:
    return 2 * scale * x * gy


# annotations for torch.library's schema inference
_square_fwd.__annotations__["return"] = tuple[torch.Tensor, torch.Tensor]
_SQUARE = KernelOp("test_square", _square_fwd, _square_bwd, n_outputs=1,
                   forward_fake=lambda x, scale, need_grad: (torch.empty_like(x), x.new_empty(x.shape if need_grad
                                                                                          else 0)),
                   backward_fake=lambda gy, x, scale: torch.empty_like(x))


def test_kernel_op_eager_nograd_and_compiled_agree():
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    y = _SQUARE(x, 3.0)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y, 3 * x * x)
    torch.testing.assert_close(g, 6 * x)
    with torch.no_grad():
        torch.testing.assert_close(_SQUARE(x, 3.0), 3 * x * x)
    compiled = torch.compile(lambda t: _SQUARE(t, 3.0).sum(), fullgraph=True, backend="eager")
    (gc,) = torch.autograd.grad(compiled(x), x)
    torch.testing.assert_close(gc, 6 * x)
    assert torch.autograd.gradcheck(lambda t: _SQUARE(t, 3.0), (x,))
