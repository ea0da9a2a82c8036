"""Exact SPC/Fw labels for a configuration: energy, forces and stress in eV and Angstrom.

Periodic frames use PME with the reference's 0.9 nm real-space cutoff and dispersion
correction, the settings of the reference's own density and heat of vaporization. OpenMM
needs the cutoff below half the box, so small boxes are labelled through a supercell (the
same infinite periodic system): energy per original cell, forces of the first copy.

OpenMM has no virial. The stress comes from the same model in LAMMPS (Ewald, 9 A cutoff,
tail correction; ``allscaip.reference.spcfw_lammps``), whose analytic virial includes the
long-range Lennard-Jones pressure. A finite-difference strain derivative of the OpenMM
energy (``stress="finite-difference"``) is available for cross-checks: with hard cutoffs it
misses that tail pressure and is noisy where pairs cross the cutoff (see crosscheck.py).
Gas-phase frames use no cutoff and have no stress.
"""

from __future__ import annotations

import numpy as np

from allscaip.data import Frame
from allscaip.reference import spcfw

KJ_PER_EV = 96.48533212  # kJ/mol per eV
WATER_NUMBERS = (8, 1, 1)


def water_topology(n_molecules: int, cell: np.ndarray | None = None):
    """OpenMM topology of ``n_molecules`` HOH residues (atoms O, H, H); cell in Angstrom."""
    from openmm import Vec3, app, unit

    topology = app.Topology()
    chain = topology.addChain()
    for _ in range(n_molecules):
        residue = topology.addResidue("HOH", chain)
        oxygen = topology.addAtom("O", app.element.oxygen, residue)
        for name in ("H1", "H2"):
            topology.addBond(oxygen, topology.addAtom(name, app.element.hydrogen, residue))
    if cell is not None:
        topology.setPeriodicBoxVectors([Vec3(*row) for row in np.asarray(cell) / 10] * unit.nanometer)
    return topology


