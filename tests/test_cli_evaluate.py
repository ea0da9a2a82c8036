"""`allscaip evaluate`: a model's errors on labelled frames, as a table and as JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from allscaip.data import read_frames, write_shard
from allscaip.evaluate import error_metrics, frame_tensors
from allscaip.io import load_model

ROOT = Path(__file__).parents[1]
MODEL = ROOT / "models" / "allscaip-spcfw-water" / "model.pt"
TEST_SET = ROOT / "datasets" / "spcfw-test-v2"


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "allscaip.cli", "evaluate", *args],
                          capture_output=True, text=True, timeout=600)


def test_evaluate_reports_the_metrics_of_each_set(tmp_path):
    liquid = read_frames(TEST_SET / "liquid-0000.npz")[:2]  # a box with stress labels
    monomer = read_frames(TEST_SET / "monomer-0001.npz")[:3]
    write_shard(liquid, tmp_path / "liquid" / "a.npz")
    write_shard(monomer, tmp_path / "monomer.npz")
    result = evaluate(str(MODEL), str(tmp_path / "liquid"), str(tmp_path / "monomer.npz"),
                      "--json", str(tmp_path / "metrics.json"))
    assert result.returncode == 0, result.stderr
    table = result.stdout.splitlines()
    assert table[0].startswith("| set | frames | E MAE (meV/atom)")
    assert len(table) == 4 and "liquid" in table[2] and "monomer" in table[3]
    found = json.loads((tmp_path / "metrics.json").read_text())["sets"]
    model = load_model(str(MODEL), dtype=torch.float64)
    expected = error_metrics(model, [frame_tensors(f) for f in liquid])
    for key, value in expected.items():
        assert found[str(tmp_path / "liquid")][key] == pytest.approx(value, rel=1e-9)
    assert "stress_mae_mev_a3" not in found[str(tmp_path / "monomer.npz")]  # no stress in the gas phase
    assert found[str(tmp_path / "monomer.npz")]["frames"] == 3


def test_by_phase_rows_are_the_metrics_of_each_phase_alone(tmp_path):
    liquid = read_frames(TEST_SET / "liquid-0000.npz")[:2]
    monomer = read_frames(TEST_SET / "monomer-0001.npz")[:3]
    write_shard(liquid + monomer, tmp_path / "mixed.npz")
    mixed = str(tmp_path / "mixed.npz")
    result = evaluate(str(MODEL), mixed, "--by-phase", "--json", str(tmp_path / "metrics.json"))
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ")[0] for line in result.stdout.splitlines()[2:]]
    assert rows == [f"| {mixed}", f"| {mixed} (periodic)", f"| {mixed} (isolated)"]
    found = json.loads((tmp_path / "metrics.json").read_text())["sets"]
    model = load_model(str(MODEL), dtype=torch.float64)
    for phase, frames in (("periodic", liquid), ("isolated", monomer)):
        expected = error_metrics(model, [frame_tensors(f) for f in frames])
        assert found[f"{mixed} ({phase})"] == pytest.approx(expected, rel=1e-9)
    # the whole set's energy MAE is the frame-weighted mean of the phases'
    whole = found[mixed]["energy_mae_mev_atom"]
    parts = [found[f"{mixed} ({p})"]["energy_mae_mev_atom"] * n for p, n in (("periodic", 2), ("isolated", 3))]
    assert whole == pytest.approx(sum(parts) / 5, rel=1e-9)
    assert found[mixed]["stress_mae_mev_a3"] == pytest.approx(found[f"{mixed} (periodic)"]["stress_mae_mev_a3"])


def test_evaluate_names_a_missing_data_set(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = evaluate(str(MODEL), str(empty))
    assert result.returncode == 2
    assert f"{empty} holds no frames" in result.stderr


def test_mean_errors_have_the_sign_and_units_of_a_bias():
    """A label shifted by a known amount moves the mean errors by exactly that amount:
    energy labels 1 meV/atom lower -> +1 meV/atom; stress labels 1e-4 eV/A^3 more tensile
    (pressure 160.2 bar lower) -> the model's pressure reads +160.2 bar high."""
    import dataclasses

    import numpy as np

    model = load_model(str(MODEL), dtype=torch.float64)
    frames = read_frames(TEST_SET / "liquid-0000.npz")[:2]
    shifted = [dataclasses.replace(f, energy=f.energy - 1e-3 * len(f.numbers), stress=f.stress + 1e-4 * np.eye(3))
               for f in frames]
    before = error_metrics(model, [frame_tensors(f) for f in frames])
    after = error_metrics(model, [frame_tensors(f) for f in shifted])
    assert after["energy_mean_error_mev_atom"] - before["energy_mean_error_mev_atom"] == pytest.approx(1.0, rel=1e-9)
    assert after["pressure_mean_error_bar"] - before["pressure_mean_error_bar"] == pytest.approx(160.2176634, rel=1e-9)


def test_intervals_resample_whole_shards(tmp_path):
    liquid = read_frames(TEST_SET / "liquid-0000.npz")[:2]
    monomer = read_frames(TEST_SET / "monomer-0001.npz")[:4]
    write_shard(liquid, tmp_path / "runs" / "liquid.npz")
    write_shard(monomer[:2], tmp_path / "runs" / "monomer-a.npz")
    write_shard(monomer[2:], tmp_path / "runs" / "monomer-b.npz")
    result = evaluate(str(MODEL), str(tmp_path / "runs"), "--intervals", "--json", str(tmp_path / "metrics.json"))
    assert result.returncode == 0, result.stderr
    assert "95 % bootstrap intervals" in result.stdout
    found = json.loads((tmp_path / "metrics.json").read_text())
    point, interval = found["sets"][str(tmp_path / "runs")], found["intervals"][str(tmp_path / "runs")]
    assert interval["groups"] == 3
    low, high = interval["energy_mae_mev_atom"]
    assert low <= point["energy_mae_mev_atom"] <= high and low < high
    # one liquid shard: every resample holds the same periodic frames, so the stress ratio is exact
    assert interval["stress_mae_relative"] == pytest.approx([point["stress_mae_relative"]] * 2, rel=1e-12)


def test_bootstrap_over_runs_covers_the_truth_where_frames_alone_do_not():
    """Frames of one MD run share most of their error. Over 150 synthetic test sets (10 runs of
    10 frames; each run's energy error per atom drawn around a known mean), the 95 % interval
    from resampling runs holds the true MAE about as often as it claims; resampling frames as if
    independent is far too narrow (here 141 and 60 of 150)."""
    import numpy as np

    from allscaip.evaluate import FrameErrors, bootstrap_intervals

    rng = np.random.default_rng(7)
    truth, runs, frames = 1.0, 10, 10
    groups = [run for run in range(runs) for _ in range(frames)]
    covered = {"runs": 0, "frames": 0}
    for _ in range(150):
        run_errors = truth + 0.3 * rng.standard_normal(runs)
        errors = [FrameErrors(n_atoms=3, periodic=False,
                              energy=3e-3 * (run_errors[run] + 0.02 * rng.standard_normal())) for run in groups]
        for label, labels in (("runs", groups), ("frames", list(range(len(groups))))):
            low, high = bootstrap_intervals(errors, labels, resamples=400, seed=1)["energy_mae_mev_atom"]
            covered[label] += low <= truth <= high
    assert covered["runs"] / 150 > 0.85
    assert covered["frames"] / 150 < 0.6  # expected ~46 % (an interval sqrt(10) times too narrow)
