"""torch.compile of the network for eager callers (allscaip.compiled): same numbers as eager,
no recompilation in a steady run, a clean fallback to eager when compilation fails."""

import copy
import pickle

import numpy as np
import pytest
import torch
from ase.build import molecule

from allscaip.calculator import AllScAIPCalculator
from conftest import fresh_model


def rattled_waters(count: int):
    rng = np.random.default_rng(3)
    frames = []
    for _ in range(count):
        atoms = molecule("H2O")
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        frames.append(atoms)
    return frames


def energies_and_forces(calculator, frames):
    results = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calculator
        results.append((atoms.get_potential_energy(), atoms.get_forces()))
    return results


@pytest.mark.slow
def test_compiled_network_equals_eager_and_compiles_once_in_a_steady_run():
    """A molecule's shapes stay put: one compilation (~40-60 s on 2 cores), then every call
    reuses it; float64 energies and forces equal the eager model's to round-off."""
    frames = rattled_waters(5)
    eager = AllScAIPCalculator(model=fresh_model("conserving_sm"))
    compiled = AllScAIPCalculator(model=fresh_model("conserving_sm"), compile=True)
    expected = energies_and_forces(eager, frames)
    found = energies_and_forces(compiled, frames)
    network = compiled.model.compiled
    assert not network.failed
    assert network.compilations == 1 and len(network.compile_seconds) == 1
    for (e_eager, f_eager), (e_compiled, f_compiled) in zip(expected, found):
        assert e_compiled == pytest.approx(e_eager, abs=1e-10)
        np.testing.assert_allclose(f_compiled, f_eager, rtol=0, atol=1e-10)
    restored = pickle.loads(pickle.dumps(compiled.model))  # PythonForce Systems are pickled
    assert restored.use_compiled and restored.compiled.compilations == 0


def test_failed_compilation_warns_and_falls_back_to_eager(monkeypatch):
    from allscaip.compiled import CompiledNetwork

    def broken_backend(self, graph_module, example_inputs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(CompiledNetwork, "_backend", broken_backend)
    frames = rattled_waters(2)
    expected = energies_and_forces(AllScAIPCalculator(model=fresh_model("conserving_sm")), frames)
    calculator = AllScAIPCalculator(model=copy.deepcopy(fresh_model("conserving_sm")), compile=True)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler here.*without compilation"):
        found = energies_and_forces(calculator, frames)
    assert calculator.model.compiled.failed
    for (e_eager, f_eager), (e_found, f_found) in zip(expected, found):
        assert e_found == pytest.approx(e_eager, abs=1e-12)
        np.testing.assert_allclose(f_found, f_eager, rtol=0, atol=1e-12)
    torch._dynamo.reset()
