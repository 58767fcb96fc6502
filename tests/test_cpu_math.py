"""The CPU kernels' vectorising exp / log (fastsort.kernels.cpu_relaxations) against libm (numpy's)."""
import numpy as np
import pytest

numba = pytest.importorskip("numba")

from fastsort.kernels import cpu_relaxations as cr  # noqa: E402

RNG = np.random.default_rng(20261202)


@numba.njit(error_model="numpy", fastmath={"contract"})
def _exp_block(x, out):
    for k in range(x.shape[0]):
        out[k] = cr.exp_f64(x[k])


@numba.njit(error_model="numpy", fastmath={"contract"})
def _log_block(x, out):
    for k in range(x.shape[0]):
        out[k] = cr.log_f64(x[k])


@numba.njit(error_model="numpy", fastmath={"contract"})
def _pow_block(x, lam, out):
    for k in range(x.shape[0]):
        out[k] = cr._pow_neg(x[k], lam, cr._root_count(lam))


def _ulps(got, want):
    return np.abs(got - want) / np.spacing(np.abs(want))


def _run(block, x, *args):
    out = np.full_like(x, np.nan)
    block(x, *args, out)
    return out


def test_exp_within_one_ulp_of_libm():
    x = np.concatenate([RNG.uniform(-746, 710, 200_000), RNG.uniform(-1, 1, 50_000), RNG.uniform(-746, -700, 50_000),
                        RNG.uniform(700, 709.78, 50_000), [1.0, -1.0, 0.5, np.log(2.0), -np.log(2.0) / 2]])
    got = _run(_exp_block, x)
    with np.errstate(over="ignore", under="ignore"):
        want = np.exp(x)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))  # overflow where libm's does
    normal = (want >= np.finfo(np.float64).tiny) & np.isfinite(want)
    assert _ulps(got[normal], want[normal]).max() <= 1.0
    # subnormal results: at most one unit of the least subnormal off (a single rounding)
    sub = want < np.finfo(np.float64).tiny
    assert np.abs(got[sub] - want[sub]).max() <= 5e-324
    # the block loop (vectorised) gives the scalar function's values
    np.testing.assert_array_equal(got[:1000], [cr.exp_f64(v) for v in x[:1000]])


@pytest.mark.parametrize("x, want", [(0.0, 1.0), (-0.0, 1.0), (np.inf, np.inf), (-np.inf, 0.0), (1e300, np.inf),
                                     (-1e300, 0.0), (709.79, np.inf), (-745.14, 0.0), (-745.13, 5e-324),
                                     (709.78, 1.7928227943945155e308)])
def test_exp_special_values(x, want):
    got = _run(_exp_block, np.array([x]))[0]
    assert got == want or abs(got - want) <= np.spacing(want)
    assert np.isnan(_run(_exp_block, np.array([np.nan]))[0])


def test_log_within_one_ulp_of_libm():
    x = np.concatenate([10.0 ** RNG.uniform(-307, 308, 200_000), RNG.uniform(0.5, 2.0, 100_000),
                        RNG.uniform(1e-10, 10.0, 50_000), [np.sqrt(2.0), np.nextafter(np.sqrt(2.0), 2.0), 2.0, 0.5]])
    got = _run(_log_block, x)
    want = np.log(x)
    assert _ulps(got, want).max() <= 1.0
    np.testing.assert_array_equal(got[:1000], [cr.log_f64(v) for v in x[:1000]])


def test_log_special_values():
    x = np.array([1.0, 0.0, -0.0, -1.0, np.inf, np.nan, 5e-324, 1e-310, np.finfo(np.float64).max])
    got = _run(_log_block, x)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.log(x)
    np.testing.assert_array_equal(got[:6], want[:6])  # 0, -inf, -inf, NaN, inf, NaN exactly
    assert _ulps(got[6:], want[6:]).max() <= 1.0  # subnormals (scaled first) and the largest float


@pytest.mark.parametrize("lam", [0.25, 0.5, 1.0, -0.3])
def test_power_of_logistic_phi(lam):
    """``b ** -lam`` for the bases logistic_phi sees (``|d| + 1e-10``): relative error ~|lam log b| ulp."""
    b = np.concatenate([np.abs(RNG.standard_normal(50_000)) + 1e-10, 10.0 ** RNG.uniform(-10, 30, 50_000)])
    got = _run(_pow_block, b, lam)
    want = b ** -lam
    assert (np.abs(got - want) / want).max() < 5e-14
    special = np.array([np.inf, np.nan])
    np.testing.assert_array_equal(_run(_pow_block, special, lam), special ** -lam)
    np.testing.assert_array_equal(_run(_pow_block, special, 0.0), [1.0, 1.0])  # x ** 0 = 1, as Python's and torch's
