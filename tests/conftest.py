"""Shared fixtures: fairchem golden data (tests/fixtures/golden, made by tools/make_golden.py)."""

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
CONFIGS = ["direct", "conserving", "direct_sm", "conserving_sm"]


@lru_cache(maxsize=None)
def golden_structures() -> tuple[dict, ...]:
    return tuple(json.loads((GOLDEN / "structures.json").read_text()))


@lru_cache(maxsize=None)
def golden_outputs(config: str) -> dict:
    return json.loads((GOLDEN / f"outputs_{config}.json").read_text())


def load_script(path: Path, name: str):
    """A script that is not part of a package (benchmarks/, tools/) imported as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checkpoint_path(config: str) -> Path:
    return GOLDEN / f"ckpt_{config}.pt"


@lru_cache(maxsize=None)
def converted(config: str):
    from allscaip.fairchem import convert_checkpoint

    model, _, _ = convert_checkpoint(checkpoint_path(config))
    return model


def fresh_model(config: str, dtype=torch.float64):
    """A float64 copy of a converted golden checkpoint (safe to modify)."""
    import copy

    return copy.deepcopy(converted(config)).to(dtype).eval()


def to_atoms(structure: dict) -> Atoms:
    atoms = Atoms(numbers=structure["numbers"], positions=structure["positions"],
                  cell=structure["cell"], pbc=structure["pbc"])
    atoms.info["charge"] = structure["charge"]
    atoms.info["spin"] = structure["spin"]
    return atoms


def model_inputs(structure: dict, dtype=torch.float64) -> tuple:
    """Tensors for AllScAIP.forward; a molecule's zero cell becomes the identity, as in ASE's
    ``get_cell(complete=True)``."""
    atoms = to_atoms(structure)
    cell = np.asarray(atoms.get_cell(complete=True))
    return (torch.tensor(atoms.positions, dtype=dtype), torch.tensor(atoms.numbers),
            torch.tensor(cell, dtype=dtype), torch.tensor(atoms.pbc),
            torch.tensor(structure["charge"]), torch.tensor(structure["spin"]))


@pytest.fixture(params=CONFIGS)
def config_name(request):
    return request.param
