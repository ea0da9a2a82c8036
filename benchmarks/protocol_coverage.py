"""Do the protocol's error bars cover the truth as often as they claim?

Runs many independent short replicas of the liquid protocol with the classical SPC/Fw force
field (64 waters, the protocol's own boxes, thermostat, barostat and analysis), at two run
lengths, plus a few long runs that define the "truth" for the same set-up. Then it analyses
every replica with the protocol's estimator (``allscaip.protocols.protocol.analyse_replicas``):
alone, as a one-replica run, and in consecutive groups of ``--group`` (default 4), as a
``--replicas 4`` run. It reports, for density and ΔHvap, the fraction of replicas whose ±1σ
interval contains the truth (expected 0.68, with its binomial 95 % band), the z-score
distribution and the convergence verdicts.

    .venv/bin/python benchmarks/protocol_coverage.py --out runs/coverage          # ~1 h, 2 cores
    .venv/bin/python benchmarks/protocol_coverage.py --out runs/coverage --analyse-only

Simulations are resumable (each set is a protocol folder); ``--analyse-only`` re-analyses the
stored time series with the current estimator.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from allscaip.protocols import analysis
from allscaip.protocols.protocol import LiquidProtocol, Progress, analyse_replicas, read_thermo
from allscaip.protocols.settings import ProtocolSettings

N_MOLECULES = 64
P_NOMINAL = math.erf(1 / math.sqrt(2))  # 0.6827


def settings_for(out: Path, equilibration: float, production: float, gas_production: float,
                 replicas: int, seed: int) -> ProtocolSettings:
    return ProtocolSettings(command="liquid", molecule="water", model=None, forcefield="spcfw",
                            out=str(out), n_molecules=N_MOLECULES, equilibration=equilibration,
                            production=production, gas_equilibration=1.0,
                            gas_production=gas_production, replicas=replicas, seed=seed)


def simulate(settings: ProtocolSettings, quiet: bool) -> LiquidProtocol:
    protocol = LiquidProtocol(settings, Progress(interval=60.0, echo=(lambda *a, **k: None) if quiet else print))
    protocol.prepare()
    protocol.run_phases(settings.steps(settings.equilibration + settings.production),
                        settings.steps(settings.gas_equilibration + settings.gas_production))
    return protocol


def truth(protocol: LiquidProtocol) -> dict:
    """Long-run values: every replica's series after its equilibration time, pooled; the
    uncertainty is the scatter of the replica means / sqrt(R), widened by Student-t(R - 1)
    like a protocol run's."""
    s = protocol.settings
    density, liquid, gas = [], [], []
    for replica in range(s.replicas):
        table = read_thermo(protocol.replica_dir(replica) / "liquid" / "thermo.csv")
        keep = table["time_ps"] > s.equilibration
        density.append(table["density_g_cm3"][keep].mean())
        liquid.append((table["potential_kJ_mol"][keep] / s.n_molecules).mean())
        gas_table = read_thermo(protocol.replica_dir(replica) / "gas" / "thermo.csv")
        gas.append(gas_table["potential_kJ_mol"][gas_table["time_ps"] > s.gas_equilibration].mean())
    hvap = np.array(gas) - np.array(liquid) + analysis.GAS_CONSTANT_KJ * s.temperature
    error = lambda values: float(np.std(values, ddof=1) / math.sqrt(len(values))
                                 * stats.t.ppf(analysis.ONE_SIGMA, len(values) - 1))
    return {"density_g_cm3": (float(np.mean(density)), error(density)),
            "hvap_kj_mol": (float(np.mean(hvap)), error(hvap)),
            "replicas": s.replicas, "production_ps": s.production}


def binomial_band(n: int, p: float = P_NOMINAL) -> tuple[float, float]:
    """Central 95 % range of the covered fraction for n honest replicas (exact binomial)."""
    from scipy.stats import binom

    return float(binom.ppf(0.025, n, p) / n), float(binom.ppf(0.975, n, p) / n)




def coverage_rows(protocol: LiquidProtocol, reference: dict, group: int) -> list[dict]:
    """Rows for one replica set: every replica as a one-replica run; consecutive groups of
    ``group`` replicas as ``--replicas group`` runs (the run's combined value, and each replica's
    own interval inside such a run)."""
    s = protocol.settings
    single = [analyse_replicas(protocol, [r])[0] for r in range(s.replicas)]
    groups = [analyse_replicas(protocol, list(range(k, k + group)))
              for k in range(0, s.replicas - group + 1, group)] if s.replicas >= 2 * group else []
    length = f"{s.equilibration:g}+{s.production:g} ps"
    rows = []
    for key, label in (("density_g_cm3", "density"), ("hvap_kj_mol", "ΔHvap")):
        rows.append(coverage_row(f"{length}, 1-replica runs", label,
                                 [dict(r[key], converged=r["converged"]) for r in single], reference[key]))
        if groups:
            rows.append(coverage_row(f"{length}, replicas of {group}-replica runs", label,
                                     [dict(r[key], converged=r["converged"]) for g in groups for r in g],
                                     reference[key]))
            rows.append(coverage_row(f"{length}, {group}-replica runs", label, [
                dict(analysis.combine_replicas([(r[key]["mean"], r[key]["stderr"]) for r in g]),
                     converged=all(r["converged"] for r in g)) for g in groups], reference[key]))
    return rows


