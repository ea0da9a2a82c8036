"""LAMMPS integration: ``pair_style allscaip`` decks (``allscaip lammps -in DECK``) and
``attach(lmp, model, elements)`` for users who drive LAMMPS from Python."""

from allscaip.plugins.lammps.runtime import import_lammps, load_mpi_library

__all__ = ["attach", "import_lammps", "load_mpi_library", "run_deck"]


def __getattr__(name):
    if name == "attach":
        from allscaip.plugins.lammps.bridge import attach

        return attach
    if name == "run_deck":
        from allscaip.plugins.lammps.run import run_deck

        return run_deck
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
