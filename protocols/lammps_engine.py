"""The protocol phases in LAMMPS, through the AllScAIP bridge (``fix external``).

Liquid: ``fix npt`` (Nose-Hoover chains, isotropic); gas: a fixed non-periodic box,
``fix nve`` + ``fix langevin``. The run advances through the engine-neutral segment loop
(``allscaip.plugins.segments``); its checkpoint is a binary restart, which carries the
thermostat/barostat state, so a resumed run continues where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from allscaip.plugins.segments import SegmentFiles, resume_outputs, run_segments, start_table
from allscaip.protocols.engines import Phase

EV_TO_KJ_MOL = 96.48533212331002
FIX_ID = "allscaip"


def particle_masses(topology, hydrogen_mass: float | None) -> list[float]:
    """Per-atom masses (amu), hydrogen-repartitioned as in the OpenMM engine."""
    import openmm
    from openmm import unit

    from allscaip.plugins.openmm.system import repartition_hydrogen_mass

    system = openmm.System()
    for atom in topology.atoms():
        system.addParticle(atom.element.mass)
    if hydrogen_mass is not None:
        repartition_hydrogen_mass(system, topology, hydrogen_mass)
    return [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())]


def atom_types(topology, masses: list[float]) -> tuple[list[int], list[str], list[float]]:
    """One LAMMPS type per distinct (element, mass): per-atom type, type elements, type masses."""
    keys: dict[tuple[str, float], int] = {}
    per_atom = []
    for atom, mass in zip(topology.atoms(), masses):
        key = (atom.element.symbol, round(mass, 6))
        per_atom.append(keys.setdefault(key, len(keys) + 1))
    return per_atom, [k[0] for k in keys], [k[1] for k in keys]


def write_data(path: Path, positions_nm: np.ndarray, box_nm: float | None, types: list[int],
               type_masses: list[float]) -> None:
    """LAMMPS data file (atom_style atomic, Angstrom); a gas molecule gets 20 A of room."""
    coords = positions_nm * 10.0
    if box_nm is None:
        low, high = coords.min(axis=0) - 20.0, coords.max(axis=0) + 20.0
    else:
        low, high = np.zeros(3), np.full(3, box_nm * 10.0)
    lines = ["AllScAIP protocol box", "", f"{len(coords)} atoms", f"{len(type_masses)} atom types", ""]
    lines += [f"{lo:.8f} {hi:.8f} {a}lo {a}hi" for lo, hi, a in zip(low, high, "xyz")]
    lines += ["", "Masses", ""] + [f"{t} {m:.6f}" for t, m in enumerate(type_masses, start=1)]
    lines += ["", "Atoms # atomic", ""]
    lines += [f"{i} {t} {x:.8f} {y:.8f} {z:.8f}" for i, (t, (x, y, z)) in
              enumerate(zip(types, coords), start=1)]
    path.write_text("\n".join(lines) + "\n")


class LammpsSegments:
    """``plugins.segments.SegmentEngine`` for a LAMMPS instance with the model attached."""

    def __init__(self, lmp, phase: Phase, periodic: bool):
        self.lmp = lmp
        self.phase = phase
        self.periodic = periodic

    def advance(self, steps: int) -> None:
        self.lmp.command(f"run {steps}")

    def thermo_row(self, step: int, ns_per_day: float) -> dict:
        lmp, periodic = self.lmp, self.periodic
        potential = lmp.get_thermo("pe") * EV_TO_KJ_MOL
        kinetic = lmp.get_thermo("ke") * EV_TO_KJ_MOL
        volume = lmp.get_thermo("vol") * 1e-3 if periodic else float("nan")
        density = lmp.get_thermo("density") if periodic else float("nan")
        return {"step": step, "time_ps": step * self.phase.timestep * 1e-3, "potential_kJ_mol": potential,
                "kinetic_kJ_mol": kinetic, "total_kJ_mol": potential + kinetic,
                "temperature_K": lmp.get_thermo("temp"), "volume_nm3": volume,
                "density_g_cm3": density, "ns_per_day": ns_per_day}

    def frame(self):
        from openmm import Vec3, unit

        x = np.ctypeslib.as_array(self.lmp.gather_atoms("x", 1, 3)).reshape(-1, 3) / 10.0
        boxlo, boxhi, *_ = self.lmp.extract_box()
        edges = [(hi - lo) / 10.0 for lo, hi in zip(boxlo, boxhi)]
        vectors = [Vec3(edges[0], 0, 0), Vec3(0, edges[1], 0), Vec3(0, 0, edges[2])]
        return x * unit.nanometer, vectors * unit.nanometer if self.periodic else None

    def save_checkpoint(self, path: Path) -> None:
        self.lmp.command(f"write_restart {path}")


def run_lammps(phase: Phase, resume: bool, progress: Callable[[str], None]) -> None:
    from openmm import app, unit

    from allscaip.plugins.lammps import attach, import_lammps

    out = phase.out
    out.mkdir(parents=True, exist_ok=True)
    files = SegmentFiles(out, out / "restart.bin")
    periodic = phase.ensemble == "npt"
    pdb = app.PDBFile(str(phase.pdb))
    masses = particle_masses(pdb.topology, phase.hydrogen_mass)
    types, type_elements, type_masses = atom_types(pdb.topology, masses)
    dt_ps = phase.timestep * 1e-3
    lammps = import_lammps()
    lmp = lammps.lammps(cmdargs=["-nocite", "-screen", "none", "-log", str(out / "log.lammps")])
    start = 0
    try:
        # gas: a fixed open box around the molecule (its momentum is zeroed, so it stays put)
        lmp.commands_list(["units metal", "atom_style atomic",
                           f"boundary {'p p p' if periodic else 'f f f'}"])
        if resume and files.checkpoint.exists():
            lmp.command(f"read_restart {files.checkpoint}")
            start = resume_outputs(files, int(lmp.extract_global("ntimestep")), progress)
            progress(f"resumed at step {start} from {files.checkpoint}")
        else:
            box = pdb.topology.getPeriodicBoxVectors()
            box_nm = box[0][0].value_in_unit(unit.nanometer) if periodic else None
            positions = np.array(pdb.positions.value_in_unit(unit.nanometer))
            write_data(out / "start.data", positions, box_nm, types, type_masses)
            lmp.command(f"read_data {out / 'start.data'}")
        attach(lmp, phase.model, type_elements, charge=phase.charge, spin=phase.spin,
               dtype=phase.precision, threads=torch.get_num_threads(), fix_id=FIX_ID, verbose=False)
        lmp.commands_list([f"timestep {dt_ps}", f"neighbor 2.0 {'bin' if periodic else 'nsq'}",
                           "thermo_style custom step temp pe ke vol density"])
        if start == 0:
            lmp.commands_list(["min_style cg", "minimize 0.0 1.0e-3 200 2000", "reset_timestep 0",
                               f"velocity all create {phase.temperature} {phase.seed} mom yes rot yes dist gaussian"])
            start_table(files)
        temperature = phase.temperature
        if periodic:
            lmp.command(f"fix integrate all npt temp {temperature} {temperature} {1.0 / phase.friction} "
                        f"iso {phase.pressure} {phase.pressure} {1000 * dt_ps}")
        else:
            lmp.commands_list(["fix integrate all nve",
                               f"fix thermostat all langevin {temperature} {temperature} "
                               f"{1.0 / phase.friction} {phase.seed + start} zero yes"])
        run_segments(LammpsSegments(lmp, phase, periodic), files, pdb.topology, start=start,
                     steps=phase.steps, report_interval=phase.report_interval,
                     timestep_fs=phase.timestep, temperature=phase.temperature,
                     max_temperature_factor=phase.max_temperature_factor, progress=progress)
    finally:
        lmp.close()


