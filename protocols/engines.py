"""Run one simulation phase (liquid NPT box or gas-phase molecule) on an engine.

Every engine writes the same files into the phase folder: ``thermo.csv`` (the columns of
``allscaip openmm run``), ``trajectory.dcd``, a checkpoint after every report and
``status.json`` with the last checkpointed step. Calling ``run_phase`` again with more steps
continues from the checkpoint, so runs can be resumed and extended without losing samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass
class Phase:
    """One MD run: ``ensemble`` "npt" (periodic box) or "nvt" (no box, gas phase)."""

    name: str
    pdb: Path
    out: Path
    model: str
    ensemble: str
    steps: int
    temperature: float
    pressure: float
    timestep: float  # fs
    report_interval: int
    friction: float  # 1/ps
    seed: int
    charge: int
    spin: int
    hydrogen_mass: float | None
    precision: str
    platform: str
    barostat_interval: int = 25
    max_temperature_factor: float = 5.0  # instantaneous T above this x target = blow-up
    forcefield: str | None = None  # classical potential instead of ``model``
    backend: str = "torchforce"  # OpenMM: "torchforce" or "python" (PythonForce)
    compile: bool = False  # PythonForce through torch.compile (allscaip.compiled)


def completed_steps(out: Path) -> int:
    """Steps saved in the phase's last checkpoint (0 if none)."""
    status = Path(out) / "status.json"
    return json.loads(status.read_text())["step"] if status.exists() else 0


def run_openmm(phase: Phase, resume: bool, progress: Callable[[str], None]) -> None:
    from allscaip.plugins.openmm.run import RunSettings, run

    settings = RunSettings(
        pdb=str(phase.pdb), model=phase.model, out=str(phase.out), ensemble=phase.ensemble,
        temperature=phase.temperature, pressure=phase.pressure, timestep=phase.timestep,
        steps=phase.steps, report_interval=phase.report_interval, friction=phase.friction,
        barostat_interval=phase.barostat_interval, platform=phase.platform,
        precision=phase.precision, charge=phase.charge, spin=phase.spin,
        hydrogen_mass=phase.hydrogen_mass, seed=phase.seed,
        max_temperature_factor=phase.max_temperature_factor, forcefield=phase.forcefield,
        backend=phase.backend, compile=phase.compile)
    run(settings, resume=resume, progress=progress)


def run_phase(engine: str, phase: Phase, progress: Callable[[str], None]) -> None:
    """Run ``phase`` until ``phase.steps``, continuing from its checkpoint if there is one."""
    resume = (phase.out / "status.json").exists()
    if resume and completed_steps(phase.out) >= phase.steps:
        return
    if engine == "openmm":
        run_openmm(phase, resume, progress)
    elif engine == "lammps":
        if phase.forcefield is not None:
            raise ValueError("--forcefield runs on the openmm engine only")
        from allscaip.protocols.lammps_engine import run_lammps

        run_lammps(phase, resume, progress)
    else:
        raise ValueError(f"unknown engine {engine!r}")
