"""Relaxed comparators: the mixing weight ``alpha`` and its derivative.

A comparator between wires ``lo < hi`` sees ``d = x[hi] - x[lo]`` and computes
``alpha = g(d)`` (SPEC.md, "Relaxed comparator"); ``v = steepness * d``.

| name           | alpha                                                       |
| -------------- | ----------------------------------------------------------- |
| logistic       | sigmoid(v)                                                  |
| logistic_phi   | sigmoid(steepness * d / (|d| + 1e-10) ** art_lambda)         |
| gaussian       | Phi(v)                                                      |
| reciprocal     | 0.5 * (v / (2 + |v|) + 1)                                   |
| cauchy         | atan(v) / pi + 0.5                                          |
| optimal        | clamp(v, -1/4, 1/4) + 1/2 + sign(v) [|v| > 1/4] (1/4 - 1/(16 (|v| + 1e-10))) |

This is the torch implementation used by the torch backend (and the oracle of
the Triton kernels, which carry the same formulas in ``kernels/network.py``).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

DISTRIBUTIONS = ("logistic", "logistic_phi", "gaussian", "reciprocal", "cauchy", "optimal")
# integer codes shared with the Triton kernels (a constexpr switch there)
DISTRIBUTION_CODES = {name: i for i, name in enumerate(DISTRIBUTIONS)}

_EPS = 1e-10
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def check_distribution(distribution: str) -> str:
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    return distribution


def alpha_and_slope(
    d: torch.Tensor, distribution: str, steepness: float, art_lambda: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return ``(alpha, dalpha/dd)`` for the comparator difference ``d = x[hi] - x[lo]``."""
    if distribution == "logistic":
        alpha = torch.sigmoid(d * steepness)
        return alpha, steepness * alpha * (1 - alpha)
    if distribution == "logistic_phi":
        a = d.abs() + _EPS
        scale = steepness * a.pow(-art_lambda)
        alpha = torch.sigmoid(d * scale)
        du = scale * (1 - art_lambda * d.abs() / a)
        return alpha, alpha * (1 - alpha) * du
    v = steepness * d
    if distribution == "gaussian":
        alpha = 0.5 + 0.5 * torch.erf(v * _INV_SQRT2)
        return alpha, steepness * _INV_SQRT2PI * torch.exp(-0.5 * v * v)
    if distribution == "reciprocal":
        den = 2 + v.abs()
        return 0.5 * (v / den + 1), steepness / (den * den)
    if distribution == "cauchy":
        return torch.atan(v) / math.pi + 0.5, steepness / (math.pi * (1 + v * v))
    if distribution == "optimal":
        av = v.abs()
        outer = av > 0.25
        alpha = v.clamp(-0.25, 0.25) + 0.5 + torch.where(outer, torch.sign(v) * (0.25 - 1 / (16 * (av + _EPS))), 0.0)
        den = av + _EPS
        slope = torch.where(outer, 1 / (16 * den * den), torch.ones_like(v))
        return alpha, steepness * slope
    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
