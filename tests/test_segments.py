"""The MD segment loop's trajectory trimming: a resumed run cuts the DCD back to its checkpoint."""

import numpy as np
import pytest
from MDAnalysis.coordinates.DCD import DCDReader
from openmm import Vec3, app, unit

from allscaip.plugins.segments import truncate_dcd


def frames_of(n_atoms: int, n_frames: int) -> list[np.ndarray]:
    rng = np.random.default_rng(n_atoms)
    return [rng.uniform(0.0, 1.0, (n_atoms, 3)) for _ in range(n_frames)]  # nm


def write_dcd(path, positions: list[np.ndarray], box: bool, append: bool = False) -> None:
    topology = app.Topology()
    residue = topology.addResidue("HOH", topology.addChain())
    for _ in range(len(positions[0])):
        topology.addAtom("O", app.element.oxygen, residue)
    vectors = (Vec3(1.2, 0, 0), Vec3(0, 1.3, 0), Vec3(0, 0, 1.4)) * unit.nanometer
    with open(path, "r+b" if append else "wb") as handle:
        dcd = app.DCDFile(handle, topology, 1.0 * unit.femtoseconds, firstStep=10, interval=10, append=append)
        for frame in positions:
            dcd.writeModel(frame * unit.nanometer, periodicBoxVectors=vectors if box else None)


def read_dcd(path) -> list[np.ndarray]:
    with DCDReader(str(path)) as reader:
        return [ts.positions / 10.0 for ts in reader]  # A -> nm


@pytest.mark.parametrize("box", [True, False])
@pytest.mark.parametrize("stored, keep", [(6, 5), (7, 3), (3, 2), (9, 1)])
def test_truncated_trajectory_keeps_exactly_the_first_frames(tmp_path, box, stored, keep):
    frames = frames_of(5, stored + 1)
    path = tmp_path / "trajectory.dcd"
    write_dcd(path, frames[:stored], box)
    truncate_dcd(path, keep)
    read = read_dcd(path)
    assert len(read) == keep
    for found, written in zip(read, frames):
        np.testing.assert_allclose(found, written, atol=1e-5)
    write_dcd(path, frames[stored:], box, append=True)  # the resumed run goes on writing
    read = read_dcd(path)
    assert len(read) == keep + 1
    np.testing.assert_allclose(read[-1], frames[stored], atol=1e-5)


def test_a_frame_cut_short_by_an_interrupted_write_is_dropped(tmp_path):
    """OpenMM raises the header's frame count before it writes the frame: a process killed in
    between leaves a header that counts a frame the file holds only part of."""
    frames = frames_of(4, 5)
    path = tmp_path / "trajectory.dcd"
    write_dcd(path, frames[:4], box=True)
    with open(path, "r+b") as handle:
        handle.seek(0, 2)
        handle.write(b"\0" * 37)  # part of a fifth frame
        handle.seek(8)
        handle.write((5).to_bytes(4, "little"))
    truncate_dcd(path, 4)
    write_dcd(path, frames[4:], box=True, append=True)
    read = read_dcd(path)
    assert len(read) == 5
    for found, written in zip(read, frames):
        np.testing.assert_allclose(found, written, atol=1e-5)
