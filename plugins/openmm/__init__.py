"""OpenMM integration: runtime loader and (later) the AllScAIP ``TorchForce``."""

from allscaip.plugins.openmm.runtime import import_openmmtorch

__all__ = ["import_openmmtorch"]
