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
the Triton kernels, which carry the same formulas in ``kernels/relaxations.py``).
"""
from __future__ import annotations

import math

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


def relax_alpha(d: torch.Tensor, distribution: str, steepness: float, art_lambda: float) -> torch.Tensor:
    """``alpha = g(d)`` for the comparator difference ``d = x[hi] - x[lo]``."""
    if distribution == "logistic":
        return torch.sigmoid(d * steepness)
    if distribution == "logistic_phi":
        return torch.sigmoid(d * (steepness * (d.abs() + _EPS).pow(-art_lambda)))
    v = d * steepness
    if distribution == "gaussian":
        return torch.erf(v * _INV_SQRT2).mul_(0.5).add_(0.5)
    if distribution == "reciprocal":
        return (v / (v.abs() + 2)).add_(1).mul_(0.5)
    if distribution == "cauchy":
        # atan2(v, 1) is atan(v) (within 1 ulp); on the CPU it runs as a binary op, which ATen
        # parallelises only from 32K elements, while torch.atan (a VML op) wakes the thread pool
        # from 2K: 8 us instead of 11-60 us for the [500, 16] layers of a preselected loss
        return torch.atan2(v, v.new_ones(())).mul_(1 / math.pi).add_(0.5)
    if distribution == "optimal":
        av = v.abs()
        outer = 0.5 - 1 / (16 * (av + _EPS))  # |alpha - 1/2| outside |v| <= 1/4
        return torch.where(av > 0.25, torch.copysign(outer, v), v).add_(0.5)
    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")


def relax_slope(d: torch.Tensor, distribution: str, steepness: float, art_lambda: float) -> torch.Tensor:
    """``dalpha/dd`` for the comparator difference ``d = x[hi] - x[lo]``."""
    if distribution == "logistic":
        a = torch.sigmoid(d * steepness)
        return a * (1 - a) * steepness
    if distribution == "logistic_phi":
        ad = d.abs()
        den = ad + _EPS
        scale = steepness * den.pow(-art_lambda)
        a = torch.sigmoid(d * scale)
        return a * (1 - a) * scale * (1 - art_lambda * ad / den)
    v = d * steepness
    if distribution == "gaussian":
        return torch.exp(v * v * -0.5).mul_(steepness * _INV_SQRT2PI)
    if distribution == "reciprocal":
        den = v.abs() + 2
        return steepness / (den * den)
    if distribution == "cauchy":
        return (v * v + 1).reciprocal_().mul_(steepness / math.pi)
    if distribution == "optimal":
        av = v.abs()
        den = av + _EPS
        return torch.where(av > 0.25, (16 * den * den).reciprocal_(), torch.ones_like(v)).mul_(steepness)
    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")

