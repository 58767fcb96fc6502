"""Smooth top-k SVM losses (Berrada, Zisserman and Kumar, ICLR 2018).

"Smooth Loss Functions for Deep Top-k Classification" smooths the top-k
multi-class SVM loss with a temperature ``tau``. For one sample with scores
``x`` (``C`` classes) and true class ``y``, let ``x1`` be the ``C - 1`` scores
of the other classes and ``x2 = x[y]``, both divided by ``k * tau``, and let
``e_j`` be the elementary symmetric polynomial of degree ``j`` of ``exp(x1)``.
Then::

    loss = tau * (log(e_k * exp(alpha / tau) + e_{k-1} * exp(x2))
                  - log(e_{k-1} * exp(x2)))
         = tau * softplus(alpha / tau + log e_k - log e_{k-1} - x2)

The *hard* variant (``SmoothHardTopKLoss``) switches, per sample, to the
non-smooth top-k SVM loss when the gap between the k-th and (k+1)-th largest
score (over all classes) is at least ``k * tau * log(1000)``, i.e. where the
smooth loss is numerically indistinguishable from the hard one::

    hard_loss = max(0, mean(topk(x1 + alpha, k)) - (sum(topk(x1, k - 1)) + x[y]) / k)

(unscaled scores). Both match ``difftopk.SmoothTopKLoss`` and
``difftopk.SmoothHardTopKLoss`` (difftopk 0.2.0, alpha = 1), whose "mean" is
the sum of the per-sample losses divided by the batch size.

The elementary symmetric polynomials are the coefficients of the product of
the polynomials ``1 + exp(x_i) t`` (truncated at degree ``k``), multiplied
out pairwise (divide and conquer, ``ceil(log2 C)`` vectorised levels).  The
loss computes them in the compute dtype (float32, or float64 for float64
logits) from ``z_i = exp(x_i - max_j x_j) <= 1``: every coefficient is then
a sum of positive terms no larger than ``C(C - 1, k)``, so no cancellation
occurs, and a hand-written backward walks the same levels down
(:class:`_ShiftedESP`).  Rows whose ``e_{k-1}`` or ``e_k`` come too close to
the dtype's underflow to keep its full relative precision (scores spread by
many ``k * tau``; :func:`_fast_path_floor`), or that are not finite, are
recomputed in log space by :func:`log_elementary_symmetric` with plain
autograd.  Both give the exact gradient, also for ``k = 1``, where
difftopk's hand-written backward is not: it takes ``d log e_0 / dx = 1``
instead of 0, adding ``-sigmoid(z_b) / B`` (about ``-1 / B``) to the gradient
of every non-label logit (float64 finite differences agree with fastsort).
"""
from __future__ import annotations

import math

import torch

from ._validate import as_int, as_positive, as_positive_int, as_real, check_logits_labels, check_reduction
from .losses import reduce_loss

__all__ = [
    "log_elementary_symmetric",
    "smooth_topk_svm_loss",
    "SmoothTopKLoss",
    "SmoothHardTopKLoss",
]

# difftopk's switch to the hard loss: gap >= k * tau * log(_HARD_THRESH)
_HARD_THRESH = 1e3
_LOW_PRECISION = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------
# log-space elementary symmetric polynomials
# ---------------------------------------------------------------------------


