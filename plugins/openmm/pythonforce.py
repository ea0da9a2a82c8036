"""AllScAIP through ``openmm.PythonForce`` (OpenMM >= 8.5): eager PyTorch, no TorchScript.

The computation object is picklable (it pickles the model's file-free state: config,
weights and normalisation), so Systems using it survive ``XmlSerializer`` round trips.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from allscaip.model import AllScAIP
from allscaip.plugins.openmm.forces import openmm_evaluator


class AllScAIPComputation:
    """Callable for PythonForce: State (positions nm, box nm) -> (kJ/mol, kJ/mol/nm)."""

    def __init__(self, model: AllScAIP, atomic_numbers: Sequence[int], charge: int, spin: int,
                 periodic: bool, dtype: torch.dtype, device: str = "cpu", compile: bool = False):
        self.device = torch.device(device)
        self.dtype = dtype
        self.periodic = periodic
        self.evaluator = openmm_evaluator(model, atomic_numbers, len(atomic_numbers), None, charge, spin,
                                          periodic, dtype, device, compile)

    @property
    def model(self) -> AllScAIP:
        return self.evaluator.model

    def __call__(self, state):
        from openmm import unit

        positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        as_tensor = lambda array: torch.as_tensor(np.asarray(array), dtype=self.dtype, device=self.device)
        box = None
        if self.periodic:
            box = as_tensor(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer))
        energy, forces, _ = self.evaluator(as_tensor(positions), box)
        return float(energy), forces.to("cpu", torch.float64).numpy()


def create_python_force(model: AllScAIP, atomic_numbers: Sequence[int], atoms: Optional[Sequence[int]],
                        charge: int, spin: int, periodic: bool, dtype: torch.dtype, device: str = "cpu",
                        compile: bool = False):
    import openmm

    if not hasattr(openmm, "PythonForce"):
        raise ImportError("openmm.PythonForce needs OpenMM >= 8.5; use backend='torchforce'")
    force = openmm.PythonForce(AllScAIPComputation(model, atomic_numbers, charge, spin, periodic, dtype, device,
                                                   compile))
    if atoms is not None:
        force.setParticles(list(atoms))
    force.setUsesPeriodicBoundaryConditions(periodic)
    force.setName("AllScAIP")
    return force
