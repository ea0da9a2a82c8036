"""OpenMM speed: ms/step and ns/day of AllScAIP water boxes, TorchForce vs PythonForce vs
the bare TorchScript call, float32 and float64, on the CPU platform.

Model: the benchmark architecture of bench_model.py (hidden 64, 2 layers, knn_k 20,
cutoff 6 A, conserving, random weights; Verlet at 0.25 fs), or ``--model`` (a trained model,
e.g. the shipped one, at ``--timestep-fs``, default 1.5 fs then). Engine overhead = ms/step /
bare ms - 1; ns/day at the integrated timestep.

    .venv/bin/python benchmarks/bench_openmm.py --waters 64 216 512 1000
    .venv/bin/python benchmarks/bench_openmm.py --model models/allscaip-spcfw-water/model.pt \
        --waters 64 216 --dtypes float32 --compile   # --compile: also PythonForce + torch.compile
    # the protocols' gas phase: one water, no box, Reference platform, Langevin at 1.5 fs;
    # TorchForce vs PythonForce vs PythonForce with torch.compile (protocol --compile)
    .venv/bin/python benchmarks/bench_openmm.py --model models/allscaip-spcfw-water/model.pt --gas
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


def water_topology(atoms):
    from openmm import Vec3, app

    topology = app.Topology()
    chain = topology.addChain()
    for _ in range(len(atoms) // 3):
        residue = topology.addResidue("HOH", chain)
        oxygen = topology.addAtom("O", app.element.oxygen, residue)
        for name in ("H1", "H2"):
            topology.addBond(oxygen, topology.addAtom(name, app.element.hydrogen, residue))
    topology.setPeriodicBoxVectors([Vec3(*row) for row in atoms.cell[:] / 10.0])
    return topology


def time_openmm(model_file, atoms, dtype, backend, steps, timestep_fs, compile=False):
    import openmm
    from openmm import unit

    from allscaip.plugins.openmm import create_system

    topology = water_topology(atoms)
    system = create_system(topology, model_file, dtype=dtype, backend=backend, compile=compile)
    integrator = openmm.VerletIntegrator(timestep_fs * unit.femtosecond)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(atoms.positions / 10.0)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    integrator.step(3)  # warm-up (TorchScript optimises after its first calls; compile=True compiles)
    start = time.perf_counter()
    integrator.step(steps)
    return 1000 * (time.perf_counter() - start) / steps


def time_gas(model_file, dtype, backend, compile, steps, timestep_fs, rounds):
    """ms/step (median of ``rounds`` blocks of ``steps``) and the seconds to the end of the
    first step (Context creation and, with ``compile``, the compilation) of one water molecule
    as the protocols' gas phase runs it."""
    import openmm
    from openmm import app, unit

    from allscaip.plugins.openmm import create_system

    topology = app.Topology()
    residue = topology.addResidue("HOH", topology.addChain())
    oxygen = topology.addAtom("O", app.element.oxygen, residue)
    for name in ("H1", "H2"):
        topology.addBond(oxygen, topology.addAtom(name, app.element.hydrogen, residue))
    positions = np.array([[0.0, 0.0, 0.0], [0.0957, 0.0, 0.0], [-0.024, 0.0927, 0.0]])
    system = create_system(topology, model_file, dtype=dtype, backend=backend, compile=compile,
                           hydrogen_mass=4.0)
    integrator = openmm.LangevinMiddleIntegrator(298.15 * unit.kelvin, 5 / unit.picosecond,
                                                 timestep_fs * unit.femtosecond)
    start = time.perf_counter()
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    context.setVelocitiesToTemperature(298.15 * unit.kelvin, 1)
    integrator.step(1)
    first = time.perf_counter() - start
    integrator.step(5)
    blocks = []
    for _ in range(rounds):
        start = time.perf_counter()
        integrator.step(steps)
        blocks.append(1000 * (time.perf_counter() - start) / steps)
    return float(np.median(blocks)), first


