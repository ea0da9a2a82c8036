"""``allscaip openmm run``: production MD of a PDB box with an AllScAIP model.

Runs in segments of ``report_interval`` steps. After each segment the state is checked
(finite energy, temperature below a blow-up limit); only a good state is written: a DCD
frame, a CSV row and then the checkpoint. ``--resume`` reloads the checkpoint and trims the
DCD and CSV to it, so an interruption at any moment loses nothing and duplicates nothing.
"""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ENSEMBLES = ("nve", "nvt", "npt")
CSV_FIELDS = ["step", "time_ps", "potential_kJ_mol", "kinetic_kJ_mol", "total_kJ_mol",
              "temperature_K", "volume_nm3", "density_g_cm3", "ns_per_day"]


class SimulationExploded(RuntimeError):
    """The energy became non-finite or the temperature ran away."""


@dataclass
class RunSettings:
    pdb: str
    model: str
    out: str
    ensemble: str = "nvt"
    temperature: float = 300.0  # K
    pressure: float = 1.0  # bar
    timestep: float = 0.5  # fs
    steps: int = 1000
    report_interval: int = 100
    friction: float = 1.0  # 1/ps
    barostat_interval: int = 25
    platform: str = "auto"  # CUDA when available, else CPU
    precision: str = "float32"
    backend: str = "torchforce"
    charge: int = 0
    spin: int = 1
    hydrogen_mass: float | None = None
    seed: int = 1
    max_temperature_factor: float = 5.0
    forcefield: str | None = None  # a classical potential instead of the model (classical.py)

    def validate(self) -> None:
        if (self.forcefield is None) == (not self.model):
            raise ValueError("give either a model (--model) or a classical --forcefield, not both")
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"--ensemble must be one of {ENSEMBLES}")
        for name in ("temperature", "timestep", "steps", "report_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.steps % self.report_interval:
            raise ValueError("--steps must be a multiple of --report-interval")


def build_simulation(settings: RunSettings):
    from allscaip.plugins.openmm.runtime import choose_platform, import_openmmtorch

    import_openmmtorch()  # before the Platform is created: registers the TorchForce kernels
    import openmm
    from openmm import app, unit

    from allscaip.plugins.openmm.system import create_system

    pdb = app.PDBFile(settings.pdb)
    topology = pdb.topology
    if settings.ensemble == "npt" and topology.getPeriodicBoxVectors() is None:
        raise ValueError("NPT needs a periodic box: add a CRYST1 record to the PDB")
    if settings.forcefield is not None:
        from allscaip.plugins.openmm.classical import classical_system

        system = classical_system(topology, settings.forcefield, hydrogen_mass=settings.hydrogen_mass)
    else:
        system = create_system(topology, settings.model, charge=settings.charge, spin=settings.spin,
                               dtype=settings.precision, backend=settings.backend,
                               hydrogen_mass=settings.hydrogen_mass)
    dt = settings.timestep * unit.femtoseconds
    if settings.ensemble == "nve":
        integrator = openmm.VerletIntegrator(dt)
    else:
        integrator = openmm.LangevinMiddleIntegrator(settings.temperature * unit.kelvin,
                                                     settings.friction / unit.picosecond, dt)
        integrator.setRandomNumberSeed(settings.seed)
    if settings.ensemble == "npt":
        barostat = openmm.MonteCarloBarostat(settings.pressure * unit.bar,
                                             settings.temperature * unit.kelvin,
                                             settings.barostat_interval)
        barostat.setRandomNumberSeed(settings.seed)
        system.addForce(barostat)
    platform = choose_platform(settings.platform)
    simulation = app.Simulation(topology, system, integrator, platform)
    simulation.context.setPositions(pdb.positions)
    return simulation


def truncate_dcd(path: Path, n_frames: int) -> None:
    """Keep the first ``n_frames`` frames of an OpenMM DCD file (header count updated)."""
    with open(path, "r+b") as handle:
        handle.seek(8)
        stored = struct.unpack("<i", handle.read(4))[0]
        if stored <= n_frames:
            return
        handle.seek(12)
        first_step, interval = struct.unpack("<ii", handle.read(8))
        size = os.path.getsize(path)
        handle.seek(92)
        comment_bytes = struct.unpack("<i", handle.read(4))[0]
        header = 104 + comment_bytes + 12
        frame_size = (size - header) // stored
        handle.truncate(header + n_frames * frame_size)
        handle.seek(8)
        handle.write(struct.pack("<i", n_frames))
        handle.seek(20)
        handle.write(struct.pack("<i", first_step + (n_frames - 1) * interval))


def trim_csv(path: Path, last_step: int) -> int:
    """Drop rows after ``last_step``; return the rows kept."""
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= last_step]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def state_row(simulation, step: int, n_dof: int, total_mass_amu: float, ns_per_day: float) -> dict:
    from openmm import unit

    state = simulation.context.getState(getEnergy=True)
    potential = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    kinetic = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
    temperature = 2 * kinetic * 1000 / (n_dof * unit.MOLAR_GAS_CONSTANT_R.value_in_unit(
        unit.joule / unit.kelvin / unit.mole))
    box = state.getPeriodicBoxVectors(asNumpy=True)
    volume = float("nan")
    density = float("nan")
    if simulation.topology.getPeriodicBoxVectors() is not None:
        v = box.value_in_unit(unit.nanometer)
        volume = float(abs(v[0][0] * v[1][1] * v[2][2]))
        density = total_mass_amu / 6.02214076e23 / (volume * 1e-21)
    return {"step": step, "time_ps": state.getTime().value_in_unit(unit.picosecond),
            "potential_kJ_mol": potential, "kinetic_kJ_mol": kinetic,
            "total_kJ_mol": potential + kinetic, "temperature_K": temperature,
            "volume_nm3": volume, "density_g_cm3": density, "ns_per_day": ns_per_day}


