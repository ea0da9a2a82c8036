"""The short-range repulsive wall (allscaip.repulsion, ``ModelConfig.repulsion``): the analytic
pair energy, finite-difference forces and virial, nothing beyond the onsets, the same in a
batch and in the TorchScript export."""

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from allscaip.batch import evaluate_batch
from allscaip.config import ModelConfig
from allscaip.export import script_model
from allscaip.model import AllScAIP
from allscaip.reference.water import water_box
from conftest import fresh_model

WALL = [[8, 8, 2.35, 30.0], [1, 1, 1.25, 30.0], [1, 8, 0.85, 30.0]]
DATA = Path(__file__).parents[1] / "datasets" / "spcfw-test-v2"


def with_wall(model: AllScAIP, entries=WALL) -> AllScAIP:
    walled = AllScAIP(dataclasses.replace(model.config, repulsion=entries), model.energy_scale,
                      model.energy_shift, model.force_scale, model.stress_scale, model.element_references)
    walled.load_state_dict(model.state_dict())
    return walled.to(torch.float64).eval()


def inputs(atoms):
    return (torch.tensor(atoms.positions), torch.tensor(atoms.numbers), torch.tensor(atoms.cell.array),
            torch.tensor(atoms.pbc), torch.tensor(0), torch.tensor(1))


def squeezed_box():
    """16 waters with two oxygens 1.9 A apart across the periodic boundary, two hydrogens of
    different molecules 1.0 A apart."""
    atoms = water_box(16, density=1.0, seed=3)
    cell = atoms.cell.array
    atoms.positions[3:6] += atoms.positions[0] + cell[1] + np.array([0.0, 0.0, 1.9]) - atoms.positions[3]
    atoms.positions[7] = atoms.positions[10] + np.array([1.0, 0.0, 0.0])
    return atoms


def wall_energy(atoms, entries=WALL) -> float:
    """The wall's energy by brute force over minimum-image pairs."""
    positions, cell = atoms.positions, atoms.cell.array
    total = 0.0
    for i in range(len(positions)):
        for j in range(i + 1, len(positions)):
            fractional = (positions[j] - positions[i]) @ np.linalg.inv(cell)
            distance = np.linalg.norm((fractional - np.round(fractional)) @ cell)
            for z_a, z_b, onset, strength in entries:
                if sorted((z_a, z_b)) == sorted((atoms.numbers[i], atoms.numbers[j])) and distance < onset:
                    total += strength * (onset - distance) ** 3
    return total


def test_wall_adds_its_pair_energy_and_leaves_larger_distances_alone():
    """A liquid frame of the SPC/Fw test set (no pair inside the onsets: shortest O-O 2.4 A)
    is unchanged to the last bit; a squeezed box gains exactly the wall's pair sum."""
    from ase import Atoms

    from allscaip.data import read_shard

    base = fresh_model("conserving_sm")
    walled = with_wall(base)
    frame = read_shard(DATA / "liquid-0000.npz")[0]
    liquid = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=True)
    assert wall_energy(liquid) == 0.0
    for want, got in zip(base(*inputs(liquid), True, True), walled(*inputs(liquid), True, True)):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=0, atol=0)
    squeezed = squeezed_box()
    expected = wall_energy(squeezed)
    assert expected > 1.0
    difference = walled(*inputs(squeezed), False)[0] - base(*inputs(squeezed), False)[0]
    assert float(difference.detach()) == pytest.approx(expected, rel=1e-12)


def test_wall_forces_and_virial_are_the_energy_derivatives():
    model = with_wall(fresh_model("conserving_sm"), [[8, 8, 2.35, 30.0], [1, 1, 1.25, 30.0]])
    atoms = squeezed_box()
    energy, forces, virial = model(*inputs(atoms), True, True)
    h = 1e-5
    for atom, axis in ((0, 2), (3, 2), (7, 0), (10, 0)):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        derivative = (model(*inputs(plus), False)[0] - model(*inputs(minus), False)[0]) / (2 * h)
        assert float(forces[atom, axis]) == pytest.approx(-float(derivative), abs=1e-6)
    strain = np.zeros((3, 3))
    strain[2, 2] = h
    stretched = [atoms.copy(), atoms.copy()]
    for sign, copy in zip((1, -1), stretched):
        copy.set_cell(atoms.cell.array @ (np.eye(3) + sign * strain), scale_atoms=True)
    derivative = (model(*inputs(stretched[0]), False)[0] - model(*inputs(stretched[1]), False)[0]) / (2 * h)
    assert float(virial[2, 2]) == pytest.approx(-float(derivative), abs=1e-6)


def test_wall_in_a_batch_and_in_the_torchscript_export():
    model = with_wall(fresh_model("conserving_sm"))
    boxes = [squeezed_box(), water_box(16, density=1.0, seed=3)]
    systems = [SimpleNamespace(**dict(zip(("positions", "numbers", "cell", "pbc", "charge", "spin"), inputs(a))))
               for a in boxes]
    batch = evaluate_batch(model, systems, True, True)
    for index, atoms in enumerate(boxes):
        energy, forces, virial = model(*inputs(atoms), True, True)
        torch.testing.assert_close(batch.energies[index], energy.detach(), rtol=0, atol=1e-9)
        torch.testing.assert_close(batch.forces[batch.offsets[index]:batch.offsets[index + 1]], forces,
                                   rtol=0, atol=1e-9)
        torch.testing.assert_close(batch.virials[index], virial, rtol=0, atol=1e-9)
    scripted = script_model(model)
    energy, forces, virial = model(*inputs(boxes[0]), True, True)
    exported = scripted(*inputs(boxes[0]))
    torch.testing.assert_close(exported[0], energy.detach(), rtol=0, atol=1e-9)
    torch.testing.assert_close(exported[1], forces, rtol=0, atol=1e-9)


def test_bad_wall_entries_are_refused():
    base = dict(hidden_size=16, num_layers=1, atten_num_heads=2, max_radius=4.0, knn_k=8,
                freequency_list=[2, 2, 1, 2, 1])
    ModelConfig(**base, repulsion=WALL)
    for entry in ([8, 8, 5.0, 1.0], [8, 0, 2.0, 1.0], [8, 8, 2.0, -1.0], [8, 8, 2.0]):
        with pytest.raises(ValueError, match="repulsion entry"):
            ModelConfig(**base, repulsion=[entry])
    with pytest.raises(ValueError, match="conserving forces"):
        ModelConfig(**base, repulsion=WALL, direct_forces=True)