def _safe_logsumexp(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``logsumexp`` whose gradient stays finite when a whole slice is ``-inf``.

    ``torch.logsumexp`` returns ``-inf`` for an all ``-inf`` slice but its
    backward then computes ``exp(-inf - (-inf)) = nan``; here such slices get a
    zero gradient. NaN inputs still give NaN.
    """
    m = t.amax(dim=dim, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(t - m).sum(dim=dim)
    m = m.squeeze(dim)
    empty = s == 0
    s_safe = torch.where(empty, torch.ones_like(s), s)
    return torch.where(empty, torch.full_like(s, -math.inf), m + torch.log(s_safe))


def _log_poly_mul(a: torch.Tensor, b: torch.Tensor, n_coeffs: int) -> torch.Tensor:
    """Product of polynomials given by log coefficients, truncated to ``n_coeffs``.

    ``a`` and ``b`` have shape ``[..., d]`` (coefficients of degree ``0..d-1``);
    returns ``[..., min(2d - 1, n_coeffs)]`` with
    ``c_j = logsumexp_i(a_i + b_{j-i})``.
    """
    d = a.shape[-1]
    d_out = min(2 * d - 1, n_coeffs)
    i = torch.arange(d, device=a.device)[:, None]
    j = torch.arange(d_out, device=a.device)[None, :]
    shift = j - i  # [d, d_out]: degree of b paired with a_i for output degree j
    valid = (shift >= 0) & (shift < d)
    b_toeplitz = b[..., shift.clamp(0, d - 1)]  # [..., d, d_out]
    b_toeplitz = b_toeplitz.masked_fill(~valid, -math.inf)
    return _safe_logsumexp(a.unsqueeze(-1) + b_toeplitz, dim=-2)


def log_elementary_symmetric(x: torch.Tensor, k: int) -> torch.Tensor:
    """Log of the elementary symmetric polynomials ``e_0 .. e_k`` of ``exp(x)``.

    ``e_j(z) = sum over subsets S of size j of prod_{i in S} z_i``, taken along
    the last dimension. The result is computed entirely in log space (pairwise
    divide-and-conquer products of ``1 + exp(x_i) t`` truncated at degree
    ``k``, ``ceil(log2(n))`` vectorised steps), so it neither overflows nor
    underflows, and it is differentiable with finite gradients.

    Args:
        x: floating tensor of shape ``[..., n]`` (``-inf`` entries stand for
            zeros of ``exp(x)``).
        k: highest degree, ``k >= 0``; degrees above ``n`` give ``-inf``.

    Returns:
        Tensor of shape ``[..., k + 1]``: ``out[..., j] = log e_j(exp(x))``
        (``out[..., 0] == 0``).

    Example:
        >>> x = torch.log(torch.tensor([1.0, 2.0, 3.0]))
        >>> log_elementary_symmetric(x, 3).exp().round()
        tensor([ 1.,  6., 11.,  6.])
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}; convert it with x.float()")
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension (the last one is reduced), got a 0-d tensor")
    k = as_int(k, "k")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")

    n_coeffs = k + 1
    if x.shape[-1] == 0:  # empty product: e_0 = 1, e_j = 0
        out = x.new_full((*x.shape[:-1], n_coeffs), -math.inf)
        out[..., 0] = 0.0
        return out

    # one polynomial 1 + exp(x_i) t per entry: log coefficients [0, x_i]
    polys = torch.stack([torch.zeros_like(x), x], dim=-1)[..., :n_coeffs]  # [..., n, d]
    while polys.shape[-2] > 1:
        if polys.shape[-2] % 2:  # pad with the polynomial 1 (log coefficients [0, -inf, ...])
            one = x.new_full((*polys.shape[:-2], 1, polys.shape[-1]), -math.inf)
            one[..., 0] = 0.0
            polys = torch.cat([polys, one], dim=-2)
        polys = _log_poly_mul(polys[..., 0::2, :], polys[..., 1::2, :], n_coeffs)
    out = polys[..., 0, :]
    if out.shape[-1] < n_coeffs:  # k > n: e_j = 0 for j > n
        out = torch.cat([out, out.new_full((*out.shape[:-1], n_coeffs - out.shape[-1]), -math.inf)], dim=-1)
    return out


# ---------------------------------------------------------------------------
# the loss's fast path: linear-space coefficients of exp(u - max), float64
# ---------------------------------------------------------------------------


def _poly_levels(z: torch.Tensor, n_coeffs: int):
    """Multiply out ``prod_i (1 + z_i t)`` over the last dim of ``z [B, n]``, truncated to ``n_coeffs``.

    The polynomials are kept degree-major, ``[d, B, P]`` (coefficient ``j`` of every polynomial is
    one contiguous block), padded with the polynomial ``1`` to a power of two, and each level
    multiplies the first half by the second.  Returns ``(coeffs [B, n_coeffs'], levels)``:
    ``levels[l] = (a, b)`` are the operands ``[d, B, P / 2]`` of level ``l`` (what the backward
    needs).  No autograd.
    """
    batch, n = z.shape
    width = 1 << max(n - 1, 0).bit_length()
    polys = z.new_zeros((min(2, n_coeffs), batch, width))
    polys[0] = 1.0
    if n_coeffs > 1:
        polys[1, :, :n] = z
    levels = []
    while polys.shape[2] > 1:
        half = polys.shape[2] // 2
        a, b = polys[:, :, :half], polys[:, :, half:]
        levels.append((a, b))
        d = a.shape[0]
        d_out = min(2 * d - 1, n_coeffs)
        c = a.new_empty((d_out, batch, half))
        c[:d] = b  # the a_0 = 1 term
        c[d:] = 0.0
        for i in range(1, d):
            w = min(d, d_out - i)
            c[i:i + w].addcmul_(a[i:i + 1], b[:w])
        polys = c
    return polys[:, :, 0].t(), levels


