"""The shipped default model: loads, exports, runs water of several sizes, and reproduces its
SPC/Fw reference on fresh frames (not in its training data)."""

import numpy as np
import pytest
import torch

from allscaip.export import script_model
from allscaip.io import load_model
from allscaip.models import default_model_path
from allscaip.reference.datagen import DatagenSettings, Run, sample_run
from allscaip.reference.labels import SpcfwLabeller
from allscaip.reference.water import water_box


@pytest.fixture(scope="module")
def model():
    return load_model(default_model_path(), dtype=torch.float64)


def inputs(atoms, dtype=torch.float64):
    return (torch.tensor(atoms.positions, dtype=dtype), torch.tensor(atoms.numbers),
            torch.tensor(atoms.cell.array, dtype=dtype), torch.tensor(atoms.pbc), torch.tensor(0), torch.tensor(1))


@pytest.mark.parametrize("n_waters", [1, 8, 32, 100])
def test_exported_default_model_gives_finite_results_for_water(model, n_waters):
    atoms = water_box(n_waters, density=1.0, seed=n_waters)
    if n_waters == 1:
        atoms.pbc = False
    scripted = script_model(load_model(default_model_path(), dtype=torch.float32), torch.float32)
    energy, forces, virial = scripted(*inputs(atoms, torch.float32))
    assert torch.isfinite(energy) and torch.isfinite(forces).all()
    assert forces.shape == (3 * n_waters, 3)
    eager, _, _ = model(*inputs(atoms))
    assert float(energy) == pytest.approx(float(eager.detach()), abs=1e-3 * 3 * n_waters)


def test_default_model_reproduces_the_reference_on_fresh_frames(model):
    """A 32-water box at 300 K from an MD run with a seed not used for training data."""
    frames = sample_run(Run(0, "liquid", 32, 300.0, 1.0, seed=987654),
                        DatagenSettings(frames_per_run=2, equilibration_ps=0.2), SpcfwLabeller())
    for frame in frames:
        atoms_inputs = (torch.tensor(frame.positions), torch.tensor(frame.numbers), torch.tensor(frame.cell),
                        torch.tensor(frame.pbc), torch.tensor(0), torch.tensor(1))
        energy, forces, _ = model(*atoms_inputs)
        rms = np.sqrt(np.mean(frame.forces ** 2))
        rmse = np.sqrt(np.mean((forces.detach().numpy() - frame.forces) ** 2))
        # measured: 3.6 % and 5.0 % of the RMS force, +0.39 and +0.36 meV/atom (the small
        # model errs by 10.3 % and 13.0 %, so these bounds tell the two apart)
        assert rmse < 0.08 * rms
        assert abs(float(energy.detach()) - frame.energy) / len(frame) < 0.002  # eV/atom
