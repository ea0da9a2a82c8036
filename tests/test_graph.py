"""The graph builder's own specification, checked against a brute-force reference.

``build_neighbor_graph`` (allscaip/graph.py) promises, for wrapped positions: every candidate
(j, image n) of atom i within cutoff + 4 s over fairchem's image set, the k + delta nearest
kept, soft source ranks sum_b bump((d - d_b) / s), the destination rank read from the reverse
edge j -> (i, -n) (2k when j does not keep it), env = t logsumexp([r_src/k, r_dst/k, d/rc]/t),
env(self) = 0, edges with env < 1 kept, and padded source/destination layouts sorted by env.
The reference below computes exactly that with plain loops in float64, independent of the
builder's tricks (minimum-image search, rank sharing, slot tables). Parity with fairchem
itself is tests/test_model_parity.py.
"""

import math

import numpy as np
import pytest
import torch

from allscaip.graph import build_neighbor_graph, cell_plan, wide_cell_graph, wrap_positions

CUTOFF, KNN_K, KNN_DELTA, RANK_SCALE, LSE_SCALE = 4.0, 8, 6, 0.2, 0.1


def bump(x: float) -> float:
    if x <= -4.0:
        return 0.0
    if x >= 4.0:
        return 1.0
    y = x / 4.0
    z = 2.0 / (1.0 - y) - 2.0 / (1.0 + y)  # the bump is sigmoid(z)
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def reference_graph(positions, cell, pbc, cutoff=CUTOFF, k=KNN_K, delta=KNN_DELTA,
                    s=RANK_SCALE, t=LSE_SCALE) -> dict:
    """{(i, j, n): env} of the kept edges, by the specification (n: integer image vector)."""
    volume = abs(np.linalg.det(cell)) if pbc.any() else 1.0
    reps = [int(math.ceil(cutoff * np.linalg.norm(np.cross(cell[(a + 1) % 3], cell[(a + 2) % 3])) / volume))
            if pbc[a] else 0 for a in range(3)]
    images = [np.array(n) for n in np.ndindex(*(2 * r + 1 for r in reps))]
    images = [n - np.array(reps) for n in images]
    radius = cutoff + 4.0 * s
    count = len(positions)
    candidates = []  # per atom: [(d, j, n)] sorted by distance, the k + delta nearest
    for i in range(count):
        found = []
        for j in range(count):
            for n in images:
                d = float(np.linalg.norm(positions[j] + n @ cell - positions[i]))
                if d < radius:
                    found.append((d, j, tuple(int(v) for v in n)))
        found.sort(key=lambda c: c[0])
        candidates.append(found[:k + delta])
    rank = {}
    for i in range(count):
        for d, j, n in candidates[i]:
            rank[(i, j, n)] = (d, sum(bump((d - db) / s) for db, _, _ in candidates[i]))
    edges = {}
    for (i, j, n), (d, r_src) in rank.items():
        reverse = rank.get((j, i, tuple(-v for v in n)))
        r_dst = reverse[1] if reverse is not None else 2.0 * k
        terms = np.array([r_src / k, r_dst / k, d / cutoff]) / t
        env = 0.0 if d == 0.0 else t * (terms.max() + math.log(np.exp(terms - terms.max()).sum()))
        if env < 1.0:
            edges[(i, j, n)] = env
    return edges


