"""Statistics of MD time series: equilibration detection and statistical inefficiency
(pymbar.timeseries, Chodera 2016), conservative standard errors, the convergence rule,
heat of vaporization, and the combination of independent replicas.

The standard error of a mean over the production part is the larger of ``s * sqrt(g / n)``
(s: sample standard deviation, n: samples, g: the statistical inefficiency -- pooled over the
replicas of the run when there are several, since one short series' own g is noisy and
biased low -- and the block-average errors with BLOCK_COUNTS blocks; both underestimate on
short series (the autocorrelation estimate is cut off early, blocks shorter than the
correlation time are correlated). The result is then widened by the Student-t factor for
n_eff - 1 degrees of freedom, so that ±1 stderr is a 68 % interval even when the error itself
is estimated from few effective samples. A run of three or more replicas reports the larger of
those errors propagated and the scatter of the replica means widened by Student-t for R - 1
degrees of freedom (conservative: see ``combine_replicas``). Coverage of these intervals is measured in
benchmarks/protocol_coverage.py.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import stats

GAS_CONSTANT_KJ = 8.314462618e-3  # kJ/(mol K)
BAR_NM3_TO_KJ_MOL = 1e5 * 1e-27 * 6.02214076e23 / 1e3  # p V in bar nm^3 -> kJ/mol
MIN_SAMPLES = 10
# Convergence rule of every report: each property of each replica needs at least MIN_N_EFF
# effective (uncorrelated) samples, and at least 1 - MAX_EQUILIBRATION_FRACTION of the
# production must remain after the equilibration detected jointly over the replicas.
MIN_N_EFF = 20
MAX_EQUILIBRATION_FRACTION = 0.5  # of the production; beyond it the run is still relaxing
MIN_REPLICAS_FOR_SCATTER = 3
BLOCK_COUNTS = (5, 8, 10)
ONE_SIGMA = 0.5 * (1 + math.erf(1 / math.sqrt(2)))  # 0.8413: two-sided 68.27 %
CONVERGENCE_RULE = (f"every property of every replica has >= {MIN_N_EFF} effective samples, and "
                    f"the equilibration detected jointly over the replicas leaves >= "
                    f"{1 - MAX_EQUILIBRATION_FRACTION:.0%} of the production; a replica-scatter "
                    f"error needs >= {MIN_REPLICAS_FOR_SCATTER} replicas")


def _timeseries():
    for name in ("pymbar", "pymbar.timeseries", "pymbar.mbar_solvers"):
        logging.getLogger(name).setLevel(logging.ERROR)  # import-time advice on stderr
    import pymbar.timeseries

    return pymbar.timeseries


@dataclass
class Estimate:
    """Mean of a time series after equilibration, with its uncertainty."""

    mean: float
    stderr: float
    statistical_inefficiency: float
    n_samples: int
    n_eff: float
    pooled_g: float | None = None  # statistical inefficiency pooled over the run's replicas

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Estimate":
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def detect_equilibration(series: list[np.ndarray], candidates: int = 200) -> int:
    """Where production starts in several independent series of one process (the replicas of
    a run; a run of one replica gives one series): the t0 that maximises the number of
    uncorrelated samples left, sum_r (n_r - t0) / g(t0), with g(t0) the replicas' mean
    statistical inefficiency of their series from t0 on. For one series this is pymbar's
    ``detect_equilibration`` (Chodera 2016). One series' g of a short tail is noisy and biased
    low, which sends its maximum spuriously late; the mean over replicas is steadier
    (benchmarks/RESULTS.md, "Equilibration detection"). t0 is searched on at most
    ``candidates`` evenly spaced points."""
    usable = [np.asarray(x, dtype=float) for x in series]
    shortest = min(len(x) for x in usable)
    if shortest < MIN_SAMPLES or all(np.ptp(x) == 0 for x in usable):
        return 0
    timeseries = _timeseries()
    best, best_t0 = -1.0, 0
    for t0 in range(0, shortest - 1, max(1, shortest // candidates)):
        tails = [x[t0:] for x in usable]
        g = np.mean([timeseries.statistical_inefficiency(x, fast=True) if np.ptp(x) > 0 else float(len(x))
                     for x in tails])  # a constant tail counts as one sample, as in pymbar
        samples = sum(len(x) for x in tails) / g
        if samples > best:
            best, best_t0 = samples, t0
    return best_t0


def statistical_inefficiency(series: np.ndarray) -> float:
    series = np.asarray(series, dtype=float)
    if len(series) < 2 or np.ptp(series) == 0:
        return 1.0
    return float(_timeseries().statistical_inefficiency(series))


def pooled_statistical_inefficiency(series: list[np.ndarray]) -> float:
    """One statistical inefficiency from several independent series of the same process (the
    replicas of a run): their autocorrelation functions averaged (pymbar's
    ``statistical_inefficiency_multiple``), far less noisy than any single series' estimate."""
    usable = [np.asarray(x, dtype=float) for x in series if len(x) >= 2 and np.ptp(x) > 0]
    if not usable:
        return 1.0
    return float(_timeseries().statistical_inefficiency_multiple(usable))


