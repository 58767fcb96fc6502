"""The six relaxed comparators for the compiled CPU kernels (numba), in one place.

A comparator that sees ``d = x[hi] - x[lo]`` mixes its wires with ``alpha = g(d)``;
the backward needs the slope ``g'(d)``.  ``code`` is a *runtime* integer, the
relaxation's code in :data:`fastsort.relaxations.RELAXATIONS` (docs/design.md,
"Relaxed comparators")::

    0 logistic, 1 logistic_phi, 2 gaussian, 3 reciprocal, 4 cauchy, 5 optimal

The one table is the pair of functions per code below (``_logistic`` /
``_logistic_slope`` ...), dispatched two ways:

* :func:`alpha` / :func:`slope`: one scalar ``d``;
* :func:`alphas` / :func:`slopes`: a block of differences ``d [K] -> out [K]``
  through the scalar dispatch, whose loop-invariant switch LLVM moves out of the
  loop, so that the loop over the block vectorises (the network kernels run
  ``K`` rows side by side).

A runtime switch rather than one compiled kernel per relaxation: each kernel is
compiled once for all six (JIT time counts).  An unknown code raises
``ValueError``; there is no default branch.  The per-code functions and the
scalar dispatch are inlined where they are used (``inline="always"``); the block
versions are compiled once per dtype of ``d`` and called once per comparator
and block (inlining them into every kernel cost compile time, not run time).
Everything uses numpy's error model (a float division by zero is IEEE inf/NaN,
as in torch, and no zero check blocks vectorisation).

The formulas are the torch backend's (``fastsort/relaxations.py``), evaluated
in float64 (``d * steepness`` with the launchers' Python-float ``steepness``).
What differs from the torch code is rounding only, keeping tiny probabilities'
relative precision: ``sigmoid(v)`` is evaluated as ``exp(v) / (1 + exp(v))`` for
``v < 0`` (as torch's sigmoid does internally) and its slope as
``e / (1 + e)^2`` with ``e = exp(-|v|)``; ``Phi(v)`` as ``erfc(-v / sqrt 2) / 2``
(``(1 + erf(v / sqrt 2)) / 2`` rounds to 0 below ``v ~ -8.3``); ``atan`` depends
on the type of ``d``: libm's for a float64 ``d`` (the float64 kernels), for a
float32 ``d`` (a float32 kernel's difference of two wires) the Triton kernels'
float32-accurate polynomial (:func:`atan_f32`, evaluated in float64: relative
error ~1e-7, also in the tails where ``alpha`` is close to 0 or 1), which
vectorises.  A NaN ``d`` gives a NaN ``alpha`` for every relaxation, and a NaN
slope except for ``optimal`` (``steepness``, like the torch formula's ``where``).

Importing this module imports numba; the kernel modules that use it
(:mod:`fastsort.kernels.cpu_network`, :mod:`fastsort.kernels.cpu_topk_loss`) are
only imported when the CPU kernels run.
"""
from __future__ import annotations

import math

import numba
from numba import types
from numba.extending import overload

LOGISTIC, LOGISTIC_PHI, GAUSSIAN, RECIPROCAL, CAUCHY, OPTIMAL = range(6)
#: the kernels' codes by name; the same numbers as ``fastsort.relaxations.RELAXATIONS`` (checked by the tests)
CODES = {"logistic": LOGISTIC, "logistic_phi": LOGISTIC_PHI, "gaussian": GAUSSIAN, "reciprocal": RECIPROCAL,
         "cauchy": CAUCHY, "optimal": OPTIMAL}

_EPS = 1e-10
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_PI = 1.0 / math.pi

#: how every function here is compiled (see the module docstring)
_JIT = dict(cache=True, inline="always", error_model="numpy")


def relaxation_code(distribution: str) -> int:
    """The kernels' integer code of a relaxation's name (``ValueError`` for an unknown name)."""
    try:
        return CODES[distribution]
    except (KeyError, TypeError):
        raise ValueError(f"distribution must be one of {tuple(CODES)}, got {distribution!r}") from None


@numba.njit(cache=True, error_model="numpy")
def check_code(code):
    """Raise for a code outside ``0..5``: the kernels call this once, before their parallel loops."""
    if code < 0 or code > OPTIMAL:
        raise ValueError("unknown relaxation code (expected 0..5)")