def reduced_cell(cell: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a cell and its positions so the cell is lower triangular with a positive
    diagonal (OpenMM's box convention). Energies and forces are unchanged up to the same
    rotation, which is returned implicitly as ``cell @ R`` and ``positions @ R``."""
    q, r = np.linalg.qr(cell.T)
    signs = np.sign(np.diag(r))
    rotation = q * signs
    return np.tril(cell @ rotation), positions @ rotation


def perpendicular_widths(cell: np.ndarray) -> np.ndarray:
    volume = abs(np.linalg.det(cell))
    return np.array([volume / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3]))
                     for i in range(3)])


class SpcfwLabeller:
    """Labels water frames (atoms ordered O, H, H per molecule) with SPC/Fw.

    ``platform`` "CPU" (one thread, deterministic) or "Reference" (double precision).
    """

    def __init__(self, cutoff: float = 0.9, ewald_tolerance: float = 1e-6,
                 dispersion_correction: bool = True, stress: str = "lammps",
                 strain_step: float = 1e-3, platform: str = "CPU"):
        if stress not in ("lammps", "finite-difference"):
            raise ValueError(f"stress must be 'lammps' or 'finite-difference', not {stress!r}")
        self.cutoff, self.ewald_tolerance = cutoff, ewald_tolerance
        self.dispersion_correction = dispersion_correction
        self.stress, self.strain_step = stress, strain_step
        self.platform = platform
        self._contexts: dict = {}

    def _context(self, n_molecules: int, cell: np.ndarray | None):
        import openmm

        key = (n_molecules, cell is not None)
        if key not in self._contexts:
            topology = water_topology(n_molecules, cell)
            system = spcfw.spcfw_system(topology, periodic=cell is not None, cutoff=self.cutoff,
                                        ewald_tolerance=self.ewald_tolerance,
                                        dispersion_correction=self.dispersion_correction)
            properties = {"Threads": "1"} if self.platform == "CPU" else {}
            self._contexts[key] = openmm.Context(system, openmm.VerletIntegrator(0.001),
                                                 openmm.Platform.getPlatformByName(self.platform),
                                                 properties)
        return self._contexts[key]

    def _evaluate(self, positions: np.ndarray, cell: np.ndarray | None, forces: bool = True):
        """Energy (kJ/mol) and forces (kJ/mol/nm) in the frame of ``positions`` (Angstrom)."""
        context = self._context(len(positions) // 3, cell)
        rotation = np.eye(3)
        if cell is not None:
            reduced, _ = reduced_cell(cell, positions)
            rotation = np.linalg.solve(cell, reduced)
            context.setPeriodicBoxVectors(*(reduced / 10))
        context.setPositions(positions @ rotation / 10)
        state = context.getState(getEnergy=True, getForces=forces)
        energy = state.getPotentialEnergy()._value
        if not forces:
            return energy, None
        return energy, state.getForces(asNumpy=True)._value @ rotation.T

    def _supercell(self, positions: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        repeats = np.ceil((2 * self.cutoff * 10 + 0.5) / perpendicular_widths(cell)).astype(int)
        shifts = np.array([(i, j, k) for i in range(repeats[0]) for j in range(repeats[1])
                           for k in range(repeats[2])]) @ cell
        copies = np.concatenate([positions + shift for shift in shifts])
        return copies, cell * repeats[:, None], len(shifts)

    def label(self, numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray | None) -> Frame:
        """A Frame with energy (eV), forces (eV/A) and, if periodic, stress (eV/A^3)."""
        numbers = np.asarray(numbers)
        if len(numbers) % 3 or np.any(numbers.reshape(-1, 3) != WATER_NUMBERS):
            raise ValueError("SPC/Fw labels need water molecules ordered O, H, H")
        if cell is None:
            energy, forces = self._evaluate(positions, None)
            return Frame(numbers=numbers.copy(), positions=positions.copy(), cell=np.zeros((3, 3)),
                         pbc=np.zeros(3, bool), energy=energy / KJ_PER_EV,
                         forces=forces / KJ_PER_EV / 10)
        copies, supercell, n_copies = self._supercell(positions, cell)
        energy, forces = self._evaluate(copies, supercell)
        volume = abs(np.linalg.det(cell))
        if self.stress == "lammps":
            stress = -self._lammps_virial(positions, cell) / volume
        else:
            stress = self.strain_derivative(copies, supercell) / n_copies / volume
        return Frame(numbers=numbers.copy(), positions=positions.copy(), cell=cell.copy(),
                     pbc=np.ones(3, bool), energy=energy / n_copies / KJ_PER_EV,
                     forces=forces[:len(positions)] / KJ_PER_EV / 10, stress=stress / KJ_PER_EV)

    def _lammps_virial(self, positions: np.ndarray, cell: np.ndarray) -> np.ndarray:
        from allscaip.reference.spcfw_lammps import spcfw_lammps_labels

        reduced, moved = reduced_cell(cell, positions)
        rotation = np.linalg.solve(cell, reduced)
        _, _, virial = spcfw_lammps_labels(moved, reduced, cutoff=self.cutoff * 10,
                                           tail=self.dispersion_correction)
        return rotation @ virial @ rotation.T

    def strain_derivative(self, positions: np.ndarray, cell: np.ndarray) -> np.ndarray:
        """dE/d(strain) (kJ/mol, symmetric 3x3) by central differences of the energy."""
        derivative = np.zeros((3, 3))
        h = self.strain_step
        for a in range(3):
            for b in range(a, 3):
                strain = np.zeros((3, 3))
                strain[a, b] = strain[b, a] = h if a == b else h / 2
                plus, _ = self._evaluate(positions @ (np.eye(3) + strain), cell @ (np.eye(3) + strain), False)
                minus, _ = self._evaluate(positions @ (np.eye(3) - strain), cell @ (np.eye(3) - strain), False)
                derivative[a, b] = derivative[b, a] = (plus - minus) / (2 * h)
        return derivative

