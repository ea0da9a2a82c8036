"""Physics of the model itself (float64): forces and virial are exact derivatives of the
energy, and the energy has the symmetries of an isolated or periodic system."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from allscaip.features import bond_orientational_order, unit_vectors
from allscaip.spherical import spherical_harmonics
from conftest import fresh_model, golden_structures, model_inputs

FD_STRUCTURES = ["pyridine_acetic_acid", "water_box16_pbc", "water2_small_box",
                 "triclinic_methanol_water", "slab_water_nacl_ttf"]


def structure(name):
    return next(s for s in golden_structures() if s["name"] == name)


@pytest.fixture(scope="module")
def model():
    return fresh_model("conserving_sm")  # both masks on: the most complex energy


def energy_of(model, positions, numbers, cell, pbc, charge, spin):
    return float(model(positions, numbers, cell, pbc, charge, spin, False, False)[0].detach())


@pytest.mark.parametrize("name", FD_STRUCTURES)
def test_forces_match_finite_differences(model, name):
    positions, numbers, cell, pbc, charge, spin = model_inputs(structure(name))
    _, forces, _ = model(positions, numbers, cell, pbc, charge, spin, True, False)
    rng = np.random.default_rng(0)
    step = 1e-5
    for atom, axis in zip(rng.choice(len(numbers), 6), rng.integers(0, 3, 6)):
        plus, minus = positions.clone(), positions.clone()
        plus[atom, axis] += step
        minus[atom, axis] -= step
        numeric = -(energy_of(model, plus, numbers, cell, pbc, charge, spin)
                    - energy_of(model, minus, numbers, cell, pbc, charge, spin)) / (2 * step)
        assert abs(numeric - float(forces[atom, axis])) < 1e-6 * max(1.0, abs(numeric))


@pytest.mark.parametrize("name", ["water_box16_pbc", "triclinic_methanol_water", "slab_water_nacl_ttf",
                                  "water2_small_box"])
def test_virial_matches_finite_strain_derivative(model, name):
    positions, numbers, cell, pbc, charge, spin = model_inputs(structure(name))
    _, _, virial = model(positions, numbers, cell, pbc, charge, spin, True, True)
    step = 1e-5
    for a, b in [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]:
        strain = torch.zeros(3, 3, dtype=torch.float64)
        strain[a, b] = strain[b, a] = 0.5 * step if a != b else step

        def strained(sign):
            deformation = torch.eye(3, dtype=torch.float64) + sign * strain
            return energy_of(model, positions @ deformation, numbers, cell @ deformation, pbc, charge, spin)

        numeric = -(strained(1) - strained(-1)) / (2 * step)
        assert abs(numeric - float(virial[a, b])) < 1e-6 * max(1.0, abs(numeric))


def test_virial_is_symmetric(model):
    _, _, virial = model(*model_inputs(structure("triclinic_methanol_water")), True, True)
    np.testing.assert_allclose(virial.detach().numpy(), virial.detach().numpy().T, atol=1e-12)


@pytest.mark.parametrize("name", ["water_box16_pbc", "triclinic_methanol_water", "dense_cluster_anion"])
def test_rigid_translation_changes_nothing(model, name):
    positions, numbers, cell, pbc, charge, spin = model_inputs(structure(name))
    e0, f0, _ = model(positions, numbers, cell, pbc, charge, spin, True, False)
    shift = torch.tensor([7.3, -9.1, 4.4], dtype=torch.float64)
    e1, f1, _ = model(positions + shift, numbers, cell, pbc, charge, spin, True, False)
    assert float(e1) == pytest.approx(float(e0), abs=1e-9)
    np.testing.assert_allclose(f1.detach().numpy(), f0.detach().numpy(), atol=1e-9)


def test_moving_atoms_by_lattice_vectors_changes_nothing(model):
    positions, numbers, cell, pbc, charge, spin = model_inputs(structure("triclinic_methanol_water"))
    e0, f0, v0 = model(positions, numbers, cell, pbc, charge, spin, True, True)
    moved = positions.clone()
    moved[::3] += cell[0] - 2 * cell[2]
    moved[1::3] -= cell[1]
    e1, f1, v1 = model(moved, numbers, cell, pbc, charge, spin, True, True)
    assert float(e1) == pytest.approx(float(e0), abs=1e-9)
    np.testing.assert_allclose(f1.detach().numpy(), f0.detach().numpy(), atol=1e-9)
    np.testing.assert_allclose(v1.detach().numpy(), v0.detach().numpy(), atol=1e-9)


def tiled_frequency_vectors(harmonics: torch.Tensor, repeats: list[int]) -> torch.Tensor:
    """fairchem's frequency vectors: per l, Y_lm / sqrt(2l+1) tiled repeats[l] times."""
    parts = [(harmonics[:, l * l:(l + 1) ** 2] / np.sqrt(2 * l + 1)).repeat(1, count)
             for l, count in enumerate(repeats) if count > 0]
    return torch.cat(parts, dim=-1)


