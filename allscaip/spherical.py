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


def monomial_exponents(lmax: int) -> torch.Tensor:
    """(3, M) exponents (a, b, c) of the monomials x^a y^b z^c of degree <= lmax."""
    triples = [(a, b, degree - a - b) for degree in range(lmax + 1)
               for a in range(degree, -1, -1) for b in range(degree - a, -1, -1)]
    return torch.tensor(triples, dtype=torch.long).T.contiguous()


def monomials(vectors: torch.Tensor, exponents: torch.Tensor, lmax: int) -> torch.Tensor:
    """(..., 3) -> (..., M): every monomial x^a y^b z^c of ``exponents`` (3, M)."""
    powers: List[torch.Tensor] = [torch.ones_like(vectors), vectors]
    for _ in range(2, lmax + 1):
        powers.append(powers[-1] * vectors)
    table = torch.stack(powers[:lmax + 1], dim=-1)  # (..., 3, lmax + 1)
    return (torch.index_select(table[..., 0, :], -1, exponents[0])
            * torch.index_select(table[..., 1, :], -1, exponents[1])
            * torch.index_select(table[..., 2, :], -1, exponents[2]))


def harmonic_coefficients(lmax: int, exponents: torch.Tensor) -> torch.Tensor:
    """(M, (lmax+1)^2) float64 matrix C with spherical_harmonics(lmax, v) = monomials(v) @ C.

    Each Y_lm is a homogeneous polynomial of degree l, so each degree's block of C is found
    exactly (to float64 round-off) by solving on random points; coefficients below 1e-13
    are exact zeros."""
    points = torch.randn(8 * exponents.shape[1], 3, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(0))
    basis = monomials(points, exponents, lmax)
    values = spherical_harmonics(lmax, points)
    degree = exponents.sum(dim=0)
    coefficients = torch.zeros(exponents.shape[1], (lmax + 1) ** 2, dtype=torch.float64)
    for l in range(lmax + 1):
        rows = (degree == l).nonzero().flatten()
        block = torch.linalg.lstsq(basis[:, rows], values[:, l * l:(l + 1) * (l + 1)]).solution
        coefficients[rows, l * l:(l + 1) * (l + 1)] = block
    return torch.where(coefficients.abs() < 1e-13, torch.zeros_like(coefficients), coefficients)


class PolynomialHarmonics(torch.nn.Module):
    """``spherical_harmonics`` as one matrix product over monomials: a dozen tensor
    operations for any lmax instead of hundreds (the same values to float round-off)."""

    def __init__(self, lmax: int):
        super().__init__()
        self.lmax = lmax
        exponents = monomial_exponents(lmax)
        self.register_buffer("exponents", exponents, persistent=False)
        self.register_buffer("coefficients", harmonic_coefficients(lmax, exponents), persistent=False)

    def _apply(self, fn, recurse=True):
        """Move with the module but keep the coefficients in float64 (cast at use), so that a
        float32 round trip cannot round them."""
        coefficients = self.coefficients
        super()._apply(fn, recurse)
        device = fn(torch.zeros(0, device=coefficients.device)).device
        self.coefficients = coefficients.to(device)
        return self

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """Y_lm for l = 0..lmax of unit (or zero) ``vectors`` (E, 3) -> (E, (lmax+1)^2)."""
        return monomials(vectors, self.exponents, self.lmax) @ self.coefficients.to(vectors.dtype)
