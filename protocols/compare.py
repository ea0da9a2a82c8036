"""Two protocol runs side by side: a model against its reference (e.g. its teacher potential)
through the same protocol, each property's relative difference with its error bar and a
verdict against a tolerance.

The error of the difference d = (x - r) / r combines both runs' standard errors (independent
runs): sigma_d = sqrt(sigma_x^2 + (x sigma_r / r)^2) / r. A property is *within* its
tolerance when the 95 % interval of d lies inside it, *outside* when the interval lies
beyond it, and *undecided* when the interval straddles the tolerance; the point estimate's
side is reported either way.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

PROPERTIES = {"density_g_cm3": "density (g/cm3)", "hvap_kj_mol": "ΔHvap (kJ/mol)"}
Z95 = 1.959963984540054


def read_report(path: Path) -> dict:
    """A run's ``report.json`` (the run folder or the file itself)."""
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no report.json (is the run finished? `allscaip protocol ... --resume` "
                                "completes it)")
    return json.loads(file.read_text())


def compare_property(value: float, stderr: float, reference: float, reference_stderr: float,
                     tolerance_percent: float) -> dict:
    """Relative difference (percent) of ``value`` from ``reference`` with its standard error and
    95 % interval, and the verdict against ``tolerance_percent``."""
    if reference == 0.0:
        raise ValueError("the reference value is 0: a relative difference is undefined")
    difference = 100.0 * (value - reference) / reference
    error = 100.0 * math.hypot(stderr, value * reference_stderr / reference) / abs(reference)
    low, high = difference - Z95 * error, difference + Z95 * error
    if -tolerance_percent <= low and high <= tolerance_percent:
        verdict = "within"
    elif low > tolerance_percent or high < -tolerance_percent:
        verdict = "outside"
    else:
        verdict = "undecided"
    return {"value": value, "stderr": stderr, "reference": reference, "reference_stderr": reference_stderr,
            "difference_percent": difference, "difference_stderr_percent": error,
            "interval95_percent": [low, high], "tolerance_percent": tolerance_percent,
            "point_within": abs(difference) <= tolerance_percent, "verdict": verdict}


def compare_reports(run: dict, reference: dict, tolerances: dict[str, float]) -> dict:
    """Every property of ``tolerances`` that both reports hold, compared; plus whether each run
    is converged by the protocol's rule."""
    rows = {}
    for key, tolerance in tolerances.items():
        if key in run and key in reference:
            rows[key] = compare_property(run[key]["mean"], run[key]["stderr"], reference[key]["mean"],
                                         reference[key]["stderr"], tolerance)
    if not rows:
        raise ValueError("the two reports share none of " + ", ".join(tolerances))
    return {"properties": rows, "run_converged": bool(run.get("converged")),
            "reference_converged": bool(reference.get("converged"))}


def comparison_table(comparison: dict) -> str:
    """The comparison as a Markdown table, with a line for a run that is not converged."""
    lines = ["| property | run | reference | difference | 95 % interval | tolerance | verdict |",
             "|---|---|---|---|---|---|---|"]
    for key, row in comparison["properties"].items():
        low, high = row["interval95_percent"]
        point = "point estimate inside" if row["point_within"] else "point estimate outside"
        lines.append(f"| {PROPERTIES.get(key, key)} | {row['value']:.4f} ± {row['stderr']:.4f} | "
                     f"{row['reference']:.4f} ± {row['reference_stderr']:.4f} | "
                     f"{row['difference_percent']:+.2f} ± {row['difference_stderr_percent']:.2f} % | "
                     f"{low:+.2f} … {high:+.2f} % | ±{row['tolerance_percent']:g} % | "
                     f"{row['verdict']} ({point}) |")
    for who in ("run", "reference"):
        if not comparison[f"{who}_converged"]:
            lines.append(f"\nThe {who} is NOT CONVERGED by the protocol's rule: its error bars are not reliable.")
    return "\n".join(lines)