# --------------------------------------------------------------------------- helpers
@numba.njit(**_JIT)
def atan_f32(v):
    """``atan(v)`` to float32 accuracy: Cephes' reduction to ``|t| <= tan(pi/8)`` and a degree-9
    odd polynomial (selects, no branches), in float64 arithmetic."""
    a = abs(v)
    big = a > 2.414213562373095  # tan(3 pi / 8)
    mid = a > 0.41421356237309503  # tan(pi / 8)
    num = -1.0 if big else (a - 1.0 if mid else a)
    den = a if big else (a + 1.0 if mid else 1.0)
    t = num / den
    base = 1.5707963267948966 if big else (0.7853981633974483 if mid else 0.0)
    z = t * t
    p = (((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z - 3.33329491539e-1) * z * t + t
    return math.copysign(base + p, v)  # a NaN v takes the last branch: t = NaN


def _atan(v, d):
    """``atan(v)`` at the precision of ``d``'s type (compiled through the overload below)."""
    return math.atan(v)


@overload(_atan, inline="always")
def _atan_overload(v, d):
    if isinstance(d, types.Float) and d.bitwidth == 32:
        return lambda v, d: atan_f32(v)
    return lambda v, d: math.atan(v)


@numba.njit(**_JIT)
def _sigmoid(v):
    """``1 / (1 + exp(-v))`` without overflow, with full relative precision for ``v < 0``."""
    e = math.exp(-abs(v))
    return 1.0 / (1.0 + e) if v >= 0.0 else e / (1.0 + e)


@numba.njit(**_JIT)
def _sigmoid_slope(v):
    """``sigmoid(v) (1 - sigmoid(v)) = e / (1 + e)^2`` with ``e = exp(-|v|)`` (exact in both tails)."""
    e = math.exp(-abs(v))
    return e / ((1.0 + e) * (1.0 + e))


# --------------------------------------------------------------------------- the table: alpha and slope per code
@numba.njit(**_JIT)
def _logistic(d, s, lam):
    return _sigmoid(d * s)


@numba.njit(**_JIT)
def _logistic_slope(d, s, lam):
    return _sigmoid_slope(d * s) * s


@numba.njit(**_JIT)
def _logistic_phi(d, s, lam):
    return _sigmoid(d * (s * (abs(d) + _EPS) ** (-lam)))


@numba.njit(**_JIT)
def _logistic_phi_slope(d, s, lam):
    ad = abs(d)
    den = ad + _EPS
    scale = s * den ** (-lam)
    return _sigmoid_slope(d * scale) * scale * (1.0 - lam * ad / den)


@numba.njit(**_JIT)
def _gaussian(d, s, lam):
    return 0.5 * math.erfc(-(d * s) * _INV_SQRT2)


@numba.njit(**_JIT)
def _gaussian_slope(d, s, lam):
    v = d * s
    return math.exp(-0.5 * v * v) * (s * _INV_SQRT2PI)


@numba.njit(**_JIT)
def _reciprocal(d, s, lam):
    v = d * s
    return 0.5 * (v / (abs(v) + 2.0) + 1.0)


@numba.njit(**_JIT)
def _reciprocal_slope(d, s, lam):
    den = abs(d * s) + 2.0
    return s / (den * den)


@numba.njit(**_JIT)
def _cauchy(d, s, lam):
    return _atan(d * s, d) * _INV_PI + 0.5


@numba.njit(**_JIT)
def _cauchy_slope(d, s, lam):
    v = d * s
    return (s * _INV_PI) / (v * v + 1.0)


@numba.njit(**_JIT)
def _optimal(d, s, lam):
    v = d * s
    av = abs(v)
    # |alpha - 1/2| = 1/2 - 1/(16 |v|) outside |v| <= 1/4, v inside (and NaN stays NaN)
    return 0.5 + (math.copysign(0.5 - 1.0 / (16.0 * (av + _EPS)), v) if av > 0.25 else v)


@numba.njit(**_JIT)
def _optimal_slope(d, s, lam):
    av = abs(d * s)
    den = av + _EPS
    return s / (16.0 * den * den) if av > 0.25 else s  # (NaN: s, as the torch formula's where())


# --------------------------------------------------------------------------- dispatch
@numba.njit(**_JIT)
def alpha(d, code, steepness, art_lambda):
    """Mixing weight ``alpha = g(d)`` of relaxation ``code`` for one difference ``d``."""
    if code == LOGISTIC:
        return _logistic(d, steepness, art_lambda)
    if code == LOGISTIC_PHI:
        return _logistic_phi(d, steepness, art_lambda)
    if code == GAUSSIAN:
        return _gaussian(d, steepness, art_lambda)
    if code == RECIPROCAL:
        return _reciprocal(d, steepness, art_lambda)
    if code == CAUCHY:
        return _cauchy(d, steepness, art_lambda)
    if code == OPTIMAL:
        return _optimal(d, steepness, art_lambda)
    raise ValueError("unknown relaxation code (expected 0..5)")


@numba.njit(**_JIT)
def slope(d, code, steepness, art_lambda):
    """``g'(d) = dalpha/dd`` of relaxation ``code`` for one difference ``d``."""
    if code == LOGISTIC:
        return _logistic_slope(d, steepness, art_lambda)
    if code == LOGISTIC_PHI:
        return _logistic_phi_slope(d, steepness, art_lambda)
    if code == GAUSSIAN:
        return _gaussian_slope(d, steepness, art_lambda)
    if code == RECIPROCAL:
        return _reciprocal_slope(d, steepness, art_lambda)
    if code == CAUCHY:
        return _cauchy_slope(d, steepness, art_lambda)
    if code == OPTIMAL:
        return _optimal_slope(d, steepness, art_lambda)
    raise ValueError("unknown relaxation code (expected 0..5)")


@numba.njit(cache=True, error_model="numpy")
def alphas(d, out, code, steepness, art_lambda):
    """``out[k] = alpha(d[k])`` for a block ``d [K]`` (float64 ``out [K]``).  The loop vectorises: ``code``
    is loop-invariant, so LLVM unswitches the dispatch (measured as fast as one loop per code)."""
    for k in range(d.shape[0]):
        out[k] = alpha(d[k], code, steepness, art_lambda)


@numba.njit(cache=True, error_model="numpy")
def slopes(d, out, code, steepness, art_lambda):
    """``out[k] = slope(d[k])`` for a block ``d [K]`` (float64 ``out [K]``), as :func:`alphas`."""
    for k in range(d.shape[0]):
        out[k] = slope(d[k], code, steepness, art_lambda)
