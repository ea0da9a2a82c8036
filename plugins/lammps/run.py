"""``allscaip lammps -in DECK``: run a LAMMPS deck whose potential is AllScAIP."""

from __future__ import annotations

from pathlib import Path

from allscaip.plugins.lammps.bridge import attach_settings
from allscaip.plugins.lammps.deck import split_deck
from allscaip.plugins.lammps.runtime import import_lammps


def run_deck(deck: str | Path, variables: dict[str, str] | None = None, log: str | None = None,
             screen: str | None = None) -> None:
    """Execute ``deck`` (serial, or one rank of ``mpirun``) with AllScAIP lines bridged."""
    deck = Path(deck)
    if not deck.is_file():
        raise FileNotFoundError(f"input deck {deck} does not exist")
    variables = dict(variables or {})
    split = split_deck(deck.read_text(), deck.parent, variables)
    cmdargs = ["-nocite"]
    for name, value in variables.items():
        cmdargs += ["-var", name, value]
    cmdargs += ["-log", log or str(deck.parent / "log.lammps")]
    if screen is not None:
        cmdargs += ["-screen", screen]
    lammps = import_lammps()
    lmp = lammps.lammps(cmdargs=cmdargs)
    try:
        lmp.commands_list(split.before)
        if split.settings is not None:
            attach_settings(lmp, split.settings)
            lmp.commands_list(split.after)
    finally:
        lmp.close()
