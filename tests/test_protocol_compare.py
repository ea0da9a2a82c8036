"""``allscaip protocol compare``: relative differences with propagated error bars and verdicts."""

import json
import math

import pytest

from allscaip.cli import main
from allscaip.protocols.compare import compare_property, compare_reports, comparison_table, read_report


def report(density, density_stderr, hvap, hvap_stderr, converged=True):
    return {"density_g_cm3": {"mean": density, "stderr": density_stderr},
            "hvap_kj_mol": {"mean": hvap, "stderr": hvap_stderr}, "converged": converged}


def test_the_difference_its_error_and_the_three_verdicts():
    row = compare_property(1.0, 0.01, 1.02, 0.01, 1.5)
    assert row["difference_percent"] == pytest.approx(100 * (1.0 - 1.02) / 1.02)
    assert row["difference_stderr_percent"] == pytest.approx(100 * math.sqrt(0.01 ** 2 + (0.01 / 1.02) ** 2) / 1.02)
    low, high = row["interval95_percent"]
    assert low < -1.5 < high < 1.5
    assert row["verdict"] == "undecided" and not row["point_within"]  # -1.96 % with an interval reaching -0.6 %
    within = compare_property(1.01, 0.001, 1.02, 0.001, 1.5)  # -0.98 +- 0.14 %
    assert within["verdict"] == "within" and within["point_within"]
    outside = compare_property(0.95, 0.001, 1.02, 0.001, 1.5)  # -6.9 +- 0.14 %
    assert outside["verdict"] == "outside" and not outside["point_within"]
    assert compare_property(1.05, 0.001, 1.02, 0.001, 1.5)["verdict"] == "outside"  # the other side
    with pytest.raises(ValueError, match="reference value is 0"):
        compare_property(1.0, 0.1, 0.0, 0.1, 1.5)


def test_reports_are_compared_property_by_property_and_an_unconverged_run_is_flagged():
    comparison = compare_reports(report(1.005, 0.003, 49.5, 0.2, converged=False), report(1.0126, 0.0028, 49.11, 0.12),
                                 {"density_g_cm3": 1.5, "hvap_kj_mol": 2.0})
    assert set(comparison["properties"]) == {"density_g_cm3", "hvap_kj_mol"}
    assert comparison["properties"]["hvap_kj_mol"]["tolerance_percent"] == 2.0
    table = comparison_table(comparison)
    assert "| density (g/cm3) | 1.0050 ± 0.0030 | 1.0126 ± 0.0028 | -0.75 ±" in table
    assert "The run is NOT CONVERGED" in table and "reference is NOT" not in table
    with pytest.raises(ValueError, match="share none of"):
        compare_reports({"converged": True}, report(1.0, 0.01, 44.0, 0.1), {"density_g_cm3": 1.5})


def test_the_command_prints_the_table_and_writes_json(tmp_path, capsys):
    for name, values in (("model", report(1.0075, 0.003, 49.6, 0.15)), ("teacher", report(1.0126, 0.0028, 49.11, 0.12))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(values))
    out = tmp_path / "comparison.json"
    assert main(["protocol", "compare", str(tmp_path / "model"), str(tmp_path / "teacher"), "--hvap-tolerance-percent",
                 "0.2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| ΔHvap (kJ/mol) | 49.6000 ± 0.1500 | 49.1100 ± 0.1200 | +1.00 ±" in printed
    saved = json.loads(out.read_text())
    assert saved["properties"]["hvap_kj_mol"]["verdict"] == "outside"  # +1.00 +- 0.39 %: 95 % from +0.23 %, beyond 0.2 %
    assert saved["properties"]["density_g_cm3"]["tolerance_percent"] == 1.5
    with pytest.raises(FileNotFoundError, match="no report.json"):
        read_report(tmp_path / "missing")
