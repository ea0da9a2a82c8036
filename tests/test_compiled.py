"""torch.compile for eager callers (allscaip.compiled): same numbers as eager, no recompilation
in a steady run, a clean fallback to eager when compilation fails."""

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule

from allscaip.calculator import AllScAIPCalculator
from allscaip.io import load_model
from conftest import fresh_model


SHIPPED = Path(__file__).parents[1] / "models" / "allscaip-spcfw-water" / "model.pt"


def shipped_model():
    return load_model(str(SHIPPED), dtype=torch.float64)


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
def test_compiled_molecule_equals_eager_and_compiles_once_in_a_steady_run():
    """A molecule's energy and gradients, featurization included, are compiled as one graph
    (``torch.func.grad_and_value``) on the first call (~1-2 min on 2 cores); every later call
    reuses it, and another atom count compiles a graph of its own. float64 energies, forces and virials equal the eager model's to round-off (observed: 1e-15; the golden
    random-weight models, whose harmonics to l = 9 amplify round-off, differ by 3e-8 eV in
    2068 eV, as they do between CPUs)."""
    frames = rattled_waters(5)
    eager = AllScAIPCalculator(model=shipped_model())
    compiled = AllScAIPCalculator(model=shipped_model(), compile=True)
    expected = energies_and_forces(eager, frames)
    found = energies_and_forces(compiled, frames)
    network = compiled.model.compiled
    assert not network.failed
    assert network.compilations == 1  # one graph: the molecule's graph has fixed shapes
    assert network._whole is None  # the gradients came from the fused graph, not autograd
    assert len(network.compile_seconds) == 1  # only the first call compiled
    for (e_eager, f_eager), (e_compiled, f_compiled) in zip(expected, found):
        assert e_compiled == pytest.approx(e_eager, abs=1e-10)
        np.testing.assert_allclose(f_compiled, f_eager, rtol=0, atol=1e-10)
    atoms = frames[0]
    inputs = (torch.tensor(atoms.positions), torch.tensor(atoms.numbers), torch.zeros(3, 3, dtype=torch.float64),
              torch.tensor([False] * 3), torch.tensor(0), torch.tensor(1))
    _, forces, virial = compiled.model(*inputs, True, True)
    _, eager_forces, eager_virial = eager.model(*inputs, True, True)
    torch.testing.assert_close(virial, eager_virial.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(forces, eager_forces, rtol=0, atol=1e-10)
    assert network.compilations == 2  # with the virial: a graph of its own (forces alone skip the strain)
    other = molecule("H2O2")  # another atom count: its own graph, the first one kept
    (e_other, f_other), = energies_and_forces(compiled, [other])
    (e_expected, f_expected), = energies_and_forces(eager, [other])
    assert e_other == pytest.approx(e_expected, abs=1e-10)
    np.testing.assert_allclose(f_other, f_expected, rtol=0, atol=1e-10)
    energies_and_forces(compiled, frames[:1])
    assert network.compilations == 3 and not network.failed and not network.fused_failed
    restored = pickle.loads(pickle.dumps(compiled.model))  # PythonForce Systems are pickled
    assert restored.use_compiled and restored.compiled.compilations == 0


@pytest.mark.slow
def test_compiled_periodic_network_equals_eager_and_compiles_once_for_all_slot_counts():
    """A periodic box: the network is compiled once with symbolic sizes; a configuration with
    another slot count P, and a box with more atoms, reuse it. float64 equals eager."""
    from allscaip.reference.water import water_box

    eager = fresh_model("conserving_sm")
    compiled = copy.deepcopy(eager).compile_network()
    rng = np.random.default_rng(5)
    boxes = [water_box(8, density=1.0, seed=1), water_box(8, density=1.0, seed=1), water_box(12, density=1.0, seed=2)]
    boxes[1].positions += rng.normal(scale=0.2, size=boxes[1].positions.shape)
    slot_counts, compiled_graphs = set(), []
    for atoms in boxes:
        inputs = (torch.tensor(atoms.positions), torch.tensor(atoms.numbers), torch.tensor(atoms.cell.array),
                  torch.tensor([True] * 3), torch.tensor(0), torch.tensor(1))
        expected = eager(*inputs, True, True)
        found = compiled(*inputs, True, True)
        for want, got in zip(expected, found):
            torch.testing.assert_close(got.detach(), want.detach(), rtol=0, atol=1e-10)
        slot_counts.add(int(eager.backbone.prepare(*inputs)[0].shape[1]))
        compiled_graphs.append(compiled.compiled.compilations)
    network = compiled.compiled
    assert len(slot_counts) > 1 and not network.failed
    # the first call compiles (dynamo hands inductor 2 graphs here); no later call does
    assert compiled_graphs[0] > 0 and compiled_graphs == [compiled_graphs[0]] * 3
    assert len(network.compile_seconds) == 1
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_wide_box_fuses_energy_and_gradients_and_widens_a_layout_that_overflows():
    """A box wide enough for minimum images (64 waters, shipped model): energy and gradients in
    one graph on fixed-width layouts. float64 energies, forces and virials equal eager; a
    rattled configuration reuses the graph; a layout made too narrow on purpose is detected
    and the call recomputed wider (compiled anew), never returning a cut-off result."""
    from allscaip.reference.water import water_box

    eager = shipped_model()
    compiled = shipped_model().compile_network()
    rng = np.random.default_rng(7)
    atoms = water_box(64, density=1.0, seed=3)
    rattled = atoms.copy()
    rattled.positions += rng.normal(scale=0.05, size=atoms.positions.shape)

    def inputs_of(frame):
        return (torch.tensor(frame.positions), torch.tensor(frame.numbers), torch.tensor(frame.cell.array),
                torch.tensor([True] * 3), torch.tensor(0), torch.tensor(1))

    network = compiled.compiled
    # the function that is compiled, run eagerly: equals the model whatever inductor does here
    inputs = inputs_of(rattled)
    plan = eager.backbone.cell_plan(inputs[2], inputs[3])
    strain = torch.zeros(3, 3, dtype=torch.float64)
    value, (d_positions, d_strain), _ = network._wide_gradients(inputs[0], strain, inputs[1], inputs[2], inputs[3],
                                                                inputs[4], inputs[5], plan, 36, 2)
    _, want_forces, want_virial = eager(*inputs, True, True)
    torch.testing.assert_close(-eager.force_scale * d_positions, want_forces.detach(), rtol=0, atol=1e-9)
    torch.testing.assert_close(-eager.stress_scale * d_strain, want_virial.detach(), rtol=0, atol=1e-9)
    for frame in (atoms, rattled):
        inputs = inputs_of(frame)
        assert eager.backbone.cell_plan(inputs[2], inputs[3]).wide
        for want, got in zip(eager(*inputs, True, True), compiled(*inputs, True, True)):
            torch.testing.assert_close(got.detach(), want.detach(), rtol=0, atol=1e-9)
        if network.wide_failed:  # the fallback was right (above); the fused path is what is tested here
            torch._dynamo.reset()
            pytest.skip("inductor could not compile the fused wide-cell graph on this machine (see the warning)")
    assert network.compilations == 1 and len(network.compile_seconds) == 1
    assert network._network is None and not network.wide_failed  # not the network-only path
    energy, forces = compiled(*inputs, True, False)[:2]  # forces alone: a graph without the strain's gradient
    want_energy, want_forces = eager(*inputs, True, False)[:2]
    torch.testing.assert_close(forces, want_forces.detach(), rtol=0, atol=1e-9)
    torch.testing.assert_close(energy.detach(), want_energy.detach(), rtol=0, atol=1e-9)
    assert network.compilations == 2
    natural = int(eager.backbone.prepare(*inputs_of(rattled))[0].shape[1])
    assert natural < network.wide_slots <= natural + 4  # the widest layout seen, plus a margin
    network.wide_slots = natural - 2  # too narrow: some atom's edges would be cut off
    inputs = inputs_of(rattled)
    for want, got in zip(eager(*inputs, True, True), compiled(*inputs, True, True)):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=0, atol=1e-9)
    if network.wide_failed:  # as above: this width did not compile here, and the fallback was right
        torch._dynamo.reset()
        pytest.skip("inductor could not compile the fused wide-cell graph at a narrower width on this machine")
    assert network.wide_slots >= natural and network.compilations >= 2
    torch._dynamo.reset()


