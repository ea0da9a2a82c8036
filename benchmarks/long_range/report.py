"""Write the long-range study's report: REPORT.md, results.json and two plots, from the
training runs, the long-range sets (sets.py) and the liquid protocol runs of both models.

    .venv/bin/python benchmarks/long_range/report.py \
        --model "all-to-all=runs/long-range-default" --model "local-only=runs/long-range-local" \
        --sets runs/long-range-sets/long_range.json --out benchmarks/long_range/results

Each --model NAME=DIR names a training run folder (results.json, model.pt); its protocol run
is DIR-protocol (report.json) when that exists, or --protocol NAME=DIR.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOCOL_KEYS = ("n_molecules", "temperature", "pressure", "timestep", "hydrogen_mass", "equilibration",
                 "production", "gas_equilibration", "gas_production", "seed", "precision")


def named_paths(items: list[str]) -> dict[str, Path]:
    pairs = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"expected NAME=PATH, got {item!r}")
        pairs[name] = Path(path)
    return pairs


def load_json(path: Path) -> dict:
    if not path.exists():
        raise SystemExit(f"{path} is missing: run the step that writes it first (see {HERE / 'README.md'})")
    return json.loads(path.read_text())


def protocol_summary(report: dict) -> dict:
    terms = report["hvap_terms_kj_mol"]
    return {"density_g_cm3": report["density_g_cm3"]["mean"], "density_stderr": report["density_g_cm3"]["stderr"],
            "hvap_kj_mol": report["hvap_kj_mol"]["mean"], "hvap_stderr": report["hvap_kj_mol"]["stderr"],
            "u_liq_per_molecule": terms["u_liq_per_molecule"], "u_gas": terms["u_gas"],
            "n_molecules": report["n_molecules"], "ns_per_day": report["ns_per_day"],
            "t_equil_ps": report["t_equil_ps"], "settings": report["settings"],
            "replicas": report["density_g_cm3"]["n_replicas"],
            "replica_means": {key: [r["mean"] for r in report[key]["replicas"]]
                              for key in ("density_g_cm3", "hvap_kj_mol")},
            "reference_models": report["reference_models"], "experiment": report["experiment"]}


def collect(models: dict[str, Path], protocols: dict[str, Path], sets: list[dict]) -> dict:
    by_model = {Path(entry["model"]).resolve(): entry for entry in sets}
    study = {"models": {}}
    for name, run in models.items():
        training = load_json(run / "results.json")
        entry = by_model.get((run / "model.pt").resolve())
        if entry is None:
            raise SystemExit(f"{run / 'model.pt'} is not in the long-range sets file; rerun sets.py with it")
        protocol_dir = protocols.get(name, Path(str(run) + "-protocol"))
        study["models"][name] = {
            "run": str(run), "parameters": entry["parameters"], "epochs": training["epochs"],
            "steps": training["steps"], "test": training["sets"]["test"],
            "dimer": entry["dimer"], "liquid": entry["liquid"], "supercell": entry["supercell"],
            "separated": entry["separated"],
            "protocol": protocol_summary(load_json(protocol_dir / "report.json"))
            if (protocol_dir / "report.json").exists() else None}
    return study


def plot(study: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(study["models"])
    first = study["models"][names[0]]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, arrangement in zip(axes, ("aligned", "side")):
        curve = first["dimer"][arrangement]
        r = [p["separation"] for p in curve]
        axis.plot(r, [1e3 * p["reference_ev"] for p in curve], "k-o", label="SPC/Fw reference")
        for k, name in enumerate(names):
            points = study["models"][name]["dimer"][arrangement]
            axis.plot(r, [1e3 * p["model_ev"] for p in points], f"C{k}-s", label=name)
        axis.axhline(0, color="0.6", lw=0.8)
        axis.axvline(5.0, color="0.6", ls=":", lw=1)
        axis.set_xlabel("O-O separation (A); dotted: model cutoff")
        axis.set_ylabel("E(dimer) - 2 E(monomer) (meV)")
        axis.set_title(f"water dimer, dipoles {'head to tail' if arrangement == 'aligned' else 'side by side'}")
        axis.set_ylim(-90, 100)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "dimer_curves.png", dpi=110)
    plt.close(figure)

    splits = first["liquid"]
    figure, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 3.8), squeeze=False)
    for axis, index in zip(axes[0], range(len(splits))):
        bins = splits[index]["force_error_by_long_range_share"]
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            errors = [1e3 * b["mean_force_error_ev_a"]
                      for b in study["models"][name]["liquid"][index]["force_error_by_long_range_share"]]
            axis.bar([b + (k - (len(names) - 1) / 2) * width for b in range(len(bins))], errors, width,
                     color=f"C{k}", label=name)
        axis.set_xticks(range(len(bins)), [f"{b['share_from']:.2f}-{b['share_to']:.2f}" for b in bins], fontsize=8)
        axis.set_xlabel(f"|F_far| / |F| per atom, quantile bins (far field: beyond {splits[index]['near_cutoff_a']:g} A)")
        axis.set_ylabel("mean |F_model - F_ref| (meV/A)")
        axis.set_title(f"{splits[index]['frames']} liquid test frames, far field beyond {splits[index]['near_cutoff_a']:g} A")
        axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(out / "force_error_vs_far_field.png", dpi=110)
    plt.close(figure)
    return ["dimer_curves.png", "force_error_vs_far_field.png"]


def markdown(study: dict, plots: list[str]) -> str:
    names = list(study["models"])
    models = study["models"]
    lines = ["# Long-range study: all-to-all node attention vs a local-only model", "",
             "Written by `benchmarks/long_range/report.py`; what the numbers mean is in "
             "`benchmarks/long_range/README.md`.", "",
             "## Training (same data, seed, optimiser and steps) and held-out test errors", "",
             "| model | parameters | epochs | steps | E MAE (meV/atom) | F RMSE (meV/A) | F RMSE / F RMS | S MAE / S spread |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        m, t = models[name], models[name]["test"]
        lines.append(f"| {name} | {m['parameters']:,} | {m['epochs']} | {m['steps']} | {t['energy_mae_mev_atom']:.2f} "
                     f"| {t['force_rmse_mev_a']:.1f} | {100 * t['force_rmse_relative']:.1f} % "
                     f"| {100 * t['stress_mae_relative']:.1f} % |")
    lines += ["", "## Water dimer: interaction energy (meV) vs O-O separation", ""]
    for arrangement in ("aligned", "side"):
        curve = models[names[0]]["dimer"][arrangement]
        lines += [f"Dipoles {'head to tail' if arrangement == 'aligned' else 'side by side'}:", "",
                  "| separation (A) | SPC/Fw | " + " | ".join(names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for k, point in enumerate(curve):
            values = " | ".join(f"{1e3 * models[n]['dimer'][arrangement][k]['model_ev']:.2f}" for n in names)
            lines.append(f"| {point['separation']:g} | {1e3 * point['reference_ev']:.2f} | {values} |")
        lines.append("")
    lines += ["## Liquid frames: the far-field force", "",
              "F_far = F_ref - F_near, F_near from molecules whose oxygens lie within the cutoff (bare "
              "Coulomb + LJ) plus intramolecular terms. capture = sum (F_model - F_near) . F_far / "
              "sum |F_far|^2 (1: the model adds the whole far field; 0: none of it), ± frame-jackknife "
              "standard error.", "",
              "| far field beyond | frames | atoms | F RMS | F_far RMS | model | F RMSE | capture |",
              "|---|---|---|---|---|---|---|---|"]
    for index, split in enumerate(models[names[0]]["liquid"]):
        for name in names:
            s = models[name]["liquid"][index]
            lines.append(f"| {s['near_cutoff_a']:g} A | {s['frames']} | {s['atoms']} | {1e3 * s['force_rms_ev_a']:.0f} "
                         f"| {1e3 * s['far_field_rms_ev_a']:.0f} | {name} | {1e3 * s['force_rmse_ev_a']:.1f} "
                         f"| {s['capture']:.3f} ± {s['capture_stderr']:.3f} |")
    lines += ["", "(forces in meV/A)", "", "Mean per-atom force error (meV/A) by quantile bin of |F_far| / |F|:", "",
              "| far field beyond | bin of share | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for index, split in enumerate(models[names[0]]["liquid"]):
        for b, bin_ in enumerate(split["force_error_by_long_range_share"]):
            values = " | ".join(f"{1e3 * models[n]['liquid'][index]['force_error_by_long_range_share'][b]['mean_force_error_ev_a']:.1f}"
                                for n in names)
            lines.append(f"| {split['near_cutoff_a']:g} A | {bin_['share_from']:.3f}-{bin_['share_to']:.3f} | {values} |")
    lines += ["", "## Monomers far apart: E(n monomers) - n E(monomer) (meV; the reference is ~0)", "",
              "| monomers | spacing (A) | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for k, row in enumerate(models[names[0]]["separated"]):
        values = " | ".join(f"{1e3 * models[n]['separated'][k]['excess_ev']:.2f}" for n in names)
        lines.append(f"| {row['monomers']} | {row['spacing']:g} | {values} |")
    cell = models[names[0]]["supercell"]
    lines += ["", f"## The same periodic liquid as its cell and as the 2x2x2 supercell ({cell['frames']} frames, "
              f"{cell['atoms']} atoms per cell)", "",
              "| model | max abs dE per atom (meV) | rms dF (meV/A) | max abs dF (meV/A) |", "|---|---|---|---|"]
    for name in names:
        c = models[name]["supercell"]
        lines.append(f"| {name} | {1e3 * c['max_abs_energy_per_atom_ev']:.2g} | {1e3 * c['force_rms_difference_ev_a']:.2g} "
                     f"| {1e3 * c['force_max_difference_ev_a']:.2g} |")
    lines += ["", "## Liquid water at 298.15 K, 1 bar (`allscaip protocol liquid`)", ""]
    with_protocol = [n for n in names if models[n]["protocol"]]
    if with_protocol:
        reference = models[with_protocol[0]]["protocol"]["reference_models"][0]
        experiment = models[with_protocol[0]]["protocol"]["experiment"]
        lines += ["| model | density (g/cm3) | ΔHvap (kJ/mol) | U_liq/N (kJ/mol) | U_gas (kJ/mol) | replicas |",
                  "|---|---|---|---|---|---|"]
        for name in with_protocol:
            p = models[name]["protocol"]
            lines.append(f"| {name} | {p['density_g_cm3']:.4f} ± {p['density_stderr']:.4f} | {p['hvap_kj_mol']:.2f} ± "
                         f"{p['hvap_stderr']:.2f} | {p['u_liq_per_molecule']:.2f} | {p['u_gas']:.2f} | "
                         f"{p['replicas']} |")
        lines += [f"| {reference['model']} | {reference['density_g_cm3']:.4f} ± {reference['density_stderr']:.4f} | "
                  f"{reference['hvap_kj_mol']:.2f} ± {reference['hvap_stderr']:.2f} | | | |",
                  f"| experiment | {experiment['density_g_cm3']:.4f} | {experiment['hvap_kj_mol']:.2f} | | | |", "",
                  "Per replica (density; ΔHvap): " + "; ".join(
                      f"{name}: " + ", ".join(f"{d:.4f}" for d in models[name]["protocol"]["replica_means"]["density_g_cm3"])
                      + " g/cm3; " + ", ".join(f"{h:.2f}" for h in models[name]["protocol"]["replica_means"]["hvap_kj_mol"])
                      + " kJ/mol" for name in with_protocol) + ".", ""]
        s = models[with_protocol[0]]["protocol"]["settings"]
        lines.append("Protocol settings: " + ", ".join(f"{key} {s[key]}" for key in PROTOCOL_KEYS if key in s)
                     + " (ps, fs, amu, K, bar).")
    else:
        lines.append("No protocol run found.")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=TRAINING_RUN_DIR")
    parser.add_argument("--protocol", action="append", default=[], help="NAME=PROTOCOL_RUN_DIR")
    parser.add_argument("--sets", type=Path, required=True, help="long_range.json written by sets.py")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    study = collect(named_paths(args.model), named_paths(args.protocol), load_json(args.sets))
    args.out.mkdir(parents=True, exist_ok=True)
    plots = plot(study, args.out)
    (args.out / "results.json").write_text(json.dumps(study, indent=1))
    (args.out / "REPORT.md").write_text(markdown(study, plots))
    print((args.out / "REPORT.md").read_text())


if __name__ == "__main__":
    main()
