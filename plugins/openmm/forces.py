"""AllScAIP as an OpenMM force: a TorchScript ``TorchForce`` (default) or a ``PythonForce``.

Both evaluate through ``allscaip.evaluator.Evaluator``: the model on all particles or on a
subset (ML/MM), OpenMM's nm and kJ/mol converted to the model's Angstrom and eV and back,
OpenMM's positions (float32 on mixed/single precision platforms) cast to the model's dtype.
The model wraps positions into the periodic box itself, since OpenMM does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from allscaip.evaluator import Evaluator, check_supported
from allscaip.io import load_model
from allscaip.model import AllScAIP

EV_TO_KJ_PER_MOL = 96.48533212331002
ANGSTROM_PER_NM = 10.0
BACKENDS = ("torchforce", "python")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class OpenMMAllScAIP(nn.Module):
    """TorchScript-able TorchForce module: (positions nm, box nm) -> (kJ/mol, kJ/mol/nm), an
    ``Evaluator`` in OpenMM's units behind TorchForce's two outputs."""

    def __init__(self, model: AllScAIP, atomic_numbers: Sequence[int], n_particles: int,
                 indices: Optional[Sequence[int]], charge: int, spin: int, periodic: bool,
                 dtype: torch.dtype):
        super().__init__()
        self.evaluator = openmm_evaluator(model, atomic_numbers, n_particles, indices, charge, spin,
                                          periodic, dtype)

    def forward(self, positions: torch.Tensor, boxvectors: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        energy, forces, _ = self.evaluator(positions, boxvectors)
        return energy, forces.to(positions.dtype)


def openmm_evaluator(model: AllScAIP, atomic_numbers: Sequence[int], n_particles: int,
                     indices: Optional[Sequence[int]], charge: int, spin: int, periodic: bool,
                     dtype: torch.dtype, device: str = "cpu", compile: bool = False) -> Evaluator:
    """The model in OpenMM's units (nm, kJ/mol) on ``indices`` of ``n_particles`` (all if None)."""
    return Evaluator(model, atomic_numbers, pbc=[periodic] * 3, charge=charge, spin=spin, dtype=dtype,
                     device=device, length_unit=ANGSTROM_PER_NM, energy_unit=EV_TO_KJ_PER_MOL,
                     indices=indices, n_particles=n_particles, compile=compile)


def element_numbers(topology, atoms: Optional[Sequence[int]] = None) -> list[int]:
    """Atomic numbers of the chosen atoms of an ``openmm.app.Topology``."""
    all_atoms = list(topology.atoms())
    chosen = [all_atoms[i] for i in atoms] if atoms is not None else all_atoms
    numbers = []
    for atom in chosen:
        if atom.element is None:
            raise ValueError(f"atom {atom.index} ({atom.name} in residue {atom.residue.name}) has no "
                             "element; AllScAIP needs elements for every ML atom")
        numbers.append(atom.element.atomic_number)
    return numbers


def _resolve_model(model: str | Path | AllScAIP, dtype: torch.dtype) -> AllScAIP:
    if isinstance(model, AllScAIP):
        return model
    return load_model(model, dtype=dtype)


def create_allscaip_force(model: str | Path | AllScAIP, atomic_numbers: Sequence[int], *,
                          n_particles: Optional[int] = None, atoms: Optional[Sequence[int]] = None,
                          charge: int = 0, spin: int = 1, periodic: bool = False,
                          dtype: str = "float32", backend: str = "torchforce",
                          node_attention_block_size: Optional[int] = None, cuda_graphs: bool = False,
                          device: str = "cpu", compile: bool = False):
    """An OpenMM Force computing AllScAIP on ``atoms`` (default: all particles).

    atomic_numbers: one per ML atom (len(atoms), or n_particles when atoms is None);
    periodic: use the System's periodic box (the box must contain the ML region);
    dtype: "float32" or "float64" for the network; backend: "torchforce" or "python";
    node_attention_block_size: blocked node attention for large systems (0: dense; None:
    the model's setting); cuda_graphs: openmm-torch's ``useCUDAGraphs`` property (TorchForce
    on the CUDA platform; needs a capture-safe model, see README); device: where the
    ``python`` backend evaluates (a TorchForce runs on its OpenMM platform's device);
    compile: the ``python`` backend's network through ``torch.compile`` (``allscaip.compiled``;
    pays for fixed shapes such as a gas-phase molecule).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    if compile and backend != "python":
        raise ValueError("compile=True applies to backend='python' (a TorchForce runs TorchScript)")
    torch_dtype = DTYPES[dtype]
    network = _resolve_model(model, torch_dtype)
    if node_attention_block_size is not None:
        network.set_node_attention_block_size(node_attention_block_size)
    check_supported(network, atomic_numbers)
    n_particles = len(atomic_numbers) if n_particles is None else n_particles
    if atoms is not None and len(atoms) != len(atomic_numbers):
        raise ValueError("give one atomic number per ML atom")
    if backend == "python":
        from allscaip.plugins.openmm.pythonforce import create_python_force

        return create_python_force(network, atomic_numbers, atoms, charge, spin, periodic, torch_dtype,
                                   device, compile)

    from allscaip.plugins.openmm.runtime import import_openmmtorch

    openmmtorch = import_openmmtorch()
    wrapper = OpenMMAllScAIP(network, atomic_numbers, n_particles, atoms, charge, spin, periodic,
                             torch_dtype)
    force = openmmtorch.TorchForce(torch.jit.script(wrapper))
    force.setOutputsForces(True)
    if cuda_graphs:
        force.setProperty("useCUDAGraphs", "true")
    force.setUsesPeriodicBoundaryConditions(periodic)
    force.setName("AllScAIP")
    return force