def block_stderr(series: np.ndarray, n_blocks: int) -> float:
    """Standard error of the mean from ``n_blocks`` equal consecutive blocks (the first
    len % n_blocks samples are left out)."""
    length = len(series) // n_blocks
    means = series[len(series) - length * n_blocks:].reshape(n_blocks, length).mean(axis=1)
    return float(means.std(ddof=1) / math.sqrt(n_blocks))


def estimate(series: np.ndarray, pooled_g: float | None = None) -> Estimate:
    """Mean and conservative standard error of an equilibrated, correlated series (see the
    module docstring); ``statistical_inefficiency`` and ``n_eff`` are the ones implied by
    that error. ``pooled_g``: the statistical inefficiency pooled over the replicas of the
    same run (``pooled_statistical_inefficiency``), used instead of this series' own, far
    noisier, estimate."""
    series = np.asarray(series, dtype=float)
    n = len(series)
    if n < 2:
        raise ValueError(f"need at least 2 samples to estimate an uncertainty, got {n}")
    naive = float(series.std(ddof=1) / math.sqrt(n))
    if naive == 0.0:
        return Estimate(float(series.mean()), 0.0, 1.0, n, float(n), pooled_g)
    error = naive * math.sqrt(statistical_inefficiency(series) if pooled_g is None else pooled_g)
    for n_blocks in BLOCK_COUNTS:
        if n >= 2 * n_blocks:
            error = max(error, block_stderr(series, n_blocks))
    g = (error / naive) ** 2
    n_eff = n / g
    widened = error * float(stats.t.ppf(ONE_SIGMA, max(1.0, n_eff - 1)))
    return Estimate(float(series.mean()), widened, float(g), n, float(n_eff), pooled_g)


def convergence_problems(estimate: dict) -> list[str]:
    """Why one property's estimate is not converged (empty list: it is)."""
    if estimate["n_eff"] < MIN_N_EFF:
        return [f"{estimate['n_eff']:.1f} effective samples (need >= {MIN_N_EFF})"]
    return []


def relaxing_problem(phase: dict) -> str | None:
    """Why a phase of a run is still relaxing (None: it is not); ``phase`` is one replica's
    window (see protocol.production_windows), whose equilibration point the run's replicas
    share."""
    if not phase["equilibration_capped"]:
        return None
    return (f"equilibration detected at {phase['t_equil_detected_ps']:.2f} ps, more than "
            f"{MAX_EQUILIBRATION_FRACTION:.0%} into the production: still relaxing")


def common_start(observables: list[list[np.ndarray]], first: int = 0) -> int:
    """Start of production for several observables of one run, each given as its replicas'
    series: the latest of their jointly detected equilibration points, searched from index
    ``first``."""
    return first + max(detect_equilibration([np.asarray(x)[first:] for x in replicas])
                       for replicas in observables)


def hvap(gas_energy: Estimate, liquid_energy_per_molecule: Estimate, temperature: float) -> dict:
    """ΔHvap = <U_gas> - <U_liq>/N + RT (ideal gas; no other terms added)."""
    value = gas_energy.mean - liquid_energy_per_molecule.mean + GAS_CONSTANT_KJ * temperature
    stderr = math.hypot(gas_energy.stderr, liquid_energy_per_molecule.stderr)
    return {"mean": value, "stderr": stderr}


def pv_term(pressure_bar: float, mean_volume_nm3: float, n_molecules: int) -> float:
    """p<V>/N in kJ/mol: subtract it from ΔHvap for the full expression (reported apart)."""
    return pressure_bar * mean_volume_nm3 * BAR_NM3_TO_KJ_MOL / n_molecules


def combine_replicas(values: list[tuple[float, float]]) -> dict:
    """Mean over independent replicas (value, stderr). ``stderr_within`` propagates the
    per-replica errors. With MIN_REPLICAS_FOR_SCATTER or more replicas ``stderr_between`` is
    the scatter of the replica means / sqrt(R), widened by the Student-t factor for R - 1
    degrees of freedom (a 68 % interval for any R, needing no autocorrelation estimate), and
    ``stderr`` is the larger of the two: a few replicas that agree by chance cannot shrink the
    error below what each replica's own fluctuations imply, and replicas that scatter more than
    their errors say widen it. Fewer replicas cannot estimate a scatter: ``stderr`` is the
    propagated error."""
    means = np.array([v for v, _ in values], dtype=float)
    errors = np.array([e for _, e in values], dtype=float)
    count = len(means)
    within = float(math.sqrt(np.sum(errors ** 2)) / count)
    out = {"mean": float(means.mean()), "stderr_within": within, "n_replicas": count,
           "replicas": [{"mean": float(m), "stderr": float(e)} for m, e in zip(means, errors)]}
    if count >= MIN_REPLICAS_FOR_SCATTER:
        scatter = float(means.std(ddof=1) / math.sqrt(count))
        out["stderr_between"] = scatter * float(stats.t.ppf(ONE_SIGMA, count - 1))
        out["stderr"] = max(within, out["stderr_between"])
        out["error_basis"] = f"max(propagated per-replica errors, replica scatter x Student-t({count - 1} dof))"
    else:
        out["stderr"] = within
        out["error_basis"] = (f"propagated per-replica errors ({count} replica(s); a replica "
                              f"scatter needs >= {MIN_REPLICAS_FOR_SCATTER})")
    return out
