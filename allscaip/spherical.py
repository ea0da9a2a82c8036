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
from typing import Dict, List, Tuple

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


Polynomial = Dict[Tuple[int, int, int], float]  # exponents of (x, y, z) -> coefficient


def _product(a: Polynomial, b: Polynomial) -> Polynomial:
    out: Polynomial = {}
    for (i, j, k), u in a.items():
        for (l, m, n), v in b.items():
            key = (i + l, j + m, k + n)
            out[key] = out.get(key, 0.0) + u * v
    return out


def _combine(terms: List[Tuple[float, Polynomial]]) -> Polynomial:
    out: Polynomial = {}
    for scale, polynomial in terms:
        for key, value in polynomial.items():
            out[key] = out.get(key, 0.0) + scale * value
    return out


def harmonic_polynomials(lmax: int) -> List[Polynomial]:
    """``spherical_harmonics`` as explicit polynomials in (x, y, z): the same recurrences run
    on coefficient tables, in plain float arithmetic (the same result in every process)."""
    one: Polynomial = {(0, 0, 0): 1.0}
    xp, yp, zp = {(0, 0, 1): 1.0}, {(1, 0, 0): 1.0}, {(0, 1, 0): 1.0}
    r2 = {(2, 0, 0): 1.0, (0, 2, 0): 1.0, (0, 0, 2): 1.0}
    cos_m: List[Polynomial] = [one]
    sin_m: List[Polynomial] = [{}]
    for m in range(1, lmax + 1):
        cos_m.append(_combine([(1.0, _product(xp, cos_m[m - 1])), (-1.0, _product(yp, sin_m[m - 1]))]))
        sin_m.append(_combine([(1.0, _product(xp, sin_m[m - 1])), (1.0, _product(yp, cos_m[m - 1]))]))
    legendre: List[List[Polynomial]] = []
    for l in range(lmax + 1):
        row: List[Polynomial] = []
        for m in range(l + 1):
            if m == l:
                double_factorial = 1.0
                for odd in range(1, 2 * m, 2):
                    double_factorial *= odd
                row.append({(0, 0, 0): double_factorial})
            elif m == l - 1:
                row.append(_combine([(2 * m + 1, _product(zp, legendre[l - 1][m]))]))
            else:
                row.append(_combine([((2 * l - 1) / (l - m), _product(zp, legendre[l - 1][m])),
                                     (-(l + m - 1) / (l - m), _product(r2, legendre[l - 2][m]))]))
        legendre.append(row)
    components: List[Polynomial] = []
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            azimuthal = sin_m[abs(m)] if m < 0 else cos_m[abs(m)]
            components.append(_combine([(_normalisation(l, abs(m)), _product(legendre[l][abs(m)], azimuthal))]))
    return components


def harmonic_coefficients(lmax: int, exponents: torch.Tensor) -> torch.Tensor:
    """(M, (lmax+1)^2) float64 matrix C with spherical_harmonics(lmax, v) = monomials(v) @ C."""
    column = {tuple(int(e) for e in exponents[:, index]): index for index in range(exponents.shape[1])}
    coefficients = torch.zeros(exponents.shape[1], (lmax + 1) ** 2, dtype=torch.float64)
    for component, polynomial in enumerate(harmonic_polynomials(lmax)):
        for key, value in polynomial.items():
            coefficients[column[key], component] = value
    return coefficients


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