def _poly_levels_backward(g: torch.Tensor, levels, n: int) -> torch.Tensor:
    """``d<g, coeffs>/dz [B, n]`` for :func:`_poly_levels`, ``g [B, n_coeffs']``: the levels walked
    down."""
    g = g.t().unsqueeze(2)  # [d_out, B, 1]
    for a, b in reversed(levels):
        d, d_out, half = a.shape[0], g.shape[0], a.shape[2]
        g_new = a.new_empty((d, a.shape[1], 2 * half))
        ga, gb = g_new[:, :, :half], g_new[:, :, half:]
        ga.copy_(g[:d].expand_as(ga))  # t = 0: b_0 = 1 (and a_0 = 1 below); d <= d_out
        gb.copy_(g[:d].expand_as(gb))
        for t in range(1, d):  # c_{i+t} += a_i b_t
            w = min(d, d_out - t)
            ga[:w].addcmul_(g[t:t + w], b[t:t + 1])
            gb[:w].addcmul_(g[t:t + w], a[t:t + 1])
        g = g_new
    return g[1, :, :n]  # leaves 1 + z_i t: the gradient of z_i is that of coefficient 1


class _ShiftedESP(torch.autograd.Function):
    """``e_0 .. e_k`` of ``z = exp(u)`` per row of ``u [B, n]`` (float64, entries ``<= 0``), the
    ``labels`` column left out (``z_y = 0``); the backward is hand-written (no graph per level)."""

    @staticmethod
    def forward(ctx, u, labels, k):
        z = u.exp().scatter_(1, labels.unsqueeze(1), 0.0)
        e, levels = _poly_levels(z, k + 1)
        ctx.levels = levels
        ctx.save_for_backward(z)
        return e

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        gz = _poly_levels_backward(g.to(z.dtype), ctx.levels, z.shape[1])
        return gz * z, None, None  # dz/du = z (0 at the label)


def _fast_path_floor(n: int, k: int, dtype: torch.dtype) -> float:
    """The smallest ``e_{k-1}``, ``e_k`` that the fast path computes to the precision of ``dtype``.

    With ``z <= 1`` every partial coefficient is at most ``C(n, k)``.  A subnormal intermediate
    carries an absolute error of at most half the smallest subnormal, which reaches a result
    multiplied by a complementary coefficient (``<= C(n, k)``), for at most ``n (k + 1)^2``
    products; rows below ``1 / eps`` times that bound go to the log-space path.  ``inf`` (every
    row does) when ``C(n, k)`` itself could overflow ``dtype``.
    """
    info = torch.finfo(dtype)
    log_comb = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(max(n - k, 0) + 1)
    if log_comb > 0.9 * math.log(info.max):
        return math.inf
    half_subnormal = math.log(info.smallest_normal) + math.log(info.eps) - math.log(2.0)
    return math.exp(log_comb + math.log(n * (k + 1) ** 2) + half_subnormal - math.log(info.eps))


