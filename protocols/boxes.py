"""Starting structures: a packmol box of N molecules at a chosen density, and the single
gas-phase molecule, both written as PDB files (CRYST1 for the box, CONECT for bonds)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from allscaip.protocols.molecules import Molecule

AVOGADRO = 6.02214076e23
DEFAULT_START_DENSITY = 0.8  # g/cm^3, when no experimental density is known
START_FRACTION = 0.95  # start at 95 % of the experimental density (OpenFF Evaluator: 0.95 g/mL)
TOLERANCE = 2.0  # Angstrom, packmol's minimum distance between molecules


class PackingError(ValueError):
    """packmol could not place the molecules (box too dense for the molecule's shape)."""


def box_length(molecule: Molecule, n_molecules: int, density_g_cm3: float) -> float:
    """Cubic box edge (Angstrom) holding ``n_molecules`` at ``density_g_cm3``."""
    volume_cm3 = n_molecules * molecule.mass_amu / AVOGADRO / density_g_cm3
    return (volume_cm3 * 1e24) ** (1.0 / 3.0)


def _write_xyz(path: Path, symbols: list[str], positions: np.ndarray) -> None:
    lines = [str(len(symbols)), "molecule"]
    lines += [f"{s} {x:.6f} {y:.6f} {z:.6f}" for s, (x, y, z) in zip(symbols, positions)]
    path.write_text("\n".join(lines) + "\n")


def pack(molecule: Molecule, n_molecules: int, length: float, seed: int) -> np.ndarray:
    """Run packmol; positions (n_molecules * atoms, 3) in Angstrom, molecules in order."""
    from packmol.cli import get_binary_path

    margin = TOLERANCE / 2
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        _write_xyz(work / "molecule.xyz", molecule.symbols, molecule.positions)
        script = "\n".join([
            f"tolerance {TOLERANCE}", "filetype xyz", "output box.xyz", f"seed {seed}",
            "structure molecule.xyz", f"  number {n_molecules}",
            f"  inside box {margin} {margin} {margin} {length - margin} {length - margin} {length - margin}",
            "end structure", ""])
        (work / "pack.inp").write_text(script)
        with open(work / "pack.inp") as stdin:  # packmol rewinds its input: a pipe will not do
            result = subprocess.run([str(get_binary_path())], stdin=stdin, capture_output=True,
                                    text=True, cwd=work)
        output = work / "box.xyz"
        if result.returncode != 0 or not output.exists():
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            raise PackingError(f"packmol failed to place {n_molecules} molecules in a {length:.2f} A box "
                               f"(lower --start-density?):\n{tail}")
        rows = output.read_text().splitlines()[2:]
    return np.array([[float(v) for v in row.split()[1:4]] for row in rows if row.strip()])


def topology(molecule: Molecule, n_molecules: int, box_nm: float | None):
    """OpenMM Topology with one residue per molecule and the molecule's bonds."""
    from openmm import Vec3, app

    top = app.Topology()
    chain = top.addChain()
    names = molecule.atom_names()
    for _ in range(n_molecules):
        residue = top.addResidue(molecule.residue_name, chain)
        atoms = [top.addAtom(name, app.Element.getBySymbol(symbol), residue)
                 for name, symbol in zip(names, molecule.symbols)]
        for i, j in molecule.bonds:
            top.addBond(atoms[i], atoms[j])
    if box_nm is not None:
        top.setPeriodicBoxVectors([Vec3(box_nm, 0, 0), Vec3(0, box_nm, 0), Vec3(0, 0, box_nm)])
    return top


def write_pdb(path: Path, top, positions_angstrom: np.ndarray) -> Path:
    from openmm import app, unit

    with open(path, "w") as handle:
        app.PDBFile.writeFile(top, positions_angstrom / 10.0 * unit.nanometer, handle)
    return path


def build_liquid(molecule: Molecule, n_molecules: int, density_g_cm3: float, seed: int,
                 path: Path) -> Path:
    """Pack ``n_molecules`` into a cubic box at ``density_g_cm3``; write the PDB."""
    length = box_length(molecule, n_molecules, density_g_cm3)
    positions = pack(molecule, n_molecules, length, seed)
    return write_pdb(path, topology(molecule, n_molecules, length / 10.0), positions)


def build_gas(molecule: Molecule, path: Path) -> Path:
    """The single molecule, no periodic box."""
    return write_pdb(path, topology(molecule, 1, None), molecule.positions)
