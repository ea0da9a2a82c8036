"""Training throughput: atoms per second of optimiser steps (force + stress training).

Times ``Trainer.train_epoch`` of this checkout and, with ``--baseline``, of another checkout
(a ``git worktree`` of an earlier commit), alternately in one run so both see the same load.
Both train the shipped model's architecture (float32) on the same frames, drawn like the
training set: liquid boxes of 16-216 waters (stress labels) and gas-phase monomers, dimers and
clusters. The first epoch of each measurement is a warm-up and is not timed.

    .venv/bin/python benchmarks/bench_training.py
    git worktree add /tmp/baseline <commit>
    .venv/bin/python benchmarks/bench_training.py --baseline /tmp/baseline --max-atoms 300 1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE.parent / "models" / "allscaip-spcfw-water" / "train.yaml"
LIQUID = [(16, 300.0, 1.0), (32, 320.0, 0.98), (64, 300.0, 1.0), (64, 290.0, 1.02), (128, 310.0, 0.99),
          (216, 300.0, 1.0)]
GAS = [("monomer", 1), ("monomer", 1), ("dimer", 2), ("cluster", 5)]


def make_frames(path: Path, frames_per_run: int) -> Path:
    """Labelled SPC/Fw frames: every liquid size and the gas-phase kinds (deterministic)."""
    from allscaip.data import write_shard
    from allscaip.reference.datagen import DatagenSettings, Run, sample_run
    from allscaip.reference.labels import SpcfwLabeller

    settings = DatagenSettings(frames_per_run=frames_per_run, equilibration_ps=0.1, interval_ps=0.05)
    labeller = SpcfwLabeller()
    runs = [Run(i, "liquid", n, t, rho, 100 + i) for i, (n, t, rho) in enumerate(LIQUID)]
    runs += [Run(i, kind, n, 300.0, 0.0, 200 + i) for i, (kind, n) in enumerate(GAS)]
    frames = [frame for run in runs for frame in sample_run(run, settings, labeller)]
    return write_shard(frames, path)


def measure(data: Path, max_atoms: int, threads: int, epochs: int) -> dict:
    """Seconds per timed epoch of the trainer importable here (PYTHONPATH picks the checkout)."""
    from allscaip.train import Trainer
    from allscaip.train_config import config_from_dict

    shipped = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config = config_from_dict({
        "data": {"train": str(data), "validation_fraction": 0.0, "test_fraction": 0.0},
        "model": shipped["model"], "loss": shipped["loss"],
        "optim": {**shipped["optim"], "max_atoms_per_batch": max_atoms, "epochs": epochs + 1},
        "rotation_augmentation": True, "dtype": "float32", "threads": threads, "seed": 0})
    with tempfile.TemporaryDirectory() as output:
        trainer = Trainer(config, output, progress=False)
        trainer.train_epoch()  # warm-up
        trainer.epoch += 1
        steps_before = trainer.step
        started = time.perf_counter()
        for _ in range(epochs):
            trainer.train_epoch()
            trainer.epoch += 1
        seconds = time.perf_counter() - started
    atoms = sum(len(frame) for frame in trainer.train_frames) * epochs
    return {"seconds": seconds, "steps": trainer.step - steps_before, "atoms": atoms,
            "frames": len(trainer.train_frames) * epochs}


def in_checkout(checkout: Path, data: Path, max_atoms: int, args) -> dict:
    command = [sys.executable, __file__, "--worker", str(data), "--max-atoms", str(max_atoms),
               "--threads", str(args.threads), "--epochs", str(args.epochs)]
    env = dict(os.environ, PYTHONPATH=str(checkout))
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="checkout of a baseline commit, measured alternately")
    parser.add_argument("--max-atoms", type=int, nargs="+", default=[300], help="atoms per optimiser step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement")
    parser.add_argument("--frames-per-run", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of this code and the baseline")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker, args.max_atoms[0], args.threads, args.epochs)))
        return 0
    with tempfile.TemporaryDirectory() as folder:
        data = make_frames(Path(folder) / "frames.npz", args.frames_per_run)
        sides = [("this", HERE.parent)] + ([("baseline", args.baseline)] if args.baseline else [])
        print(f"shipped architecture, float32, {args.threads} threads, force + stress training, "
              f"{args.epochs} timed epochs per row")
        print(f"{'code':>9} {'max atoms':>9} {'frames':>7} {'steps':>6} {'s/step':>7} {'atoms/s':>8}")
        totals: dict = {}
        for max_atoms in args.max_atoms:
            for _ in range(args.rounds):
                for label, checkout in sides:
                    r = in_checkout(checkout, data, max_atoms, args)
                    rate = r["atoms"] / r["seconds"]
                    totals.setdefault((label, max_atoms), []).append(rate)
                    print(f"{label:>9} {max_atoms:>9} {r['frames']:>7} {r['steps']:>6} "
                          f"{r['seconds'] / r['steps']:>7.3f} {rate:>8.0f}", flush=True)
        if args.baseline:
            print("\nthroughput ratio this / baseline (same max atoms, mean over rounds):")
            for max_atoms in args.max_atoms:
                ratio = (sum(totals[("this", max_atoms)]) / sum(totals[("baseline", max_atoms)]))
                print(f"  max atoms {max_atoms}: {ratio:.2f}x")
            for max_atoms in args.max_atoms:
                base = sum(totals[("baseline", args.max_atoms[0])]) / args.rounds
                print(f"  this at {max_atoms} vs baseline at {args.max_atoms[0]}: "
                      f"{sum(totals[('this', max_atoms)]) / args.rounds / base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
