"""What one model file costs per call against another, in the same process.

For each model: the median ms of one energy + forces call on a water box, float32, eager and
with ``compile=True`` (the fused graph), the calls interleaved over rattled configurations so
that the machine's drift hits every model alike, and each model's ratio to the first one. This
is how the model issue's "within 1.5x of the current model's speed" is measured.

    .venv/bin/python benchmarks/bench_model_cost.py models/allscaip-spcfw-water/model.pt \\
        models/allscaip-spcfw-water-v2/neighbours-32/model.pt --waters 64 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+", help="model files; ratios are to the first")
    parser.add_argument("--waters", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configurations", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from bench_ops import system

    from allscaip.io import load_model

    base = system(args.waters, torch.float32)
    generator = torch.Generator().manual_seed(0)
    configurations = [(base[0] + (0.05 * torch.randn(base[0].shape, generator=generator) if index else 0.0),)
                      + base[1:] for index in range(args.configurations)]
    callers, compile_seconds = {}, {}
    for path in args.models:
        model = load_model(str(path), dtype=torch.float32)
        for mode, variant in (("eager", model), ("compiled", copy.deepcopy(model).compile_network())):
            callers[(path, mode)] = variant
            start = time.perf_counter()
            variant(*configurations[0], True, False)
            compile_seconds[(path, mode)] = time.perf_counter() - start
    times: dict[tuple, list[float]] = {key: [] for key in callers}
    for _ in range(args.repeats):
        for inputs in configurations:
            for key, variant in callers.items():
                start = time.perf_counter()
                variant(*inputs, True, False)
                times[key].append(1e3 * (time.perf_counter() - start))
    print(f"{args.waters} waters ({3 * args.waters} atoms), float32, {args.threads} threads, "
          f"{args.configurations} configurations x {args.repeats}; median ms per energy + forces call")
    print(f"{'model':<60} {'mode':<9} {'first call s':>12} {'ms':>8} {'ratio':>6}")
    for key, values in times.items():
        path, mode = key
        first = statistics.median(times[(args.models[0], mode)])
        median = statistics.median(values)
        print(f"{str(path):<60} {mode:<9} {compile_seconds[key]:12.1f} {median:8.1f} {median / first:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
