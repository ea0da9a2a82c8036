"""TorchScript export: a self-contained module that engines (OpenMM, LAMMPS, C++) load.

Interface of the exported module::

    energy, forces, virial = module(positions, atomic_numbers, cell, pbc, charge, spin)

positions (N,3) Angstrom, atomic_numbers (N,) int64, cell (3,3) Angstrom (rows are lattice
vectors; any non-singular matrix for non-periodic systems), pbc (3,) bool, charge and spin
() int64. Inputs of any float dtype are cast to the model's dtype. Returns energy () eV,
forces (N,3) eV/Angstrom and virial (3,3) eV (= -dE/dstrain, NaN for direct-force models),
all float64. Metadata (JSON) travels in the archive as the extra file ``metadata.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Tuple

import torch
from torch import nn

from allscaip.io import ModelFileError, describe_unreadable, file_sha256, load_model
from allscaip.model import AllScAIP

METADATA_FILE = "metadata.json"


class ExportedAllScAIP(nn.Module):
    """Fixed-interface wrapper: casts inputs, always returns energy, forces and virial."""

    def __init__(self, model: AllScAIP, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.conserving = not model.direct_forces

    def forward(self, positions: torch.Tensor, atomic_numbers: torch.Tensor, cell: torch.Tensor,
                pbc: torch.Tensor, charge: torch.Tensor, spin: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        energy, forces, virial = self.model(
            positions.to(self.dtype), atomic_numbers.to(torch.long), cell.to(self.dtype),
            pbc.to(torch.bool), charge.to(torch.long), spin.to(torch.long), True, self.conserving)
        if not self.conserving:
            virial = torch.full((3, 3), float("nan"), dtype=self.dtype, device=positions.device)
        return energy.detach(), forces.detach().to(torch.float64), virial.detach().to(torch.float64)


def export_metadata(model: AllScAIP, dtype: torch.dtype, source: str | None) -> dict:
    config = model.config
    return {
        "format": "allscaip-torchscript",
        "interface": "positions[A], atomic_numbers, cell[A], pbc, charge, spin -> "
                     "energy[eV], forces[eV/A], virial[eV]",
        "units": {"length": "angstrom", "energy": "eV"},
        "dtype": str(dtype).replace("torch.", ""),
        "cutoff": float(config.max_radius),
        "atomic_numbers": [1, min(model.max_atomic_number, model.element_references.numel() - 1)],
        "conserving": not model.direct_forces,
        "has_virial": not model.direct_forces,
        "config": config.to_dict(),
        "source": source,
        "source_metadata": getattr(model, "metadata", {}),
    }


def script_model(model: AllScAIP, dtype: torch.dtype = torch.float64) -> torch.jit.ScriptModule:
    model = model.to(dtype).eval()
    return torch.jit.script(ExportedAllScAIP(model, dtype))


def export_model(model_path: str | Path, output: str | Path,
                 dtype: torch.dtype = torch.float64) -> Path:
    """``allscaip export``: model file -> TorchScript archive with metadata."""
    model = load_model(model_path, dtype=dtype)
    metadata = export_metadata(model, dtype, source=str(Path(model_path).name))
    metadata["source_sha256"] = file_sha256(model_path)
    scripted = script_model(model, dtype)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, str(output), _extra_files={METADATA_FILE: json.dumps(metadata, indent=1)})
    return output


def load_exported(path: str | Path, device: str = "cpu") -> tuple[torch.jit.ScriptModule, dict]:
    """Load an exported archive (onto ``device``, e.g. "cuda") and its metadata."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"TorchScript archive {path} does not exist")
    extra = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError / ValueError for foreign files
        raise ModelFileError(f"{path} is not a TorchScript archive ({describe_unreadable(path)}); "
                             "make one with `allscaip export MODEL.pt -o MODEL.ts`") from exc
    if not extra[METADATA_FILE]:
        raise ModelFileError(f"{path} is a TorchScript archive without allscaip metadata; "
                             "make one with `allscaip export MODEL.pt -o MODEL.ts`")
    return module, json.loads(extra[METADATA_FILE])
