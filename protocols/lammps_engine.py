"""The protocol phases in LAMMPS, through the AllScAIP bridge (``fix external``).

Liquid: ``fix npt`` (Nose-Hoover chains, isotropic); gas: a fixed non-periodic box,
``fix nve`` + ``fix langevin``. The run advances in segments of ``report_interval`` steps;
after each one a DCD frame, a ``thermo.csv`` row and a binary restart are written (the
restart carries the thermostat/barostat state), so a resumed run continues where it stopped.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from allscaip.plugins.openmm.run import CSV_FIELDS, SimulationExploded, trim_csv, truncate_dcd
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


def _thermo_row(lmp, step: int, phase: Phase, periodic: bool, ns_per_day: float) -> dict:
    potential = lmp.get_thermo("pe") * EV_TO_KJ_MOL
    kinetic = lmp.get_thermo("ke") * EV_TO_KJ_MOL
    volume = lmp.get_thermo("vol") * 1e-3 if periodic else float("nan")
    density = lmp.get_thermo("density") if periodic else float("nan")
    return {"step": step, "time_ps": step * phase.timestep * 1e-3, "potential_kJ_mol": potential,
            "kinetic_kJ_mol": kinetic, "total_kJ_mol": potential + kinetic,
            "temperature_K": lmp.get_thermo("temp"), "volume_nm3": volume,
            "density_g_cm3": density, "ns_per_day": ns_per_day}


def run_lammps(phase: Phase, resume: bool, progress: Callable[[str], None]) -> None:
    from openmm import app, unit

    from allscaip.plugins.lammps import attach, import_lammps

    out = phase.out
    out.mkdir(parents=True, exist_ok=True)
    restart, status_file = out / "restart.bin", out / "status.json"
    table, trajectory = out / "thermo.csv", out / "trajectory.dcd"
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
        if resume and restart.exists():
            start = json.loads(status_file.read_text())["step"]
            lmp.command(f"read_restart {restart}")
            truncate_dcd(trajectory, trim_csv(table, start))
            progress(f"resumed at step {start} from {restart}")
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
            with open(table, "w", newline="") as handle:
                csv.DictWriter(handle, fieldnames=CSV_FIELDS).writeheader()
        temperature = phase.temperature
        if periodic:
            lmp.command(f"fix integrate all npt temp {temperature} {temperature} {1.0 / phase.friction} "
                        f"iso {phase.pressure} {phase.pressure} {1000 * dt_ps}")
        else:
            lmp.commands_list(["fix integrate all nve",
                               f"fix thermostat all langevin {temperature} {temperature} "
                               f"{1.0 / phase.friction} {phase.seed + start} zero yes"])
        _segments(lmp, phase, start, periodic, pdb.topology, progress)
    finally:
        lmp.close()


def _segments(lmp, phase: Phase, start: int, periodic: bool, topology, progress) -> None:
    from openmm import Vec3, app, unit

    out = phase.out
    restart, status_file = out / "restart.bin", out / "status.json"
    table, trajectory = out / "thermo.csv", out / "trajectory.dcd"
    append = start > 0 and trajectory.exists()
    handle = open(trajectory, "r+b" if append else "wb")
    dcd = app.DCDFile(handle, topology, phase.timestep * unit.femtoseconds,
                      firstStep=phase.report_interval, interval=phase.report_interval, append=append)
    try:
        step = start
        while step < phase.steps:
            began = time.perf_counter()
            lmp.command(f"run {phase.report_interval}")
            step += phase.report_interval
            elapsed = time.perf_counter() - began
            row = _thermo_row(lmp, step, phase, periodic,
                              phase.report_interval * phase.timestep * 1e-6 / elapsed * 86400)
            if not np.isfinite(row["potential_kJ_mol"]) or row["temperature_K"] > phase.max_temperature_factor * phase.temperature:
                raise SimulationExploded(
                    f"step {step}: potential energy {row['potential_kJ_mol']:.4g} kJ/mol, temperature "
                    f"{row['temperature_K']:.4g} K: the simulation is unstable; reduce --timestep. "
                    f"The last good state is in {restart}.")
            x = np.ctypeslib.as_array(lmp.gather_atoms("x", 1, 3)).reshape(-1, 3) / 10.0
            boxlo, boxhi, *_ = lmp.extract_box()
            edges = [(hi - lo) / 10.0 for lo, hi in zip(boxlo, boxhi)]
            vectors = [Vec3(edges[0], 0, 0), Vec3(0, edges[1], 0), Vec3(0, 0, edges[2])]
            dcd.writeModel(x * unit.nanometer, periodicBoxVectors=vectors if periodic else None)
            handle.flush()
            with open(table, "a", newline="") as stream:
                csv.DictWriter(stream, fieldnames=CSV_FIELDS).writerow(row)
            lmp.command(f"write_restart {out / 'restart.tmp'}")
            os.replace(out / "restart.tmp", restart)
            status_file.write_text(json.dumps({"step": step, "steps": phase.steps}))
            progress(f"step {step}/{phase.steps}  E_pot {row['potential_kJ_mol']:.2f} kJ/mol  "
                     f"T {row['temperature_K']:.1f} K  {row['ns_per_day']:.3f} ns/day")
    finally:
        handle.close()