def coverage_row(length: str, label: str, estimates: list[dict], reference: tuple) -> dict:
    """Coverage of ±1σ intervals ``estimates`` ({mean, stderr, converged}) of the truth."""
    true_value, true_error = reference
    means = np.array([e["mean"] for e in estimates])
    errors = np.array([e["stderr"] for e in estimates])
    z = (means - true_value) / np.hypot(errors, true_error)
    converged = np.array([e["converged"] for e in estimates])
    low, high = binomial_band(len(z))
    covered = float(np.mean(np.abs(z) < 1))
    return {
        "length": length, "property": label, "replicas": len(z),
        "coverage": covered, "band": (low, high), "within_band": bool(low <= covered <= high),
        "median_abs_z": float(np.median(np.abs(z))), "max_abs_z": float(np.max(np.abs(z))),
        "sd_of_means": float(np.std(means, ddof=1)), "median_stderr": float(np.median(errors)),
        "pooled_mean": float(means.mean()), "truth": true_value, "truth_stderr": true_error,
        "converged_fraction": float(converged.mean()),
        "coverage_of_converged": float(np.mean(np.abs(z[converged]) < 1)) if converged.any() else None}


def table(rows: list[dict]) -> str:
    header = ("| run | property | R | covered (±1σ) | 95 % band | median / max abs z | sd of means | "
              "median stderr | pooled mean | truth | converged | covered, converged only |")
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for r in rows:
        digits = 4 if r["property"] == "density" else 2
        lines.append(
            f"| {r['length']} | {r['property']} | {r['replicas']} | {r['coverage']:.2f}"
            f"{'' if r['within_band'] else ' ✗'} | {r['band'][0]:.2f}–{r['band'][1]:.2f} | "
            f"{r['median_abs_z']:.2f} / {r['max_abs_z']:.1f} | {r['sd_of_means']:.{digits}f} | "
            f"{r['median_stderr']:.{digits}f} | {r['pooled_mean']:.{digits}f} | "
            f"{r['truth']:.{digits}f} ± {r['truth_stderr']:.{digits}f} | {r['converged_fraction']:.2f} | "
            + (f"{r['coverage_of_converged']:.2f} |" if r["coverage_of_converged"] is not None else "– |"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sets", nargs="+", default=["1+4x40", "5+20x20", "10+80x24"],
                        help="replica sets: equilibration+production (ps) x replicas")
    parser.add_argument("--truth-replicas", type=int, default=6)
    parser.add_argument("--truth-production", type=float, default=250.0)
    parser.add_argument("--analyse-only", action="store_true")
    parser.add_argument("--group", type=int, default=4, help="replicas per multi-replica run analysed")
    args = parser.parse_args(argv)

    truth_settings = settings_for(args.out / "truth", 20.0, args.truth_production, 1000.0,
                                  args.truth_replicas, seed=1000)
    sets = []
    for k, spec in enumerate(args.sets):
        length, replicas = spec.split("x")
        equilibration, production = (float(x) for x in length.split("+"))
        sets.append(settings_for(args.out / f"replicas-{length}", equilibration, production,
                                 gas_production=2 * production, replicas=int(replicas), seed=1 + 100 * k))
    protocols = [simulate(s, quiet=True) if not args.analyse_only else LiquidProtocol(s)
                 for s in [truth_settings] + sets]
    reference = truth(protocols[0])
    rows = [row for protocol in protocols[1:] for row in coverage_rows(protocol, reference, args.group)]
    print(f"truth ({reference['replicas']} x {reference['production_ps']:g} ps, SPC/Fw, {N_MOLECULES} waters): "
          f"density {reference['density_g_cm3'][0]:.4f} ± {reference['density_g_cm3'][1]:.4f} g/cm3, "
          f"ΔHvap {reference['hvap_kj_mol'][0]:.2f} ± {reference['hvap_kj_mol'][1]:.2f} kJ/mol")
    print(table(rows))
    (args.out / "coverage.json").write_text(json.dumps({"truth": reference, "rows": rows}, indent=1))
    return 0 if all(r["within_band"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
