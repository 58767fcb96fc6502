"""The six relaxed comparators for the compiled CPU kernels (numba), in one place.

A comparator that sees ``d = x[hi] - x[lo]`` mixes its wires with ``alpha = g(d)``;
the backward needs the slope ``g'(d)``.  ``code`` is a *runtime* integer, the
relaxation's code in :data:`fastsort.relaxations.RELAXATIONS` (docs/design.md,
"Relaxed comparators")::

    0 logistic, 1 logistic_phi, 2 gaussian, 3 reciprocal, 4 cauchy, 5 optimal

The one table is the pair of functions per code below (``_logistic`` /
``_logistic_slope`` ...), dispatched two ways:

* :func:`alpha` / :func:`slope`: one scalar ``d``;
* :func:`alphas` / :func:`slopes`: a block of differences ``d [K] -> out [K]``,
  one loop per code, each of which vectorises (the network kernels run ``K``
  rows side by side); the tests check that both dispatches give the same
  numbers.

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
vectorises.  The network kernels' fused cauchy comparator (:func:`cauchy_encoded`,
:func:`cauchy_slope`) evaluates that polynomial in float32 arithmetic for a
float32 ``d`` (twice the lanes, float32 division), the smaller of ``alpha`` and
``1 - alpha`` straight from it, so the tails keep their relative precision down
to 2e-8 (exactly 0 beyond, as float32's ``atan(v) / pi + 1/2``).  The exponentials, logarithms and powers (logistic, logistic_phi,
the gaussian's slope) are :func:`exp_f64` / :func:`log_f64`: float64 to about
1 ulp of libm's, written so that a block loop vectorises (libm's scalar calls
kept the logistic block ~1.5x and logistic_phi's ~1.4x slower on the benchmark
machine); ``erfc`` (the gaussian's ``alpha``) stays libm's.  Their polynomials
use fused multiply-adds (:func:`_muladd`); nothing else is fused.  A NaN ``d`` gives a NaN ``alpha`` for every relaxation, and a NaN
slope except for ``optimal`` (``steepness``, like the torch formula's ``where``).

Importing this module imports numba; the kernel modules that use it
(:mod:`fastsort.kernels.cpu_network`, :mod:`fastsort.kernels.cpu_topk_loss`) are
only imported when the CPU kernels run.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

LOGISTIC, LOGISTIC_PHI, GAUSSIAN, RECIPROCAL, CAUCHY, OPTIMAL = range(6)
#: the kernels' codes by name; the same numbers as ``fastsort.relaxations.RELAXATIONS`` (checked by the tests)
CODES = {"logistic": LOGISTIC, "logistic_phi": LOGISTIC_PHI, "gaussian": GAUSSIAN, "reciprocal": RECIPROCAL,
         "cauchy": CAUCHY, "optimal": OPTIMAL}

_EPS = 1e-10
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_PI = 1.0 / math.pi
#: Cephes' float32 atan polynomial on |t| <= tan(pi / 8): atan(t) = t + t z (c3 + z (c2 + z (c1 + z c0))), z = t^2
_ATAN_C = (8.05374449538e-2, -1.38776856032e-1, 1.99777106478e-1, -3.33329491539e-1)

#: how every function here is compiled (see the module docstring)
_JIT = dict(cache=True, inline="always", error_model="numpy")
#: the block loops (compiled once per dtype, not inlined)
_BLOCK_JIT = dict(cache=True, error_model="numpy")


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
    c0, c1, c2, c3 = _ATAN_C
    p = (((c0 * z + c1) * z + c2) * z + c3) * z * t + t
    return math.copysign(base + p, v)  # a NaN v takes the last branch: t = NaN


_F32 = np.float32


@numba.njit(**_JIT)
def _cauchy_encoded_f32(d, steepness):
    """Cauchy's ``alpha`` of a float32 difference ``d``, in float32 arithmetic: ``(e, alpha, 1 - alpha)``
    with ``e`` the weight *encoded* as the network kernels store it: ``alpha`` when ``alpha <= 1/2``,
    else ``-(1 - alpha)`` (see ``cpu_network._weights``).  The reduction and polynomial of :func:`atan_f32`, in float32 (8 lanes
    per AVX2 vector instead of 4, and float32 division); the smaller of ``alpha`` and ``1 - alpha``
    comes out directly -- ``atan(1 / |v|) / pi`` beyond ``|v| = tan(3 pi / 8)``, ``1/2 - atan(|v|) / pi``
    below it (at least 1/8 there) -- so the tails keep float32 relative precision (``atan(v) / pi + 1/2``
    in float32 would round them to multiples of 2^-25) down to 2e-8 (``|v| = 2^24``), beyond which the
    smaller weight is exactly 0, as there.  ``d = +-inf`` gives exactly 0 / 1; NaN stays NaN."""
    F = _F32
    v = d * F(steepness)
    a = abs(v)
    big = a > F(2.414213562373095)  # tan(3 pi / 8)
    mid = a > F(0.41421356237309503)  # tan(pi / 8)
    num = F(-1.0) if big else (a - F(1.0) if mid else a)
    den = a if big else (a + F(1.0) if mid else F(1.0))
    t = num / den
    z = t * t
    c0, c1, c2, c3 = _ATAN_C
    p = (((F(c0) * z + F(c1)) * z + F(c2)) * z + F(c3)) * z * t + t  # atan(t)
    base = F(0.7853981633974483) if mid else F(0.0)
    # min(alpha, 1 - alpha); |p| = -p for big (t < 0); exactly 0 from |v| = 2^24 on (below 2e-8), where
    # float32's atan(v) / pi + 1/2 rounds it to 0 as well: a stand-in for an infinity
    # (functional.STAND_IN_GAP) must get weight 0, not 1e-31 of its 1e30
    small = (F(0.0) if a >= F(16777216.0) else abs(p) * F(_INV_PI)) if big else F(0.5) - (base + p) * F(_INV_PI)
    large = F(1.0) - small
    if v < F(0.0):
        return small, small, large
    return -small, large, small  # (v = 0: alpha = 1/2 stored as -1/2, as the encoding does; NaN: NaN)


@numba.njit(**_JIT)
def _cauchy_encoded_f64(d, steepness):
    """:func:`_cauchy_encoded_f32` for a float64 ``d``: the table's formula (libm's ``atan``), then encoded."""
    a = _cauchy(d, steepness, 0.0)
    return (a if a <= 0.5 else -(1.0 - a)), a, 1.0 - a


@numba.njit(**_JIT)
def _cauchy_slope_f32(d, steepness):
    """Cauchy's slope of a float32 difference ``d`` in float32 arithmetic (no cancellation in it)."""
    v = d * _F32(steepness)
    return _F32(steepness * _INV_PI) / (v * v + _F32(1.0))


