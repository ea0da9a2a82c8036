"""ASE calculator for AllScAIP models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from allscaip.evaluator import Evaluator
from allscaip.io import load_model
from allscaip.model import AllScAIP

DEFAULT_CHARGE = 0
DEFAULT_SPIN = 1  # multiplicity; fairchem's omol task default
CHARGE_RANGE = (-100, 100)
SPIN_RANGE = (0, 100)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def system_integer(atoms, key: str, default: int, bounds: tuple[int, int]) -> int:
    value = atoms.info.get(key, default)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"atoms.info[{key!r}] must be an integer, got {value!r}")
    if not bounds[0] <= int(value) <= bounds[1]:
        raise ValueError(f"atoms.info[{key!r}]={value} is outside {bounds[0]}..{bounds[1]}")
    return int(value)


class AllScAIPCalculator(Calculator):
    """Energy (eV), forces (eV/Angstrom) and stress (eV/Angstrom^3, periodic systems).

    The total charge and spin multiplicity come from ``atoms.info['charge']`` and
    ``atoms.info['spin']`` (defaults 0 and 1).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu",
                 dtype: str | torch.dtype = "float64", model: AllScAIP | None = None,
                 node_attention_block_size: int | None = None, compile: bool = False, **kwargs):
        """device: "cpu", "cuda", "cuda:1", ...; node_attention_block_size: blocked node
        attention for large systems (0: dense; None: the model's setting); compile: the network
        through ``torch.compile`` (pays most for one molecule: 3-4x; a box gains 1.1-1.3x, see
        ``allscaip.compiled``)."""
        super().__init__(**kwargs)
        self.dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        self.device = torch.device(device)
        if model is None:
            if model_path is None:
                raise ValueError("give a model file (model_path=...) or a model (model=...)")
            model = load_model(model_path, dtype=self.dtype, device=self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        if node_attention_block_size is not None:
            self.model.set_node_attention_block_size(node_attention_block_size)
        if compile:
            self.model.compile_network()
        self.evaluator: Evaluator | None = None
        self.evaluator_key: tuple = ()

    def evaluator_for(self, atoms, charge: int, spin: int) -> Evaluator:
        """The evaluator of these elements, periodic axes, charge and spin; rebuilt (and the
        elements checked) only when one of them changes."""
        key = (tuple(int(z) for z in atoms.numbers), tuple(bool(p) for p in atoms.pbc), charge, spin)
        if self.evaluator is None or key != self.evaluator_key:
            self.evaluator = Evaluator(self.model, key[0], pbc=key[1], charge=charge, spin=spin,
                                       dtype=self.dtype, device=self.device)
            self.evaluator_key = key
        return self.evaluator

    def check_state(self, atoms, tol=1e-15):
        """Also recompute when the total charge or spin in ``atoms.info`` changed."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None:
            for key in ("charge", "spin"):
                if atoms.info.get(key) != self.atoms.info.get(key):
                    changes.append(key)
        return changes

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        charge = system_integer(atoms, "charge", DEFAULT_CHARGE, CHARGE_RANGE)
        spin = system_integer(atoms, "spin", DEFAULT_SPIN, SPIN_RANGE)
        periodic = bool(atoms.pbc.any())
        want_stress = "stress" in properties
        if want_stress and not periodic:
            raise PropertyNotImplementedError("stress is defined for periodic systems only")
        if want_stress and self.model.direct_forces:
            raise PropertyNotImplementedError("this direct-force model predicts no stress")
        cell = np.asarray(atoms.get_cell(complete=True))
        volume = abs(np.linalg.det(cell))
        if periodic and volume < 1e-6:
            raise ValueError("a periodic system needs a cell with non-zero volume")
        as_tensor = lambda array: torch.as_tensor(np.asarray(array), dtype=self.dtype, device=self.device)
        energy, forces, virial = self.evaluator_for(atoms, charge, spin)(
            as_tensor(atoms.positions), as_tensor(cell), want_stress)
        self.results["energy"] = self.results["free_energy"] = float(energy)
        self.results["forces"] = forces.to("cpu", torch.float64).numpy()
        if want_stress:
            stress = -virial.to("cpu", torch.float64).numpy() / volume
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
