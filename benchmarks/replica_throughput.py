"""Aggregate MD throughput of independent replicas: one run on all cores vs runs side by side.

A protocol's replicas are independent. On few cores a small box scales poorly with threads
(per-operator overhead, OpenMP fork/join on small tensors), so running replicas concurrently
with fewer threads each can give more ns/day in total. For each layout ``R x T`` (R runs of T
threads at once) this starts R processes running the same 64-water NPT box (TorchForce, the
protocol's liquid settings) and reports ns/day per run and in total, all layouts in one run:

    .venv/bin/python benchmarks/replica_throughput.py --model models/allscaip-spcfw-water-v2/training/model.pt
    .venv/bin/python benchmarks/replica_throughput.py --layouts 1x2 2x1 --steps 300 --waters 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE.parent / "models" / "allscaip-spcfw-water" / "model.pt"

WORKER = """
import json, sys, time
from pathlib import Path
from allscaip.plugins.openmm.run import RunSettings, build_simulation
settings = RunSettings(**json.loads(sys.argv[1]))
simulation = build_simulation(settings)
simulation.minimizeEnergy(maxIterations=50)
simulation.context.setVelocitiesToTemperature(settings.temperature, settings.seed)
simulation.step(settings.report_interval)  # TorchScript optimises its first calls: not timed
Path(settings.out + ".ready").touch()
while not Path(sys.argv[2]).exists():  # all runs start the timed steps together
    time.sleep(0.05)
start = time.perf_counter()
simulation.step(settings.steps)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def box(folder: Path, waters: int) -> Path:
    from allscaip.protocols import boxes
    from allscaip.protocols.molecules import load_molecule

    return boxes.build_liquid(load_molecule("water"), waters, 0.95, 1, folder / "box.pdb")


def layout_run(pdb: Path, folder: Path, model: str, runs: int, threads: int, steps: int,
               timestep_fs: float) -> list[float]:
    """Seconds each of ``runs`` concurrent processes took for ``steps`` steps."""
    processes = []
    go = folder / f"go-{runs}x{threads}"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(runs):
        settings = {"pdb": str(pdb), "model": model, "out": str(folder / f"run-{runs}x{threads}-{index}"),
                    "ensemble": "npt", "temperature": 298.15, "timestep": timestep_fs, "steps": steps,
                    "report_interval": 100, "hydrogen_mass": 4.0, "seed": index + 1, "platform": "CPU"}
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   OPENMM_CPU_THREADS=str(threads))
        processes.append(subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(settings), str(go)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    while not all(Path(f"{folder}/run-{runs}x{threads}-{i}.ready").exists() for i in range(runs)):
        if any(process.poll() not in (None, 0) for process in processes):
            break
        time.sleep(0.1)
    go.touch()
    seconds = []
    for process in processes:
        out, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"worker failed:\n{err[-2000:]}")
        seconds.append(json.loads(out.strip().splitlines()[-1])["seconds"])
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--waters", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per run (multiple of 100)")
    parser.add_argument("--timestep-fs", type=float, default=1.5)
    parser.add_argument("--layouts", nargs="+", default=["1x2", "2x1", "1x1"],
                        help="RxT: R concurrent runs of T threads each")
    parser.add_argument("--rounds", type=int, default=2, help="times through all layouts (alternating)")
    args = parser.parse_args(argv)

    print(f"{args.waters} waters, NPT {args.timestep_fs} fs, TorchForce, {args.steps} steps per run; "
          f"{os.cpu_count()} cores; model {args.model}")
    print(f"{'round':>5} {'layout':>6} {'ms/step per run':>16} {'ns/day per run':>15} {'ns/day total':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pdb = box(folder, args.waters)
        for round_index in range(args.rounds):
            for layout in args.layouts:
                runs, threads = (int(v) for v in layout.split("x"))
                seconds = layout_run(pdb, folder / f"round-{round_index}", args.model, runs, threads,
                                     args.steps, args.timestep_fs)
                ms = [1e3 * s / args.steps for s in seconds]
                per_run = [args.timestep_fs * 1e-6 * 86400e3 / m for m in ms]
                print(f"{round_index:>5} {layout:>6} {sum(ms) / len(ms):>16.1f} "
                      f"{sum(per_run) / len(per_run):>15.3f} {sum(per_run):>13.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
