"""Batched evaluation (allscaip.batch): a batch equals its systems evaluated one by one."""

from types import SimpleNamespace

import pytest
import torch

from allscaip.batch import evaluate_batch
from allscaip.models import small_water_model_path
from allscaip.io import load_model
from conftest import fresh_model, golden_structures, model_inputs


def systems_of(structures, dtype=torch.float64):
    fields = ("positions", "numbers", "cell", "pbc", "charge", "spin")
    return [SimpleNamespace(**dict(zip(fields, model_inputs(s, dtype)))) for s in structures]


def one_by_one(model, systems, virial):
    return [model(s.positions, s.numbers, s.cell, s.pbc, s.charge, s.spin, True, virial) for s in systems]


def golden_batch():
    """Every golden structure (molecules, a 4 A box, a triclinic cell) and a displaced copy of
    each: systems of equal size share one node-attention call."""
    structures = list(golden_structures())
    systems = systems_of(structures)
    generator = torch.Generator().manual_seed(0)
    for system in systems_of(structures):
        system.positions = system.positions + 0.05 * torch.randn(system.positions.shape, generator=generator,
                                                                 dtype=torch.float64)
        systems.append(system)
    return systems


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_batch_equals_per_system_calls_on_every_golden_structure(config_name, mode):
    model = getattr(fresh_model(config_name), mode)()
    systems = golden_batch()
    conserving = not model.direct_forces
    result = evaluate_batch(model, systems, True, conserving)
    for index, (energy, forces, virial) in enumerate(one_by_one(model, systems, conserving)):
        assert float(result.energies[index].detach()) == pytest.approx(float(energy.detach()), abs=1e-10)
        batch_forces = result.forces[result.offsets[index]:result.offsets[index + 1]]
        assert torch.allclose(batch_forces, forces, rtol=0, atol=1e-10)
        if conserving:
            assert torch.allclose(result.virials[index], virial, rtol=0, atol=1e-10)


def test_no_system_sees_another():
    """Node attention stays inside each system: moving one system changes no other's result."""
    model = fresh_model("conserving_sm")
    systems = golden_batch()
    before = evaluate_batch(model, systems, True, True)
    systems[0].positions = systems[0].positions + torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64) * torch.arange(
        systems[0].positions.shape[0], dtype=torch.float64)[:, None] / 10
    after = evaluate_batch(model, systems, True, True)
    assert float(after.energies[0].detach()) != float(before.energies[0].detach())
    assert torch.allclose(after.energies[1:], before.energies[1:], rtol=0, atol=1e-12)
    start = before.offsets[1]
    assert torch.allclose(after.forces[start:], before.forces[start:], rtol=0, atol=1e-12)


def test_training_loss_gradient_equals_the_sum_over_systems():
    """Force and stress training through a batch gives the parameters the same gradient as
    the per-system calls it replaces (double backward included)."""
    model = load_model(small_water_model_path(), dtype=torch.float64).train()
    systems = golden_batch()
    systems = [s for s in systems if set(s.numbers.tolist()) <= {1, 8}]  # the shipped model's elements
    assert len(systems) >= 8
    targets = [torch.randn(s.positions.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
               for i, s in enumerate(systems)]

    def loss_of(results):
        return sum(energy.square() + (forces - target).square().sum() + virial.square().sum()
                   for (energy, forces, virial), target in zip(results, targets))

    model.zero_grad()
    loss_of(one_by_one(model, systems, True)).backward()
    expected = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    result = evaluate_batch(model, systems, True, True)
    batched = [(result.energies[i], result.forces[result.offsets[i]:result.offsets[i + 1]], result.virials[i])
               for i in range(len(systems))]
    loss_of(batched).backward()
    found = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(found) == len(expected) > 10
    for a, b in zip(found, expected):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_an_empty_batch_is_an_error():
    with pytest.raises(ValueError, match="at least one system"):
        evaluate_batch(fresh_model("conserving"), [])
