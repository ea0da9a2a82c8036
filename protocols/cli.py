"""``allscaip protocol density|hvap|liquid|compare``: argument parser and handlers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from allscaip.protocols.settings import COMMANDS, ENGINES, QUICK

DESCRIPTIONS = {
    "density": "liquid density from an NPT run (equilibration detection, statistical inefficiency, replicas)",
    "hvap": "heat of vaporization from a liquid NPT run and a gas-phase NVT run of one molecule",
    "liquid": "density and heat of vaporization from the same liquid and gas runs",
}


def add_protocol_parser(commands) -> None:
    """Register ``protocol`` on the ``allscaip`` subcommand parsers."""
    parser = commands.add_parser("protocol", help="liquid density and heat of vaporization protocols")
    kinds = parser.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    for name in COMMANDS:
        sub = kinds.add_parser(name, help=DESCRIPTIONS[name], description=DESCRIPTIONS[name] +
                               ". Options not given take the --quick preset (with --quick) or the defaults.")
        _add_arguments(sub)
        sub.set_defaults(handler=run_protocol_command)
    compare = kinds.add_parser("compare", help="a run against a reference run of the same protocol",
                               description="Relative differences of a run's density and ΔHvap from a reference "
                               "run's (e.g. a model against its teacher potential), with their error bars and "
                               "verdicts against tolerances (allscaip.protocols.compare).")
    compare.add_argument("run", type=Path, help="run folder (or its report.json)")
    compare.add_argument("reference", type=Path, help="reference run folder (or its report.json)")
    compare.add_argument("--density-tolerance-percent", type=float, default=1.5, help="default 1.5")
    compare.add_argument("--hvap-tolerance-percent", type=float, default=2.0, help="default 2")
    compare.add_argument("--json", type=Path, help="also write the comparison to this file")
    compare.set_defaults(handler=run_compare_command)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    quick = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items())
    a = p.add_argument
    a("--molecule", help="built-in 'water', or a PDB/SDF/MOL/XYZ file with one molecule")
    a("--name", help="name for the reference-data lookup (default: 'water' or the file's stem)")
    a("--charge", type=int, help="total charge of the molecule (default 0)")
    a("--spin", type=int, help="spin multiplicity 2S+1 (default 1)")
    a("-n", "--n-molecules", type=int, help="molecules in the liquid box (default 216)")
    a("--model", help="AllScAIP model file (default: the shipped default model in models/)")
    a("--forcefield", help="classical potential instead of a model: 'spcfw' (flexible SPC/Fw water, "
      "the default model's teacher) or an OpenMM ForceField XML with templates for the molecule")
    a("--engine", choices=ENGINES, help="MD engine (default openmm)")
    a("--temperature", type=float, help="K (default 298.15)")
    a("--pressure", type=float, help="bar (default 1)")
    a("--timestep", type=float, help="fs (default 1.5 with HMR; use 0.5 with --hydrogen-mass 0)")
    a("--hydrogen-mass", type=float, help="hydrogen mass repartitioning, amu (default 4; 0 = off)")
    a("--equilibration", type=float, help="liquid equilibration discarded before analysis, ps (default 50)")
    a("--production", type=float, help="liquid production, ps (default 250)")
    a("--gas-equilibration", type=float, help="gas equilibration, ps (default 10)")
    a("--gas-production", type=float, help="gas production, ps (default 500)")
    a("--report-interval", type=int, help="steps between samples, frames, checkpoints (default 100)")
    a("--replicas", type=int, help="independent replicas (default 1)")
    a("--seed", type=int, help="random seed for packing and velocities (default 1)")
    a("--start-density", type=float, help="g/cm3 of the packed box (default 95%% of experiment, else 0.8)")
    a("--friction", type=float, help="liquid thermostat friction, 1/ps (default 1)")
    a("--gas-friction", type=float, help="gas thermostat friction, 1/ps (default 5)")
    a("--density-tolerance", type=float, help="extend production until the density stderr <= this (g/cm3)")
    a("--hvap-tolerance", type=float, help="extend until the ΔHvap stderr <= this (kJ/mol)")
    a("--max-production", type=float, help="longest liquid production when extending, ps (default 4x --production)")
    a("--precision", choices=["float32", "float64"], help="network dtype (default float32)")
    a("--platform", help="OpenMM platform for the liquid (default auto: CUDA if available, else CPU)")
    a("--compile", action="store_true", default=None,
      help="run the model through PythonForce with torch.compile (openmm engine): the gas-phase "
           "molecule ~4x and a liquid box wider than twice the model's search radius (e.g. 64 waters "
           "for a 5 A cutoff) ~2x faster per step than TorchForce, after a one-off compilation of "
           "1-2 min per process")
    a("--workers", type=int, help="replicas simulated at once, each in its own process with an equal "
      "share of the cores (default 1). On few cores small boxes use threads poorly: 2 workers "
      "gave 1.2-1.6x the total ns/day of one 2-thread run (64 waters, 2 cores)")
    a("--out", required=True, help="output folder")
    a("--quick", action="store_true", default=None, help=f"short demonstration preset ({quick})")
    a("--resume", action="store_true", help="continue the run in --out from its checkpoints")


def _settings(args: argparse.Namespace):
    from allscaip.protocols.settings import ProtocolSettings, merge_resumed, resolve

    given = {k: v for k, v in vars(args).items() if k not in ("handler", "resume", "protocol")}
    given["command"] = args.protocol
    # absolute paths, so that --resume works from another directory
    if given.get("model") is not None:
        given["model"] = str(Path(given["model"]).resolve())
    if args.molecule is not None and Path(args.molecule).suffix:
        given["molecule"] = str(Path(args.molecule).resolve())
    saved = Path(args.out) / "settings.json"
    if args.resume:
        if not saved.exists():
            raise FileNotFoundError(f"--resume: {saved} does not exist; nothing to resume in {args.out}")
        settings = ProtocolSettings.from_json(saved)
        if settings.command != args.protocol:
            raise ValueError(f"--resume: {args.out} holds a '{settings.command}' run, not '{args.protocol}'")
        return merge_resumed(settings, given)
    if saved.exists():
        raise ValueError(f"{args.out} already holds a protocol run: add --resume to continue it, "
                         "or choose another --out")
    if args.molecule is None:
        raise ValueError("--molecule is required (built-in 'water' or a molecule file)")
    if given.get("forcefield") not in (None, "spcfw") and Path(given["forcefield"]).is_file():
        given["forcefield"] = str(Path(given["forcefield"]).resolve())
    if given.get("model") is None and given.get("forcefield") is None:
        from allscaip.models import default_model_path

        given["model"] = str(default_model_path())
    return resolve(given)


def run_compare_command(args: argparse.Namespace) -> int:
    import json

    from allscaip.protocols.compare import compare_reports, comparison_table, read_report

    comparison = compare_reports(read_report(args.run), read_report(args.reference),
                                 {"density_g_cm3": args.density_tolerance_percent,
                                  "hvap_kj_mol": args.hvap_tolerance_percent})
    print(f"{args.run} against {args.reference}\n")
    print(comparison_table(comparison))
    if args.json:
        args.json.write_text(json.dumps(comparison, indent=1))
    return 0


def run_protocol_command(args: argparse.Namespace) -> int:
    from allscaip.plugins.openmm.run import SimulationExploded
    from allscaip.protocols.protocol import LiquidProtocol
    from allscaip.protocols.report import summary_table

    settings = _settings(args)
    if settings.hydrogen_mass is None and settings.timestep > 1.0:
        print(f"warning: {settings.timestep} fs without hydrogen mass repartitioning is likely "
              "unstable for flexible X-H bonds; 0.5 fs is safe", file=sys.stderr)
    try:
        report = LiquidProtocol(settings).run()
    except SimulationExploded as exc:
        print(f"allscaip protocol: {exc}\nRerun with --resume after fixing the cause, or start over.",
              file=sys.stderr)
        return 3
    print(f"\nwrote {Path(settings.out) / 'report.json'} ({report['wall_time_s']:.0f} s)\n")
    print(summary_table(report))
    return 0
