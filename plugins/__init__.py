"""Engine integrations (installed as ``allscaip.plugins``).

``allscaip.plugins.openmm`` and ``allscaip.plugins.lammps`` import their engine lazily,
so importing the core ``allscaip`` package never loads OpenMM or LAMMPS.
"""
