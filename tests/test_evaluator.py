"""The engine-neutral evaluator: units, ML-atom subsets, element checks at construction,
TorchScript, and agreement with the model called directly (float64)."""

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from allscaip.evaluator import Evaluator
from conftest import fresh_model, golden_structures, model_inputs

NM, KJ = 10.0, 96.48533212331002


def structure(name):
    return next(s for s in golden_structures() if s["name"] == name)


def test_engine_units_and_subset_equal_the_model_in_angstrom_and_ev():
    """An Evaluator in nm and kJ/mol on 3 ML atoms among 5 particles gives the model's
    energy, forces and virial on those atoms, converted; the other particles get no force."""
    model = fresh_model("conserving_sm")
    positions, numbers, cell, pbc, charge, spin = model_inputs(structure("water_box16_pbc"))
    energy, forces, virial = model(positions, numbers, cell, pbc, charge, spin, True, True)
    n_ml = positions.shape[0]
    others = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=torch.float64)
    particles = torch.cat([others[:1], positions / NM, others[1:]])
    indices = list(range(1, n_ml + 1))
    evaluator = Evaluator(model, numbers.tolist(), pbc=pbc.tolist(), charge=int(charge), spin=int(spin),
                          dtype=torch.float64, length_unit=NM, energy_unit=KJ, indices=indices,
                          n_particles=n_ml + 2)
    for call in (evaluator, torch.jit.script(evaluator)):
        e, f, w = call(particles, cell / NM, True)
        assert float(e) == pytest.approx(float(energy.detach()) * KJ, rel=1e-12)
        np.testing.assert_allclose(f[1:-1].numpy(), forces.detach().numpy() * KJ * NM, rtol=0, atol=1e-9)
        assert float(f[0].abs().sum() + f[-1].abs().sum()) == 0.0
        np.testing.assert_allclose(w.numpy(), virial.detach().numpy() * KJ, rtol=0, atol=1e-9)


def test_molecule_ignores_the_cell_and_needs_no_virial():
    model = fresh_model("conserving_sm")
    positions, numbers, cell, pbc, charge, spin = model_inputs(structure("water"))
    energy, forces, _ = model(positions, numbers, cell, pbc, charge, spin, True, False)
    e, f, w = Evaluator(model, numbers.tolist(), charge=int(charge), spin=int(spin), dtype=torch.float64)(
        positions, None)
    assert float(e) == pytest.approx(float(energy.detach()), rel=1e-14)
    np.testing.assert_allclose(f.numpy(), forces.detach().numpy(), rtol=0, atol=1e-12)
    assert w.numel() == 0


def test_bad_elements_and_subsets_fail_at_construction_with_a_clear_message():
    model = fresh_model("conserving_sm")
    with pytest.raises(ValueError, match=r"unsupported atomic number\(s\) \[0, 120\]"):
        Evaluator(model, [8, 1, 120, 0])
    with pytest.raises(ValueError, match="one atomic number per ML atom"):
        Evaluator(model, [8, 1, 1], indices=[0, 1], n_particles=5)


class HostSyncs(TorchDispatchMode):
    """Counts dispatched ops whose result the host must wait for."""

    SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2",
                "unique_consecutive", "is_nonzero", "equal", "repeat_interleave", "item"}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.SYNC_OPS:
            self.calls.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["water", "water_box16_pbc", "triclinic_methanol_water"])
def test_steady_state_call_syncs_only_for_the_graphs_data_dependent_sizes(name):
    """An evaluator call waits for the host only where the graph's sizes depend on the data:
    the candidate search (nonzero), the widest candidate row and the slot count; a molecule of
    at most k + delta atoms has a fixed-shape graph and no sync at all. (The cell is read once
    more by ``.tolist()``, which does not dispatch.) A new sync anywhere else fails."""
    model = fresh_model("conserving_sm")
    positions, numbers, cell, pbc, charge, spin = model_inputs(structure(name))
    evaluator = Evaluator(model, numbers.tolist(), pbc=pbc.tolist(), charge=int(charge), spin=int(spin),
                          dtype=torch.float64)
    evaluator(positions, cell, True)
    counter = HostSyncs()
    with counter:
        evaluator(positions, cell, True)
    small_molecule = not bool(pbc.any()) and len(numbers) <= model.backbone.knn_k + model.backbone.knn_delta
    expected = [] if small_molecule else ["_local_scalar_dense", "_local_scalar_dense", "nonzero"]
    assert sorted(counter.calls) == expected, counter.calls
