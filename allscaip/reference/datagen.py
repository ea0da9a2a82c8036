"""Training data from the SPC/Fw reference: configurations sampled by MD, labelled exactly.

A plan drawn from one seed lists runs: liquid boxes (16-216 waters, 250-450 K, density
+-15 % around 1 g/cm^3, including boxes smaller than twice the model cutoff) and gas-phase
monomers, dimers and clusters (no periodic boundaries). Each run is a short Langevin MD
(OpenMM CPU platform on one thread, which is deterministic; hydrogen masses 4 amu to allow
1 fs steps, which changes no configurational average), after which frames are taken at a
fixed interval and labelled by ``SpcfwLabeller``. Every run is written to its own shard, so
an interrupted generation resumes where it stopped and gives the same data.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from allscaip.data import Frame, read_shard, write_shard
from allscaip.reference import spcfw
from allscaip.reference.labels import SpcfwLabeller, water_topology
from allscaip.reference.water import box_length, spcfw_geometry, water_box

LIQUID_SIZES = (16, 32, 64, 64, 128, 216)  # drawn uniformly: 64 waters twice as often
SAMPLING_HYDROGEN_MASS = 4.0  # amu


@dataclass
class Run:
    """One MD run of the plan."""

    index: int
    kind: str  # "liquid", "monomer", "dimer" or "cluster"
    n_molecules: int
    temperature: float  # K
    density: float  # g/cm^3 (liquid runs)
    seed: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index:04d}"


@dataclass
class DatagenSettings:
    seed: int = 0
    liquid_runs: int = 60
    gas_runs: int = 30
    frames_per_run: int = 10
    equilibration_ps: float = 1.0
    interval_ps: float = 0.1
    timestep_fs: float = 1.0
    temperature_range: tuple[float, float] = (250.0, 450.0)
    density_range: tuple[float, float] = (0.85, 1.15)
    # A fraction of the liquid runs drawn from a narrower state window (the protocols' state
    # point); the rest keep the full spread above.
    focus_fraction: float = 0.0
    focus_temperature_range: tuple[float, float] = (280.0, 320.0)
    focus_density_range: tuple[float, float] = (0.95, 1.05)
    # Share of gas-phase runs that are single monomers (None: monomer, dimer, cluster in turn).
    monomer_fraction: float | None = None


def _liquid_state(rng: np.random.Generator, settings: DatagenSettings) -> tuple[float, float]:
    """Temperature (K) and density (g/cm^3) of one liquid run."""
    focused = settings.focus_fraction > 0 and rng.uniform() < settings.focus_fraction
    temperatures = settings.focus_temperature_range if focused else settings.temperature_range
    densities = settings.focus_density_range if focused else settings.density_range
    return float(rng.uniform(*temperatures)), float(rng.uniform(*densities))


def _gas_kind(index: int, rng: np.random.Generator, settings: DatagenSettings) -> str:
    if settings.monomer_fraction is None:
        return ("monomer", "dimer", "cluster")[index % 3]
    if rng.uniform() < settings.monomer_fraction:
        return "monomer"
    return ("dimer", "cluster")[index % 2]


def plan_runs(settings: DatagenSettings) -> list[Run]:
    """The runs of a data set, drawn from ``settings.seed`` alone."""
    rng = np.random.default_rng(settings.seed)
    runs = []
    for index in range(settings.liquid_runs):
        n_molecules = int(rng.choice(LIQUID_SIZES))
        temperature, density = _liquid_state(rng, settings)
        runs.append(Run(index, "liquid", n_molecules, temperature, density, int(rng.integers(2**31))))
    for index in range(settings.gas_runs):
        kind = _gas_kind(index, rng, settings)
        n_molecules = {"monomer": 1, "dimer": 2}.get(kind) or int(rng.integers(3, 9))
        runs.append(Run(index, kind, n_molecules, float(rng.uniform(*settings.temperature_range)),
                        0.0, int(rng.integers(2**31))))
    return runs


def _simulation(n_molecules: int, cell: np.ndarray | None, temperature: float, settings: DatagenSettings,
                seed: int):
    """A deterministic OpenMM context for sampling (the real-space cutoff shrinks to fit small
    boxes; labels are always computed with the full reference settings)."""
    import openmm

    topology = water_topology(n_molecules, cell)
    cutoff = 0.9 if cell is None else min(0.9, 0.049 * float(np.min(np.diag(cell))))
    system = spcfw.spcfw_system(topology, periodic=cell is not None, cutoff=cutoff)
    for oxygen in range(0, system.getNumParticles(), 3):
        heavy = system.getParticleMass(oxygen)._value - 2 * (SAMPLING_HYDROGEN_MASS - 1.008)
        system.setParticleMass(oxygen, heavy)
        system.setParticleMass(oxygen + 1, SAMPLING_HYDROGEN_MASS)
        system.setParticleMass(oxygen + 2, SAMPLING_HYDROGEN_MASS)
    integrator = openmm.LangevinMiddleIntegrator(temperature, 2.0, settings.timestep_fs * 1e-3)
    integrator.setRandomNumberSeed(seed % 2**30 + 1)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"),
                             {"Threads": "1"})
    return context, integrator


def _rotated_water(rng: np.random.Generator) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    geometry = spcfw_geometry()
    rotation = Rotation.random(random_state=int(rng.integers(2**31))).as_matrix()
    return (geometry - geometry.mean(axis=0)) @ rotation.T


def _gas_start(run: Run, rng: np.random.Generator) -> np.ndarray:
    """Monomer at equilibrium; dimer 2.6-6 A apart; cluster: molecules at random points of a
    sphere of liquid density, re-drawn until no two oxygens are closer than 2.5 A."""
    if run.n_molecules == 1:
        return _rotated_water(rng)
    if run.n_molecules == 2:
        direction = rng.normal(size=3)
        separation = rng.uniform(2.6, 6.0) * direction / np.linalg.norm(direction)
        return np.concatenate([_rotated_water(rng), _rotated_water(rng) + separation])
    radius = (3 * run.n_molecules * 30.0 / (4 * np.pi)) ** (1 / 3)
    centres: list[np.ndarray] = []
    while len(centres) < run.n_molecules:
        point = rng.uniform(-radius, radius, 3)
        if np.linalg.norm(point) <= radius and all(np.linalg.norm(point - c) > 2.5 for c in centres):
            centres.append(point)
    return np.concatenate([_rotated_water(rng) + centre for centre in centres])


def sample_run(run: Run, settings: DatagenSettings, labeller: SpcfwLabeller) -> list[Frame]:
    """MD of one run and the labelled frames it yields."""
    rng = np.random.default_rng(run.seed)
    if run.kind == "liquid":
        length = box_length(run.n_molecules, run.density)
        start = water_box(run.n_molecules, run.density, seed=run.seed % 2**31).positions
        cell = np.eye(3) * length
    else:
        start, cell = _gas_start(run, rng), None
    context, integrator = _simulation(run.n_molecules, cell, run.temperature, settings, run.seed)
    context.setPositions(start / 10)
    import openmm

    openmm.LocalEnergyMinimizer.minimize(context, 10.0, 200)
    context.setVelocitiesToTemperature(run.temperature, run.seed % 2**30 + 1)
    steps_per_ps = int(round(1000 / settings.timestep_fs))
    integrator.step(int(settings.equilibration_ps * steps_per_ps))
    numbers = np.tile([8, 1, 1], run.n_molecules)
    frames = []
    for _ in range(settings.frames_per_run):
        integrator.step(int(round(settings.interval_ps * steps_per_ps)))
        positions = context.getState(getPositions=True).getPositions(asNumpy=True)._value * 10
        if cell is not None:
            positions = _wrap_molecules(positions, cell)
        frames.append(labeller.label(numbers, positions, cell))
    return frames


def _wrap_molecules(positions: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Put every oxygen in the cell and keep its hydrogens next to it."""
    inverse = np.linalg.inv(cell)
    molecules = positions.reshape(-1, 3, 3)
    shift = np.floor(molecules[:, :1] @ inverse) @ cell
    return (molecules - shift).reshape(-1, 3)


