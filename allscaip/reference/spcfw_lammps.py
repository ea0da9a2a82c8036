"""The same SPC/Fw water in LAMMPS (units real, Ewald), for cross-checking the OpenMM
reference and for exact analytic virials. LAMMPS's harmonic styles use E = K (x - x0)^2,
so K is half of the OpenMM force constants; 1-2 and 1-3 pairs are excluded."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from allscaip.reference import spcfw

KCAL = 4.184  # kJ per kcal
BOND_K_REAL = spcfw.BOND_K / 2 / KCAL / 100  # kcal/mol/A^2
ANGLE_K_REAL = spcfw.ANGLE_K / 2 / KCAL  # kcal/mol/rad^2
EPSILON_REAL = spcfw.EPSILON_O / KCAL
SIGMA_REAL = spcfw.SIGMA_O * 10


def write_data(path: Path, positions: np.ndarray, cell: np.ndarray) -> None:
    """atom_style full data file for waters ordered O, H, H (positions and cell in A)."""
    n_molecules = len(positions) // 3
    lines = ["SPC/Fw water (allscaip)", "", f"{len(positions)} atoms", f"{2 * n_molecules} bonds",
             f"{n_molecules} angles", "2 atom types", "1 bond types", "1 angle types", "",
             f"0 {cell[0, 0]:.12g} xlo xhi", f"0 {cell[1, 1]:.12g} ylo yhi", f"0 {cell[2, 2]:.12g} zlo zhi",
             f"{cell[1, 0]:.12g} {cell[2, 0]:.12g} {cell[2, 1]:.12g} xy xz yz", "",
             "Masses", "", "1 15.999", "2 1.008", "", "Atoms # full", ""]
    for index, position in enumerate(positions):
        kind = 1 if index % 3 == 0 else 2
        charge = spcfw.CHARGE_O if kind == 1 else spcfw.CHARGE_H
        lines.append(f"{index + 1} {index // 3 + 1} {kind} {charge} {position[0]:.12g} {position[1]:.12g} {position[2]:.12g}")
    lines += ["", "Bonds", ""]
    for molecule in range(n_molecules):
        oxygen = 3 * molecule + 1
        lines += [f"{2 * molecule + 1} 1 {oxygen} {oxygen + 1}", f"{2 * molecule + 2} 1 {oxygen} {oxygen + 2}"]
    lines += ["", "Angles", ""]
    lines += [f"{m + 1} 1 {3 * m + 2} {3 * m + 1} {3 * m + 3}" for m in range(n_molecules)]
    path.write_text("\n".join(lines) + "\n")


def spcfw_lammps_labels(positions: np.ndarray, cell: np.ndarray, cutoff: float = 6.0,
                        accuracy: float = 1e-8, tail: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Energy (kJ/mol), forces (kJ/mol/nm) and virial (kJ/mol, 3x3) of a periodic water box.

    positions: (N, 3) A ordered O, H, H per molecule; cell: restricted-triclinic rows (A).
    ``tail`` adds LAMMPS's long-range Lennard-Jones energy and pressure corrections.
    """
    from allscaip.plugins.lammps import import_lammps

    lmp = import_lammps().lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "water.data"
        write_data(data, positions, cell)
        lmp.commands_string(f"""
            units real
            atom_style full
            boundary p p p
            box tilt large
            read_data {data}
            bond_style harmonic
            bond_coeff 1 {BOND_K_REAL:.12g} {spcfw.BOND_LENGTH * 10:.12g}
            angle_style harmonic
            angle_coeff 1 {ANGLE_K_REAL:.12g} {math.degrees(spcfw.ANGLE):.12g}
            pair_style lj/cut/coul/long {cutoff}
            pair_coeff 1 1 {EPSILON_REAL:.12g} {SIGMA_REAL:.12g}
            pair_coeff * 2 0.0 1.0
            pair_modify tail {'yes' if tail else 'no'}
            special_bonds lj/coul 0.0 0.0 0.0
            kspace_style ewald {accuracy}
            compute virial all pressure NULL virial
            thermo_style custom pe c_virial[*]
            run 0
        """)
        energy = lmp.get_thermo("pe") * KCAL
        nlocal = lmp.extract_global("nlocal")
        tags = lmp.numpy.extract_atom("id")[:nlocal]
        forces = lmp.numpy.extract_atom("f")[:nlocal][np.argsort(tags)] * KCAL * 10
        volume = lmp.get_thermo("vol")
        nktv2p = 68568.415  # real units: atm per (kcal/mol/A^3)
        p = [lmp.numpy.extract_compute("virial", 0, 1)[k] for k in range(6)]
        lmp.close()
    xx, yy, zz, xy, xz, yz = (value * volume / nktv2p * KCAL for value in p)
    virial = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    return energy, forces, virial