@pytest.mark.parametrize("repeats", [[2, 1, 1, 1], [3, 3, 3], [5, 3, 0, 3, 4]])
def test_legendre_scores_equal_fairchems_tiled_frequency_modulation(repeats):
    """Neighbourhood attention scores q.k with channel block l weighted by P_l(cos angle)
    (the addition theorem) equal fairchem's: q and k blocks tiled 2l+1 times, multiplied by
    each slot's Y_lm / sqrt(2l+1), then dotted; zero vectors (own slot) included."""
    from allscaip.attention import NeighborhoodAttention, legendre_weights

    rng = np.random.default_rng(len(repeats))
    head_dim, rows, slots, heads = sum(repeats), 3, 7, 2
    attention = NeighborhoodAttention(heads * head_dim, heads, 1, repeats, True, False).double()
    directions = unit_vectors(torch.tensor(rng.normal(size=(rows, slots, 3))))
    directions[:, 0] = 0.0
    q, k = (torch.tensor(rng.normal(size=(rows, heads, slots, head_dim))) for _ in range(2))
    frequencies = tiled_frequency_vectors(
        spherical_harmonics(len(repeats) - 1, directions.reshape(-1, 3)), repeats).reshape(rows, slots, -1)
    source = [sum(repeats[:l]) + c for l, n in enumerate(repeats) for c in range(n) for _ in range(2 * l + 1)]
    tiled_q, tiled_k = (x[..., source] * frequencies.unsqueeze(1) for x in (q, k))
    expected = tiled_q @ tiled_k.transpose(2, 3)
    scores = attention.modulated_scores(q, k, legendre_weights(directions, len(repeats)))
    np.testing.assert_allclose(scores.numpy(), expected.numpy(),
                               rtol=0, atol=1e-12)


def test_rotation_invariant_parts_are_invariant():
    """AllScAIP (like fairchem's) feeds raw edge harmonics to an MLP, so its energy is not
    exactly rotation invariant. The parts that are invariant by construction must be:
    bond-orientational order, and the frequency weights of q.k products."""
    from allscaip.attention import legendre_weights

    rng = np.random.default_rng(5)
    rotation = torch.tensor(Rotation.from_euler("zyx", [31, -47, 113], degrees=True).as_matrix())
    directions = unit_vectors(torch.tensor(rng.normal(size=(36, 3))))
    directions[::9] = 0.0  # each atom's own edge
    center = torch.arange(4).repeat_interleave(9)
    weight = torch.tensor(rng.uniform(0.1, 1.0, 36))

    def order_and_weights(vectors):
        order = bond_orientational_order(spherical_harmonics(9, vectors), weight, center, 4, 9)
        return order.numpy(), legendre_weights(vectors.reshape(4, 9, 3), 4).numpy()

    order, weights = order_and_weights(directions)
    order_rotated, weights_rotated = order_and_weights(directions @ rotation.T)
    np.testing.assert_allclose(order_rotated, order, atol=1e-12)
    np.testing.assert_allclose(weights_rotated, weights, atol=1e-12)


