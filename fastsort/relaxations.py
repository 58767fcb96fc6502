"""The relaxed comparators: one table of name -> (kernel code, alpha, slope) (docs/design.md, "Relaxed comparators").

A comparator between wires ``lo < hi`` sees ``d = x[hi] - x[lo]``, computes the
mixing weight ``alpha = g(d)`` and, in the backward, its slope ``g'(d)``
(``v = steepness * d``):

| name           | alpha                                                                  |
| -------------- | ---------------------------------------------------------------------- |
| logistic       | sigmoid(v)                                                             |
| logistic_phi   | sigmoid(steepness * d / (abs(d) + 1e-10) ** art_lambda)                |
| gaussian       | Phi(v)                                                                 |
| reciprocal     | 0.5 * (v / (2 + abs(v)) + 1)                                           |
| cauchy         | atan(v) / pi + 0.5                                                     |
| optimal        | clamp(v, -1/4, 1/4) + 1/2 + sign(v) [abs(v) > 1/4] (1/4 - 1/(16 (abs(v) + 1e-10))) |

:data:`RELAXATIONS` is the one table: each entry has the integer code the
compiled kernels switch on (``kernels/relaxations.py`` for Triton,
``kernels/cpu_relaxations.py`` for the CPU kernels, both of which reject an
unknown code) and the torch formulas of ``alpha`` and the slope, which the
torch backend runs and the kernels are tested against.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, NamedTuple

import torch

__all__ = ["RELAXATIONS", "DISTRIBUTIONS", "relaxation_code", "relax_alpha", "relax_slope"]

_EPS = 1e-10
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


# --------------------------------------------------------------------------- the formulas, alpha and slope
# each takes (d, steepness, art_lambda); v = steepness * d
def _logistic(d, s, lam):
    return torch.sigmoid(d * s)


def _logistic_slope(d, s, lam):
    a = torch.sigmoid(d * s)
    return a * (1 - a) * s


def _logistic_phi(d, s, lam):
    return torch.sigmoid(d * (s * (d.abs() + _EPS).pow(-lam)))


def _logistic_phi_slope(d, s, lam):
    ad = d.abs()
    den = ad + _EPS
    scale = s * den.pow(-lam)
    a = torch.sigmoid(d * scale)
    return a * (1 - a) * scale * (1 - lam * ad / den)


def _gaussian(d, s, lam):
    return torch.erf(d * (s * _INV_SQRT2)).mul_(0.5).add_(0.5)


def _gaussian_slope(d, s, lam):
    v = d * s
    return torch.exp(v * v * -0.5).mul_(s * _INV_SQRT2PI)


def _reciprocal(d, s, lam):
    v = d * s
    return (v / (v.abs() + 2)).add_(1).mul_(0.5)


def _reciprocal_slope(d, s, lam):
    den = (d * s).abs() + 2
    return s / (den * den)


def _cauchy(d, s, lam):
    # atan2(v, 1) is atan(v) within 1 ulp and cheaper on the CPU (docs/design.md, "Kernel design and the measurements behind it")
    v = d * s
    return torch.atan2(v, v.new_ones(())).mul_(1 / math.pi).add_(0.5)


def _cauchy_slope(d, s, lam):
    v = d * s
    return (v * v + 1).reciprocal_().mul_(s / math.pi)


def _optimal(d, s, lam):
    v = d * s
    av = v.abs()
    outer = 0.5 - 1 / (16 * (av + _EPS))  # |alpha - 1/2| outside |v| <= 1/4
    return torch.where(av > 0.25, torch.copysign(outer, v), v).add_(0.5)


def _optimal_slope(d, s, lam):
    av = (d * s).abs()
    den = av + _EPS
    return torch.where(av > 0.25, (16 * den * den).reciprocal_(), torch.ones_like(av)).mul_(s)


class Relaxation(NamedTuple):
    """One relaxed comparator: the compiled kernels' ``code`` and the torch ``alpha`` / ``slope``."""

    code: int
    alpha: Callable[[torch.Tensor, float, float], torch.Tensor]
    slope: Callable[[torch.Tensor, float, float], torch.Tensor]


#: the one table of relaxations (the codes are the kernels' constexpr switch values)
RELAXATIONS: Dict[str, Relaxation] = {
    "logistic": Relaxation(0, _logistic, _logistic_slope),
    "logistic_phi": Relaxation(1, _logistic_phi, _logistic_phi_slope),
    "gaussian": Relaxation(2, _gaussian, _gaussian_slope),
    "reciprocal": Relaxation(3, _reciprocal, _reciprocal_slope),
    "cauchy": Relaxation(4, _cauchy, _cauchy_slope),
    "optimal": Relaxation(5, _optimal, _optimal_slope),
}
DISTRIBUTIONS = tuple(RELAXATIONS)


def _entry(distribution: str) -> Relaxation:
    try:
        return RELAXATIONS[distribution]
    except (KeyError, TypeError):
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}") from None


def check_distribution(distribution: str) -> str:
    """``distribution`` if it names a relaxation, else a ``ValueError`` listing them."""
    _entry(distribution)
    return distribution


def relaxation_code(distribution: str) -> int:
    """The integer code of a relaxation, what the compiled kernels switch on."""
    return _entry(distribution).code


def relax_alpha(d: torch.Tensor, distribution: str, steepness: float, art_lambda: float) -> torch.Tensor:
    """``alpha = g(d)`` for the comparator difference ``d = x[hi] - x[lo]``."""
    return _entry(distribution).alpha(d, steepness, art_lambda)


def relax_slope(d: torch.Tensor, distribution: str, steepness: float, art_lambda: float) -> torch.Tensor:
    """``dalpha/dd`` for the comparator difference ``d = x[hi] - x[lo]``."""
    return _entry(distribution).slope(d, steepness, art_lambda)
