"""AllScAIP through ``openmm.PythonForce`` (OpenMM >= 8.5): eager PyTorch, no TorchScript.

The computation object is picklable (it pickles the model's file-free state: config,
weights and normalisation), so Systems using it survive ``XmlSerializer`` round trips.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from allscaip.model import AllScAIP
from allscaip.plugins.openmm.forces import ANGSTROM_PER_NM, EV_TO_KJ_PER_MOL


class AllScAIPComputation:
    """Callable for PythonForce: State (positions nm, box nm) -> (kJ/mol, kJ/mol/nm)."""

    def __init__(self, model: AllScAIP, atomic_numbers: Sequence[int], charge: int, spin: int,
                 periodic: bool, dtype: torch.dtype, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.dtype = dtype
        self.atomic_numbers = torch.tensor(list(atomic_numbers), dtype=torch.long, device=self.device)
        self.charge = torch.tensor(int(charge), device=self.device)
        self.spin = torch.tensor(int(spin), device=self.device)
        self.pbc = torch.tensor([periodic] * 3, device=self.device)
        self.periodic = periodic

    def __call__(self, state):
        from openmm import unit

        positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        as_tensor = lambda array: torch.as_tensor(np.asarray(array), dtype=self.dtype, device=self.device)
        positions = as_tensor(positions) * ANGSTROM_PER_NM
        if self.periodic:
            box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
            cell = as_tensor(box) * ANGSTROM_PER_NM
        else:
            cell = torch.eye(3, dtype=self.dtype, device=self.device)
        energy, forces, _ = self.model(positions, self.atomic_numbers, cell, self.pbc,
                                       self.charge, self.spin, True, False)
        return (float(energy.detach()) * EV_TO_KJ_PER_MOL,
                forces.detach().to("cpu", torch.float64).numpy() * (EV_TO_KJ_PER_MOL * ANGSTROM_PER_NM))


def create_python_force(model: AllScAIP, atomic_numbers: Sequence[int], atoms: Optional[Sequence[int]],
                        charge: int, spin: int, periodic: bool, dtype: torch.dtype, device: str = "cpu"):
    import openmm

    if not hasattr(openmm, "PythonForce"):
        raise ImportError("openmm.PythonForce needs OpenMM >= 8.5; use backend='torchforce'")
    force = openmm.PythonForce(AllScAIPComputation(model, atomic_numbers, charge, spin, periodic, dtype, device))
    if atoms is not None:
        force.setParticles(list(atoms))
    force.setUsesPeriodicBoundaryConditions(periodic)
    force.setName("AllScAIP")
    return force
