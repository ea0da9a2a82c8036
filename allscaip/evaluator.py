"""One model call in an engine's units, shared by every engine adapter: the ASE calculator,
OpenMM (TorchForce module and PythonForce), the LAMMPS bridge and, through those, the protocols.

It owns what the adapters used to repeat: casting to the model's dtype and device, scaling
engine lengths and energies to Angstrom and eV and back, an ML-atom subset inside a larger
system (ML/MM), and the element check, done once at construction instead of every step.
TorchScript-able, so the TorchForce module is a scripted Evaluator behind a two-output shim.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from allscaip.model import AllScAIP


def check_supported(model: AllScAIP, atomic_numbers: Sequence[int]) -> None:
    """A clear error naming every element the model cannot handle."""
    highest = min(model.max_atomic_number, model.element_references.numel() - 1)
    unknown = sorted({int(z) for z in atomic_numbers if not 1 <= int(z) <= highest})
    if unknown:
        raise ValueError(f"unsupported atomic number(s) {unknown}: this model supports Z = 1..{highest}")


class Evaluator(nn.Module):
    """Energy, forces and virial of a fixed set of atoms, in an engine's units.

    length_unit: Angstrom per engine length unit (OpenMM nm: 10); energy_unit: engine energy
    units per eV (OpenMM kJ/mol: 96.485..., LAMMPS real kcal/mol: 23.06...). ``indices``: the
    ML atoms among ``n_particles`` (forces of the others are zero); ``atomic_numbers`` has one
    entry per ML atom. ``compile``: the network through ``torch.compile`` for eager calls
    (``allscaip.compiled``; the model is changed in place; a scripted Evaluator ignores it).
    """

    def __init__(self, model: AllScAIP, atomic_numbers: Sequence[int], *, pbc: Sequence[bool] = (False,) * 3,
                 charge: int = 0, spin: int = 1, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", length_unit: float = 1.0, energy_unit: float = 1.0,
                 indices: Optional[Sequence[int]] = None, n_particles: Optional[int] = None,
                 compile: bool = False):
        super().__init__()
        check_supported(model, atomic_numbers)
        if indices is not None and len(indices) != len(atomic_numbers):
            raise ValueError("give one atomic number per ML atom")
        self.model = model.to(device=device, dtype=dtype).eval()
        if compile:
            self.model.compile_network()
        self.dtype = dtype
        self.length_unit = float(length_unit)
        self.energy_unit = float(energy_unit)
        self.force_unit = float(energy_unit) * float(length_unit)
        self.subset = indices is not None
        self.n_particles = int(n_particles if n_particles is not None else len(atomic_numbers))
        chosen = list(indices) if indices is not None else list(range(len(atomic_numbers)))
        self.register_buffer("indices", torch.tensor(chosen, dtype=torch.long, device=device))
        self.register_buffer("atomic_numbers", torch.tensor([int(z) for z in atomic_numbers],
                                                            dtype=torch.long, device=device))
        self.register_buffer("charge", torch.tensor(int(charge), device=device))
        self.register_buffer("spin", torch.tensor(int(spin), device=device))
        self.register_buffer("pbc", torch.tensor([bool(p) for p in pbc], device=device))
        self.periodic = any(bool(p) for p in pbc)

    def forward(self, positions: torch.Tensor, cell: Optional[torch.Tensor] = None,
                compute_virial: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """positions (n_particles, 3) and cell (3, 3, rows; None or ignored when nothing is
        periodic) in engine length units, any float dtype -> energy () float64, forces
        (n_particles, 3) in the model's dtype and virial (3, 3) (empty unless asked), detached,
        in engine units."""
        selected = torch.index_select(positions, 0, self.indices) if self.subset else positions
        selected = selected.to(self.dtype) * self.length_unit
        if self.periodic and cell is not None:
            box = cell.to(self.dtype) * self.length_unit
        else:
            box = torch.eye(3, dtype=self.dtype, device=positions.device)
        energy, forces, virial = self.model(selected, self.atomic_numbers, box, self.pbc, self.charge,
                                            self.spin, True, compute_virial, False)
        forces = forces.detach() * self.force_unit
        if self.subset:
            full = torch.zeros((self.n_particles, 3), dtype=forces.dtype, device=forces.device)
            forces = full.index_copy(0, self.indices, forces)
        return energy.detach() * self.energy_unit, forces, virial.detach() * self.energy_unit