def _log_esp_pair(x: torch.Tensor, labels: torch.Tensor, k: int, scale: float):
    """``(log e_{k-1}, log e_k)`` of ``exp(x_c / scale)`` over the classes ``c != label``, ``[B]`` each,
    for ``x [B, C]`` float32 or float64 (computed in that dtype; float32 in float64 where
    ``C(C - 1, k)`` exceeds its range).

    The linear-space path of :class:`_ShiftedESP` for every row it keeps to the dtype's precision,
    the log-space :func:`log_elementary_symmetric` for the others (see the module docstring).
    """
    batch, num_classes = x.shape
    lab = labels.unsqueeze(1)
    u = x / scale
    floor = _fast_path_floor(num_classes - 1, k, u.dtype)
    if floor == math.inf and u.dtype != torch.float64:  # C(n, k) beyond float32's range
        u, floor = u.double(), _fast_path_floor(num_classes - 1, k, torch.float64)
    shift = u.detach().scatter(1, lab, -math.inf).amax(dim=1, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    e = _ShiftedESP.apply(u - shift, labels, k)[:, k - 1:k + 1]  # [B, 2]
    ok = torch.isfinite(e).all(dim=1) & (e >= floor).all(dim=1)
    # log of the trusted rows only: a 0 of an untrusted row would give 0 / 0 in the backward
    log_e = torch.log(torch.where(ok.unsqueeze(1), e, torch.ones_like(e)))
    log_e = log_e + shift * torch.arange(k - 1, k + 1, dtype=u.dtype, device=u.device)
    if not bool(ok.all()):
        rows = (~ok).nonzero().squeeze(1)
        lab_r = lab[rows]
        cols = torch.arange(num_classes - 1, device=x.device).expand(rows.numel(), -1)
        cols = cols + (cols >= lab_r).long()
        slow = log_elementary_symmetric(u[rows].gather(1, cols), k)[:, k - 1:k + 1]
        log_e = log_e.index_put((rows,), slow)
    return log_e[:, 0].to(x.dtype), log_e[:, 1].to(x.dtype)


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------


def _check_alpha(alpha) -> float:
    alpha = as_real(alpha, "alpha")
    if not -math.inf < alpha < math.inf:  # NaN fails too
        raise ValueError(f"alpha must be finite, got {alpha}")
    return alpha


def _check_inputs(logits, labels, k: int) -> None:
    check_logits_labels(logits, labels, "num_classes")
    if k >= logits.shape[1]:
        raise ValueError(f"k must be < num_classes={logits.shape[1]} (logits.shape[1]), got k={k}")


def smooth_topk_svm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    k: int,
    tau: float = 1.0,
    alpha: float = 1.0,
    hard: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """Smooth top-k SVM loss of Berrada et al. (2018).

    Args:
        logits: ``[B, C]`` floating scores (float16/bfloat16 are computed in
            float32 and the result is cast back).
        labels: ``[B]`` integer class indices in ``[0, C)``.
        k: top-k size, ``1 <= k < C``.
        tau: temperature ``> 0``; smaller is closer to the hard top-k SVM.
        alpha: margin (difftopk uses 1).
        hard: per-sample switch to the hard top-k SVM loss where the k-th and
            (k+1)-th largest scores differ by ``>= k * tau * log(1000)``
            (``difftopk.SmoothHardTopKLoss``).
        reduction: ``"mean"`` (sum over the batch divided by ``B``, as
            difftopk), ``"sum"`` or ``"none"`` (``[B]`` per-sample losses).

    Returns:
        A scalar (``"mean"``/``"sum"``) or a ``[B]`` tensor, in the dtype of
        ``logits``.

    Example:
        >>> logits = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
        >>> labels = torch.tensor([0, 2])
        >>> smooth_topk_svm_loss(logits, labels, k=2, tau=1.0).shape
        torch.Size([])
    """
    k = as_positive_int(k, "k")
    tau = as_positive(tau, "tau")
    alpha = _check_alpha(alpha)
    reduction = check_reduction(reduction)
    _check_inputs(logits, labels, k)

    out_dtype = logits.dtype
    x = logits.float() if out_dtype in _LOW_PRECISION else logits
    labels = labels.long()
    lab = labels.unsqueeze(1)
    x2 = x.gather(1, lab).squeeze(1)  # the true-class score

    scale = k * tau
    log_e_km1, log_e_k = _log_esp_pair(x, labels, k, scale)  # over the C - 1 other scores
    z = alpha / tau + log_e_k - log_e_km1 - x2 / scale
    loss = tau * torch.logaddexp(z, torch.zeros_like(z))  # tau * softplus(z)

    if hard:
        top = x.detach().topk(k + 1, dim=1).values
        is_hard = (top[:, k - 1] - top[:, k]) >= k * tau * math.log(_HARD_THRESH)
        # the k largest other scores (the label, at -inf, never ranks among them)
        top_others = x.scatter(1, lab, -math.inf).topk(k, dim=1).values
        max_1 = (top_others + alpha).mean(dim=1)
        max_2 = (top_others[:, :k - 1].sum(dim=1) + x2) / k
        hard_loss = torch.clamp(max_1 - max_2, min=0)
        loss = torch.where(is_hard, hard_loss, loss)

    return reduce_loss(loss, reduction).to(out_dtype)


class SmoothTopKLoss(torch.nn.Module):
    """Smooth top-k SVM loss (``difftopk.SmoothTopKLoss``) as a module.

    Args:
        k: top-k size, ``1 <= k < C``.
        tau: temperature ``> 0``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Shapes: ``forward(logits [B, C] float, labels [B] int)`` returns a scalar,
    or ``[B]`` with ``reduction="none"``.

    Example:
        >>> loss_fn = SmoothTopKLoss(k=2, tau=0.5)
        >>> loss = loss_fn(torch.randn(4, 10, requires_grad=True), torch.tensor([1, 0, 9, 3]))
        >>> loss.backward()
    """

    hard = False

    def __init__(self, k: int, tau: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.k = as_positive_int(k, "k")
        self.tau = as_positive(tau, "tau")
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return smooth_topk_svm_loss(
            logits, labels, self.k, tau=self.tau, alpha=1.0, hard=self.hard, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"k={self.k}, tau={self.tau}, reduction={self.reduction!r}"


class SmoothHardTopKLoss(SmoothTopKLoss):
    """Smooth top-k SVM loss with the per-sample hard switch (``difftopk.SmoothHardTopKLoss``).

    Samples whose k-th and (k+1)-th largest scores differ by at least
    ``k * tau * log(1000)`` use the hard top-k SVM loss, the others the smooth
    one. Same arguments and shapes as :class:`SmoothTopKLoss`.

    Example:
        >>> loss_fn = SmoothHardTopKLoss(k=1, tau=1.0)
        >>> loss_fn(torch.tensor([[100.0, 0.0, -5.0]]), torch.tensor([0]))
        tensor(0.)
    """

    hard = True
