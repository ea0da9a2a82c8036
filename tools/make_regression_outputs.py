"""Record our own float64 outputs on every golden structure, to pin the model's function
while its implementation is made faster (tests/test_fast_path_regression.py).

For each golden checkpoint (tests/fixtures/golden) and structure: energy, forces and virial
in float64, plus the same for the shipped default model, written to
``tests/fixtures/regression/outputs.json``. Run it from a checkout of the commit whose
function is the reference (the fixture records that commit), with the project's venv:

    git worktree add /tmp/reference <commit>
    (cd /tmp/reference && /path/to/.venv/bin/python tools/make_regression_outputs.py \
        --out /path/to/repo/tests/fixtures/regression/outputs.json)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's allscaip, not the venv's editable install
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
CONFIGS = ["direct", "conserving", "direct_sm", "conserving_sm"]
DEFAULT_MODEL = ROOT / "models" / "allscaip-spcfw-water" / "model.pt"


def inputs(structure: dict) -> tuple:
    from ase import Atoms

    atoms = Atoms(numbers=structure["numbers"], positions=structure["positions"],
                  cell=structure["cell"], pbc=structure["pbc"])
    cell = np.asarray(atoms.get_cell(complete=True))
    return (torch.tensor(atoms.positions, dtype=torch.float64), torch.tensor(atoms.numbers),
            torch.tensor(cell, dtype=torch.float64), torch.tensor(atoms.pbc),
            torch.tensor(structure["charge"]), torch.tensor(structure["spin"]))


def outputs(model, structures: list[dict], elements: set[int] | None = None) -> dict:
    result = {}
    for structure in structures:
        if elements is not None and not set(structure["numbers"]) <= elements:
            continue
        energy, forces, virial = model(*inputs(structure), True, not model.direct_forces)
        result[structure["name"]] = {"energy": float(energy.detach()), "forces": forces.detach().tolist(),
                                     "virial": virial.detach().tolist()}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from allscaip.fairchem import convert_checkpoint
    from allscaip.io import load_model

    structures = json.loads((GOLDEN / "structures.json").read_text())
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    record = {"commit": commit, "dtype": "float64", "models": {}}
    for config in CONFIGS:
        model = convert_checkpoint(GOLDEN / f"ckpt_{config}.pt")[0].to(torch.float64).eval()
        record["models"][config] = outputs(model, structures)
    shipped = load_model(str(DEFAULT_MODEL)).to(torch.float64).eval()
    record["models"]["default_model"] = outputs(shipped, structures, elements={1, 8})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record))
    print(f"wrote {args.out} (commit {commit[:8]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
