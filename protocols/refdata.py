"""Experimental and reference-model values shipped in ``protocols/data`` (each with its source)."""

from __future__ import annotations

import csv
from importlib import resources


def _rows(filename: str) -> list[dict]:
    text = resources.files("allscaip.protocols").joinpath("data", filename).read_text()
    return list(csv.DictReader(text.splitlines()))


def _number(value: str) -> float | None:
    return float(value) if value not in ("", None) else None


def _matches(row: dict, name: str) -> bool:
    names = [row["molecule"]] + [a for a in row.get("aliases", "").split(";") if a]
    return name.strip().lower().replace("_", " ") in [n.replace("_", " ") for n in names]


def experiment(name: str) -> dict | None:
    """Experimental density and heat of vaporization of ``name`` (None if not tabulated)."""
    for row in _rows("experimental.csv"):
        if _matches(row, name):
            return {"molecule": row["molecule"], "temperature_K": float(row["temperature_K"]),
                    "density_g_cm3": _number(row["density_g_cm3"]),
                    "density_source": row["density_source"],
                    "hvap_kj_mol": _number(row["hvap_kj_mol"]),
                    "hvap_ideal_gas_kj_mol": _number(row["hvap_ideal_gas_kj_mol"]),
                    "hvap_source": row["hvap_source"], "note": row["note"]}
    return None


def reference_models(name: str) -> list[dict]:
    """Published/measured values of classical reference potentials for ``name``."""
    out = []
    for row in _rows("reference_models.csv"):
        if _matches(row, name):
            out.append({"model": row["model"], "temperature_K": float(row["temperature_K"]),
                        "pressure_bar": float(row["pressure_bar"]),
                        "density_g_cm3": _number(row["density_g_cm3"]),
                        "density_stderr": _number(row["density_stderr"]),
                        "hvap_kj_mol": _number(row["hvap_kj_mol"]),
                        "hvap_stderr": _number(row["hvap_stderr"]), "source": row["source"]})
    return out