def cauchy_slope(d, steepness):
    """Cauchy's slope of one difference ``d``, in the precision of ``d``'s type (the overload below)."""
    return _cauchy_slope(d, steepness, 0.0)


@overload(cauchy_slope, inline="always")
def _cauchy_slope_overload(d, steepness):
    if isinstance(d, types.Float) and d.bitwidth == 32:
        return lambda d, steepness: _cauchy_slope_f32(d, steepness)
    return lambda d, steepness: _cauchy_slope(d, steepness, 0.0)


def cauchy_encoded(d, steepness):
    """Cauchy's ``(encoded alpha, alpha, 1 - alpha)`` of one difference ``d``, in the precision of ``d``'s type (compiled
    through the overload below: :func:`_cauchy_encoded_f32` or :func:`_cauchy_encoded_f64`)."""
    return _cauchy_encoded_f64(d, steepness)


@overload(cauchy_encoded, inline="always")
def _cauchy_encoded_overload(d, steepness):
    if isinstance(d, types.Float) and d.bitwidth == 32:
        return lambda d, steepness: _cauchy_encoded_f32(d, steepness)
    return lambda d, steepness: _cauchy_encoded_f64(d, steepness)


# --------------------------------------------------------------------------- exp and log that vectorise
# numba's math.exp / math.log / ``**`` are scalar libm calls, which keep a block loop from vectorising
# (a logistic comparator cost ~2x a cauchy one, logistic_phi's power ~3x).  These are float64 to
# about 1 ulp (checked against libm by the tests), from float64 bit patterns: the two
# reinterpretations below are LLVM bitcasts, free inside a vector loop, and every integer step is
# one that AVX2 has (64-bit adds and logical shifts; a float -> int64 conversion, which it lacks,
# is done by adding 1.5 * 2^52 and reading the low mantissa bits).
@intrinsic
def _bits(typingctx, x):
    """The bit pattern of a float64 as an int64 (an LLVM bitcast)."""
    if not (isinstance(x, types.Float) and x.bitwidth == 64):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(x), codegen