def test_failed_compilation_warns_and_falls_back_to_eager(monkeypatch):
    from allscaip.compiled import CompiledEnergy

    def broken_backend(self, graph_module, example_inputs, config_patches=None):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(CompiledEnergy, "_backend", broken_backend)
    frames = rattled_waters(2)
    expected = energies_and_forces(AllScAIPCalculator(model=fresh_model("conserving_sm")), frames)
    calculator = AllScAIPCalculator(model=copy.deepcopy(fresh_model("conserving_sm")), compile=True)
    with pytest.warns(RuntimeWarning) as warned:
        found = energies_and_forces(calculator, frames)
    messages = [str(w.message) for w in warned]
    assert any("no C++ compiler here); continuing with the compiled energy and autograd" in m for m in messages)
    assert any("no C++ compiler here); continuing without compilation" in m for m in messages)
    assert calculator.model.compiled.failed and calculator.model.compiled.fused_failed
    for (e_eager, f_eager), (e_found, f_found) in zip(expected, found):
        assert e_found == pytest.approx(e_eager, abs=1e-12)
        np.testing.assert_allclose(f_found, f_eager, rtol=0, atol=1e-12)
    torch._dynamo.reset()


@pytest.mark.slow
def test_openmm_gas_phase_molecule_through_compiled_pythonforce_equals_torchforce():
    """What ``allscaip protocol ... --compile`` runs for the gas phase: one water without a box,
    PythonForce with ``compile=True``, against the TorchForce of the same model (float64)."""
    import openmm
    from openmm import unit

    from allscaip.plugins.openmm import create_system
    from openmm_helpers import water_topology

    topology, positions = water_topology("water_box16_nopbc", n_waters=1)
    found = []
    for backend, compile in (("torchforce", False), ("python", True)):
        system = create_system(topology, SHIPPED, dtype="float64", backend=backend, compile=compile)
        integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 5 / unit.picosecond, 1.5 * unit.femtosecond)
        integrator.setRandomNumberSeed(7)
        context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(positions)
        context.setVelocitiesToTemperature(300 * unit.kelvin, 7)
        integrator.step(20)
        state = context.getState(getEnergy=True, getForces=True, getPositions=True)
        found.append((state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
                      state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer),
                      state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)))
    (e_tf, f_tf, x_tf), (e_py, f_py, x_py) = found
    np.testing.assert_allclose(x_py, x_tf, rtol=0, atol=1e-9)  # 20 steps: the same trajectory
    assert e_py == pytest.approx(e_tf, abs=1e-6)
    np.testing.assert_allclose(f_py, f_tf, rtol=0, atol=1e-6)
