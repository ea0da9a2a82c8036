"""Protocol settings: defaults, the ``--quick`` preset, validation and (de)serialisation."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from allscaip.config import check_keys

COMMANDS = ("density", "hvap", "liquid")
ENGINES = ("openmm", "lammps")

# --quick: 64 molecules with hydrogen mass repartitioning (H 4 amu) and 1.5 fs steps -- the
# reference potential measured no change of static averages with HMR at 1.5 fs
# (docs/reference-potential.md) -- 1 + 4 ps liquid and 1 + 8 ps gas: 3 300 liquid steps
# (64 waters) + 6 000 gas steps (one molecule) + minimisation: a smoke test of the whole
# pipeline in ~20 minutes on 2 cores with the default model (108-124 ms per 64-water step),
# not a measurement (wide error bars).
QUICK = {"n_molecules": 64, "hydrogen_mass": 4.0, "timestep": 1.5, "equilibration": 1.0,
         "production": 4.0, "gas_equilibration": 1.0, "gas_production": 8.0, "replicas": 1,
         "report_interval": 100}
# Lengths, tolerances and the replica count may change when a run is resumed (to extend it);
# nothing else may.
EXTENDABLE = ("production", "gas_production", "density_tolerance", "hvap_tolerance",
              "max_production", "replicas")


@dataclass
class ProtocolSettings:
    """Everything that defines a protocol run (times in ps unless noted)."""

    command: str
    molecule: str
    model: str | None
    out: str
    name: str | None = None  # reference-data name; default: built-in name or file stem
    charge: int = 0
    spin: int = 1
    n_molecules: int = 216
    engine: str = "openmm"
    temperature: float = 298.15  # K
    pressure: float = 1.0  # bar
    timestep: float = 1.5  # fs
    hydrogen_mass: float | None = 4.0  # amu; None = no repartitioning
    equilibration: float = 50.0
    production: float = 250.0
    gas_equilibration: float = 10.0
    gas_production: float = 500.0
    report_interval: int = 100  # steps between samples, frames and checkpoints
    replicas: int = 1
    seed: int = 1
    start_density: float | None = None  # g/cm^3; default 95 % of experiment, else 0.8
    friction: float = 1.0  # 1/ps, liquid Langevin (OpenMM) / thermostat damping (LAMMPS)
    gas_friction: float = 5.0  # 1/ps
    barostat_interval: int = 25
    density_tolerance: float | None = None  # g/cm^3: extend production until stderr <= this
    hvap_tolerance: float | None = None  # kJ/mol
    max_production: float | None = None  # cap on liquid production when extending
    precision: str = "float32"
    platform: str = "auto"  # OpenMM platform of the liquid: CUDA when available, else CPU
    quick: bool = False
    forcefield: str | None = None  # classical potential (spcfw or an OpenMM XML) instead of a model
    compile: bool = False  # the model through PythonForce + torch.compile (openmm engine)
    workers: int = 1  # replicas simulated at once, each in its own process (speed, not the run)

    @property
    def needs_gas(self) -> bool:
        return self.command in ("hvap", "liquid")

    def steps(self, picoseconds: float) -> int:
        """Whole reports covering ``picoseconds``."""
        per_report = self.report_interval * self.timestep * 1e-3
        return max(1, round(picoseconds / per_report)) * self.report_interval

    def validate(self) -> None:
        if self.command not in COMMANDS:
            raise ValueError(f"protocol must be one of {COMMANDS}")
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be one of {ENGINES}")
        if self.forcefield is not None and self.model:
            raise ValueError("give either --model or --forcefield, not both")
        if self.forcefield is not None and self.engine != "openmm":
            raise ValueError("--forcefield runs on the openmm engine only")
        if self.compile and (self.engine != "openmm" or self.forcefield is not None):
            raise ValueError("--compile applies to a model on the openmm engine")
        positive = ("n_molecules", "temperature", "timestep", "production", "report_interval",
                    "replicas", "friction", "gas_friction", "workers")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        for name in ("equilibration", "gas_equilibration"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative")
        if self.needs_gas and self.gas_production <= 0:
            raise ValueError("--gas-production must be positive")
        if self.n_molecules < 2:
            raise ValueError("a liquid needs at least 2 molecules")
        if self.hydrogen_mass is not None and self.hydrogen_mass <= 1.008:
            raise ValueError("--hydrogen-mass must exceed 1.008 amu (0 disables repartitioning)")
        if self.max_production is not None and self.max_production < self.production:
            raise ValueError("--max-production must be at least --production")

    def to_json(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def from_json(cls, path: Path) -> "ProtocolSettings":
        values = json.loads(path.read_text())
        check_keys(values, {f.name for f in fields(cls)}, str(path))
        return cls(**values)


def resolve(given: dict) -> ProtocolSettings:
    """Settings from explicitly given options (None = not given): given > --quick > defaults."""
    values = {k: v for k, v in given.items() if v is not None}
    values.setdefault("model", None)
    if values.get("quick"):
        values = {**QUICK, **values}
    if values.get("hydrogen_mass") == 0:
        values["hydrogen_mass"] = None  # --hydrogen-mass 0: no repartitioning
    names = {f.name for f in fields(ProtocolSettings)}
    settings = ProtocolSettings(**{k: v for k, v in values.items() if k in names})
    settings.validate()
    return settings


def merge_resumed(saved: ProtocolSettings, given: dict) -> ProtocolSettings:
    """Saved settings of the run being resumed, with extended lengths/tolerances applied.
    Any other option given with a different value is an error (it would change the run)."""
    values = asdict(saved)
    conflicts = []
    for key, value in given.items():
        if value is None or key not in values or key in ("quick", "command"):
            continue
        if key == "replicas" and value < values[key]:
            conflicts.append(f"--replicas {value} (the run has {values[key]}; replicas can be added, not dropped)")
        elif key in EXTENDABLE or key in ("out", "compile", "workers"):  # speed, not the run
            values[key] = value
        elif key == "hydrogen_mass" and value == 0 and values[key] is None:
            continue
        elif value != values[key]:
            conflicts.append(f"--{key.replace('_', '-')} {value} (the run used {values[key]})")
    if conflicts:
        raise ValueError("--resume continues the run in its folder with its own settings; these "
                         "options differ: " + ", ".join(conflicts))
    settings = ProtocolSettings(**values)
    settings.validate()
    return settings