def generate(out: str | Path, settings: DatagenSettings, progress: bool = True) -> dict:
    """Run the plan into ``out`` (one shard per run; existing shards are kept) and write
    ``manifest.json``. Returns the manifest."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        previous = json.loads(manifest_path.read_text())["settings"]
        if previous != json.loads(json.dumps(asdict(settings))):
            raise ValueError(f"{out} holds data made with other settings ({previous}); "
                             "use a new folder or the same settings to resume")
    runs = plan_runs(settings)
    labeller = SpcfwLabeller()
    started = time.perf_counter()
    records = []
    manifest_path.write_text(json.dumps({"settings": asdict(settings)}, indent=1))
    for run in tqdm(runs, desc="datagen spcfw", unit="run", disable=not progress):
        shard = out / f"{run.name}.npz"
        if not shard.exists():
            frames = sample_run(run, settings, labeller)
            write_shard(frames, shard.with_suffix(".tmp.npz"))
            shard.with_suffix(".tmp.npz").replace(shard)
        n_frames = len(read_shard(shard))
        records.append({**asdict(run), "file": shard.name, "frames": n_frames})
    manifest = {
        "settings": asdict(settings),
        "reference": "SPC/Fw (Wu, Tepper & Voth 2006); PME, 0.9 nm real-space cutoff, Ewald "
                     "tolerance 1e-6, dispersion correction; gas phase without cutoff",
        "units": {"energy": "eV", "forces": "eV/A", "stress": "eV/A^3 (positive = tensile)"},
        "frames": sum(r["frames"] for r in records),
        "atoms": int(sum(r["frames"] * 3 * r["n_molecules"] for r in records)),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "runs": records,
    }
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest
