"""Where the time of one energy + forces call goes on a GPU: dense vs blocked node attention
(torch.profiler tables), the blocked path's cost vs block size, and the shipped default model
(ms per call, CUDA vs CPU float64 parity). Needs only torch and this repository.

    python benchmarks/profile_gpu.py --out DIR        # lent GPU machine, ~2 minutes
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_gpu import evaluate, make_model, model_inputs, synchronize  # noqa: E402

from allscaip.io import load_model  # noqa: E402

DEFAULT_MODEL = ROOT / "models" / "allscaip-spcfw-water" / "model.pt"


def median_ms(model, inputs, device: str, repeats: int = 3) -> float:
    evaluate(model, inputs)
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        evaluate(model, inputs)
        synchronize(device)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def profile_table(model, inputs, device: str, sort: str, rows: int = 25) -> str:
    evaluate(model, inputs)
    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        evaluate(model, inputs)
        synchronize(device)
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--waters", type=int, default=1000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"torch {torch.__version__}, device {args.device}"]

    inputs = model_inputs(args.waters, torch.float32, args.device)
    for block in (0, 256, 1024, 4096):
        model = make_model("small", torch.float32, args.device, block)
        lines.append(f"small float32 {3 * args.waters} atoms block {block}: "
                     f"{median_ms(model, inputs, args.device):.1f} ms/call")
        print(lines[-1], flush=True)
    for block in (0, 256):
        model = make_model("small", torch.float32, args.device, block)
        for sort in ("self_cuda_time_total", "self_cpu_time_total"):
            table = profile_table(model, inputs, args.device, sort)
            (out / f"profile-small-block{block}-{sort}.txt").write_text(table)
            print(f"== block {block}, by {sort}\n{table}", flush=True)

    model = load_model(DEFAULT_MODEL).to(args.device).float().eval()
    for waters in (64, 216, 1000):
        ms = median_ms(model, model_inputs(waters, torch.float32, args.device), args.device)
        lines.append(f"default model float32 {waters} waters ({3 * waters} atoms): {ms:.1f} ms/call")
        print(lines[-1], flush=True)
    reference = evaluate(load_model(DEFAULT_MODEL).double().eval(), model_inputs(64, torch.float64, "cpu"),
                         virial=True)
    result = evaluate(load_model(DEFAULT_MODEL).to(args.device).double().eval(),
                      model_inputs(64, torch.float64, args.device), virial=True)
    lines.append("default model float64 64 waters, cuda vs cpu: "
                 f"|dE| {float((result[0] - reference[0]).abs()):.1e} eV, "
                 f"max |dF| {float((result[1] - reference[1]).abs().max()):.1e} eV/A, "
                 f"max |dW| {float((result[2] - reference[2]).abs().max()):.1e} eV")
    print(lines[-1], flush=True)
    (out / "profile-summary.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
