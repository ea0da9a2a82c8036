"""``pair_style allscaip`` in LAMMPS input decks.

A deck is split around its AllScAIP lines: everything before runs as written; the
``pair_style allscaip MODEL [keyword value ...]`` and ``pair_coeff * * El1 El2 ...`` lines
become the bridge (pair_style zero + fix external, see bridge.py); the rest then runs as
written, so thermo, minimize, fix nve/nvt/npt, several runs and write_data work as usual.

Keywords: ``charge`` (int), ``spin`` (multiplicity), ``dtype`` (float32|float64),
``device`` (cpu|cuda), ``block`` (node attention query block, 0 = dense), ``threads``
(torch threads per rank; default: available cores / ranks). ``${name}`` variables from
``-var`` are substituted in these lines.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from allscaip.plugins.lammps.bridge import BridgeSettings

KEYWORDS = {"charge": int, "spin": int, "dtype": str, "device": str, "threads": int, "block": int}


class DeckError(ValueError):
    """The deck's AllScAIP lines are malformed."""


@dataclass
class SplitDeck:
    before: list[str]
    settings: BridgeSettings | None
    after: list[str] = field(default_factory=list)


def logical_lines(text: str) -> list[str]:
    """Join '&' continuations (comments stay on their lines)."""
    lines, pending = [], ""
    for raw in text.splitlines():
        stripped = raw.rstrip()
        if stripped.endswith("&"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    if pending:
        lines.append(pending)
    return lines


def substitute(line: str, variables: dict[str, str]) -> str:
    def value(match):
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise DeckError(f"variable {name!r} in {line.strip()!r} is not defined; pass -var {name} VALUE")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w)", value, line)


def words(line: str) -> list[str]:
    return shlex.split(line.split("#", 1)[0])


def parse_pair_style(args: list[str], base: Path) -> dict:
    if not args:
        raise DeckError("pair_style allscaip needs a model file: pair_style allscaip MODEL [keyword value ...]")
    model = Path(args[0])
    options = {"model": str(model if model.is_absolute() else base / model)}
    rest = args[1:]
    if len(rest) % 2:
        raise DeckError(f"pair_style allscaip: keywords come in 'keyword value' pairs, got {rest}")
    for key, text in zip(rest[::2], rest[1::2]):
        if key not in KEYWORDS:
            raise DeckError(f"pair_style allscaip: unknown keyword {key!r} (known: {', '.join(KEYWORDS)})")
        try:
            options[key] = KEYWORDS[key](text)
        except ValueError as exc:
            raise DeckError(f"pair_style allscaip: bad value {text!r} for {key}") from exc
    return options


def split_deck(text: str, base: Path, variables: dict[str, str]) -> SplitDeck:
    """Find the AllScAIP lines; decks without them pass through unchanged."""
    lines = logical_lines(text)
    style_at, options = None, None
    for index, line in enumerate(lines):
        tokens = words(line)
        if len(tokens) >= 2 and tokens[0] == "pair_style" and tokens[1] == "allscaip":
            style_at = index
            options = parse_pair_style(words(substitute(line, variables))[2:], base)
            break
    if style_at is None:
        return SplitDeck(lines, None)
    for index in range(style_at + 1, len(lines)):
        tokens = words(lines[index])
        if tokens and tokens[0] == "pair_coeff":
            tokens = words(substitute(lines[index], variables))
            if tokens[1:3] != ["*", "*"] or len(tokens) < 4:
                raise DeckError("pair_style allscaip needs 'pair_coeff * * El1 El2 ...' with one element "
                                f"per atom type, got {lines[index].strip()!r}")
            settings = BridgeSettings(elements=tokens[3:], **options)
            before = lines[:style_at] + lines[style_at + 1:index]
            return SplitDeck(before, settings, lines[index + 1:])
    raise DeckError("pair_style allscaip has no following 'pair_coeff * * El1 El2 ...' line")
