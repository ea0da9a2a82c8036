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
    openmm-ml's embeddings deep-copy forces and copying a TorchForce crashes openmmtorch 1.5).
    """

    def __init__(self, model_path: str):
        self.model_path = model_path

    def addForces(self, topology, system, atoms, forceGroup, charge: int = 0, spin: int = 1,
                  precision: str = "single", backend: str | None = None, **args):
        if precision not in ("single", "double"):
            raise ValueError(f"precision must be 'single' or 'double', got {precision!r}")
        atoms = None if atoms is None else list(atoms)
        if backend is None:
            backend = "torchforce" if atoms is None else "python"
        force = create_allscaip_force(
            self.model_path, element_numbers(topology, atoms), n_particles=topology.getNumAtoms(),
            atoms=atoms, charge=charge, spin=spin,
            periodic=topology.getPeriodicBoxVectors() is not None,
            dtype="float32" if precision == "single" else "float64", backend=backend)
        force.setForceGroup(forceGroup)
        system.addForce(force)

    def getMLLongRange(self) -> bool:
        # node attention couples every pair of ML atoms, whatever their distance
        return True
