"""Time fairchem-core's eager AllScAIP (energy + forces) on periodic water boxes.

Benchmark-size model: hidden 64, 2 layers, 4 heads, knn_k 20, cutoff 6 Å, conserving head
(the ``conserving`` golden config, regress_stress on), random perturbed weights. Timing is
one ``FAIRChemCalculator.calculate`` call (graph build + forward + backward), median over
repeats after warm-up, with the positions rattled before each call.

    .fairchem-venv/bin/python tools/bench_fairchem.py [--threads 2] [--waters 64 216]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_golden as golden  # noqa: E402

WATER_DENSITY = 0.0334  # molecules / Å³ (1 g/cm³)


def water_box(n_waters: int, seed: int = 0) -> dict:
    box = np.eye(3) * (n_waters / WATER_DENSITY) ** (1 / 3)
    zs, pos = golden._pack(["H2O"] * n_waters, box, [True] * 3, np.random.default_rng(seed))
    return golden._entry(f"water_box{n_waters}", zs, pos, box, [True] * 3)


def time_calls(calc, entry: dict, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """Median and minimum wall time (ms) of one energy+forces calculator call."""
    from ase.calculators.calculator import all_changes

    rng = np.random.default_rng(1)
    times = []
    for i in range(warmup + repeats):
        atoms = golden.to_atoms(entry)
        atoms.positions += 1e-3 * rng.standard_normal(atoms.positions.shape)
        start = time.perf_counter()
        calc.calculate(atoms, ["energy", "forces"], all_changes)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), 1e3 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--waters", type=int, nargs="+", default=[64, 216])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true",
                        help="last line: {waters: median ms} (used by benchmarks/bench_model.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = golden.model_config(direct=False, masks=False, knn_k=20)
    ckpt = golden.build_checkpoint(config, golden.tasks_config(direct=False),
                                   golden.MODEL_SEED + 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench_conserving.pt"
        torch.save(ckpt, path)
        calc = golden.make_calculator(path, threads=args.threads)
        rows = []
        for n in args.waters:
            entry = water_box(n)
            rows.append((len(entry["numbers"]), *time_calls(calc, entry, args.repeats)))
    print(f"fairchem-core AllScAIP eager, conserving, knn_k 20, {args.threads} threads, "
          f"torch {torch.__version__}")
    print(f"{'n_atoms':>8} {'median ms':>10} {'min ms':>10}")
    for n_atoms, median, fastest in rows:
        print(f"{n_atoms:>8d} {median:>10.1f} {fastest:>10.1f}")
    if args.json:
        print(json.dumps({n: row[1] for n, row in zip(args.waters, rows)}))


if __name__ == "__main__":
    main()
