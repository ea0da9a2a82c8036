"""SPC/Fw training data: deterministic sampling, label conventions, OpenMM vs LAMMPS labels."""

import numpy as np
import pytest

from allscaip.data import read_frames
from allscaip.reference.datagen import DatagenSettings, Run, generate, plan_runs, sample_run
from allscaip.reference.labels import SpcfwLabeller

SHORT = DatagenSettings(seed=3, liquid_runs=1, gas_runs=3, frames_per_run=2, equilibration_ps=0.05,
                        interval_ps=0.02)


def test_plan_is_drawn_from_the_seed_alone_and_covers_the_ranges():
    settings = DatagenSettings(seed=5, liquid_runs=40, gas_runs=9)
    runs = plan_runs(settings)
    assert runs == plan_runs(DatagenSettings(seed=5, liquid_runs=40, gas_runs=9))
    assert runs != plan_runs(DatagenSettings(seed=6, liquid_runs=40, gas_runs=9))
    liquid = [r for r in runs if r.kind == "liquid"]
    assert {r.n_molecules for r in liquid} <= {16, 32, 64, 128, 216} and 16 in {r.n_molecules for r in liquid}
    assert all(250 <= r.temperature <= 450 and 0.85 <= r.density <= 1.15 for r in liquid)
    assert {r.kind for r in runs} == {"liquid", "monomer", "dimer", "cluster"}


def test_focused_plan_weights_the_protocol_state_point_and_keeps_the_spread():
    base = DatagenSettings(seed=5, liquid_runs=400, gas_runs=300)
    focused = DatagenSettings(seed=5, liquid_runs=400, gas_runs=300, focus_fraction=0.6, monomer_fraction=0.5)
    assert [r for r in plan_runs(base)] == plan_runs(DatagenSettings(seed=5, liquid_runs=400, gas_runs=300,
                                                                     focus_fraction=0.0))

    def near_state_point(runs):
        liquid = [r for r in runs if r.kind == "liquid"]
        return np.mean([280 <= r.temperature <= 320 and 0.95 <= r.density <= 1.05 for r in liquid])

    runs = plan_runs(focused)
    # uniform over 250-450 K x 0.85-1.15: 0.2 * 1/3 = 6.7 % near 298 K; focused: 0.6 + 0.4 * 6.7 %
    assert near_state_point(plan_runs(base)) < 0.12 and 0.55 < near_state_point(runs) < 0.75
    liquid = [r for r in runs if r.kind == "liquid"]
    assert min(r.temperature for r in liquid) < 260 and max(r.temperature for r in liquid) > 440
    assert min(r.density for r in liquid) < 0.87 and max(r.density for r in liquid) > 1.13
    gas = [r for r in runs if r.kind != "liquid"]
    assert 0.4 < np.mean([r.kind == "monomer" for r in gas]) < 0.6
    assert {r.kind for r in gas} == {"monomer", "dimer", "cluster"}


def test_sampling_is_deterministic_and_labels_are_complete():
    run = Run(0, "liquid", 16, 350.0, 1.0, seed=11)
    first = sample_run(run, SHORT, SpcfwLabeller())
    second = sample_run(run, SHORT, SpcfwLabeller())
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.energy == b.energy
    frame = first[0]
    assert len(frame) == 48 and frame.pbc.all() and frame.stress.shape == (3, 3)
    assert np.allclose(frame.stress, frame.stress.T)
    # 16 waters: the box (7.8 A) is smaller than twice the 9 A cutoff; labels come from a supercell
    assert np.min(np.diag(frame.cell)) < 9.0
    # liquid water at ~1 g/cm^3: tens of kJ/mol per molecule of binding, forces of ~0.8 eV/A RMS
    assert -0.55 < frame.energy / 16 < -0.25
    assert 0.3 < np.sqrt(np.mean(frame.forces ** 2)) < 2.0
    # forces = -dE/dx (central difference along a random direction; PME and the hard cutoff
    # make the energy gradient exact only to ~1e-4)
    labeller, rng = SpcfwLabeller(platform="Reference"), np.random.default_rng(0)
    direction = rng.normal(size=frame.positions.shape)
    h = 1e-4
    plus = labeller.label(frame.numbers, frame.positions + h * direction, frame.cell).energy
    minus = labeller.label(frame.numbers, frame.positions - h * direction, frame.cell).energy
    reference = labeller.label(frame.numbers, frame.positions, frame.cell)
    assert (plus - minus) / (2 * h) == pytest.approx(-np.sum(reference.forces * direction), rel=3e-4)


def test_supercell_labels_equal_direct_labels_of_the_same_periodic_system():
    """A 64-water box labelled directly (cutoff fits) and as a 2x1x1 doubled box agree per cell."""
    run = Run(0, "liquid", 64, 300.0, 1.0, seed=2)
    frame = sample_run(run, DatagenSettings(frames_per_run=1, equilibration_ps=0.02), SpcfwLabeller())[0]
    small = SpcfwLabeller(cutoff=0.6, stress="finite-difference")
    single = small.label(frame.numbers, frame.positions, frame.cell)
    doubled_cell = frame.cell * np.array([[2.0], [1.0], [1.0]])
    doubled = small.label(np.tile(frame.numbers, 2),
                          np.concatenate([frame.positions, frame.positions + frame.cell[0]]), doubled_cell)
    assert doubled.energy / 2 == pytest.approx(single.energy, abs=1e-4)
    np.testing.assert_allclose(doubled.forces[:len(frame)], single.forces, atol=1e-4)


def test_generate_resumes_and_refuses_other_settings(tmp_path):
    manifest = generate(tmp_path, SHORT, progress=False)
    assert manifest["frames"] == 4 * SHORT.frames_per_run
    shard = tmp_path / "liquid-0000.npz"
    stamp = shard.stat().st_mtime_ns
    again = generate(tmp_path, SHORT, progress=False)  # everything present: nothing recomputed
    assert shard.stat().st_mtime_ns == stamp and again["frames"] == manifest["frames"]
    frames = read_frames(tmp_path)
    gas = [f for f in frames if not f.pbc.any()]
    assert gas and all(f.stress is None and f.forces is not None for f in gas)
    with pytest.raises(ValueError, match="other settings"):
        generate(tmp_path, DatagenSettings(seed=4, liquid_runs=1, gas_runs=0), progress=False)


def test_openmm_and_lammps_labels_agree(tmp_path):
    """Energies up to a constant, forces to 1e-5 of their RMS; the finite-difference OpenMM
    stress matches the LAMMPS virial used for the labels within 5 % of the stress spread."""
    from allscaip.reference.crosscheck import compare_engines

    settings = DatagenSettings(seed=3, liquid_runs=1, gas_runs=0, frames_per_run=2, equilibration_ps=0.05)
    generate(tmp_path, settings, progress=False)
    result = compare_engines(tmp_path, 2)
    assert result["force_rmse_ev_a"] < 1e-5 * result["force_rms_ev_a"] * 10
    assert result["energy_offset_ev"]["std"] < 1e-3
    spread = result["stress_spread_ev_a3"]
    assert max(abs(x) for x in result["fd_minus_lammps_isotropic_ev_a3"]) < 0.05 * spread
    assert result["fd_minus_lammps_deviatoric_max_ev_a3"] < 0.05 * spread