def gas_table(model_file, args, timestep) -> None:
    print(f"gas phase: one water, no box, OpenMM Reference platform, {args.threads} threads, Langevin "
          f"{timestep} fs, ms per step (ns/day); first step = seconds to the first step's end (Context, compilation)")
    print(f"{'dtype':>8} {'backend':>22} {'ms/step':>8} {'ns/day':>7} {'first step s':>13}")
    per_day = lambda ms: timestep * 1e-6 * 86400e3 / ms  # noqa: E731
    for dtype in args.dtypes:
        for label, backend, compile in (("TorchForce", "torchforce", False), ("PythonForce", "python", False),
                                        ("PythonForce + compile", "python", True)):
            ms, first = time_gas(model_file, dtype, backend, compile, args.steps, timestep, args.rounds)
            print(f"{dtype:>8} {label:>22} {ms:8.2f} {per_day(ms):7.1f} {first:13.1f}", flush=True)


def time_bare(model_file, atoms, dtype, steps):
    from allscaip.io import load_model
    from allscaip.plugins.openmm.forces import DTYPES, OpenMMAllScAIP

    torch_dtype = DTYPES[dtype]
    module = torch.jit.script(OpenMMAllScAIP(load_model(model_file, torch_dtype), atoms.numbers.tolist(),
                                             len(atoms), None, 0, 1, True, torch_dtype))
    box = torch.tensor(atoms.cell[:] / 10.0, dtype=torch.float32)
    rng = np.random.default_rng(0)
    calls = []
    for _ in range(steps + 3):
        positions = torch.tensor(atoms.positions / 10.0 + rng.normal(scale=2e-4, size=atoms.positions.shape),
                                 dtype=torch.float32)
        start = time.perf_counter()
        module(positions, box)
        calls.append(time.perf_counter() - start)
    return 1000 * float(np.median(calls[3:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waters", type=int, nargs="+", default=[64, 216, 512, 1000])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, help="a model file (default: random benchmark architecture)")
    parser.add_argument("--timestep-fs", type=float, help="default 0.25 (random model) or 1.5 (--model)")
    parser.add_argument("--gas", action="store_true",
                        help="time the protocols' gas-phase molecule instead of water boxes")
    parser.add_argument("--rounds", type=int, default=5, help="--gas: blocks of --steps steps timed")
    parser.add_argument("--compile", action="store_true",
                        help="boxes: also PythonForce with compile=True (the fused wide-cell graph)")
    args = parser.parse_args()
    timestep = args.timestep_fs or (1.5 if args.model else 0.25)
    torch.set_num_threads(args.threads)

    from bench_model import save_benchmark_model
    from water import water_box

    with tempfile.TemporaryDirectory() as tmp:
        model_file = str(args.model) if args.model else save_benchmark_model(Path(tmp))
        if args.gas:
            gas_table(model_file, args, timestep)
            return
        print(f"OpenMM CPU platform, {Path(model_file).name}, {args.threads} threads, Verlet {timestep} fs, "
              "ms per step (ns/day)")
        print(f"{'waters':>6} {'atoms':>6} {'dtype':>8} {'bare call':>10} {'TorchForce':>18} "
              f"{'PythonForce':>18} {'TF overhead':>11}" + (f" {'PythonForce + compile':>22}" if args.compile else ""))
        for waters in args.waters:
            atoms = water_box(waters)
            for dtype in args.dtypes:
                bare = time_bare(model_file, atoms, dtype, args.steps)
                torchforce = time_openmm(model_file, atoms, dtype, "torchforce", args.steps, timestep)
                python = time_openmm(model_file, atoms, dtype, "python", args.steps, timestep)
                per_day = lambda ms: timestep * 1e-6 * 86400e3 / ms
                row = (f"{waters:>6} {len(atoms):>6} {dtype:>8} {bare:10.1f} "
                       f"{torchforce:9.1f} ({per_day(torchforce):6.3f}) {python:9.1f} ({per_day(python):6.3f}) "
                       f"{100 * (torchforce / bare - 1):10.1f}%")
                if args.compile:
                    compiled = time_openmm(model_file, atoms, dtype, "python", args.steps, timestep, compile=True)
                    row += f" {compiled:13.1f} ({per_day(compiled):6.3f})"
                print(row, flush=True)


if __name__ == "__main__":
    main()
