"""Ours against a peer MLIP on the same water boxes, in one run: ms per energy + forces call.

The peer is MACE with MACE-OFF23's small and medium hyper-parameters (the organic force
fields openmm-ml ships) and random weights: the cost of a call does not depend on the weights.
Its neighbour list is built by matscipy on every call, as openmm-ml's MACE potential does.
MACE is never a dependency of this project: ``--install`` puts pinned wheels into a side folder
(``benchmarks/.peers``, git-ignored) with ``--no-deps``, so the project's torch is untouched.

    .venv/bin/python benchmarks/bench_peers.py --install        # once (~140 MB)
    .venv/bin/python benchmarks/bench_peers.py --waters 1 64 216
    .venv/bin/python benchmarks/bench_peers.py --waters 64 216 --compile   # also ours with compile=True

Calls of the two models alternate (ours, MACE small, MACE medium, ours, ...) so that a change
of the machine's load hits all of them; medians are printed with the ratio peer / ours.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SIDE = HERE / ".peers"
DEFAULT_MODEL = HERE.parent / "models" / "allscaip-spcfw-water" / "model.pt"
# mace-torch and what it imports, pinned; installed without their dependencies (torch, ase,
# numpy, scipy, matplotlib, pyyaml, tqdm come from the project's environment)
PEER_WHEELS = ["mace-torch==0.3.16", "e3nn==0.4.4", "opt_einsum==3.4.0", "opt_einsum_fx==0.1.4",
               "matscipy==1.3.1", "torch-ema==0.3", "torchmetrics", "lightning-utilities",
               "prettytable", "wcwidth", "python-hostlist", "configargparse", "h5py", "lmdb", "orjson",
               "pandas", "GitPython", "gitdb", "smmap"]
# MACE-OFF23 (Kovacs et al., 2023): 10 elements, r_max 5 A, 2 interactions, correlation 3, l <= 3
MACE_OFF_ELEMENTS = [1, 6, 7, 8, 9, 15, 16, 17, 35, 53]
MACE_SIZES = {"small": "96x0e", "medium": "128x0e + 128x1o"}


def install() -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(SIDE)]
                   + PEER_WHEELS, check=True)


def mace_model(size: str):
    from mace import modules  # first: it allow-lists what e3nn's constants file unpickles
    from e3nn import o3

    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    return modules.ScaleShiftMACE(
        r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=3, interaction_cls=block,
        interaction_cls_first=block, num_interactions=2, num_elements=len(MACE_OFF_ELEMENTS),
        hidden_irreps=o3.Irreps(MACE_SIZES[size]), MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.zeros(len(MACE_OFF_ELEMENTS)), avg_num_neighbors=10.0,
        atomic_numbers=MACE_OFF_ELEMENTS, correlation=3, gate=torch.nn.functional.silu,
        atomic_inter_scale=1.0, atomic_inter_shift=0.0).float().eval()


def mace_call(model, atoms):
    """One energy + forces call, neighbour list included: () -> forces (N, 3)."""
    from matscipy.neighbours import neighbour_list

    def call():
        sender, receiver, unit_shifts = neighbour_list("ijS", atoms, 5.0)
        cell = torch.tensor(np.asarray(atoms.cell[:]), dtype=torch.float32)
        unit = torch.tensor(unit_shifts, dtype=torch.float32)
        species = torch.tensor([MACE_OFF_ELEMENTS.index(z) for z in atoms.numbers])
        data = {"positions": torch.tensor(atoms.positions, dtype=torch.float32),
                "node_attrs": torch.nn.functional.one_hot(species, len(MACE_OFF_ELEMENTS)).float(),
                "edge_index": torch.tensor(np.stack([sender, receiver]), dtype=torch.long), "unit_shifts": unit,
                "shifts": unit @ cell, "cell": cell, "batch": torch.zeros(len(atoms), dtype=torch.long),
                "ptr": torch.tensor([0, len(atoms)]), "head": torch.zeros(1, dtype=torch.long)}
        return model(data, compute_force=True, training=False)["forces"]
    return call


def our_call(model, atoms):
    inputs = (torch.tensor(atoms.positions, dtype=torch.float32), torch.tensor(atoms.numbers),
              torch.tensor(np.asarray(atoms.cell[:]), dtype=torch.float32), torch.tensor(atoms.pbc),
              torch.tensor(0), torch.tensor(1))
    return lambda: model(*inputs, True, False)[1]


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--install", action="store_true", help=f"install MACE into {SIDE} and exit")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--waters", type=int, nargs="+", default=[1, 64, 216])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true",
                        help="also ours with compile=True (ratios are then to the compiled call)")
    args = parser.parse_args(argv)
    if args.install:
        install()
        return 0
    if not (SIDE / "mace").is_dir():
        sys.exit(f"MACE is not installed in {SIDE}: run `{sys.argv[0]} --install` first (pip, ~140 MB)")
    sys.path.insert(0, str(SIDE))
    sys.path.insert(0, str(HERE))
    warnings.filterwarnings("ignore")  # MACE's import-time notices
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from water import water_box

    from allscaip.io import load_model

    ours = load_model(str(args.model)).float().eval()
    compiled = load_model(str(args.model)).float().eval().compile_network() if args.compile else None
    reference = "ours compiled" if args.compile else "ours"
    peers = {size: mace_model(size) for size in MACE_SIZES}
    print(f"float32, {args.threads} threads, one energy + forces call (median of {args.repeats}); "
          f"parameters: ours ({args.model.parent.name}) {parameters(ours):,}, "
          + ", ".join(f"MACE {size} {parameters(m):,}" for size, m in peers.items()))
    print(f"{'waters':>6} {'atoms':>6} {'ours ms':>8} " + (f"{'ours compiled ms':>17} " if args.compile else "")
          + " ".join(f"{'MACE ' + s + ' ms':>16} {'ratio':>6}" for s in peers) + f"   (ratio: MACE / {reference})")
    for waters in args.waters:
        atoms = water_box(waters)
        calls = {"ours": our_call(ours, atoms)}
        if compiled is not None:
            calls["ours compiled"] = our_call(compiled, atoms)
        calls.update({size: mace_call(model, atoms) for size, model in peers.items()})
        times: dict[str, list[float]] = {name: [] for name in calls}
        for name, call in calls.items():
            call()  # warm-up (compile=True compiles here)
        for _ in range(args.repeats):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(1e3 * (time.perf_counter() - start))
        median = {name: statistics.median(values) for name, values in times.items()}
        print(f"{waters:>6} {len(atoms):>6} {median['ours']:8.1f} "
              + (f"{median['ours compiled']:17.1f} " if args.compile else "") + " ".join(
            f"{median[s]:16.1f} {median[s] / median[reference]:5.1f}x" for s in peers), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
