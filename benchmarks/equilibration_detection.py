"""How often equilibration detection calls a run "still relaxing", per replica or jointly.

The protocol's convergence rule flags a run whose detected equilibration falls past half the
production. This compares the two ways of detecting it on synthetic series of known mean 0,
with the length of a 64-water liquid phase (1,333 samples = 200 ps every 0.15 ps):

- ``per replica``: pymbar's ``detect_equilibration`` on each replica's series; the run is
  flagged when any replica's falls past half-way;
- ``joint``: ``analysis.detect_equilibration`` on the replicas together (the replicas' mean
  statistical inefficiency), one start for all.

Processes: stationary AR(1) (correlation time 10 samples); the same plus half an AR(1) of 200
samples (a slow component, stationary); AR(1) plus a relaxation A exp(-t / tau) common to all
replicas (a run started away from equilibrium). For each: the fraction of runs flagged, and
the fraction of accepted runs whose combined interval (``analysis.combine_replicas``) covers
the true mean (0.68 expected for an honest interval on a stationary process).

    .venv/bin/python benchmarks/equilibration_detection.py                 # ~5 min, 1 core
    .venv/bin/python benchmarks/equilibration_detection.py --runs 50 --replicas 1 3
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from scipy.signal import lfilter

from allscaip.protocols import analysis

SAMPLES = 1333


def ar1(rng, tau: float, count: int, sigma: float = 1.0) -> np.ndarray:
    phi = math.exp(-1 / tau)
    noise = rng.normal(scale=sigma * math.sqrt(1 - phi ** 2), size=(count, SAMPLES))
    return lfilter([1.0], [1.0, -phi], noise, axis=1, zi=phi * sigma * rng.normal(size=(count, 1)))[0]


PROCESSES = {
    "stationary AR(1), tau 10": lambda rng, n: ar1(rng, 10, n),
    "AR(1) + slow AR(1) (tau 200, 0.5 sd)": lambda rng, n: ar1(rng, 10, n) + ar1(rng, 200, n, 0.5),
    "AR(1) + relaxation 2 sd, tau 300": lambda rng, n: ar1(rng, 10, n) + 2 * np.exp(-np.arange(SAMPLES) / 300),
    "AR(1) + relaxation 4 sd, tau 100": lambda rng, n: ar1(rng, 10, n) + 4 * np.exp(-np.arange(SAMPLES) / 100),
}


def combined_covers(tails: list[np.ndarray]) -> bool:
    """The run's combined interval from each replica's production series covers 0."""
    pooled = analysis.pooled_statistical_inefficiency(tails) if len(tails) > 1 else None
    estimates = [analysis.estimate(x, pooled) for x in tails]
    result = analysis.combine_replicas([(e.mean, e.stderr) for e in estimates])
    return abs(result["mean"]) < result["stderr"]


def evaluate(process, rng, runs: int, count: int) -> dict:
    import pymbar.timeseries

    half = SAMPLES // 2
    flagged = {"per replica": 0, "joint": 0}
    covered = {"per replica": [], "joint": []}
    for run in process(rng, runs * count).reshape(runs, count, SAMPLES):
        replicas = list(run)
        single = [int(pymbar.timeseries.detect_equilibration(x)[0]) for x in replicas]
        joint = analysis.detect_equilibration(replicas)
        if any(t0 > half for t0 in single):
            flagged["per replica"] += 1
        else:  # the protocol before: each replica from its own start
            covered["per replica"].append(combined_covers([x[t0:] for x, t0 in zip(replicas, single)]))
        if joint > half:
            flagged["joint"] += 1
        else:
            covered["joint"].append(combined_covers([x[joint:] for x in replicas]))
    return {key: (flagged[key] / runs, float(np.mean(covered[key])) if covered[key] else float("nan"))
            for key in flagged}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"{args.runs} runs per row, {SAMPLES} samples per replica; flagged = detected equilibration "
          "past half the production; covered = accepted runs whose ±1σ interval holds the true mean")
    print("| process | replicas | flagged, per replica | flagged, joint | covered, per replica | covered, joint |")
    print("|---|---|---|---|---|---|")
    for k, (name, process) in enumerate(PROCESSES.items()):
        for count in args.replicas:
            rng = np.random.default_rng([args.seed, k, count])
            result = evaluate(process, rng, args.runs, count)
            print(f"| {name} | {count} | {result['per replica'][0]:.2f} | {result['joint'][0]:.2f} | "
                  f"{result['per replica'][1]:.2f} | {result['joint'][1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
