"""``allscaip openmm run``: reports, trajectory, checkpoints, --resume and blow-up detection."""

import csv
import shutil
import subprocess
import sys

import MDAnalysis
import numpy as np
import pytest
from openmm import app

from allscaip.plugins.openmm.run import RunSettings, SimulationExploded, run
from allscaip.models import small_water_model_path
from openmm_helpers import water_topology


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    topology, positions = water_topology()
    pdb = folder / "box.pdb"
    with open(pdb, "w") as handle:
        app.PDBFile.writeFile(topology, positions, handle)
    return pdb, small_water_model_path()


def settings(inputs, out, **overrides):
    pdb, model = inputs
    values = dict(pdb=str(pdb), model=str(model), out=str(out), ensemble="nvt", temperature=300,
                  timestep=0.5, steps=100, report_interval=25, platform="Reference", precision="float64")
    values.update(overrides)
    return RunSettings(**values)


def thermo(out):
    with open(out / "thermo.csv") as handle:
        return list(csv.DictReader(handle))


def last_frame(out, pdb):
    universe = MDAnalysis.Universe(str(pdb), str(out / "trajectory.dcd"))
    universe.trajectory[-1]
    return len(universe.trajectory), universe.atoms.positions.copy()


@pytest.mark.slow  # ~40-50 s; CI runs the slow tests too
def test_resume_reproduces_the_uninterrupted_run(inputs, tmp_path):
    quiet = lambda message: None
    short = dict(steps=40, report_interval=10)
    run(settings(inputs, tmp_path / "whole", **short), progress=quiet)

    interrupted = tmp_path / "interrupted"
    run(settings(inputs, interrupted, steps=20, report_interval=10), progress=quiet)
    saved = {name: (interrupted / name).read_bytes() for name in ("checkpoint.chk", "status.json")}
    run(settings(inputs, interrupted, steps=30, report_interval=10), resume=True, progress=quiet)
    # crash after step 30 was written but with the checkpoint of step 20 still on disk
    for name, content in saved.items():
        (interrupted / name).write_bytes(content)
    run(settings(inputs, interrupted, **short), resume=True, progress=quiet)

    whole, resumed = thermo(tmp_path / "whole"), thermo(interrupted)
    assert [row["step"] for row in resumed] == ["10", "20", "30", "40"]
    for a, b in zip(whole, resumed):
        assert float(a["potential_kJ_mol"]) == pytest.approx(float(b["potential_kJ_mol"]), abs=1e-6)
    frames_whole, positions_whole = last_frame(tmp_path / "whole", inputs[0])
    frames_resumed, positions_resumed = last_frame(interrupted, inputs[0])
    assert frames_whole == frames_resumed == 4
    np.testing.assert_allclose(positions_resumed, positions_whole, atol=1e-4)


def test_an_unreadable_checkpoint_resumes_from_the_portable_state(inputs, tmp_path):
    """Another machine or platform may not read OpenMM's binary checkpoint; the XML state saved
    beside it carries positions and velocities, so an NVE run continues exactly."""
    messages = []
    short = dict(ensemble="nve", steps=6, report_interval=3, platform="CPU", timestep=0.25)
    run(settings(inputs, tmp_path / "whole", **short), progress=lambda m: None)
    interrupted = tmp_path / "interrupted"
    run(settings(inputs, interrupted, **{**short, "steps": 3}), progress=lambda m: None)
    assert (interrupted / "checkpoint.xml").exists()
    (interrupted / "checkpoint.chk").write_bytes(b"written by another platform")
    run(settings(inputs, interrupted, **short), resume=True, progress=messages.append)
    assert any("continuing from its portable state checkpoint.xml" in m for m in messages)
    whole, resumed = thermo(tmp_path / "whole"), thermo(interrupted)
    assert [row["step"] for row in resumed] == ["3", "6"]
    for a, b in zip(whole, resumed):
        assert float(a["potential_kJ_mol"]) == pytest.approx(float(b["potential_kJ_mol"]), abs=1e-3)

    (interrupted / "checkpoint.xml").unlink()
    (interrupted / "checkpoint.chk").write_bytes(b"written by another platform")
    with pytest.raises(RuntimeError, match="no portable state .*checkpoint.xml"):
        run(settings(inputs, interrupted, **{**short, "steps": 9}), resume=True, progress=lambda m: None)


def test_a_run_stopped_between_checkpoint_and_status_continues_from_the_checkpoint(inputs, tmp_path):
    """The frame, the row and the checkpoint of a report are written before ``status.json``: a
    run killed between the last two continues from the checkpoint's own step, exactly."""
    short = dict(ensemble="nve", steps=9, report_interval=3, platform="CPU", timestep=0.25)
    run(settings(inputs, tmp_path / "whole", **short), progress=lambda m: None)
    interrupted = tmp_path / "interrupted"
    run(settings(inputs, interrupted, **{**short, "steps": 6}), progress=lambda m: None)
    (interrupted / "status.json").write_text('{"step": 3, "steps": 6}')
    messages = []
    run(settings(inputs, interrupted, **short), resume=True, progress=messages.append)
    assert any("continuing from step 6" in m for m in messages)
    whole, resumed = thermo(tmp_path / "whole"), thermo(interrupted)
    assert [row["step"] for row in resumed] == ["3", "6", "9"]
    for a, b in zip(whole, resumed):
        assert float(a["time_ps"]) == pytest.approx(float(b["time_ps"]))
        assert float(a["potential_kJ_mol"]) == pytest.approx(float(b["potential_kJ_mol"]), abs=1e-3)
    assert last_frame(interrupted, inputs[0])[0] == 3

    (interrupted / "status.json").write_text('{"step": 12, "steps": 12}')  # ahead of its checkpoint
    with pytest.raises(RuntimeError, match="come from different runs"):
        run(settings(inputs, interrupted, **{**short, "steps": 15}), resume=True, progress=lambda m: None)


def test_npt_run_changes_the_density(inputs, tmp_path):
    run(settings(inputs, tmp_path, ensemble="npt", steps=100, report_interval=50, precision="float32",
                 platform="CPU", timestep=0.25), progress=lambda m: None)
    densities = [float(row["density_g_cm3"]) for row in thermo(tmp_path)]
    assert len(densities) == 2 and all(0.5 < d < 1.5 for d in densities)


def test_blow_up_stops_with_a_clear_message(inputs, tmp_path):
    with pytest.raises(SimulationExploded, match="unstable: reduce --timestep"):
        run(settings(inputs, tmp_path, timestep=8.0, steps=400, report_interval=10, temperature=300,
                     precision="float32", platform="CPU"), progress=lambda m: None)


def test_cli_runs_and_reports(inputs, tmp_path):
    pdb, model = inputs
    result = subprocess.run(
        [sys.executable, "-m", "allscaip.cli", "openmm", "run", "--pdb", str(pdb), "--model", str(model),
         "--out", str(tmp_path), "--ensemble", "nve", "--steps", "20", "--report-interval", "10",
         "--timestep", "0.25", "--platform", "CPU"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "step 20/20" in result.stdout and "ns/day" in result.stdout
    assert len(thermo(tmp_path)) == 2


def test_compile_needs_the_python_backend(inputs, tmp_path):
    with pytest.raises(ValueError, match="--compile needs --backend python"):
        settings(inputs, tmp_path, compile=True).validate()