def test_permuting_atoms_permutes_forces(model):
    positions, numbers, cell, pbc, charge, spin = model_inputs(structure("water_box16_pbc"))
    order = torch.from_numpy(np.random.default_rng(3).permutation(len(numbers)))
    e0, f0, _ = model(positions, numbers, cell, pbc, charge, spin, True, False)
    e1, f1, _ = model(positions[order], numbers[order], cell, pbc, charge, spin, True, False)
    assert float(e1) == pytest.approx(float(e0), abs=1e-9)
    np.testing.assert_allclose(f1.detach().numpy(), f0[order].detach().numpy(), atol=1e-9)


def test_molecule_ignores_its_unused_cell(model):
    positions, numbers, cell, pbc, charge, spin = model_inputs(structure("water_box16_nopbc"))
    e0, f0, _ = model(positions, numbers, cell, pbc, charge, spin, True, False)
    other_cell = torch.tensor([[3.0, 0, 0], [1.0, 4.0, 0], [0.5, 0.2, 2.5]], dtype=torch.float64)
    e1, f1, _ = model(positions, numbers, other_cell, pbc, charge, spin, True, False)
    assert float(e1) == float(e0)
    np.testing.assert_array_equal(f1.detach().numpy(), f0.detach().numpy())


def test_charge_and_spin_change_the_energy(model):
    positions, numbers, cell, pbc, _, _ = model_inputs(structure("water"))
    neutral = energy_of(model, positions, numbers, cell, pbc, torch.tensor(0), torch.tensor(1))
    cation = energy_of(model, positions, numbers, cell, pbc, torch.tensor(1), torch.tensor(2))
    assert abs(neutral - cation) > 1e-3


@pytest.mark.parametrize("bad_z", [0, 100, 118])
def test_unknown_element_is_a_clear_error(model, bad_z):
    positions, numbers, cell, pbc, charge, spin = model_inputs(structure("water"))
    numbers = numbers.clone()
    numbers[1] = bad_z
    with pytest.raises(ValueError, match=f"unsupported atomic number {bad_z}.*Z = 1..99"):
        model(positions, numbers, cell, pbc, charge, spin, True, False)


def test_periodic_system_with_flat_cell_is_a_clear_error(model):
    positions, numbers, _, pbc, charge, spin = model_inputs(structure("water2_small_box"))
    flat = torch.tensor([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="non-zero volume"):
        model(positions, numbers, flat, pbc, charge, spin, True, False)


def test_gaussian_window_equals_the_full_expansion():
    from allscaip.features import gaussian_offsets, gaussian_window

    offsets = gaussian_offsets(6.0, 512)
    distance = torch.tensor(np.random.default_rng(2).uniform(0.0, 6.0, 300), dtype=torch.float64)
    index, value = gaussian_window(distance, offsets)
    window = torch.zeros(300, 512, dtype=torch.float64).scatter_add(1, index, value)
    spacing = float(offsets[1] - offsets[0])
    full = torch.exp(-0.5 / (2 * spacing) ** 2 * (distance[:, None] - offsets.double()) ** 2)
    assert (window - full).abs().max() < 1e-15


def test_training_mode_gives_the_same_energy_and_forces(model):
    """Training uses a double-differentiable (dense) path for the distance expansion."""
    inputs = model_inputs(structure("triclinic_methanol_water"))
    e0, f0, _ = model(*inputs, True, False)
    model.train()
    try:
        e1, f1, _ = model(*inputs, True, False)
        (f1.square().sum()).backward()  # a force loss must be differentiable
    finally:
        model.eval()
    assert float(e1) == pytest.approx(float(e0), abs=1e-10)
    np.testing.assert_allclose(f1.detach().numpy(), f0.detach().numpy(), atol=1e-10)
