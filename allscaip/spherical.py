"""Real spherical harmonics in e3nn's convention, as fairchem's AllScAIP uses them.

Convention (matched to ``e3nn.o3._spherical_harmonics``): real harmonics without the
Condon-Shortley phase, 'component' normalisation (sum over m of Y_lm^2 = 2l+1 on the
unit sphere), the polar axis along y, components ordered m = -l..l. Each Y_lm is a
homogeneous polynomial of degree l, so the zero vector maps to [1, 0, 0, ...].

Evaluated as r^l P_l^m(cos theta) {cos, sin}(m phi) = Q_lm(z', r^2) * {Re, Im}(x' + i y')^m
with (x', y', z') = (z, x, y), where Q_lm follows the associated-Legendre recurrence.
"""

from __future__ import annotations

import math
from typing import List

import torch


def _normalisation(l: int, m: int) -> float:
    factor = (2 * l + 1) * math.factorial(l - m) / math.factorial(l + m)
    return math.sqrt(factor if m == 0 else 2.0 * factor)


def spherical_harmonics(lmax: int, vectors: torch.Tensor) -> torch.Tensor:
    """Y_lm for l = 0..lmax of unit (or zero) ``vectors`` (..., 3) -> (..., (lmax+1)^2)."""
    xp = vectors[..., 2]
    yp = vectors[..., 0]
    zp = vectors[..., 1]
    r2 = xp * xp + yp * yp + zp * zp
    ones = torch.ones_like(xp)

    # cos_m[m], sin_m[m]: real and imaginary parts of (x' + i y')^m
    cos_m: List[torch.Tensor] = [ones]
    sin_m: List[torch.Tensor] = [torch.zeros_like(xp)]
    for m in range(1, lmax + 1):
        cos_m.append(xp * cos_m[m - 1] - yp * sin_m[m - 1])
        sin_m.append(xp * sin_m[m - 1] + yp * cos_m[m - 1])

    # legendre[l][m] = Q_lm(z', r^2), homogeneous of degree l - m
    legendre: List[List[torch.Tensor]] = []
    for l in range(lmax + 1):
        row: List[torch.Tensor] = []
        for m in range(l + 1):
            if m == l:
                double_factorial = 1.0
                for odd in range(1, 2 * m, 2):
                    double_factorial *= odd
                row.append(ones * double_factorial)
            elif m == l - 1:
                row.append((2 * m + 1) * zp * legendre[l - 1][m])
            else:
                row.append(((2 * l - 1) * zp * legendre[l - 1][m]
                            - (l + m - 1) * r2 * legendre[l - 2][m]) / (l - m))
        legendre.append(row)

    components: List[torch.Tensor] = []
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            am = abs(m)
            azimuthal = sin_m[am] if m < 0 else cos_m[am]
            components.append(_normalisation(l, am) * legendre[l][am] * azimuthal)
    return torch.stack(components, dim=-1)
