"""The long-range study's reference sets (benchmarks/long_range/sets.py) are exact."""

from pathlib import Path

import numpy as np
import pytest

from allscaip.reference.labels import KJ_PER_EV, SpcfwLabeller
from allscaip.reference.water import water_box
from conftest import load_script

SETS = Path(__file__).resolve().parent.parent / "benchmarks" / "long_range" / "sets.py"


@pytest.fixture(scope="module")
def sets():
    return load_script(SETS, "long_range_sets")


def test_near_field_with_everything_in_range_is_the_reference(sets):
    """A 5-water cluster (bare Coulomb + LJ, no cutoff): the near field with a cutoff beyond
    every pair is the whole force, so the far field vanishes; with a short cutoff it does not."""
    box = water_box(5, density=0.5, seed=3)
    frame = SpcfwLabeller(platform="Reference").label(box.numbers, box.positions, None)
    near = sets.near_forces(frame, 100.0)
    assert np.abs(near - frame.forces).max() < 1e-6 * np.abs(frame.forces).max() + 1e-7
    assert np.abs(frame.forces - sets.near_forces(frame, 3.0)).max() > 1e-3


def test_dimer_curves_match_the_reference_potential_numbers(sets):
    """docs/reference-potential.md: aligned -2.48 and side-by-side +1.85 kJ/mol at 6 A (the
    monomers sit at the SPC/Fw minimum, so the dimer energy is the interaction energy)."""
    index = sets.SEPARATIONS.index(6.0)
    aligned = sets.dimer_curve("aligned")[index].energy * KJ_PER_EV
    side = sets.dimer_curve("side")[index].energy * KJ_PER_EV
    assert aligned == pytest.approx(-2.48, abs=0.01)
    assert side == pytest.approx(1.85, abs=0.01)


def test_capture_is_one_for_the_reference_and_zero_for_the_near_field(sets):
    labeller = SpcfwLabeller(platform="Reference")
    frames = [labeller.label(box.numbers, box.positions, None)
              for box in (water_box(5, density=0.5, seed=seed) for seed in (4, 5, 6))]
    split = [(frame, frame.forces - sets.near_forces(frame, 3.5)) for frame in frames]
    exact = sets.far_field_metrics([frame.forces for frame in frames], split, 3.5)
    assert exact["capture"] == pytest.approx(1.0) and exact["capture_stderr"] < 1e-12
    near_only = sets.far_field_metrics([frame.forces - far for frame, far in split], split, 3.5)
    assert near_only["capture"] == pytest.approx(0.0, abs=1e-12)
    assert near_only["force_rmse_ev_a"] == pytest.approx(near_only["far_field_rms_ev_a"])
    half = sets.far_field_metrics([frame.forces - 0.5 * far for frame, far in split], split, 3.5)
    assert half["capture"] == pytest.approx(0.5)
