"""How many tensor operations and host synchronisations one energy + forces call costs.

The model's time on small systems is per-operation overhead, not arithmetic, so the number
of operator calls is the figure to drive down (and it does not depend on the machine's load,
unlike a timing). Printed per system size, for the eager model and its TorchScript export:

- ``profiler ops``: aten operator calls recorded by torch.profiler (nested calls counted, as
  in the fast-path issue's measurement);
- ``dispatched``: operator calls reaching the kernels (a TorchDispatchMode count: what
  actually runs, each op once);
- ``host syncs``: dispatched ops whose result the host must wait for (``.item()``,
  ``nonzero``, data-dependent shapes) -- on a GPU each stalls the stream; the one
  ``.tolist()`` of the cell plan per call does not dispatch and is not counted;
- ms per call (median; only comparable between rows of the same run).

    .venv/bin/python benchmarks/bench_ops.py                       # shipped model, 1/64/216 waters
    .venv/bin/python benchmarks/bench_ops.py --waters 64 --dtype float64 --top 25
    .venv/bin/python benchmarks/bench_ops.py --gas --waters 1 5       # a molecule and a cluster, no box
    # before/after in one run: a checkout of the baseline commit (git worktree) side by side
    git worktree add /tmp/baseline <commit>
    .venv/bin/python benchmarks/bench_ops.py --baseline /tmp/baseline
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE.parent / "models" / "allscaip-spcfw-water" / "model.pt"
# ops whose output the host has to read (a device -> host copy and a wait)
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2",
            "unique_consecutive", "is_nonzero", "equal", "repeat_interleave", "item"}


class OpCounter(TorchDispatchMode):
    """Counts dispatched operator calls by name."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def syncs(self) -> int:
        return sum(v for k, v in self.counts.items() if k in SYNC_OPS)


def profiler_ops(call) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    return sum(event.count for event in prof.key_averages() if event.key.startswith("aten::"))


def system(waters: int, dtype: torch.dtype, gas: bool = False):
    """A water box, or with ``gas`` the same waters without a box (a molecule or cluster)."""
    sys.path.insert(0, str(HERE))
    from water import water_box

    atoms = water_box(waters)
    return (torch.tensor(atoms.positions, dtype=dtype), torch.tensor(atoms.numbers),
            torch.tensor(atoms.cell.array, dtype=dtype), torch.tensor([not gas] * 3),
            torch.tensor(0), torch.tensor(1))


def callers(model_path: Path, dtype: torch.dtype) -> dict:
    """{mode: function(inputs) -> (energy, forces)} for eager and TorchScript."""
    from allscaip.export import script_model
    from allscaip.io import load_model

    model = load_model(str(model_path)).eval()
    scripted = script_model(model, dtype)
    model = model.to(dtype)
    return {"eager": lambda inputs: model(*inputs, True, False)[:2],
            "torchscript": lambda inputs: scripted(*inputs)[:2]}


def measure(model_path: Path, waters: int, dtype: torch.dtype, repeats: int, top: int,
            gas: bool = False) -> list[dict]:
    """Rows for one system size: every mode's op counts, syncs and median ms per call."""
    modes = callers(model_path, dtype)
    inputs = system(waters, dtype, gas)
    rows = []
    for mode, call in modes.items():
        for _ in range(3):  # warm-up (TorchScript profiles its first calls)
            call(inputs)
        counter = OpCounter()
        with counter:
            call(inputs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call(inputs)
            times.append(1e3 * (time.perf_counter() - start))
        rows.append({"waters": waters, "mode": mode, "profiler": profiler_ops(lambda: call(inputs)),
                     "dispatched": counter.total, "syncs": counter.syncs, "ms": statistics.median(times),
                     "top": counter.counts.most_common(top)})
    return rows


def in_checkout(checkout: Path, args, waters: int) -> list[dict]:
    """``measure`` with the ``allscaip`` package of another checkout (a subprocess)."""
    command = [sys.executable, __file__, "--worker", "--model", str(args.model), "--waters", str(waters),
               "--dtype", args.dtype, "--threads", str(args.threads), "--repeats", str(args.repeats)]
    command += ["--gas"] if args.gas else []
    env = dict(os.environ, PYTHONPATH=str(checkout))
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--waters", type=int, nargs="+", default=[1, 64, 216])
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--top", type=int, default=0, help="also list the N most called ops")
    parser.add_argument("--baseline", type=Path, help="checkout of a baseline commit, measured alternately")
    parser.add_argument("--gas", action="store_true", help="the waters without a box (molecule, cluster)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.worker:
        print(json.dumps(measure(args.model, args.waters[0], dtype, args.repeats, 0, args.gas)))
        return 0
    print(f"{args.model.name}, {args.dtype}, {args.threads} threads, one energy + forces call "
          f"{'without a box ' if args.gas else ''}(the TorchScript export also returns the virial)")
    print(f"{'code':>8} {'waters':>6} {'atoms':>6} {'mode':>12} {'profiler ops':>13} {'dispatched':>11} "
          f"{'host syncs':>11} {'ms/call':>8}")
    for waters in args.waters:
        sides = [("this", None)] + ([("baseline", args.baseline)] if args.baseline else [])
        for label, checkout in sides * (2 if args.baseline else 1):  # alternate: same load for both
            rows = (in_checkout(checkout, args, waters) if checkout is not None
                    else (in_checkout(HERE.parent, args, waters) if args.baseline
                          else measure(args.model, waters, dtype, args.repeats, args.top, args.gas)))
            for r in rows:
                print(f"{label:>8} {waters:>6} {3 * waters:>6} {r['mode']:>12} {r['profiler']:>13} "
                      f"{r['dispatched']:>11} {r['syncs']:>11} {r['ms']:>8.1f}")
                if r["top"]:
                    print("         " + ", ".join(f"{name} {count}" for name, count in r["top"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