def built_graph(positions, cell, pbc, wide_slots: int = 0) -> tuple[dict, object]:
    """The builder's kept edges as {(i, j, n): env}, and its raw output. (A small molecule's
    fixed-shape graph also lists the pairs it masks, at env = +inf: they are not edges.)
    ``wide_slots``: build with ``wide_cell_graph`` and that many slots instead."""
    pos = torch.tensor(positions, dtype=torch.float64)
    box = torch.tensor(cell, dtype=torch.float64)
    flags = torch.tensor(pbc)
    if wide_slots:
        graph, _ = wide_cell_graph(pos, box, flags, CUTOFF, KNN_K, RANK_SCALE, LSE_SCALE, KNN_DELTA, wide_slots)
    else:
        graph = build_neighbor_graph(pos, box, flags, CUTOFF, KNN_K, RANK_SCALE, LSE_SCALE, KNN_DELTA)
    n_slots = graph.src_env.shape[1]
    src = graph.edge_center.numpy()
    disp = graph.edge_disp.detach().numpy()
    edges = {}
    for e, i in enumerate(src):
        if not math.isfinite(float(graph.edge_env[e])):
            continue
        target = positions[i] + disp[e]
        # j: the atom this displacement reaches up to a lattice vector; n: that vector
        best = None
        for j in range(len(positions)):
            frac = np.linalg.solve(cell.T, target - positions[j]) if pbc.any() else np.zeros(3)
            frac = np.where(pbc, frac, 0.0)
            n = np.round(frac)
            miss = np.linalg.norm(positions[j] + n @ cell - target)
            if miss < 1e-8:
                best = (int(i), j, tuple(int(v) for v in n))
                break
        assert best is not None, f"edge {e} of atom {i} reaches no atom"
        assert best not in edges, f"edge {best} appears twice"
        edges[best] = float(graph.edge_env[e])
        assert graph.edge_slot[e] // n_slots == i
    return edges, graph


