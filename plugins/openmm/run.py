"""``allscaip openmm run``: production MD of a PDB box with an AllScAIP model.

Runs in segments of ``report_interval`` steps through the engine-neutral loop of
``allscaip.plugins.segments`` (checks, DCD frame, CSV row, checkpoint); ``--resume`` reloads
the checkpoint and trims the DCD and CSV to it, so an interruption loses nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from allscaip.plugins.segments import (SegmentFiles, SimulationExploded,  # noqa: F401  (re-exported)
                                       resume_outputs, run_segments, start_table)

ENSEMBLES = ("nve", "nvt", "npt")
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
    compile: bool = False  # the python backend through torch.compile (allscaip.compiled)

    def validate(self) -> None:
        if (self.forcefield is None) == (not self.model):
            raise ValueError("give either a model (--model) or a classical --forcefield, not both")
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"--ensemble must be one of {ENSEMBLES}")
        for name in ("temperature", "timestep", "steps", "report_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.compile and self.backend != "python":
            raise ValueError("--compile needs --backend python (a TorchForce runs TorchScript)")
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
                               hydrogen_mass=settings.hydrogen_mass, compile=settings.compile)
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


class OpenMMSegments:
    """``plugins.segments.SegmentEngine`` for an ``openmm.app.Simulation``."""

    def __init__(self, simulation, checkpoint: Path):
        from openmm import unit

        self.simulation = simulation
        self.checkpoint = checkpoint
        system = simulation.system
        self.n_dof = degrees_of_freedom(system)
        self.total_mass = sum(system.getParticleMass(i).value_in_unit(unit.dalton)
                              for i in range(system.getNumParticles()))

    def advance(self, steps: int) -> None:
        self.simulation.step(steps)

    def thermo_row(self, step: int, ns_per_day: float) -> dict:
        return state_row(self.simulation, step, self.n_dof, self.total_mass, ns_per_day)

    def frame(self):
        state = self.simulation.context.getState(getPositions=True, enforcePeriodicBox=False)
        return state.getPositions(), state.getPeriodicBoxVectors()

    def save_checkpoint(self, path: Path) -> None:
        """OpenMM's binary checkpoint, and the run's portable state (``portable_state``) first."""
        state = portable_state(self.checkpoint)
        temporary = state.with_name(state.name + ".tmp")
        self.simulation.saveState(str(temporary))
        os.replace(temporary, state)
        self.simulation.saveCheckpoint(str(path))


def portable_state(checkpoint: Path) -> Path:
    """The XML state saved with a checkpoint: positions, velocities, box and parameters, readable
    on any machine and platform (a binary checkpoint is tied to the platform that wrote it)."""
    return checkpoint.with_suffix(".xml")


def restore(simulation, files: SegmentFiles, progress) -> int:
    """Load the run's checkpoint and return the step it holds; where this machine or platform
    cannot read it, continue from its portable state instead (same positions, velocities and
    box; the thermostat's and barostat's random streams restart), saying so."""
    import openmm

    try:
        simulation.loadCheckpoint(str(files.checkpoint))
    except openmm.OpenMMException as error:
        state = portable_state(files.checkpoint)
        if not state.exists():
            raise RuntimeError(f"cannot read the checkpoint {files.checkpoint} here ({error}) and there is no "
                               f"portable state {state} beside it: resume on the machine and platform that "
                               "wrote it, or start the run again") from error
        simulation.loadState(str(state))
        progress(f"the checkpoint {files.checkpoint} cannot be read here ({str(error).strip()}); continuing "
                 f"from its portable state {state.name} (the random streams restart)")
    return simulation.context.getStepCount()


def run(settings: RunSettings, resume: bool = False, progress=print) -> dict:
    """Run (or resume) the simulation; return a summary dict."""
    from openmm import unit

    settings.validate()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    files = SegmentFiles(out, out / "checkpoint.chk")
    simulation = build_simulation(settings)
    start_step = 0
    if resume and files.checkpoint.exists():
        start_step = resume_outputs(files, restore(simulation, files, progress), progress)
        simulation.currentStep = start_step
        progress(f"resumed at step {start_step} from {files.checkpoint}")
    else:
        if resume:
            progress(f"no checkpoint in {out}; starting from the PDB")
        if settings.ensemble != "nve":
            simulation.minimizeEnergy(maxIterations=200)
        simulation.context.setVelocitiesToTemperature(settings.temperature * unit.kelvin, settings.seed)
        start_table(files)
        (out / "settings.json").write_text(json.dumps(asdict(settings), indent=1))
    step = run_segments(OpenMMSegments(simulation, files.checkpoint), files, simulation.topology, start=start_step,
                        steps=settings.steps, report_interval=settings.report_interval,
                        timestep_fs=settings.timestep, temperature=settings.temperature,
                        max_temperature_factor=settings.max_temperature_factor, progress=progress)
    return {"steps": step, "checkpoint": str(files.checkpoint), "trajectory": str(files.trajectory),
            "thermo": str(files.table)}
