"""What a wider neighbourhood (``knn_k``) costs and what it reaches, for one model file.

For each ``knn_k``: the distance of the k-th nearest atom around an oxygen in the reference's
liquid frames (the reach of the edge attention; the soft rank weighs neighbours near rank k
down to nothing) and the median time of one energy + forces call on 64 and 216 waters,
float32, eager, interleaved in one process, with its ratio to the model's own ``knn_k``.

    .venv/bin/python benchmarks/bench_neighbours.py models/allscaip-spcfw-water-v2/epoch-16.pt \\
        --knn 16 24 32 --frames datasets/spcfw-test-v2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def kth_neighbour_distance(frames, k: int) -> tuple[float, float]:
    """Mean and 90th percentile over oxygens of periodic frames of the k-th nearest atom's
    distance (minimum image; the atom itself is rank 0)."""
    distances = []
    for frame in frames:
        if frame.cell is None or not np.any(frame.pbc):
            continue
        cell = np.asarray(frame.cell)
        inverse = np.linalg.inv(cell)
        positions = np.asarray(frame.positions)
        for i in np.flatnonzero(np.asarray(frame.numbers) == 8):
            fractional = (positions - positions[i]) @ inverse
            fractional -= np.round(fractional)
            distances.append(np.sort(np.linalg.norm(fractional @ cell, axis=1))[k])
    return float(np.mean(distances)), float(np.percentile(distances, 90))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--knn", type=int, nargs="+", default=[16, 24, 32])
    parser.add_argument("--frames", default=str(HERE.parent / "datasets" / "spcfw-test-v2"))
    parser.add_argument("--waters", type=int, nargs="+", default=[64, 216])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from allscaip.data import read_frames
    from allscaip.io import load_model
    from allscaip.train import with_settings

    sys.path.insert(0, str(HERE))
    from bench_ops import system

    base = load_model(args.model, dtype=torch.float32)
    models = {k: with_settings(base, {"knn_k": k}).eval() for k in args.knn}
    frames = read_frames(args.frames)
    reach = {k: kth_neighbour_distance(frames, k) for k in args.knn}
    boxes = {waters: system(waters, torch.float32) for waters in args.waters}
    times = {(k, w): [] for k in args.knn for w in args.waters}
    for k in args.knn:  # warm-up
        for inputs in boxes.values():
            models[k](*inputs)
    for _ in range(args.repeats):  # interleaved, so load changes hit every case alike
        for waters, inputs in boxes.items():
            for k in args.knn:
                start = time.perf_counter()
                models[k](*inputs)
                times[(k, waters)].append(time.perf_counter() - start)

    own = base.config.knn_k
    print(f"model {args.model} (knn_k {own}), {args.threads} threads, float32 eager, "
          f"median of {args.repeats}; reach over oxygens of {args.frames}")
    header = "| knn_k | k-th atom from O: mean / p90 (A) |" + "".join(
        f" {w} waters (ms) | ratio |" for w in args.waters)
    print(header)
    print("|" + "---|" * (2 + 2 * len(args.waters)))
    for k in args.knn:
        row = f"| {k} | {reach[k][0]:.2f} / {reach[k][1]:.2f} |"
        for waters in args.waters:
            ms = 1e3 * statistics.median(times[(k, waters)])
            ratio = ms / (1e3 * statistics.median(times[(own, waters)])) if own in args.knn else float("nan")
            row += f" {ms:.0f} | {ratio:.2f} |"
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
