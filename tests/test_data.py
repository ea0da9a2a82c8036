"""Training data: extended XYZ -> frames -> npz shards round trip, splits, batches."""

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from allscaip.data import batches, read_frames, split_indices, write_shard
from conftest import golden_structures, to_atoms


@pytest.fixture
def labelled_xyz(tmp_path):
    rng = np.random.default_rng(0)
    images = []
    for structure in golden_structures():
        atoms = to_atoms(structure)
        results = {"energy": rng.normal(), "forces": rng.normal(size=(len(atoms), 3))}
        if atoms.pbc.any():
            results["stress"] = rng.normal(size=6)
        atoms.calc = SinglePointCalculator(atoms, **results)
        images.append(atoms)
    path = tmp_path / "frames.extxyz"
    write(path, images, format="extxyz")
    return path, images


def test_extxyz_and_shard_round_trip(labelled_xyz, tmp_path):
    path, images = labelled_xyz
    frames = read_frames(path)
    assert len(frames) == len(images)
    restored = read_frames(write_shard(frames, tmp_path / "shards" / "part0.npz").parent)
    for frame, again, atoms in zip(frames, restored, images):
        np.testing.assert_array_equal(again.numbers, atoms.numbers)
        np.testing.assert_allclose(again.positions, atoms.positions, atol=1e-7)  # extxyz text precision
        np.testing.assert_allclose(again.forces, atoms.calc.results["forces"], atol=1e-7)
        assert again.energy == pytest.approx(atoms.calc.results["energy"])
        assert (again.stress is None) == (not atoms.pbc.any())
        assert (again.charge, again.spin) == (atoms.info["charge"], atoms.info["spin"])
        np.testing.assert_array_equal(again.pbc, atoms.pbc)


def test_foreign_npz_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not an allscaip data shard"):
        read_frames(tmp_path / "other.npz")


def test_split_is_disjoint_complete_and_reproducible():
    split = split_indices(103, seed=5)
    everything = split["train"] + split["validation"] + split["test"]
    assert sorted(everything) == list(range(103))
    assert len(split["test"]) == 10 and len(split["validation"]) == 10
    assert split == split_indices(103, seed=5) and split != split_indices(103, seed=6)


def test_batches_respect_the_atom_budget(labelled_xyz):
    frames = read_frames(labelled_xyz[0])
    groups = list(batches(frames, max_atoms=60, shuffle=True, seed=1))
    assert sum(len(g) for g in groups) == len(frames)
    for group in groups:
        assert len(group) == 1 or sum(len(f) for f in group) <= 60
