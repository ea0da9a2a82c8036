"""OpenMM integration: AllScAIP as a ``TorchForce`` or ``PythonForce``, pure-ML and ML/MM
Systems, the openmm-ml backend (``MLPotential("allscaip", modelPath=...)``) and the
``allscaip openmm run`` driver. OpenMM is imported only when these are used."""

import torch  # noqa: F401  (must be loaded before openmm: see runtime.py)

from allscaip.plugins.openmm.runtime import import_openmmtorch

__all__ = ["create_allscaip_force", "create_system", "add_molecule_bonds", "import_openmmtorch"]


def __getattr__(name):
    if name == "create_allscaip_force":
        from allscaip.plugins.openmm.forces import create_allscaip_force

        return create_allscaip_force
    if name in ("create_system", "add_molecule_bonds", "repartition_hydrogen_mass"):
        from allscaip.plugins.openmm import system

        return getattr(system, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
