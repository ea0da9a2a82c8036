"""How many tensor operations and host synchronisations one energy + forces call costs.

The model's time on small systems is per-operation overhead, not arithmetic, so the number
of operator calls is the figure to drive down (and it does not depend on the machine's load,
unlike a timing). Printed per system size, for the eager model and its TorchScript export:

- ``profiler ops``: aten operator calls recorded by torch.profiler (nested calls counted, as
  in the fast-path issue's measurement);
- ``dispatched``: operator calls reaching the kernels (a TorchDispatchMode count: what
  actually runs, each op once);
- ``host syncs``: dispatched ops whose result the host must wait for (``.item()``,
  ``nonzero``, data-dependent shapes) -- on a GPU each stalls the stream;
- ms per call (median; only comparable between rows of the same run).

    .venv/bin/python benchmarks/bench_ops.py                       # shipped model, 1/64/216 waters
    .venv/bin/python benchmarks/bench_ops.py --waters 64 --dtype float64 --top 25
"""

from __future__ import annotations

import argparse
import collections
import statistics
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


def system(waters: int, dtype: torch.dtype):
    sys.path.insert(0, str(HERE))
    from water import water_box

    atoms = water_box(waters)
    return (torch.tensor(atoms.positions, dtype=dtype), torch.tensor(atoms.numbers),
            torch.tensor(atoms.cell.array, dtype=dtype), torch.tensor([True] * 3),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--waters", type=int, nargs="+", default=[1, 64, 216])
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--top", type=int, default=0, help="also list the N most called ops")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    modes = callers(args.model, dtype)
    print(f"{args.model.name}, {args.dtype}, {args.threads} threads, one energy + forces call")
    print(f"{'waters':>6} {'atoms':>6} {'mode':>12} {'profiler ops':>13} {'dispatched':>11} "
          f"{'host syncs':>11} {'ms/call':>8}")
    for waters in args.waters:
        inputs = system(waters, dtype)
        for mode, call in modes.items():
            for _ in range(3):  # warm-up (TorchScript profiles its first calls)
                call(inputs)
            counter = OpCounter()
            with counter:
                call(inputs)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                call(inputs)
                times.append(1e3 * (time.perf_counter() - start))
            print(f"{waters:>6} {3 * waters:>6} {mode:>12} {profiler_ops(lambda: call(inputs)):>13} "
                  f"{counter.total:>11} {counter.syncs:>11} {statistics.median(times):>8.1f}")
            if args.top:
                print("       " + ", ".join(f"{name} {count}" for name, count in counter.counts.most_common(args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
