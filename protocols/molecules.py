"""One molecule for a protocol: the built-in water or a PDB/SDF/XYZ file, with its total
charge and spin multiplicity checked against its electron count."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUILTIN = ("water",)
FILE_FORMATS = {".pdb": "proteindatabank", ".sdf": "sdf", ".mol": "sdf", ".xyz": "xyz"}
# SPC/Fw equilibrium geometry (Wu, Tepper & Voth 2006): r(OH) 1.012 A, angle 113.24 deg
_WATER_ANGLE = np.deg2rad(113.24) / 2
WATER_POSITIONS = np.array([[0.0, 0.0, 0.0],
                            [1.012 * np.sin(_WATER_ANGLE), 0.0, 1.012 * np.cos(_WATER_ANGLE)],
                            [-1.012 * np.sin(_WATER_ANGLE), 0.0, 1.012 * np.cos(_WATER_ANGLE)]])


@dataclass
class Molecule:
    """Name (used to look up reference data), element symbols, positions in Angstrom,
    bonds as atom-index pairs, total charge and spin multiplicity."""

    name: str
    symbols: list[str]
    positions: np.ndarray
    bonds: list[tuple[int, int]]
    charge: int = 0
    spin: int = 1

    @property
    def atomic_numbers(self) -> list[int]:
        from ase.data import atomic_numbers

        return [atomic_numbers[s] for s in self.symbols]

    @property
    def mass_amu(self) -> float:
        from ase.data import atomic_masses

        return float(sum(atomic_masses[z] for z in self.atomic_numbers))

    @property
    def residue_name(self) -> str:
        return "HOH" if self.is_water else "MOL"

    @property
    def is_water(self) -> bool:
        return sorted(self.symbols) == ["H", "H", "O"]

    def atom_names(self) -> list[str]:
        """Unique PDB atom names (O, H1, H2 for water; element + running number otherwise)."""
        if self.is_water:
            hydrogens = iter(("H1", "H2"))
            return ["O" if s == "O" else next(hydrogens) for s in self.symbols]
        counts: dict[str, int] = {}
        names = []
        for symbol in self.symbols:
            counts[symbol] = counts.get(symbol, 0) + 1
            names.append(f"{symbol}{counts[symbol]}")
        return names


def water() -> Molecule:
    return Molecule("water", ["O", "H", "H"], WATER_POSITIONS.copy(), [(0, 1), (0, 2)])


def guess_bonds(symbols: list[str], positions: np.ndarray) -> list[tuple[int, int]]:
    """Bonds: atoms closer than 1.2x the sum of their covalent radii."""
    from ase import Atoms
    from ase.neighborlist import natural_cutoffs, neighbor_list

    atoms = Atoms(symbols=symbols, positions=positions)
    first, second = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=1.2))
    return sorted({(int(i), int(j)) for i, j in zip(first, second) if i < j})


def connected(n_atoms: int, bonds: list[tuple[int, int]]) -> bool:
    reached, frontier = {0}, [0]
    neighbours: dict[int, list[int]] = {i: [] for i in range(n_atoms)}
    for i, j in bonds:
        neighbours[i].append(j)
        neighbours[j].append(i)
    while frontier:
        for j in neighbours[frontier.pop()]:
            if j not in reached:
                reached.add(j)
                frontier.append(j)
    return len(reached) == n_atoms


def sdf_formal_charge(path: Path) -> int | None:
    """Sum of the ``M  CHG`` formal charges of an SDF/MOL file (None if it has none)."""
    total, found = 0, False
    for line in path.read_text().splitlines():
        if line.startswith("M  CHG"):
            fields = line.split()[3:]
            total += sum(int(q) for q in fields[1::2])
            found = True
    return total if found else None


def check_charge_spin(molecule: Molecule) -> None:
    """Electron count parity must match the multiplicity (2S+1)."""
    if molecule.spin < 1:
        raise ValueError(f"--spin is the multiplicity 2S+1 and must be >= 1, got {molecule.spin}")
    electrons = sum(molecule.atomic_numbers) - molecule.charge
    if electrons < 0:
        raise ValueError(f"charge {molecule.charge:+d} removes more electrons than {molecule.name} has")
    if electrons % 2 == molecule.spin % 2:
        raise ValueError(
            f"charge {molecule.charge:+d} and multiplicity {molecule.spin} do not fit {molecule.name} "
            f"({'-'.join(molecule.symbols) if len(molecule.symbols) < 6 else len(molecule.symbols)} "
            f"atoms, {electrons} electrons): an {'even' if electrons % 2 == 0 else 'odd'} electron "
            f"count needs an {'odd' if electrons % 2 == 0 else 'even'} multiplicity")


def load_molecule(spec: str, charge: int = 0, spin: int = 1, name: str | None = None) -> Molecule:
    """``water`` or a PDB/SDF/MOL/XYZ file holding one molecule."""
    if spec in BUILTIN:
        molecule = water()
        molecule.charge, molecule.spin = charge, spin
        check_charge_spin(molecule)
        return molecule
    path = Path(spec)
    if path.suffix.lower() not in FILE_FORMATS:
        raise ValueError(f"--molecule {spec!r}: not a built-in molecule ({', '.join(BUILTIN)}) and not a "
                         f"file with a known suffix ({', '.join(FILE_FORMATS)})")
    if not path.is_file():
        raise FileNotFoundError(f"molecule file {path} does not exist")
    from ase.io import read

    try:
        atoms = read(path, format=FILE_FORMATS[path.suffix.lower()], index=0)
    except Exception as exc:  # ASE raises many kinds of errors for malformed files
        raise ValueError(f"could not read a molecule from {path}: {exc}") from exc
    if len(atoms) == 0:
        raise ValueError(f"{path} contains no atoms")
    symbols = atoms.get_chemical_symbols()
    positions = np.asarray(atoms.positions, dtype=float)
    bonds = guess_bonds(symbols, positions)
    if not connected(len(symbols), bonds):
        raise ValueError(f"{path} holds more than one molecule (its atoms do not form one bonded "
                         "graph); give a file with exactly one molecule")
    if path.suffix.lower() in (".sdf", ".mol"):
        formal = sdf_formal_charge(path)
        if formal is not None and formal != charge:
            raise ValueError(f"--charge {charge} does not match the formal charges in {path} "
                             f"(total {formal:+d})")
    molecule = Molecule(name or path.stem.lower(), symbols, positions - positions.mean(axis=0), bonds,
                        charge, spin)
    check_charge_spin(molecule)
    return molecule
