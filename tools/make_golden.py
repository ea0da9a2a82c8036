"""Golden fixtures from fairchem-core's AllScAIP, for numerical parity tests.

Builds small random-weight AllScAIP models the way fairchem's inference loader does
(``hydra.utils.instantiate`` of the checkpoint's ``model_config``), moves every
parameter away from its initial value, saves each as a real ``MLIPInferenceCheckpoint``,
loads it back through ``FAIRChemCalculator`` and records its outputs on a fixed set of
structures. Needs the side venv with fairchem-core (see tools/README.md); fairchem is
never a dependency of the ``allscaip`` package itself.

Run from the repository root:

    .fairchem-venv/bin/python tools/make_golden.py --out tests/fixtures/golden

Writes ``ckpt_<config>.pt``, ``structures.json``, ``outputs_<config>.json`` and
``manifest.json``. Units: Å, eV, eV/Å, eV/Å³ (ASE conventions).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

MODEL_SEED = 20261126
PERTURB_SEED = 777
STRUCTURE_SEED = 4242
ENERGY_MEAN = 0.1234
ENERGY_RMSD = 1.4336
# Must sum to head_dim = 64 / 4 = 16: the released [20, 10, 4, 10, 20] (head_dim 64)
# scaled by 1/4 and rounded, l = 0..4 all present.
FREQUENCY_LIST = [5, 3, 1, 3, 4]

# name -> (direct forces, use_freq_mask and use_sincx_mask)
CONFIGS = {
    "direct": (True, False),
    "conserving": (False, False),
    "direct_sm": (True, True),
    "conserving_sm": (False, True),
}

ALLSCAIP = "fairchem.core.models.allscaip.AllScAIP"
NORMALIZER = "fairchem.core.modules.normalization.normalizer.Normalizer"
ELEMENT_REFS = "fairchem.core.modules.normalization.element_references.ElementReferences"
TASK = "fairchem.core.units.mlip_unit.mlip_unit.Task"


def backbone_config(direct: bool, masks: bool, knn_k: int = 12, hidden_size: int = 64,
                    num_layers: int = 2, num_heads: int = 4, cutoff: float = 6.0) -> dict:
    """Backbone kwargs in the style of the released ``backbone/md_NeNo.yaml``."""
    return {
        "model": f"{ALLSCAIP}.AllScAIPBackbone",
        "num_layers": num_layers,
        "hidden_size": hidden_size,
        "direct_forces": direct,
        "regress_forces": True,
        "regress_stress": not direct,
        "use_compile": False,
        "use_padding": False,
        "dataset_list": ["omol"],
        "use_node_path": True,
        "use_freq_mask": masks,
        "use_sincx_mask": masks,
        "max_num_elements": 110,
        "max_batch_size": 8,
        "max_atoms": 1000,
        "max_radius": cutoff,
        "knn_k": knn_k,
        "knn_soft": True,
        "knn_sigmoid_scale": 0.2,
        "knn_lse_scale": 0.1,
        "knn_use_low_mem": True,
        "knn_pad_size": 30,
        "atten_name": "math",
        "atten_num_heads": num_heads,
        "freequency_list": list(FREQUENCY_LIST),
        "edge_distance_expansion_size": 512,
    }


def heads_config(direct: bool) -> dict:
    """Head names must equal task names (fairchem reads output[task.name])."""
    if direct:
        return {
            "omol_energy": {"module": f"{ALLSCAIP}.AllScAIPEnergyHead"},
            "forces": {"module": f"{ALLSCAIP}.AllScAIPDirectForceHead"},
        }
    return {
        "energyandforcehead": {
            "module": "fairchem.core.models.uma.escn_moe.DatasetSpecificSingleHeadWrapper",
            "head_cls": f"{ALLSCAIP}.AllScAIPGradientEnergyForceStressHead",
            "head_kwargs": {"wrap_property": False},
            "dataset_names": ["omol"],
        }
    }


def model_config(direct: bool, masks: bool, **backbone_kwargs) -> dict:
    config = {
        "_target_": "fairchem.core.models.base.HydraModel",
        "backbone": backbone_config(direct, masks, **backbone_kwargs),
        "heads": heads_config(direct),
    }
    if not direct:
        config["pass_through_head_outputs"] = True
    return config


def element_references() -> list[float]:
    """Float64 reference energies (eV) indexed by Z, length 100, non-zero for Z >= 1."""
    refs = [0.0] + [-13.6 * z**2.1 * (1.0 + 0.01 * np.sin(z)) for z in range(1, 100)]
    realistic = {1: -13.5722, 6: -1029.8634, 7: -1485.3021, 8: -2043.9317,
                 11: -4421.5683, 17: -12522.6490}
    for z, value in realistic.items():
        refs[z] = value
    return [float(v) for v in refs]


def _task(name: str, level: str, prop: str, dim: list, mean: float, rmsd: float,
          refs: list[float] | None = None) -> dict:
    task = {
        "_target_": TASK,
        "name": name,
        "level": level,
        "property": prop,
        "out_spec": {"dim": dim, "dtype": "float32"},
        "normalizer": {"_target_": NORMALIZER, "mean": mean, "rmsd": rmsd},
        "datasets": ["omol"],
        "metrics": ["mae"],
    }
    if refs is not None:
        task["element_references"] = {
            "_target_": ELEMENT_REFS,
            "element_references": {"_target_": "torch.DoubleTensor", "_args_": [refs]},
        }
    return task


def tasks_config(direct: bool) -> list[dict]:
    """``tasks/omol_direct.yaml`` or ``tasks/omol_cons.yaml`` style task list."""
    energy = _task("omol_energy", "system", "energy", [1], ENERGY_MEAN, ENERGY_RMSD,
                   element_references())
    if direct:
        return [energy, _task("forces", "atom", "forces", [3], 0.0, ENERGY_RMSD)]
    return [
        energy,
        _task("omol_forces", "atom", "forces", [3], 0.0, ENERGY_RMSD),
        _task("omol_stress", "system", "stress", [1, 9], 0.0, ENERGY_RMSD),
    ]


@torch.no_grad()
def perturb_parameters(model: torch.nn.Module, seed: int) -> None:
    """Add seeded noise to every parameter so no bias, norm or scale sits at 0 or 1.

    Noise scale: 0.25 x the tensor's spread (its std, or |value| / 0.4 if constant).
    """
    gen = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        if param.numel() > 1 and param.std() > 1e-8:
            spread = float(param.std())
        else:
            spread = max(float(param.abs().max()), 0.4)
        before = param.clone()
        param.add_(0.25 * spread * torch.randn(param.shape, generator=gen, dtype=param.dtype))
        if torch.any(param == before):
            raise RuntimeError(f"parameter {name} kept an initial value after perturbation")


def build_checkpoint(config: dict, tasks: list[dict], seed: int):
    """Instantiate ``config`` with hydra, perturb it and wrap it as an inference checkpoint."""
    import hydra
    from fairchem.core.units.mlip_unit.api.inference import MLIPInferenceCheckpoint

    torch.manual_seed(seed)
    model = hydra.utils.instantiate(copy.deepcopy(config))
    perturb_parameters(model, seed + PERTURB_SEED)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # AveragedModel layout: "module." prefix plus n_averaged. The tensors are shared
    # with model_state_dict, so torch.save stores them once.
    ema = {f"module.{k}": v for k, v in state.items()}
    ema["n_averaged"] = torch.tensor(1, dtype=torch.long)
    return MLIPInferenceCheckpoint(
        model_config=copy.deepcopy(config),
        model_state_dict=state,
        ema_state_dict=ema,
        tasks_config=copy.deepcopy(tasks),
    )


# ---------------------------------------------------------------- structures

def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _molecule(name: str) -> tuple[list[int], np.ndarray]:
    from ase.build import molecule

    mol = molecule(name)
    pos = mol.get_positions()
    return mol.get_atomic_numbers().tolist(), pos - pos.mean(axis=0)


def _pack(templates: list[str], cell: np.ndarray, pbc: list[bool], rng: np.random.Generator,
          z_range: tuple[float, float] | None = None, min_dist: float = 1.6):
    """Place rigid, randomly rotated molecules (ASE names or element symbols) in a cell.

    Rejection sampling on minimum-image distances between molecules (>= ``min_dist`` Å).
    """
    from ase.data import atomic_numbers
    from ase.geometry import get_distances

    numbers: list[int] = []
    positions = np.zeros((0, 3))
    for name in templates:
        if name in atomic_numbers:
            zs, local = [atomic_numbers[name]], np.zeros((1, 3))
        else:
            zs, local = _molecule(name)
        for _ in range(20000):
            frac = rng.random(3)
            centre = frac @ cell
            if z_range is not None:
                centre[2] = rng.uniform(*z_range)
            trial = centre + local @ _random_rotation(rng).T
            if len(positions) == 0:
                break
            _, dist = get_distances(trial, positions, cell=cell, pbc=pbc)
            if dist.min() >= min_dist:
                break
        else:
            raise RuntimeError(f"could not place {name} in the cell")
        numbers += zs
        positions = np.vstack([positions, trial])
    return numbers, positions


def _entry(name, numbers, positions, cell=None, pbc=(False, False, False), charge=0, spin=1):
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=float)
    return {
        "name": name,
        "numbers": [int(z) for z in numbers],
        "positions": np.asarray(positions, dtype=float).tolist(),
        "cell": cell.tolist(),
        "pbc": [bool(p) for p in pbc],
        "charge": int(charge),
        "spin": int(spin),
    }


def make_structures(seed: int = STRUCTURE_SEED) -> list[dict]:
    """Deterministic structure set covering molecules, charges, PBC variants and dense kNN."""
    rng = np.random.default_rng(seed)
    out = []
    zs, pos = _molecule("H2O")
    out.append(_entry("water", zs, pos))
    zs, pos = _molecule("CH4")
    out.append(_entry("methane", zs, pos + 0.03 * rng.standard_normal(pos.shape)))
    zs, pos = _molecule("H2O")
    out.append(_entry("water_cation_doublet", zs, pos, charge=1, spin=2))

    # pyridine + acetic acid, hydrogen-bonded pair (19 atoms: H, C, N, O)
    z1, p1 = _molecule("C5H5N")
    z2, p2 = _molecule("CH3COOH")
    p2 = p2 @ _random_rotation(rng).T + np.array([0.0, 0.0, 4.2])
    pos = np.vstack([p1, p2])
    out.append(_entry("pyridine_acetic_acid", z1 + z2,
                      pos + 0.04 * rng.standard_normal(pos.shape)))

    # compact random cluster: many candidates within the cutoff (kNN ranking boundary)
    zs = rng.choice([1, 6, 7, 8], size=30, p=[0.5, 0.2, 0.1, 0.2]).tolist()
    pts = []
    while len(pts) < 30:
        p = rng.uniform(-3.5, 3.5, 3)
        if np.linalg.norm(p) < 3.5 and all(np.linalg.norm(p - q) >= 1.0 for q in pts):
            pts.append(p)
    out.append(_entry("dense_cluster_anion", zs, np.array(pts), charge=-1, spin=3))

    # two atoms beyond the cutoff: each atom has only its self-loop
    out.append(_entry("far_pair", [8, 1], [[0.0, 0.0, 0.0], [7.5, 0.3, -0.2]], spin=2))

    box = np.eye(3) * 7.82
    zs, pos = _pack(["H2O"] * 16, box, [True] * 3, rng)
    out.append(_entry("water_box16_pbc", zs, pos, box, [True] * 3))
    out.append(_entry("water_box16_nopbc", zs, pos, box, [False] * 3))
    shifts = rng.integers(-2, 3, size=(len(zs), 3)) @ box
    out.append(_entry("water_box16_outside", zs, pos + shifts + [13.1, -7.4, 21.9], box,
                      [True] * 3))

    small = np.eye(3) * 4.0
    zs, pos = _pack(["H2O"] * 2, small, [True] * 3, rng, min_dist=1.7)
    out.append(_entry("water2_small_box", zs, pos, small, [True] * 3))

    tri = np.array([[6.4, 0.0, 0.0], [2.1, 5.9, 0.0], [1.3, 1.7, 6.2]])
    zs, pos = _pack(["CH3OH"] + ["H2O"] * 5, tri, [True] * 3, rng)
    out.append(_entry("triclinic_methanol_water", zs, pos, tri, [True] * 3))

    # slab periodic in x, y only; some atoms sit at z < 0 (not wrapped along z)
    slab = np.diag([7.0, 7.0, 16.0])
    zs, pos = _pack(["H2O"] * 6 + ["Na", "Cl"], slab, [True, True, False], rng,
                    z_range=(-0.5, 3.5), min_dist=1.8)
    out.append(_entry("slab_water_nacl_ttf", zs, pos, slab, [True, True, False]))

    a = 5.64
    frac = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                     [.5, 0, 0], [0, .5, 0], [0, 0, .5], [.5, .5, .5]])
    pos = frac * a + 0.02 * rng.standard_normal((8, 3))
    out.append(_entry("nacl_rocksalt", [11] * 4 + [17] * 4, pos, np.eye(3) * a, [True] * 3))

    # periodic and charged: hydronium + 7 waters
    hbox = np.eye(3) * 6.3
    zs, pos = _pack(["H2O"] * 8, hbox, [True] * 3, rng)
    o0 = pos[0]
    extra = o0 + 0.98 * np.array([0.0, 0.0, -1.0]) @ _random_rotation(rng).T
    out.append(_entry("hydronium_box_cation", zs + [1], np.vstack([pos, extra]), hbox,
                      [True] * 3, charge=1, spin=1))
    return out


def to_atoms(entry: dict):
    from ase import Atoms

    atoms = Atoms(numbers=entry["numbers"], positions=entry["positions"],
                  cell=entry["cell"], pbc=entry["pbc"])
    atoms.info["charge"] = int(entry["charge"])
    atoms.info["spin"] = int(entry["spin"])
    return atoms


# ---------------------------------------------------------------- evaluation

def _node_reps_without_cast(self, data):
    """AllScAIPBackbone.compiled_forward minus the final cast of node reps to float32."""
    reps = self.input_block(data)
    for layer, block in enumerate(self.transformer_blocks):
        reps = block(data, reps, layer_idx=layer)
    return {"data": data, "node_reps": reps[:, 0]}


@contextlib.contextmanager
def fp64_patched():
    """Default dtype float64 and no float32 cast of node reps, restored on exit."""
    from fairchem.core.models.allscaip.AllScAIP import AllScAIPBackbone

    original = AllScAIPBackbone.compiled_forward
    previous_dtype = torch.get_default_dtype()
    AllScAIPBackbone.compiled_forward = _node_reps_without_cast
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        AllScAIPBackbone.compiled_forward = original
        torch.set_default_dtype(previous_dtype)


def make_calculator(path: Path, dtype: torch.dtype = torch.float32, threads: int | None = None):
    from fairchem.core import FAIRChemCalculator
    from fairchem.core.units.mlip_unit.api.inference import InferenceSettings

    settings = InferenceSettings(compile=False, tf32=False, activation_checkpointing=False,
                                 merge_mole=False, base_precision_dtype=dtype,
                                 torch_num_threads=threads)
    return FAIRChemCalculator.from_model_checkpoint(str(path), task_name="omol", device="cpu",
                                                    inference_settings=settings)


def pin_rmsnorm_eps(calc, eps: float = float(torch.finfo(torch.float32).eps)) -> None:
    """Give every nn.RMSNorm the eps it has in fairchem's float32 run (eps=None means
    finfo(input dtype).eps, i.e. 2.2e-16 in float64 but 1.19e-7 in float32)."""
    norms = [m for m in calc.predictor.model.modules() if isinstance(m, torch.nn.RMSNorm)]
    if not norms:
        raise RuntimeError("no nn.RMSNorm found in the loaded model")
    for norm in norms:
        norm.eps = eps


def evaluate(calc, entry: dict) -> dict:
    """One calculator evaluation plus the predict unit's raw 3x3 stress and input positions.

    ``calc.calculate`` is called directly: fairchem wraps the Atoms' positions in place,
    which would make ASE's get_* helpers see a changed system and recompute.
    """
    from ase.calculators.calculator import all_changes

    calc.calculate(to_atoms(entry), list(calc.implemented_properties), all_changes)
    res = calc.results
    out = {"energy": float(res["energy"]), "forces": np.asarray(res["forces"]).tolist()}
    data = calc.a2g(to_atoms(entry))
    out["positions_model"] = data.pos.double().tolist()
    if "stress" in res:
        out["stress_voigt"] = np.asarray(res["stress"]).tolist()
        pred = calc.predictor.predict(data)
        stress = pred["stress"].detach().double().reshape(3, 3)
        out["stress_3x3"] = stress.tolist()
        energy = float(pred["energy"].detach().double().reshape(-1)[0])
        if abs(energy - out["energy"]) > 1e-6 * max(1.0, abs(energy)):
            raise RuntimeError(f"{entry['name']}: predict unit and calculator disagree")
    return out


def _check(name: str, out: dict, n_atoms: int) -> None:
    forces = np.asarray(out["forces"])
    if forces.shape != (n_atoms, 3) or not np.all(np.isfinite(forces)):
        raise RuntimeError(f"{name}: bad forces {forces.shape}")
    if not np.isfinite(out["energy"]):
        raise RuntimeError(f"{name}: energy is not finite")


def run_config(name: str, ckpt_path: Path, structures: list[dict], fp64: bool) -> dict:
    calc = make_calculator(ckpt_path)
    results = {}
    for entry in structures:
        results[entry["name"]] = evaluate(calc, entry)
        _check(entry["name"], results[entry["name"]], len(entry["numbers"]))
    if fp64:
        for suffix, eps32 in (("_fp64", False), ("_fp64_eps32", True)):
            keys = ["energy", "forces", "stress_voigt", "stress_3x3"]
            keys += [] if eps32 else ["positions_model"]  # same input in both fp64 runs
            with fp64_patched():
                calc64 = make_calculator(ckpt_path, torch.float64)
                if eps32:
                    pin_rmsnorm_eps(calc64)
                for entry in structures:
                    out64 = evaluate(calc64, entry)
                    _check(entry["name"], out64, len(entry["numbers"]))
                    results[entry["name"]].update(
                        {f"{key}{suffix}": out64[key] for key in keys if key in out64})
    print(f"{name}: evaluated {len(results)} structures", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/golden"))
    parser.add_argument("--no-fp64", action="store_true", help="skip fp64-patched outputs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(4)

    import ase
    import fairchem.core

    structures = make_structures()
    (args.out / "structures.json").write_text(json.dumps(structures, indent=1) + "\n")

    manifest = {
        "command": ".fairchem-venv/bin/python tools/make_golden.py --out tests/fixtures/golden",
        "fairchem_core": fairchem.core.__version__,
        "torch": torch.__version__,
        "ase": ase.__version__,
        "numpy": np.__version__,
        "seeds": {"model": MODEL_SEED, "perturb_offset": PERTURB_SEED,
                  "structures": STRUCTURE_SEED},
        "perturbation": "param += 0.25*spread*N(0,1); spread = std, or max(|param|, 0.4) "
                        "if constant; torch.Generator seeded with model seed + offset",
        "inference_settings": {"compile": False, "tf32": False,
                               "activation_checkpointing": False, "merge_mole": False},
        "task_name": "omol",
        "fp64_patched": None if args.no_fp64 else (
            "InferenceSettings(base_precision_dtype=float64), torch default dtype float64 "
            "during build and predict, AllScAIPBackbone.compiled_forward without "
            ".to(float32) on node_reps; float32 islands inside fairchem remain"),
        "output_keys": {
            "energy": "eV, calculator (float32 model + float64 element refs)",
            "forces": "(N,3) eV/A", "positions_model": "(N,3) A, wrapped float32 input",
            "stress_voigt": "(6,) eV/A^3 xx yy zz yz xz xy, conserving only",
            "stress_3x3": "(3,3) eV/A^3 raw predict-unit stress, conserving only",
            "*_fp64": "same quantities from the fp64-patched run (float64 wrapped "
                      "positions; RMSNorm eps = float64 eps because eps=None)",
            "*_fp64_eps32": "fp64-patched run with every nn.RMSNorm eps pinned to "
                            "finfo(float32).eps, the value fairchem's float32 run uses",
        },
        "checkpoints": {},
    }
    for index, (name, (direct, masks)) in enumerate(CONFIGS.items()):
        config, tasks = model_config(direct, masks), tasks_config(direct)
        seed = MODEL_SEED + index
        path = args.out / f"ckpt_{name}.pt"
        torch.save(build_checkpoint(config, tasks, seed), path)
        outputs = run_config(name, path, structures, fp64=not args.no_fp64)
        (args.out / f"outputs_{name}.json").write_text(json.dumps(outputs) + "\n")
        manifest["checkpoints"][name] = {
            "file": path.name, "seed": seed, "model_config": config, "tasks_config": tasks,
        }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
