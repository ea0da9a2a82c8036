"""tools/pressure_probe.py: the start frame has the asked density and whole, unchanged molecules."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from allscaip.data import read_frames, write_shard
from allscaip.reference.md_frames import whole_waters

TOOL = Path(__file__).resolve().parent.parent / "tools" / "pressure_probe.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("pressure_probe", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