def degrees_of_freedom(system) -> int:
    import openmm

    dof = 3 * sum(1 for i in range(system.getNumParticles()) if system.getParticleMass(i)._value > 0)
    dof -= system.getNumConstraints()
    if any(isinstance(system.getForce(i), openmm.CMMotionRemover) for i in range(system.getNumForces())):
        dof -= 3
    return dof


def run(settings: RunSettings, resume: bool = False, progress=print) -> dict:
    """Run (or resume) the simulation; return a summary dict."""
    from openmm import app, unit

    settings.validate()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, status_file = out / "checkpoint.chk", out / "status.json"
    trajectory, table = out / "trajectory.dcd", out / "thermo.csv"
    simulation = build_simulation(settings)
    system = simulation.system
    start_step = 0
    if resume and checkpoint.exists():
        simulation.loadCheckpoint(str(checkpoint))
        start_step = json.loads(status_file.read_text())["step"]
        simulation.currentStep = start_step
        frames = trim_csv(table, start_step)
        truncate_dcd(trajectory, frames)
        progress(f"resumed at step {start_step} from {checkpoint}")
    else:
        if resume:
            progress(f"no checkpoint in {out}; starting from the PDB")
        if settings.ensemble != "nve":
            simulation.minimizeEnergy(maxIterations=200)
        simulation.context.setVelocitiesToTemperature(settings.temperature * unit.kelvin, settings.seed)
        with open(table, "w", newline="") as handle:
            csv.DictWriter(handle, fieldnames=CSV_FIELDS).writeheader()
        (out / "settings.json").write_text(json.dumps(asdict(settings), indent=1))

    n_dof = degrees_of_freedom(system)
    total_mass = sum(system.getParticleMass(i).value_in_unit(unit.dalton)
                     for i in range(system.getNumParticles()))
    dcd_handle = open(trajectory, "r+b" if start_step > 0 and trajectory.exists() else "wb")
    dcd = app.DCDFile(dcd_handle, simulation.topology, settings.timestep * unit.femtoseconds,
                      firstStep=settings.report_interval, interval=settings.report_interval,
                      append=start_step > 0 and trajectory.exists())
    try:
        step = start_step
        wall_start = time.perf_counter()
        while step < settings.steps:
            began = time.perf_counter()
            simulation.step(settings.report_interval)
            step += settings.report_interval
            elapsed = time.perf_counter() - began
            ns_per_day = settings.report_interval * settings.timestep * 1e-6 / elapsed * 86400
            row = state_row(simulation, step, n_dof, total_mass, ns_per_day)
            limit = settings.max_temperature_factor * settings.temperature
            if not math.isfinite(row["potential_kJ_mol"]) or row["temperature_K"] > limit:
                raise SimulationExploded(
                    f"step {step}: potential energy {row['potential_kJ_mol']:.4g} kJ/mol, temperature "
                    f"{row['temperature_K']:.4g} K (limit {limit:.0f} K). The simulation is unstable: "
                    "reduce --timestep, check the starting structure and that the model covers it. "
                    f"The last good state is in {checkpoint}.")
            state = simulation.context.getState(getPositions=True, enforcePeriodicBox=False)
            dcd.writeModel(state.getPositions(), periodicBoxVectors=state.getPeriodicBoxVectors())
            dcd_handle.flush()
            with open(table, "a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=CSV_FIELDS).writerow(row)
            temporary = checkpoint.with_suffix(".tmp")
            simulation.saveCheckpoint(str(temporary))
            os.replace(temporary, checkpoint)
            status_file.write_text(json.dumps({"step": step, "steps": settings.steps}))
            done = (step - start_step) / (settings.steps - start_step)
            remaining = (time.perf_counter() - wall_start) * (1 - done) / done
            progress(f"step {step}/{settings.steps}  E_pot {row['potential_kJ_mol']:.2f} kJ/mol  "
                     f"T {row['temperature_K']:.1f} K  {ns_per_day:.3f} ns/day  {100 * done:.0f}%  "
                     f"remaining {remaining:.0f} s")
    finally:
        dcd_handle.close()
    return {"steps": step, "checkpoint": str(checkpoint), "trajectory": str(trajectory),
            "thermo": str(table)}
