"""Numerical parity with fairchem-core 2.24.0's AllScAIP on the golden fixtures.

Two references per structure (tests/fixtures/golden/manifest.json): fairchem's stock
float32 calculator output, and its float64-patched output with RMSNorm eps pinned to the
float32 value fairchem effectively uses (``*_fp64_eps32``). Our float64 model must match the
stock output within the issue's tolerances and the float64 output tightly (what remains
there are fairchem's float32 islands: frequency vectors, sinc frequencies).
"""

import numpy as np
import pytest
import torch

from allscaip.export import script_model
from conftest import CONFIGS, fresh_model, golden_outputs, golden_structures, model_inputs

STRUCTURES = [s["name"] for s in golden_structures()]
# float64 reference: remaining differences come from fairchem's float32 islands
TIGHT = {"energy": 1e-5, "forces": 1e-5, "stress_periodic": 2e-7, "stress_molecule": 3e-5}


def issue_energy_tolerance(n_atoms: int) -> float:
    return max(3e-4, 1e-5 * n_atoms)


def predict(model, structure):
    inputs = model_inputs(structure)
    energy, forces, virial = model(*inputs, True, not model.direct_forces)
    volume = abs(float(torch.det(inputs[2])))
    stress = None if virial.numel() == 0 else (-virial.detach().numpy() / volume)
    return float(energy), forces.detach().numpy(), stress


def compare(config, name, energy, forces, stress):
    structure = next(s for s in golden_structures() if s["name"] == name)
    ref = golden_outputs(config)[name]
    periodic = any(structure["pbc"])
    n_atoms = len(structure["numbers"])

    assert abs(energy - ref["energy_fp64_eps32"]) < TIGHT["energy"]
    np.testing.assert_allclose(forces, ref["forces_fp64_eps32"], rtol=0, atol=TIGHT["forces"])
    assert abs(energy - ref["energy"]) < issue_energy_tolerance(n_atoms)
    np.testing.assert_allclose(forces, ref["forces"], rtol=0, atol=2e-4)
    if stress is not None and "stress_3x3" in ref:
        tight = TIGHT["stress_periodic"] if periodic else TIGHT["stress_molecule"]
        np.testing.assert_allclose(stress, ref["stress_3x3_fp64_eps32"], rtol=0, atol=tight)
        if periodic:
            np.testing.assert_allclose(stress, ref["stress_3x3"], rtol=0, atol=2e-6)


@pytest.mark.parametrize("config", CONFIGS)
def test_eager_float64_matches_fairchem(config):
    model = fresh_model(config)
    for name in STRUCTURES:
        structure = next(s for s in golden_structures() if s["name"] == name)
        compare(config, name, *predict(model, structure))


@pytest.mark.parametrize("config", CONFIGS)
def test_torchscript_float64_matches_fairchem(config):
    scripted = script_model(fresh_model(config), torch.float64)
    for structure in golden_structures():
        inputs = model_inputs(structure)
        energy, forces, virial = scripted(*inputs)
        volume = abs(float(torch.det(inputs[2])))
        stress = None if torch.isnan(virial).any() else -virial.numpy() / volume
        compare(config, structure["name"], float(energy), forces.numpy(), stress)


@pytest.mark.parametrize("config", ["conserving", "direct_sm"])
def test_float32_model_matches_fairchem_float32(config):
    model = fresh_model(config, torch.float32)
    for structure in golden_structures():
        ref = golden_outputs(config)[structure["name"]]
        inputs = model_inputs(structure, torch.float32)
        energy, forces, _ = model(*inputs, True, False)
        n_atoms = len(structure["numbers"])
        assert abs(float(energy) - ref["energy"]) < issue_energy_tolerance(n_atoms)
        np.testing.assert_allclose(forces.detach().numpy(), ref["forces"], rtol=0, atol=2e-4)
