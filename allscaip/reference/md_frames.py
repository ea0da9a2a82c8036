"""SPC/Fw labels for the frames of a model's own water MD (one round of active learning).

A model trained on the reference's configurations can drift, in its own MD, into
configurations the reference never visits and the model gets wrong (the v2 card: an
over-structured liquid 0.82 kJ/mol per molecule too stable, at 0.91 g/cm^3). Labelling those
frames with the reference and training on them corrects the model where it goes:

    allscaip protocol density --model MODEL --out runs/md ...
    allscaip datagen md-frames runs/md/replica-*/liquid/trajectory.dcd --out datasets/NAME

One shard per trajectory; an interrupted run resumes where it stopped (same command).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from allscaip.data import Frame, read_shard, write_shard
from allscaip.reference.labels import WATER_NUMBERS, SpcfwLabeller


def topology_of(trajectory: Path) -> Path:
    """The protocol's topology for a trajectory: box.pdb next to it or one folder up."""
    for folder in (trajectory.parent, trajectory.parent.parent):
        if (folder / "box.pdb").is_file():
            return folder / "box.pdb"
    raise FileNotFoundError(f"no box.pdb next to {trajectory} or one folder up; pass --topology")


def whole_waters(positions: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Each oxygen in the cell, its hydrogens at the minimum image of the oxygen."""
    inverse = np.linalg.inv(cell)
    molecules = positions.reshape(-1, 3, 3).copy()
    bonds = (molecules[:, 1:] - molecules[:, :1]) @ inverse
    molecules[:, 1:] = molecules[:, :1] + (bonds - np.round(bonds)) @ cell
    molecules -= np.floor(molecules[:, :1] @ inverse) @ cell
    return molecules.reshape(-1, 3)


def label_trajectory(topology: str | Path, trajectory: str | Path, skip_ps: float, every: int,
                     labeller: SpcfwLabeller) -> list[Frame]:
    """Labelled frames of a water trajectory: those after ``skip_ps``, every ``every``-th."""
    import MDAnalysis
    from ase.geometry import cellpar_to_cell

    universe = MDAnalysis.Universe(str(topology), str(trajectory))
    names = [atom.element if atom.element else atom.name[0] for atom in universe.atoms]
    numbers = np.array([8 if name.upper().startswith("O") else 1 for name in names])
    if len(numbers) % 3 or np.any(numbers.reshape(-1, 3) != WATER_NUMBERS):
        raise ValueError(f"{topology}: SPC/Fw labels need water molecules ordered O, H, H")
    frames = []
    for step in universe.trajectory:
        if step.time < skip_ps - 1e-9 or step.frame % every:
            continue
        if step.dimensions is None:
            raise ValueError(f"{trajectory}: frame {step.frame} has no periodic box")
        cell = cellpar_to_cell(step.dimensions)
        positions = whole_waters(universe.atoms.positions.astype(np.float64), cell)
        frames.append(labeller.label(numbers, positions, cell))
    return frames


def label_md_frames(trajectories: list[str | Path], out: str | Path, skip_ps: float = 1.0, every: int = 1,
                    topology: str | Path | None = None, progress: bool = True) -> dict:
    """Label every trajectory into ``out`` (one shard each, kept on a rerun) and write
    ``manifest.json``. Returns the manifest."""
    from tqdm import tqdm

    if every < 1:
        raise ValueError(f"every must be at least 1, not {every}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labeller = SpcfwLabeller()
    started = time.perf_counter()
    records = []
    for index, trajectory in enumerate(tqdm([Path(t) for t in trajectories], desc="label md frames",
                                            unit="trajectory", disable=not progress)):
        if not trajectory.is_file():
            raise FileNotFoundError(f"trajectory {trajectory} not found")
        top = Path(topology) if topology else topology_of(trajectory)
        shard = out / f"md-{index:04d}.npz"
        if not shard.exists():
            frames = label_trajectory(top, trajectory, skip_ps, every, labeller)
            if not frames:
                raise ValueError(f"{trajectory}: no frame after {skip_ps} ps")
            write_shard(frames, shard.with_suffix(".tmp.npz"))
            shard.with_suffix(".tmp.npz").replace(shard)
        records.append({"trajectory": str(trajectory), "topology": str(top), "file": shard.name,
                        "frames": len(read_shard(shard))})
    manifest = {
        "settings": {"skip_ps": skip_ps, "every": every},
        "reference": "SPC/Fw (Wu, Tepper & Voth 2006); PME, 0.9 nm real-space cutoff, Ewald "
                     "tolerance 1e-6, dispersion correction",
        "units": {"energy": "eV", "forces": "eV/A", "stress": "eV/A^3 (positive = tensile)"},
        "frames": sum(r["frames"] for r in records),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "runs": records,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
