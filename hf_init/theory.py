"""Variance-propagation theory for fully connected networks (pure functions, numpy only).

Conventions: a layer computes z_l = W_l phi(z_{l-1}) + b_l with W_l entries i.i.d. of variance
sigma_w^2 = std^2 and fan_in n_{l-1}. The *critical std* is the std at which, with zero bias,
the signal neither grows nor shrinks with depth: n sigma_w^2 E[phi'(z)^2] = 1 at the fixed point.
"""

from __future__ import annotations

import math

# E[phi'(z)^2] at the zero-bias fixed point, where the closed form is exact:
# relu: phi' is 1 on half the mass -> 1/2; linear: 1; tanh: the fixed point is q* = 0, phi'(0) = 1.
_CHI_FACTOR = {"relu": 0.5, "linear": 1.0, "tanh": 1.0}


def critical_std(activation: str, fan_in: int) -> float:
    """The std sigma_w at which zero-bias signal propagation is critical:
    relu sqrt(2 / fan_in) (He et al. 2015), linear and tanh 1 / sqrt(fan_in)."""
    if activation not in _CHI_FACTOR:
        raise ValueError(f"no critical std for activation {activation!r}; valid: {', '.join(_CHI_FACTOR)}")
    if fan_in < 1:
        raise ValueError(f"fan_in must be >= 1, got {fan_in}")
    return 1.0 / math.sqrt(fan_in * _CHI_FACTOR[activation])
