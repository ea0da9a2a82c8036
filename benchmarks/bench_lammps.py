"""LAMMPS speed: ms/step of AllScAIP water boxes through ``pair_style allscaip`` versus
the bare model call on the same configuration (engine + bridge overhead), and ns/day.

Model: bench_model.py's random benchmark architecture (NVE at 0.25 fs), or ``--model`` (a
trained model, e.g. the shipped one, at ``--timestep-fs``, default 1.5 fs then).

    .venv/bin/python benchmarks/bench_lammps.py --waters 64 216 512
    .venv/bin/python benchmarks/bench_lammps.py --model models/allscaip-spcfw-water/model.pt \
        --waters 64 216 --dtypes float32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def time_lammps(model_file, atoms, folder, dtype, steps, timestep_fs):
    from ase.io import write

    from allscaip.plugins.lammps import attach, import_lammps

    data = folder / "water.data"
    write(data, atoms, format="lammps-data", specorder=["O", "H"], atom_style="atomic", masses=True)
    lmp = import_lammps().lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    lmp.commands_list(["units metal", "atom_style atomic", f"read_data {data}", "neighbor 1.0 bin",
                       f"timestep {timestep_fs / 1000}", "velocity all create 300 1", "fix integrate all nve"])
    attach(lmp, model_file, ["O", "H"], dtype=dtype, verbose=False)
    lmp.command("run 3")  # warm-up
    start = time.perf_counter()
    lmp.command(f"run {steps}")
    elapsed = time.perf_counter() - start
    lmp.close()
    return 1000 * elapsed / steps


def time_bare(model_file, atoms, dtype, steps):
    from allscaip.io import load_model

    torch_dtype = getattr(torch, dtype)
    model = load_model(model_file, dtype=torch_dtype)
    rng = np.random.default_rng(0)
    calls = []
    for _ in range(steps + 1):  # positions rattled as in MD, so the graph changes every call
        positions = atoms.positions + rng.normal(scale=0.002, size=atoms.positions.shape)
        args = (torch.tensor(positions, dtype=torch_dtype), torch.tensor(atoms.numbers),
                torch.tensor(atoms.cell[:], dtype=torch_dtype), torch.tensor(atoms.pbc),
                torch.tensor(0), torch.tensor(1), True, True)
        start = time.perf_counter()
        model(*args)
        calls.append(time.perf_counter() - start)
    return 1000 * float(np.mean(calls[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waters", type=int, nargs="+", default=[64, 216, 512])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, help="a model file (default: random benchmark architecture)")
    parser.add_argument("--timestep-fs", type=float, help="default 0.25 (random model) or 1.5 (--model)")
    args = parser.parse_args()
    timestep = args.timestep_fs or (1.5 if args.model else 0.25)
    torch.set_num_threads(args.threads)

    from bench_model import save_benchmark_model
    from water import water_box

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_file = str(args.model) if args.model else save_benchmark_model(folder)
        print(f"LAMMPS (serial) fix-external bridge, {Path(model_file).name}, {args.threads} threads, "
              f"NVE {timestep} fs; ms per step")
        print(f"{'waters':>6} {'atoms':>6} {'dtype':>8} {'bare call':>10} {'LAMMPS step':>12} {'overhead':>9} "
              f"{'ns/day':>7}")
        for waters in args.waters:
            atoms = water_box(waters)
            for dtype in args.dtypes:
                bare = time_bare(model_file, atoms, dtype, args.steps)
                step = time_lammps(model_file, atoms, folder, dtype, args.steps, timestep)
                print(f"{waters:>6} {len(atoms):>6} {dtype:>8} {bare:10.1f} {step:12.1f} "
                      f"{100 * (step / bare - 1):8.1f}% {timestep * 1e-6 * 86400e3 / step:7.3f}", flush=True)


if __name__ == "__main__":
    main()
