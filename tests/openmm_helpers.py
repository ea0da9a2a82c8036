"""OpenMM topologies and model files for the plugin tests."""

import numpy as np
from openmm import Vec3, app, unit

from allscaip.io import load_model, save_model
from conftest import checkpoint_path, golden_structures


def water_topology(structure_name: str = "water_box16_pbc", n_waters: int | None = None):
    """Topology (HOH residues, O-H bonds) and positions (nm) of a golden water structure."""
    structure = next(s for s in golden_structures() if s["name"] == structure_name)
    positions = np.array(structure["positions"]) / 10.0
    n_waters = n_waters or len(positions) // 3
    topology = app.Topology()
    chain = topology.addChain()
    for _ in range(n_waters):
        residue = topology.addResidue("HOH", chain)
        oxygen = topology.addAtom("O", app.element.oxygen, residue)
        for name in ("H1", "H2"):
            topology.addBond(oxygen, topology.addAtom(name, app.element.hydrogen, residue))
    if any(structure["pbc"]):
        topology.setPeriodicBoxVectors([Vec3(*row) for row in np.array(structure["cell"]) / 10.0])
    return topology, positions[: 3 * n_waters] * unit.nanometer


def smooth_model_file(path, config="conserving_sm"):
    """The converted golden checkpoint with the continuous (envelope-weighted) order parameter."""
    from allscaip.fairchem import convert_checkpoint

    model, cfg, metadata = convert_checkpoint(checkpoint_path(config))
    cfg.smooth_node_order = True
    model.backbone.smooth_node_order = True
    return save_model(model, cfg, path, metadata)


__all__ = ["water_topology", "smooth_model_file", "load_model"]
