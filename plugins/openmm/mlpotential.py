"""openmm-ml backend: ``MLPotential("allscaip", modelPath=...)``.

Registered through the ``openmmml.potentials`` entry point in pyproject.toml.
createMixedSystem (with ``interpolate=True`` and the ``lambda_interpolate`` parameter)
comes from openmm-ml's generic mechanical embedding.
"""

from __future__ import annotations

from openmmml.mlpotential import MLPotentialImpl, MLPotentialImplFactory

from allscaip.plugins.openmm.forces import create_allscaip_force, element_numbers


class AllScAIPPotentialImplFactory(MLPotentialImplFactory):
    def createImpl(self, name: str, modelPath: str | None = None, **args) -> MLPotentialImpl:
        if modelPath is None:
            from allscaip.models import default_model_path

            modelPath = default_model_path()
        return AllScAIPPotentialImpl(modelPath)


class AllScAIPPotentialImpl(MLPotentialImpl):
    """AllScAIP on a whole System or a subset of its atoms.

    createSystem / createMixedSystem keyword arguments: ``charge`` (total charge of the ML
    atoms, default 0), ``spin`` (multiplicity, default 1), ``precision`` ("single" ->
    float32 network, "double" -> float64; default single), ``backend`` ("torchforce" or
    "python"; default: torchforce for whole systems, python for ML/MM subsets, because
    openmm-ml's embeddings deep-copy forces and copying a TorchForce crashes openmmtorch 1.5),
    ``device`` (where the python backend evaluates: "cpu", "cuda", "cuda:1" or a
    ``torch.device``; default, as openmm-ml's other PyTorch potentials: CUDA when torch sees a
    GPU, else the CPU; a TorchForce always runs on its OpenMM platform's device),
    ``nodeAttentionBlockSize`` (query block of node attention, 0 = dense; default: the
    model's setting), ``cudaGraphs`` (openmm-torch's ``useCUDAGraphs``, TorchForce only).
    """

    def __init__(self, model_path: str):
        self.model_path = model_path

    def addForces(self, topology, system, atoms, forceGroup, charge: int = 0, spin: int = 1,
                  precision: str = "single", backend: str | None = None,
                  nodeAttentionBlockSize: int | None = None, cudaGraphs: bool = False, **args):
        if precision not in ("single", "double"):
            raise ValueError(f"precision must be 'single' or 'double', got {precision!r}")
        atoms = None if atoms is None else list(atoms)
        if backend is None:
            backend = "torchforce" if atoms is None else "python"
        force = create_allscaip_force(
            self.model_path, element_numbers(topology, atoms), n_particles=topology.getNumAtoms(),
            atoms=atoms, charge=charge, spin=spin,
            periodic=topology.getPeriodicBoxVectors() is not None,
            dtype="float32" if precision == "single" else "float64", backend=backend,
            node_attention_block_size=nodeAttentionBlockSize, cuda_graphs=cudaGraphs,
            device=str(self.torch_device(args)))
        force.setForceGroup(forceGroup)
        system.addForce(force)

    def torch_device(self, args: dict):
        """openmm-ml's device choice, with a clear error for a GPU torch cannot see."""
        import torch

        try:
            device = self._getTorchDevice(args)
        except RuntimeError as exc:
            raise ValueError(f"MLPotential('allscaip'): bad device {args['device']!r} ({exc})") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"MLPotential('allscaip'): device {str(device)!r} asked for, but torch "
                             "sees no GPU; use device='cpu'")
        return device

    def getMLLongRange(self) -> bool:
        # node attention couples every pair of ML atoms, whatever their distance
        return True
