"""How evenly data-parallel training splits its work: atoms per rank in each optimiser step.

Under ``torchrun`` every rank evaluates a slice of each global batch (``allscaip.train``:
frames dealt round-robin), and the step waits for the slowest rank. A training step costs
about the same per atom, so the sum over steps of the largest rank's atoms, divided by the
sum of the even shares, is the slowdown against a perfect split (1.0). Printed for the
trainer's round-robin deal and for a greedy deal (largest frame first to the least loaded
rank) of the same batches; no model is run.

    .venv/bin/python benchmarks/ddp_balance.py datasets/spcfw-train-v2 --max-atoms 600 --ranks 2
"""

from __future__ import annotations

import argparse

import numpy as np

from allscaip.data import batches, read_frames


def critical_path(batch_sizes: list[list[int]], ranks: int, greedy: bool) -> float:
    """Sum over batches of the busiest rank's atoms / sum of the even shares."""
    busiest = even = 0.0
    for sizes in batch_sizes:
        loads = np.zeros(ranks)
        if greedy:
            for size in sorted(sizes, reverse=True):
                loads[np.argmin(loads)] += size
        else:
            for index, size in enumerate(sizes):
                loads[index % ranks] += size
        busiest += loads.max()
        even += loads.sum() / ranks
    return busiest / even


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="training frames (folder of npz shards)")
    parser.add_argument("--max-atoms", type=int, nargs="+", default=[600])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2])
    parser.add_argument("--epochs", type=int, default=3, help="shuffles averaged")
    args = parser.parse_args(argv)
    sizes = [len(frame) for frame in read_frames(args.data)]
    counts = dict(zip(*np.unique(sizes, return_counts=True)))
    print(f"{len(sizes)} frames, {sum(sizes)} atoms; frame sizes (atoms: frames): "
          + ", ".join(f"{int(k)}: {int(v)}" for k, v in counts.items()))
    print("| max atoms per batch | ranks | round-robin (trainer) | greedy |")
    print("|---|---|---|---|")
    frames = [np.zeros(n) for n in sizes]  # batches() needs only len()
    for max_atoms in args.max_atoms:
        for ranks in args.ranks:
            plans = [[[len(f) for f in batch] for batch in batches(frames, max_atoms, True, seed=epoch)]
                     for epoch in range(args.epochs)]
            rows = [np.mean([critical_path(plan, ranks, greedy) for plan in plans]) for greedy in (False, True)]
            print(f"| {max_atoms} | {ranks} | {rows[0]:.2f} | {rows[1]:.2f} |")


if __name__ == "__main__":
    main()
