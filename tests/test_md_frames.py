"""datagen md-frames: SPC/Fw labels for a water trajectory's frames (active learning)."""

import json

import numpy as np
import pytest

from allscaip.cli import main
from allscaip.data import read_frames
from allscaip.reference.labels import SpcfwLabeller, water_topology
from allscaip.reference.md_frames import label_md_frames, whole_waters

TEST_SET = "datasets/spcfw-test-v2"


def liquid_frames(n):
    frames = [f for f in read_frames(TEST_SET) if f.pbc.all() and len(f.numbers) <= 192]
    assert len(frames) >= n
    return frames[:n]


def write_run(folder, frames, dt_ps=0.5):
    """A protocol-like replica: box.pdb and liquid/trajectory.dcd, hydrogens wrapped apart."""
    from openmm import app, unit

    topology = water_topology(len(frames[0].numbers) // 3, frames[0].cell)
    (folder / "liquid").mkdir(parents=True)
    with open(folder / "box.pdb", "w") as handle:
        app.PDBFile.writeFile(topology, frames[0].positions / 10 * unit.nanometer, handle)
    with open(folder / "liquid" / "trajectory.dcd", "wb") as handle:
        dcd = app.DCDFile(handle, topology, dt_ps * unit.picosecond, interval=1)
        for frame in frames:
            wrapped = frame.positions - np.floor(frame.positions @ np.linalg.inv(frame.cell)) @ frame.cell
            dcd.writeModel(wrapped / 10 * unit.nanometer, periodicBoxVectors=frame.cell / 10 * unit.nanometer)
    return folder / "liquid" / "trajectory.dcd"


def test_frames_get_the_labels_of_their_positions_and_skip_every_select_them(tmp_path):
    frames = [liquid_frames(1)[0]] * 4
    trajectory = write_run(tmp_path / "replica-0", frames)
    manifest = label_md_frames([trajectory], tmp_path / "out", skip_ps=1.0, every=2, progress=False)
    labelled = read_frames(tmp_path / "out")
    # DCD times 0.5, 1.0, 1.5, 2.0 ps (frames 0-3): from 1 ps on, every 2nd frame index -> frame 2
    assert manifest["frames"] == len(labelled) == 1
    reference = frames[0]
    # DCD stores float32 positions: labels agree to that precision
    assert labelled[0].energy == pytest.approx(reference.energy, rel=1e-5)
    assert np.abs(labelled[0].forces - reference.forces).max() < 1e-3 * np.abs(reference.forces).max()
    assert np.abs(labelled[0].stress - reference.stress).max() < 1e-3 * np.abs(reference.stress).max()
    molecules = labelled[0].positions.reshape(-1, 3, 3)
    assert np.linalg.norm(molecules[:, 1:] - molecules[:, :1], axis=-1).max() < 1.2  # molecules whole


def test_whole_waters_undoes_wrapping():
    frame = liquid_frames(1)[0]
    shifted = frame.positions + np.array([0.0, 0.0, 0.3]) * np.diag(frame.cell)
    wrapped = shifted - np.floor(shifted @ np.linalg.inv(frame.cell)) @ frame.cell
    whole = whole_waters(wrapped, frame.cell).reshape(-1, 3, 3)
    bonds = np.linalg.norm(whole[:, 1:] - whole[:, :1], axis=-1)
    assert bonds.max() < 1.2 and bonds.min() > 0.8
    labeller = SpcfwLabeller()
    assert labeller.label(frame.numbers, whole.reshape(-1, 3), frame.cell).energy == pytest.approx(frame.energy, rel=1e-6)  # PME: not exactly translation invariant


def test_cli_writes_a_manifest_keeps_finished_shards_and_rejects_non_water(tmp_path, capsys):
    trajectory = write_run(tmp_path / "replica-0", liquid_frames(2))
    assert main(["datagen", "md-frames", str(trajectory), "--out", str(tmp_path / "out"), "--skip-ps", "0"]) == 0
    assert "2 frames from 1 trajectories" in capsys.readouterr().out
    shard = tmp_path / "out" / "md-0000.npz"
    stamp = shard.stat().st_mtime_ns
    assert main(["datagen", "md-frames", str(trajectory), "--out", str(tmp_path / "out"), "--skip-ps", "0"]) == 0
    assert shard.stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["frames"] == 2

    pdb = (tmp_path / "replica-0" / "box.pdb").read_text()
    (tmp_path / "replica-0" / "box.pdb").write_text(pdb.replace(" O  \n", " N  \n"))
    with pytest.raises(ValueError, match="ordered O, H, H"):
        label_md_frames([trajectory], tmp_path / "out2", skip_ps=0, progress=False)
    with pytest.raises(FileNotFoundError, match="not found"):
        label_md_frames([tmp_path / "missing.dcd"], tmp_path / "out3", progress=False)