@intrinsic
def _from_bits(typingctx, b):
    """The float64 whose bit pattern is the int64 ``b`` (an LLVM bitcast)."""
    if not (isinstance(b, types.Integer) and b.bitwidth == 64):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(b), codegen


@intrinsic
def _muladd(typingctx, a, b, c):
    """``a * b + c`` as LLVM's ``fmuladd``: one fused multiply-add where the CPU has one (one rounding),
    else a multiply and an add.  Only in the polynomials below: a global ``fastmath={"contract"}``
    would also fuse the relaxations' own formulas, e.g. cauchy's ``atan(v) / pi + 1/2``, which must
    give exactly 0 at ``atan(v) = -pi/2`` (a masked class's weight; fused, it gives ~1e-17)."""
    if not all(isinstance(t, types.Float) and t.bitwidth == 64 for t in (a, b, c)):
        return None

    def codegen(context, builder, sig, args):
        f64 = ir.DoubleType()
        fn = builder.module.declare_intrinsic("llvm.fmuladd", [f64], ir.FunctionType(f64, [f64, f64, f64]))
        return builder.call(fn, args)
    return types.float64(a, b, c), codegen


_ROUND = 6755399441055744.0  # 1.5 * 2^52: ulp 1 in [2^52, 2^53), so v + _ROUND rounds v to an integer
_ROUND_BITS = 0x4338000000000000  # its bit pattern: bits(_ROUND + j) = _ROUND_BITS + j for |j| < 2^51
_LN2_HI = 6.93147180369123816490e-01  # ln 2 in two parts (Cody and Waite): q * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_LOG2E = 1.4426950408889634
#: exp(r) on |r| <= ln(2) / 2: Taylor coefficients 1/j!, j = 2..13 (truncation error below 1e-17)
_EXP_C = tuple(1.0 / math.factorial(j) for j in range(2, 14))
#: 2 atanh(s) = 2 s + s (2 s^2 / 3 + 2 s^4 / 5 + ...): the coefficients 2 / (2 j + 1), j = 1..11 (|s| <= 0.172)
_LOG_C = tuple(2.0 / (2 * j + 1) for j in range(1, 12))
_MANTISSA = 0x000FFFFFFFFFFFFF
_ONE_BITS = 0x3FF0000000000000
_SQRT2 = 1.4142135623730951
_TINY = 2.2250738585072014e-308  # the least normal float64


@numba.njit(**_JIT)
def _times_pow2(y, q):
    """``y 2^q`` for ``y`` in ``[1/2, 2]`` and an integer-valued float64 ``-2044 <= q <= 2046``: two
    multiplications by normal powers of two (``2^h``, then ``2^(q - h)``, ``h = floor(q / 2)``), so a
    subnormal or infinite result comes from one rounding, as libm's."""
    h = np.floor(q * 0.5)
    first = _from_bits((_bits(h + _ROUND) - (_ROUND_BITS - 1023)) << 52)
    second = _from_bits((_bits((q - h) + _ROUND) - (_ROUND_BITS - 1023)) << 52)
    return (y * first) * second


@numba.njit(**_JIT)
def exp_f64(x):
    """``exp(x)`` in float64 (within ~1 ulp of libm's; +-inf and NaN as libm), vectorising.

    ``q = round(x / ln 2)``, ``r = x - q ln 2`` (two parts: exact), ``exp(r)`` by its Taylor
    polynomial of degree 13, times ``2^q``.  ``x`` is clamped to ``[-1000, 1000]`` (NaN passes),
    where ``exp`` is already 0 / inf."""
    xc = 1000.0 if x > 1000.0 else (-1000.0 if x < -1000.0 else x)
    q = (xc * _LOG2E + _ROUND) - _ROUND
    r = (xc - q * _LN2_HI) - q * _LN2_LO
    c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13 = _EXP_C
    p = c13
    for c in (c12, c11, c10, c9, c8, c7, c6, c5, c4, c3, c2):  # (unrolled: a tuple of constants)
        p = _muladd(p, r, c)
    return _times_pow2(_muladd(p * r, r, r) + 1.0, q)


