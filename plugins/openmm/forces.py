"""AllScAIP as an OpenMM force: a TorchScript ``TorchForce`` (default) or a ``PythonForce``.

Both apply the model to all particles or to a subset (ML/MM), convert OpenMM's nm and
kJ/mol to the model's Angstrom and eV and back, and cast OpenMM's positions (float32 on
mixed/single precision platforms) to the model's dtype. The model wraps positions into
the periodic box itself, since OpenMM does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from allscaip.io import load_model
from allscaip.model import AllScAIP

EV_TO_KJ_PER_MOL = 96.48533212331002
ANGSTROM_PER_NM = 10.0
BACKENDS = ("torchforce", "python")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class OpenMMAllScAIP(nn.Module):
    """TorchScript-able TorchForce module: (positions nm, box nm) -> (kJ/mol, kJ/mol/nm)."""

    def __init__(self, model: AllScAIP, atomic_numbers: Sequence[int], n_particles: int,
                 indices: Optional[Sequence[int]], charge: int, spin: int, periodic: bool,
                 dtype: torch.dtype):
        super().__init__()
        self.model = model.to(dtype).eval()
        self.dtype = dtype
        self.n_particles = int(n_particles)
        self.subset = indices is not None
        self.register_buffer("atomic_numbers", torch.tensor(list(atomic_numbers), dtype=torch.long))
        chosen = list(indices) if indices is not None else list(range(n_particles))
        self.register_buffer("indices", torch.tensor(chosen, dtype=torch.long))
        self.register_buffer("charge", torch.tensor(int(charge)))
        self.register_buffer("spin", torch.tensor(int(spin)))
        self.register_buffer("pbc", torch.tensor([periodic] * 3))
        self.periodic = periodic
        self.angstrom_per_nm = ANGSTROM_PER_NM
        self.kj_per_ev = EV_TO_KJ_PER_MOL

    def forward(self, positions: torch.Tensor, boxvectors: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        selected = positions
        if self.subset:
            selected = torch.index_select(positions, 0, self.indices)
        selected = selected.to(self.dtype) * self.angstrom_per_nm
        if self.periodic and boxvectors is not None:
            cell = boxvectors.to(self.dtype) * self.angstrom_per_nm
        else:
            cell = torch.eye(3, dtype=self.dtype, device=positions.device)
        energy, forces, _ = self.model(selected, self.atomic_numbers, cell, self.pbc,
                                       self.charge, self.spin, True, False)
        forces = forces.detach() * (self.kj_per_ev * self.angstrom_per_nm)
        if self.subset:
            full = torch.zeros((self.n_particles, 3), dtype=forces.dtype, device=forces.device)
            forces = full.index_copy(0, self.indices, forces)
        return energy.detach() * self.kj_per_ev, forces.to(positions.dtype)


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


def check_supported(model: AllScAIP, numbers: Sequence[int]) -> None:
    highest = min(model.max_atomic_number, model.element_references.numel() - 1)
    unknown = sorted({z for z in numbers if not 1 <= z <= highest})
    if unknown:
        raise ValueError(f"unsupported atomic number(s) {unknown}: this model supports Z = 1..{highest}")


def create_allscaip_force(model: str | Path | AllScAIP, atomic_numbers: Sequence[int], *,
                          n_particles: Optional[int] = None, atoms: Optional[Sequence[int]] = None,
                          charge: int = 0, spin: int = 1, periodic: bool = False,
                          dtype: str = "float32", backend: str = "torchforce",
                          node_attention_block_size: Optional[int] = None, cuda_graphs: bool = False,
                          device: str = "cpu"):
    """An OpenMM Force computing AllScAIP on ``atoms`` (default: all particles).

    atomic_numbers: one per ML atom (len(atoms), or n_particles when atoms is None);
    periodic: use the System's periodic box (the box must contain the ML region);
    dtype: "float32" or "float64" for the network; backend: "torchforce" or "python";
    node_attention_block_size: blocked node attention for large systems (0: dense; None:
    the model's setting); cuda_graphs: openmm-torch's ``useCUDAGraphs`` property (TorchForce
    on the CUDA platform; needs a capture-safe model, see README); device: where the
    ``python`` backend evaluates (a TorchForce runs on its OpenMM platform's device).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
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
                                   device)

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
