"""Speed and memory of one energy + forces call on periodic liquid water.

Prints a table: waters, atoms, dtype, mode (eager / TorchScript), median ms per call,
peak resident memory of the process (MB), and, where a fairchem side venv exists
(tools/README.md), fairchem-core's eager time for the same architecture and the ratio.

The benchmark architecture is the one of the fairchem measurement in the model issue:
hidden 64, 2 layers, 4 heads, knn_k 20, cutoff 6 A, conserving forces, no masks
(``--masks`` switches the frequency and sinc masks on). Every case runs in its own
process so that peak memory is per case.

    .venv/bin/python benchmarks/bench_model.py --waters 64 216 512 1000 2000
    .venv/bin/python benchmarks/bench_model.py --model models/allscaip-spcfw-water/model.pt --waters 64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# fairchem lives in a side venv (tools/README.md: `make fairchem-venv`); FAIRCHEM_PYTHON overrides
FAIRCHEM_PYTHON = Path(os.environ.get("FAIRCHEM_PYTHON", HERE.parent / ".fairchem-venv" / "bin" / "python"))


def architecture(masks: bool):
    from allscaip.config import ModelConfig

    return ModelConfig(hidden_size=64, num_layers=2, atten_num_heads=4, max_radius=6.0, knn_k=20,
                       freequency_list=[4, 4, 4, 2, 2], use_freq_mask=masks, use_sincx_mask=masks)


def save_benchmark_model(folder: Path, masks: bool = False) -> Path:
    """The benchmark architecture with seeded random weights, as a model file in ``folder``."""
    import torch

    from allscaip.io import save_model
    from allscaip.model import AllScAIP

    torch.manual_seed(0)
    config = architecture(masks)
    return save_model(AllScAIP(config), config, Path(folder) / "bench.pt")


def run_case(waters: int, dtype_name: str, mode: str, masks: bool, threads: int, repeats: int,
             model_path: str | None = None) -> dict:
    """Time one case in this process; returns ms per call and peak RSS."""
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from water import water_box

    from allscaip.export import script_model
    from allscaip.model import AllScAIP

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    if model_path:
        from allscaip.io import load_model

        model = load_model(model_path, dtype=dtype)
    else:
        model = AllScAIP(architecture(masks)).to(dtype).eval()
    if mode == "torchscript":
        scripted = script_model(model, dtype)
        call = lambda args: scripted(*args)
    else:
        call = lambda args: model(*args, True, False)
    atoms = water_box(waters)
    rng = np.random.default_rng(1)
    times = []
    warmup = 3  # TorchScript's profiling executor optimises after its first calls
    for repeat in range(repeats + warmup):
        positions = atoms.positions + rng.normal(scale=0.02, size=atoms.positions.shape)
        args = (torch.tensor(positions, dtype=dtype), torch.tensor(atoms.numbers),
                torch.tensor(atoms.cell[:], dtype=dtype), torch.tensor(atoms.pbc),
                torch.tensor(0), torch.tensor(1))
        start = time.perf_counter()
        energy, forces, _ = call(args)
        float(energy)
        if repeat >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ms": statistics.median(times), "peak_mb": peak_mb, "atoms": len(atoms)}


def fairchem_times(waters: list[int], threads: int) -> dict[int, float]:
    """fairchem eager ms per call, from tools/bench_fairchem.py in the side venv."""
    if not FAIRCHEM_PYTHON.exists():
        print(f"(no fairchem side venv at {FAIRCHEM_PYTHON}: `make fairchem-venv`, or set FAIRCHEM_PYTHON)")
        return {}
    script = HERE.parent / "tools" / "bench_fairchem.py"
    result = subprocess.run([str(FAIRCHEM_PYTHON), str(script), "--threads", str(threads), "--json",
                             "--waters", *map(str, waters)], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"(fairchem benchmark failed: {result.stderr.strip().splitlines()[-1:]})")
        return {}
    return {int(k): v for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waters", type=int, nargs="+", default=[64, 216, 512, 1000, 2000])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--modes", nargs="+", default=["eager", "torchscript"])
    parser.add_argument("--masks", action="store_true", help="frequency and sinc masks on")
    parser.add_argument("--model", help="time this model file instead of the benchmark architecture")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fairchem-waters", type=int, nargs="*", default=[64, 216],
                        help="sizes to time with fairchem (slow: ~20 s per call at 216 waters)")
    parser.add_argument("--case", nargs=3, metavar=("WATERS", "DTYPE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case:
        waters, dtype_name, mode = int(args.case[0]), args.case[1], args.case[2]
        print(json.dumps(run_case(waters, dtype_name, mode, args.masks, args.threads, args.repeats, args.model)))
        return

    reference = fairchem_times([w for w in args.fairchem_waters if w in args.waters], args.threads) \
        if not (args.masks or args.model) else {}
    described = f"model {args.model}" if args.model else \
        f"hidden 64, 2 layers, knn_k 20, cutoff 6 A, masks {args.masks}"
    print(f"AllScAIP energy+forces, {described}, {args.threads} threads")
    print(f"{'waters':>6} {'atoms':>6} {'dtype':>8} {'mode':>12} {'ms/call':>9} {'peak MB':>8} "
          f"{'fairchem ms':>11} {'speed-up':>8}")
    for waters in args.waters:
        for dtype_name in args.dtypes:
            for mode in args.modes:
                command = [sys.executable, __file__, "--case", str(waters), dtype_name, mode,
                           "--threads", str(args.threads), "--repeats", str(args.repeats)]
                if args.masks:
                    command.append("--masks")
                if args.model:
                    command += ["--model", args.model]
                result = subprocess.run(command, capture_output=True, text=True,
                                        env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
                if result.returncode != 0:
                    print(f"{waters:>6} failed: {result.stderr.strip().splitlines()[-1:]}")
                    continue
                case = json.loads(result.stdout.strip().splitlines()[-1])
                fairchem = reference.get(waters)
                ratio = f"{fairchem / case['ms']:8.0f}x" if fairchem else f"{'':>9}"
                fairchem_text = f"{fairchem:11.0f}" if fairchem else f"{'-':>11}"
                print(f"{waters:>6} {case['atoms']:>6} {dtype_name:>8} {mode:>12} {case['ms']:9.1f} "
                      f"{case['peak_mb']:8.0f} {fairchem_text} {ratio}", flush=True)


if __name__ == "__main__":
    main()
