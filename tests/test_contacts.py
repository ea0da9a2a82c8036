"""Collapsed molecules are caught (allscaip.plugins.contacts): the closest intermolecular pair
relative to covalent radii, with minimum images, and the MD loop's warning."""

import warnings

import numpy as np
import pytest

from allscaip.plugins import contacts
from allscaip.plugins.segments import CollapsedMolecules
from allscaip.reference.labels import water_topology
from allscaip.reference.water import water_box


def test_liquid_water_has_no_collapsed_pair_and_a_fused_one_is_found():
    atoms = water_box(32, density=1.0, seed=4)
    topology = water_topology(32, atoms.cell.array)
    molecules, radii = contacts.molecule_labels(topology), contacts.covalent_radii(topology)
    assert list(molecules[:6]) == [molecules[0]] * 3 + [molecules[3]] * 3 and molecules[0] != molecules[3]
    assert radii[0] == pytest.approx(0.66) and radii[1] == pytest.approx(0.31)
    assert contacts.closest_contact(atoms.positions, atoms.cell.array, molecules, radii).ratio > 1.2
    # move molecule 5 so its oxygen sits 1.0 A from molecule 2's, across the periodic boundary
    positions = atoms.positions.copy()
    target = positions[6] + np.array([1.0, 0.0, 0.0]) + atoms.cell.array[0]
    positions[15:18] += target - positions[15]
    found = contacts.closest_contact(positions, atoms.cell.array, molecules, radii)
    assert found.ratio < 1.0 and {found.first, found.second} == {6, 15}
    assert found.distance == pytest.approx(1.0, abs=1e-9)
    # without the box the copy is a cell length away: no collapse
    assert contacts.closest_contact(positions, None, molecules, radii).ratio > 1.0
    message = contacts.collapse_message(found, topology)
    assert "1.00 Å apart" in message and "(O)" in message and "collapsed" in message


def test_topology_without_bonds_gives_no_molecules():
    from openmm import app

    topology = app.Topology()
    residue = topology.addResidue("X", topology.addChain())
    for _ in range(2):
        topology.addAtom("O", app.element.oxygen, residue)
    assert contacts.molecule_labels(topology) is None


class FrozenEngine:
    """A SegmentEngine whose state never changes: normal energy and temperature, the given
    positions (Angstrom) and box."""

    def __init__(self, positions, cell):
        self.positions, self.cell = positions, cell

    def advance(self, steps):
        pass

    def thermo_row(self, step, ns_per_day):
        return {"step": step, "time_ps": step * 1e-3, "potential_kJ_mol": -100.0, "kinetic_kJ_mol": 50.0,
                "total_kJ_mol": -50.0, "temperature_K": 300.0, "volume_nm3": 1.0, "density_g_cm3": 1.0,
                "ns_per_day": ns_per_day}

    def frame(self):
        from openmm import Vec3, unit

        return ([Vec3(*x) for x in self.positions / 10] * unit.nanometer,
                [Vec3(*row) for row in self.cell / 10] * unit.nanometer)

    def save_checkpoint(self, path):
        path.write_text("state")


def test_md_loop_warns_when_molecules_collapse(tmp_path):
    """Finite energy and a normal temperature, but two oxygens 1.0 A apart (their molecules'
    hydrogens closer still): the segment loop warns once, naming the atoms, and the progress
    shows it; a normal box runs through silently."""
    from allscaip.plugins.segments import SegmentFiles, run_segments, start_table

    atoms = water_box(8, density=1.0, seed=2)
    topology = water_topology(8, atoms.cell.array)
    positions = atoms.positions.copy()
    positions[3:6] += positions[0] + np.array([1.0, 0.0, 0.0]) - positions[3]
    for name, coordinates, collapsed in (("fine", atoms.positions, False), ("fused", positions, True)):
        files = SegmentFiles(tmp_path / name, tmp_path / name / "checkpoint.chk")
        files.out.mkdir()
        start_table(files)
        lines = []
        call = lambda: run_segments(FrozenEngine(coordinates, atoms.cell.array), files, topology,  # noqa: E731
                                    start=0, steps=30, report_interval=10, timestep_fs=1.0, temperature=300.0,
                                    max_temperature_factor=5.0, progress=lines.append)
        if not collapsed:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert call() == 30
            assert not any("WARNING" in line for line in lines)
            continue
        with pytest.warns(CollapsedMolecules, match=r"step 10: atoms \d+ \([OH]\) and \d+ \([OH]\) of different "
                                                    r"molecules are 0\.\d\d Å apart.*collapsed into each other") as caught:
            assert call() == 30
        assert len([w for w in caught if w.category is CollapsedMolecules]) == 1  # once per run
        assert sum("WARNING step 10" in line for line in lines) == 1