def water(count: int, length: float | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` water-like triples at random places in a cube of ``length`` (or 8 Å)."""
    rng = np.random.default_rng(seed)
    side = length or 8.0
    centres = rng.uniform(0, side, size=(count, 3))
    geometry = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    positions = np.concatenate([c + geometry for c in centres])
    return positions, np.eye(3) * side


def case(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (wrapped), cell and pbc of the named test system."""
    if name == "molecule":  # 15 atoms > k + delta: the candidate search
        positions, cell = water(5, None, 1)
        pbc = np.array([False] * 3)
    elif name == "small_molecule":  # 12 atoms <= k + delta: the fixed-shape molecule graph
        positions, cell = water(4, 5.0, 1)
        pbc = np.array([False] * 3)
    elif name == "wide_box":  # plane spacing > 2 (cutoff + 4 s): the minimum-image search
        positions, cell = water(40, 10.0, 2)
        pbc = np.array([True] * 3)
    elif name == "tiny_box":  # 3.1 Å: every atom sees several images of every atom
        positions, cell = water(1, 3.1, 3)
        pbc = np.array([True] * 3)
    elif name == "triclinic":
        positions, _ = water(6, 6.0, 4)
        cell = np.array([[6.0, 0.0, 0.0], [1.7, 5.6, 0.0], [-1.1, 0.9, 5.2]])
        pbc = np.array([True] * 3)
    elif name == "slab":  # periodic in x and y only
        positions, cell = water(8, 7.0, 5)
        cell[2, 2] = 30.0
        pbc = np.array([True, True, False])
    elif name == "wide_triclinic":  # plane spacings 9.7-9.8 Å > 2 (cutoff + 4 s)
        positions, _ = water(40, 10.0, 6)
        cell = np.array([[10.0, 0.0, 0.0], [1.5, 9.9, 0.0], [-1.0, 0.8, 9.8]])
        pbc = np.array([True] * 3)
    elif name == "wide_slab":
        positions, cell = water(40, 10.0, 7)
        cell[2, 2] = 30.0
        pbc = np.array([True, True, False])
    else:
        raise KeyError(name)
    wrapped = wrap_positions(torch.tensor(positions), torch.tensor(cell), torch.tensor(pbc)).numpy()
    return wrapped, cell, pbc


@pytest.mark.parametrize("name", ["molecule", "small_molecule", "wide_box", "tiny_box", "triclinic", "slab",
                                  "wide_triclinic"])
def test_edges_and_envelopes_match_the_brute_force_reference(name):
    positions, cell, pbc = case(name)
    expected = reference_graph(positions, cell, pbc)
    got, graph = built_graph(positions, cell, pbc)
    assert set(got) == set(expected), (sorted(set(got) ^ set(expected))[:5])
    worst = max(abs(got[e] - expected[e]) for e in expected)
    assert worst < 1e-12, worst
    # every atom keeps itself, at env 0
    for i in range(len(positions)):
        assert got[(i, i, (0, 0, 0))] == 0.0


@pytest.mark.parametrize("name", ["small_molecule", "wide_box", "tiny_box", "triclinic", "wide:wide_box",
                                  "wide:wide_triclinic", "wide:wide_slab"])
def test_padded_layouts_are_sorted_and_mutually_inverse(name):
    wide = name.startswith("wide:")
    positions, cell, pbc = case(name.removeprefix("wide:"))
    _, graph = built_graph(positions, cell, pbc, wide_slots=KNN_K + KNN_DELTA if wide else 0)
    count, slots = graph.src_env.shape
    for env in (graph.src_env, graph.dst_env):
        assert torch.all(env[:, 0] == 0.0)  # slot 0: the atom itself
        assert torch.all(env[:, 1:] >= env[:, :-1])  # sorted, empty (+inf) slots last
    filled = torch.isfinite(graph.src_env).reshape(-1)
    flat = torch.arange(count * slots)
    # to_dst / to_src move each edge between the layouts and back, empty slots among themselves
    assert torch.equal(graph.to_src[graph.to_dst[flat]], flat)
    assert torch.equal(graph.src_env.reshape(-1)[graph.to_dst], graph.dst_env.reshape(-1))
    kept = int(torch.isfinite(graph.edge_env).sum())
    assert int(filled.sum()) == kept and int(torch.isfinite(graph.dst_env).sum()) == kept


def test_ties_in_a_lattice_give_every_atom_the_same_neighbourhood():
    """Simple cubic lattice: neighbour shells of 6, 12, 8 equidistant atoms, the k + delta
    cut falling inside a shell. Which tied candidates are cut is arbitrary, but every atom
    must see the same number of edges and the same envelope values, as the reference does."""
    spacing, cells = 1.6, 4
    grid = np.array(list(np.ndindex(cells, cells, cells)), dtype=float) * spacing
    cell = np.eye(3) * spacing * cells
    pbc = np.array([True] * 3)
    expected = reference_graph(grid, cell, pbc)
    got, _ = built_graph(grid, cell, pbc)
    for edges in (expected, got):
        per_atom = [sorted(round(env, 9) for (i, _, _), env in edges.items() if i == a)
                    for a in range(len(grid))]
        assert all(p == per_atom[0] for p in per_atom)
    mine = sorted(round(v, 9) for (i, _, _), v in got.items() if i == 0)
    theirs = sorted(round(v, 9) for (i, _, _), v in expected.items() if i == 0)
    assert mine == theirs


@pytest.mark.parametrize("name", ["wide_box", "wide_triclinic", "wide_slab"])
def test_wide_cell_graph_has_the_reference_edges_in_fixed_shapes_and_reports_its_width(name):
    """``wide_cell_graph`` (fixed shapes, for compiled calls) keeps the reference's edges with
    the same envelopes; its layouts have the width asked for, and it reports the width the
    general builder needs, so that a too narrow layout (edges cut off) is detected."""
    positions, cell, pbc = case(name)
    plan = cell_plan(torch.tensor(cell), torch.tensor(pbc), CUTOFF, CUTOFF + 4.0 * RANK_SCALE)
    assert plan.wide
    expected = reference_graph(positions, cell, pbc)
    _, searched = built_graph(positions, cell, pbc)
    needed_width = searched.src_env.shape[1]
    for slots in (needed_width, KNN_K + KNN_DELTA):
        got, graph = built_graph(positions, cell, pbc, wide_slots=slots)
        assert graph.src_env.shape == graph.dst_env.shape == (len(positions), slots)
        assert set(got) == set(expected)
        assert max(abs(got[e] - expected[e]) for e in expected) < 1e-12
    args = [torch.tensor(positions), torch.tensor(cell), torch.tensor(pbc), CUTOFF, KNN_K, RANK_SCALE,
            LSE_SCALE, KNN_DELTA]
    assert int(wide_cell_graph(*args, needed_width)[1]) == needed_width
    narrow, needed = wide_cell_graph(*args, needed_width - 1)
    assert int(needed) == needed_width
    kept = [int(torch.isfinite(env).sum()) for env in (narrow.src_env, narrow.dst_env)]
    assert min(kept) < len(expected)  # edges were cut off in the layout that needed the width