@numba.njit(**_JIT)
def log_f64(x):
    """``log(x)`` in float64 (within ~1 ulp of libm's; 0 -> -inf, negative -> NaN, inf and NaN as libm),
    vectorising.

    ``x = 2^e m`` from the bits, ``m`` in ``[sqrt(1/2), sqrt(2))``; with ``f = m - 1`` and
    ``s = f / (2 + f)``, ``log(m) = 2 atanh(s) = f - s (f - R(s^2))``, ``R`` a degree-11 polynomial
    in ``s^2``; ``log(x) = e ln 2 + log(m)`` (``ln 2`` in two parts).  Subnormals are scaled by
    ``2^54`` first."""
    sub = x < _TINY
    xs = x * 18014398509481984.0 if sub else x  # 2^54
    b = _bits(xs)
    e = (_from_bits((b >> 52) + (_ROUND_BITS - 1023)) - _ROUND) - (54.0 if sub else 0.0)
    m = _from_bits((b & _MANTISSA) | _ONE_BITS)  # in [1, 2)
    big = m > _SQRT2
    m = m * 0.5 if big else m
    e = e + 1.0 if big else e
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11 = _LOG_C
    R = c11
    for c in (c10, c9, c8, c7, c6, c5, c4, c3, c2, c1):
        R = _muladd(R, z, c)
    R = R * z
    r = e * _LN2_HI + ((f - s * (f - R)) + e * _LN2_LO)
    r = r if x < math.inf else x  # inf, NaN
    return r if x > 0.0 else (-math.inf if x == 0.0 else math.nan)


@numba.njit(**_JIT)
def _root_count(lam):
    """How :func:`_pow_neg` computes ``b ** -lam``: 1 / 2 for ``lam`` = 1/2 / 1/4 (one / two square roots),
    0 otherwise (exp and log)."""
    return 1 if lam == 0.5 else (2 if lam == 0.25 else 0)


@numba.njit(**_JIT)
def _pow_neg(b, lam, roots):
    """``b ** (-lam)`` for ``b > 0`` (or inf, NaN), with ``roots = _root_count(lam)``: ``lam = 1/2`` and ``1/4``
    (difftopk's ``art_lambda`` in ``train_imagenet.py`` and both references' default) by square roots, one
    instruction each (within 2 ulp; a third of logistic_phi's comparator cost), any other as ``exp(-lam
    log b)``, where ``lam = 0`` gives exactly 1 (also for inf and NaN, as Python's and torch's ``pow``).
    The block loops pass ``roots`` as a constant: a branch on ``lam`` inside them keeps them from
    vectorising."""
    if roots == 1:
        return 1.0 / math.sqrt(b)
    if roots == 2:
        return 1.0 / math.sqrt(math.sqrt(b))
    return 1.0 if lam == 0.0 else exp_f64(-lam * log_f64(b))


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
    e = exp_f64(-abs(v))
    return (1.0 if v >= 0.0 else e) / (1.0 + e)  # (one division, selected numerator: the loop vectorises)


@numba.njit(**_JIT)
def _sigmoid_slope(v):
    """``sigmoid(v) (1 - sigmoid(v)) = e / (1 + e)^2`` with ``e = exp(-|v|)`` (exact in both tails)."""
    e = exp_f64(-abs(v))
    return e / ((1.0 + e) * (1.0 + e))


# --------------------------------------------------------------------------- the table: alpha and slope per code
@numba.njit(**_JIT)
def _logistic(d, s, lam):
    return _sigmoid(d * s)


@numba.njit(**_JIT)
def _logistic_slope(d, s, lam):
    return _sigmoid_slope(d * s) * s


@numba.njit(**_JIT)
def _logistic_phi(d, s, lam, roots):
    return _sigmoid(d * (s * _pow_neg(abs(d) + _EPS, lam, roots)))


@numba.njit(**_JIT)
def _logistic_phi_slope(d, s, lam, roots):
    ad = abs(d)
    den = ad + _EPS
    scale = s * _pow_neg(den, lam, roots)
    return _sigmoid_slope(d * scale) * scale * (1.0 - lam * ad / den)


