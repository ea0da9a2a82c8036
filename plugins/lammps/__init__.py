"""LAMMPS integration: runtime loader and (later) ``pair_style allscaip`` decks."""

from allscaip.plugins.lammps.runtime import import_lammps, load_mpi_library

__all__ = ["import_lammps", "load_mpi_library"]
