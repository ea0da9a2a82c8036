"""tools/pressure_probe.py: the start frame has the asked density and whole, unchanged molecules;
the molecular and atomic pressures are the right strain derivatives."""

from pathlib import Path

import numpy as np
import pytest

from allscaip.data import read_frames, write_shard
from allscaip.reference.md_frames import whole_waters
from conftest import load_script

TOOL = Path(__file__).resolve().parent.parent / "tools" / "pressure_probe.py"


def load_tool():
    return load_script(TOOL, "pressure_probe")


def test_start_frame_is_scaled_to_the_density_with_rigid_molecules(tmp_path):
    tool = load_tool()
    frames = [f for f in read_frames(Path(__file__).resolve().parent.parent / "datasets" / "spcfw-test-v2")
              if np.any(f.pbc)]
    sizes = {len(f.numbers) for f in frames}
    n_atoms = max(sizes)
    chosen = [f for f in frames if len(f.numbers) == n_atoms][:3]
    folder = tmp_path / "frames"
    folder.mkdir()
    write_shard(chosen, folder / "part.npz")
    densities = [tool.density_g_cm3(n_atoms // 3, abs(np.linalg.det(f.cell))) for f in chosen]
    target = densities[1] * 1.01
    numbers, positions, cell = tool.start_frame(folder, n_atoms // 3, target)
    assert tool.density_g_cm3(n_atoms // 3, abs(np.linalg.det(cell))) == pytest.approx(target, rel=1e-12)
    source = min(chosen, key=lambda f: abs(tool.density_g_cm3(n_atoms // 3, abs(np.linalg.det(f.cell))) - target))
    before = whole_waters(np.asarray(source.positions), np.asarray(source.cell)).reshape(-1, 3, 3)
    after = positions.reshape(-1, 3, 3)
    np.testing.assert_allclose(after[:, 1:] - after[:, :1], before[:, 1:] - before[:, :1], atol=1e-12)
    np.testing.assert_array_equal(numbers, source.numbers)
    with pytest.raises(ValueError, match="no periodic frame with 7 waters"):
        tool.start_frame(folder, 7, 1.0)


def test_molecular_pressure_is_the_strain_derivative_with_rigid_molecules():
    """The molecular virial equals -dE/d(epsilon) when the cell and the molecules' centres of
    mass are scaled by 1 + epsilon and each molecule keeps its shape (central differences,
    float64, the shipped model on a 16-water frame); the atomic one when every atom is scaled."""
    from ase import Atoms

    from allscaip.calculator import AllScAIPCalculator
    from allscaip.models import small_water_model_path

    tool = load_tool()
    frame = next(f for f in read_frames(Path(__file__).resolve().parent.parent / "datasets" / "spcfw-test-v2")
                 if np.any(f.pbc) and len(f.numbers) == 48)
    positions = whole_waters(np.asarray(frame.positions), np.asarray(frame.cell))
    atoms = Atoms(numbers=frame.numbers, positions=positions, cell=frame.cell, pbc=True)
    atoms.calc = AllScAIPCalculator(model_path=small_water_model_path())
    atoms.set_velocities(np.zeros((48, 3)))  # configurational parts only
    atomic, molecular = tool.pressures(atoms)
    masses = atoms.get_masses().reshape(-1, 3, 1)
    molecules = positions.reshape(-1, 3, 3)
    centres = (masses * molecules).sum(axis=1, keepdims=True) / masses.sum(axis=1, keepdims=True)

    def energy(epsilon, rigid):
        scaled = atoms.copy()
        scaled.calc = atoms.calc
        moved = molecules + epsilon * (centres if rigid else molecules)
        scaled.set_positions(moved.reshape(-1, 3))
        scaled.set_cell(np.asarray(frame.cell) * (1 + epsilon))
        return scaled.get_potential_energy()

    step, volume = 1e-5, atoms.get_volume()
    for rigid, found in ((False, atomic), (True, molecular)):
        virial = -(energy(step, rigid) - energy(-step, rigid)) / (2 * step)
        assert found == pytest.approx(virial / (3 * volume) * tool.EV_A3_TO_BAR, abs=0.5), rigid
    assert abs(atomic - molecular) > 100  # the bonds' share: the two differ frame by frame