@numba.njit(**_JIT)
def _gaussian(d, s, lam):
    return 0.5 * math.erfc(-(d * s) * _INV_SQRT2)


@numba.njit(**_JIT)
def _gaussian_slope(d, s, lam):
    v = d * s
    return exp_f64(-0.5 * v * v) * (s * _INV_SQRT2PI)


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
        return _logistic_phi(d, steepness, art_lambda, _root_count(art_lambda))
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
        return _logistic_phi_slope(d, steepness, art_lambda, _root_count(art_lambda))
    if code == GAUSSIAN:
        return _gaussian_slope(d, steepness, art_lambda)
    if code == RECIPROCAL:
        return _reciprocal_slope(d, steepness, art_lambda)
    if code == CAUCHY:
        return _cauchy_slope(d, steepness, art_lambda)
    if code == OPTIMAL:
        return _optimal_slope(d, steepness, art_lambda)
    raise ValueError("unknown relaxation code (expected 0..5)")


@numba.njit(**_BLOCK_JIT)
def alphas(d, out, code, steepness, art_lambda):
    """``out[k] = alpha(d[k])`` for a block ``d [K]`` (float64 ``out [K]``): one loop per code, each of which
    vectorises.  (One loop over :func:`alpha` relied on LLVM unswitching the loop-invariant dispatch,
    which it stops doing once the six bodies are large: with the vectorising exp and log, cauchy's
    block then ran 15% slower.)"""
    K = d.shape[0]
    s, lam = steepness, art_lambda
    if code == LOGISTIC:
        for k in range(K):
            out[k] = _logistic(d[k], s, lam)
    elif code == LOGISTIC_PHI and _root_count(lam) == 1:  # (a constant count per loop: see _pow_neg)
        for k in range(K):
            out[k] = _logistic_phi(d[k], s, lam, 1)
    elif code == LOGISTIC_PHI and _root_count(lam) == 2:
        for k in range(K):
            out[k] = _logistic_phi(d[k], s, lam, 2)
    elif code == LOGISTIC_PHI:
        for k in range(K):
            out[k] = _logistic_phi(d[k], s, lam, 0)
    elif code == GAUSSIAN:
        for k in range(K):
            out[k] = _gaussian(d[k], s, lam)
    elif code == RECIPROCAL:
        for k in range(K):
            out[k] = _reciprocal(d[k], s, lam)
    elif code == CAUCHY:
        for k in range(K):
            out[k] = _cauchy(d[k], s, lam)
    elif code == OPTIMAL:
        for k in range(K):
            out[k] = _optimal(d[k], s, lam)
    else:
        raise ValueError("unknown relaxation code (expected 0..5)")


@numba.njit(**_BLOCK_JIT)
def slopes(d, out, code, steepness, art_lambda):
    """``out[k] = slope(d[k])`` for a block ``d [K]`` (float64 ``out [K]``), as :func:`alphas`."""
    K = d.shape[0]
    s, lam = steepness, art_lambda
    if code == LOGISTIC:
        for k in range(K):
            out[k] = _logistic_slope(d[k], s, lam)
    elif code == LOGISTIC_PHI and _root_count(lam) == 1:  # (a constant count per loop: see _pow_neg)
        for k in range(K):
            out[k] = _logistic_phi_slope(d[k], s, lam, 1)
    elif code == LOGISTIC_PHI and _root_count(lam) == 2:
        for k in range(K):
            out[k] = _logistic_phi_slope(d[k], s, lam, 2)
    elif code == LOGISTIC_PHI:
        for k in range(K):
            out[k] = _logistic_phi_slope(d[k], s, lam, 0)
    elif code == GAUSSIAN:
        for k in range(K):
            out[k] = _gaussian_slope(d[k], s, lam)
    elif code == RECIPROCAL:
        for k in range(K):
            out[k] = _reciprocal_slope(d[k], s, lam)
    elif code == CAUCHY:
        for k in range(K):
            out[k] = _cauchy_slope(d[k], s, lam)
    elif code == OPTIMAL:
        for k in range(K):
            out[k] = _optimal_slope(d[k], s, lam)
    else:
        raise ValueError("unknown relaxation code (expected 0..5)")
