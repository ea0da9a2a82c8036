"""Classical force fields as the potential of an OpenMM run, in place of a model.

``spcfw`` is the flexible SPC/Fw water of ``allscaip.reference`` (the teacher of the shipped
model); any other name is an OpenMM ForceField XML (a file, or one bundled with OpenMM such as
``amber14/tip3pfb.xml``) whose templates cover the topology's residues. Periodic systems use
PME with the long-range dispersion correction, non-periodic ones no cutoff. The real-space
cutoff is 0.9 nm or, for boxes too small for it, 45 % of the narrowest box width (OpenMM
needs at most half the box, and a barostat may shrink it a little).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPCFW = "spcfw"
MAX_CUTOFF_NM = 0.9
CUTOFF_BOX_FRACTION = 0.45


def real_space_cutoff(topology) -> float:
    """Cutoff (nm) for ``topology``'s box: 0.9 nm, or 45 % of its narrowest width."""
    box = topology.getPeriodicBoxVectors()
    if box is None:
        return MAX_CUTOFF_NM
    from openmm import unit

    cell = np.array(box.value_in_unit(unit.nanometer))
    volume = abs(np.linalg.det(cell))
    widths = [volume / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)]
    return float(min(MAX_CUTOFF_NM, CUTOFF_BOX_FRACTION * min(widths)))


def describe(forcefield: str) -> str:
    """One line for reports: which classical potential a run used."""
    if forcefield == SPCFW:
        return "SPC/Fw (flexible; PME + dispersion correction)"
    return f"OpenMM ForceField {forcefield} (PME + dispersion correction)"


def classical_system(topology, forcefield: str, hydrogen_mass: float | None = None,
                     remove_cm_motion: bool = True):
    """OpenMM System for ``topology`` with a classical force field (see the module docstring).

    XML force fields constrain bonds to hydrogen and keep water rigid (their usual setting);
    SPC/Fw is flexible. ``hydrogen_mass`` (amu) repartitions mass onto hydrogens."""
    import openmm
    from openmm import app

    from allscaip.plugins.openmm.system import repartition_hydrogen_mass

    periodic = topology.getPeriodicBoxVectors() is not None
    cutoff = real_space_cutoff(topology)
    if forcefield == SPCFW:
        from allscaip.reference.spcfw import spcfw_system

        system = spcfw_system(topology, periodic=periodic, cutoff=cutoff, ewald_tolerance=5e-4)
        if hydrogen_mass is not None:
            repartition_hydrogen_mass(system, topology, hydrogen_mass)
    else:
        path = Path(forcefield)
        try:
            field = app.ForceField(str(path) if path.is_file() else forcefield)
        except (ValueError, OSError) as exc:
            raise ValueError(f"--forcefield {forcefield!r} is neither 'spcfw' nor a readable OpenMM "
                             f"ForceField XML (file or bundled name such as amber14/tip3pfb.xml): {exc}") from exc
        options = dict(nonbondedMethod=app.PME if periodic else app.NoCutoff, constraints=app.HBonds,
                       rigidWater=True, removeCMMotion=False)
        if periodic:
            options.update(nonbondedCutoff=cutoff, ewaldErrorTolerance=5e-4)
        if hydrogen_mass is not None:
            options["hydrogenMass"] = hydrogen_mass
        try:
            system = field.createSystem(topology, **options)
        except ValueError as exc:
            raise ValueError(f"--forcefield {forcefield}: {exc}. The XML needs a template for "
                             "every residue of the molecule") from exc
        for force in system.getForces():
            if isinstance(force, openmm.NonbondedForce):
                force.setUseDispersionCorrection(True)
    if remove_cm_motion:
        system.addForce(openmm.CMMotionRemover())
    return system
