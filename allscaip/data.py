"""Training data: labelled frames from extended XYZ, compact npz shards, seeded splits,
and batches of systems of different sizes.

Units: Angstrom, eV, eV/Angstrom, stress eV/Angstrom^3 (ASE sign: positive = tensile).
Shards are read with ``np.load(allow_pickle=False)``: no code runs when data is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

SHARD_KEYS = ("numbers", "positions", "forces", "cell", "pbc", "energy", "stress", "charge", "spin",
              "offsets", "has_forces", "has_stress")


@dataclass
class Frame:
    """One labelled configuration; missing labels are None."""

    numbers: np.ndarray  # (N,) int
    positions: np.ndarray  # (N, 3)
    cell: np.ndarray  # (3, 3), rows are lattice vectors
    pbc: np.ndarray  # (3,) bool
    energy: float
    forces: np.ndarray | None = None  # (N, 3)
    stress: np.ndarray | None = None  # (3, 3)
    charge: int = 0
    spin: int = 1

    def __len__(self) -> int:
        return len(self.numbers)


def frame_from_atoms(atoms) -> Frame:
    """Labels from an ASE Atoms with a (single-point) calculator or info/arrays entries."""
    from ase.stress import voigt_6_to_full_3x3_stress

    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    energy = results.get("energy", atoms.info.get("energy"))
    if energy is None:
        raise ValueError("frame without an energy label: give atoms.calc results or info['energy']")
    forces = results.get("forces", atoms.arrays.get("forces"))
    stress = results.get("stress", atoms.info.get("stress"))
    if stress is not None:
        stress = np.asarray(stress, dtype=float)
        stress = voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress.reshape(3, 3)
    return Frame(numbers=atoms.numbers.copy(), positions=atoms.positions.copy(),
                 cell=np.asarray(atoms.get_cell(complete=True)), pbc=atoms.pbc.copy(),
                 energy=float(energy), forces=None if forces is None else np.asarray(forces, dtype=float),
                 stress=stress, charge=int(atoms.info.get("charge", 0)), spin=int(atoms.info.get("spin", 1)))


def read_extxyz(path: str | Path) -> list[Frame]:
    from ase.io import read

    return [frame_from_atoms(atoms) for atoms in read(str(path), index=":")]


def write_shard(frames: list[Frame], path: str | Path) -> Path:
    """Concatenate frames into one npz file (per-atom arrays plus per-frame offsets)."""
    sizes = np.array([len(f) for f in frames])
    arrays = {
        "numbers": np.concatenate([f.numbers for f in frames]).astype(np.int16),
        "positions": np.concatenate([f.positions for f in frames]),
        "forces": np.concatenate([f.forces if f.forces is not None else np.zeros((len(f), 3)) for f in frames]),
        "cell": np.stack([f.cell for f in frames]),
        "pbc": np.stack([f.pbc for f in frames]),
        "energy": np.array([f.energy for f in frames]),
        "stress": np.stack([f.stress if f.stress is not None else np.zeros((3, 3)) for f in frames]),
        "charge": np.array([f.charge for f in frames]),
        "spin": np.array([f.spin for f in frames]),
        "offsets": np.concatenate([[0], np.cumsum(sizes)]),
        "has_forces": np.array([f.forces is not None for f in frames]),
        "has_stress": np.array([f.stress is not None for f in frames]),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def read_shard(path: str | Path) -> list[Frame]:
    with np.load(path, allow_pickle=False) as data:
        missing = [key for key in SHARD_KEYS if key not in data.files]
        if missing:
            raise ValueError(f"{path} is not an allscaip data shard (missing {missing})")
        arrays = {key: data[key] for key in SHARD_KEYS}
    frames = []
    for k in range(len(arrays["energy"])):
        atoms = slice(arrays["offsets"][k], arrays["offsets"][k + 1])
        frames.append(Frame(
            numbers=arrays["numbers"][atoms].astype(np.int64), positions=arrays["positions"][atoms],
            cell=arrays["cell"][k], pbc=arrays["pbc"][k], energy=float(arrays["energy"][k]),
            forces=arrays["forces"][atoms] if arrays["has_forces"][k] else None,
            stress=arrays["stress"][k] if arrays["has_stress"][k] else None,
            charge=int(arrays["charge"][k]), spin=int(arrays["spin"][k])))
    return frames


def read_frames(path: str | Path) -> list[Frame]:
    """Frames from an .npz shard, a folder of shards, or an extended XYZ file."""
    path = Path(path)
    if path.is_dir():
        return [frame for shard in sorted(path.glob("*.npz")) for frame in read_shard(shard)]
    if path.suffix == ".npz":
        return read_shard(path)
    return read_extxyz(path)


def frame_groups(path: str | Path) -> list[int]:
    """For each frame of ``read_frames(path)``, the index of the shard it came from (a folder of
    shards: one MD run each); an extended XYZ file or a single shard gives every frame its own."""
    path = Path(path)
    if path.is_dir():
        return [index for index, shard in enumerate(sorted(path.glob("*.npz"))) for _ in read_shard(shard)]
    return list(range(len(read_frames(path))))


def split_indices(n_frames: int, seed: int, validation: float = 0.1, test: float = 0.1) -> dict[str, list[int]]:
    """Disjoint train/validation/test index lists, reproducible from the seed."""
    order = np.random.default_rng(seed).permutation(n_frames)
    n_test, n_validation = int(round(test * n_frames)), int(round(validation * n_frames))
    return {"test": sorted(order[:n_test].tolist()),
            "validation": sorted(order[n_test:n_test + n_validation].tolist()),
            "train": sorted(order[n_test + n_validation:].tolist())}


def save_split(split: dict[str, list[int]], seed: int, path: str | Path) -> None:
    Path(path).write_text(json.dumps({"seed": seed, **split}))


def batches(frames: list[Frame], max_atoms: int, shuffle: bool, seed: int = 0) -> Iterator[list[Frame]]:
    """Groups of frames with at most ``max_atoms`` atoms in total (a larger frame goes alone)."""
    order = np.random.default_rng(seed).permutation(len(frames)) if shuffle else np.arange(len(frames))
    batch, atoms = [], 0
    for index in order:
        frame = frames[index]
        if batch and atoms + len(frame) > max_atoms:
            yield batch
            batch, atoms = [], 0
        batch.append(frame)
        atoms += len(frame)
    if batch:
        yield batch
