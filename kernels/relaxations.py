"""The six relaxed comparators as Triton device functions (docs/design.md, "Relaxed comparators").

``relax(d, steepness, art_lambda, DIST)`` returns ``(alpha, dalpha/dd)`` for the
comparator difference ``d = x[hi] - x[lo]``; ``DIST`` is a ``constexpr``, the
relaxation's code in the one table ``fastsort.relaxations.RELAXATIONS``
(an unknown code fails to compile).  All arithmetic is float32.  ``atan`` is a
polynomial: ``tl.math`` has no ``atan`` under the interpreter, and this keeps
one code path for both.
"""
import triton
import triton.language as tl

from ..relaxations import relaxation_code as dist_code  # noqa: F401  (the launchers' ``DIST`` constexpr)


PI = tl.constexpr(3.141592653589793)
INV_SQRT2 = tl.constexpr(0.7071067811865476)
INV_SQRT2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def atan(v):
    """float32 arctangent: Cephes' range reduction to ``|t| <= tan(pi/8)`` and a
    degree-9 odd minimax polynomial (max error ~2 ulp)."""
    a = tl.abs(v)
    big = a > 2.414213562373095  # tan(3 pi / 8)
    mid = a > 0.41421356237309503  # tan(pi / 8)
    t = tl.where(big, -1.0 / tl.maximum(a, 1e-30), tl.where(mid, (a - 1.0) / (a + 1.0), a))
    base = tl.where(big, PI / 2, tl.where(mid, PI / 4, 0.0))
    z = t * t
    p = (((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z - 3.33329491539e-1) * z * t + t
    r = base + p
    return tl.where(v < 0, -r, r)


@triton.jit
def relax(d, steepness, art_lambda, DIST: tl.constexpr):
    """Mixing weight ``alpha = g(d)`` and its slope ``g'(d)``."""
    if DIST == 0:  # logistic
        alpha = tl.sigmoid(d * steepness)
        slope = steepness * alpha * (1.0 - alpha)
    elif DIST == 1:  # logistic_phi (activation replacement trick)
        ad = tl.abs(d) + 1e-10
        scale = steepness * tl.exp(-art_lambda * tl.log(ad))
        alpha = tl.sigmoid(d * scale)
        slope = alpha * (1.0 - alpha) * scale * (1.0 - art_lambda * tl.abs(d) / ad)
    elif DIST == 2:  # gaussian: Phi(v)
        v = steepness * d
        alpha = 0.5 + 0.5 * tl.math.erf(v * INV_SQRT2)
        slope = steepness * INV_SQRT2PI * tl.exp(-0.5 * v * v)
    elif DIST == 3:  # reciprocal
        v = steepness * d
        den = 2.0 + tl.abs(v)
        alpha = 0.5 * (v / den + 1.0)
        slope = steepness / (den * den)
    elif DIST == 4:  # cauchy
        v = steepness * d
        alpha = atan(v) / PI + 0.5
        slope = steepness / (PI * (1.0 + v * v))
    else:  # optimal (monotonic, Petersen et al. ICLR 2022)
        tl.static_assert(DIST == 5, "unknown relaxation code: see fastsort.relaxations.RELAXATIONS")
        v = steepness * d
        av = tl.abs(v)
        outer = av > 0.25
        den = av + 1e-10
        sgn = tl.where(v < 0, -1.0, 1.0)
        # inside |v| <= 1/4 the clamp is v itself (and NaN stays NaN); outside
        # clamp + sign * (1/4 - 1/(16 |v|)) = sign * (1/2 - 1/(16 |v|))
        alpha = 0.5 + tl.where(outer, sgn * (0.5 - 1.0 / (16.0 * den)), v)
        slope = steepness * tl.where(outer, 1.0 / (16.0 * den * den), 1.0)
    return alpha, slope
