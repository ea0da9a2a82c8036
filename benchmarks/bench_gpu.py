"""AllScAIP on a GPU: ms per energy+forces call and peak memory vs system size, dense vs
blocked node attention, float32 and TF32, plus CUDA-vs-CPU parity. Prints tables and writes
``benchmarks/results/<card>.json`` and ``.md``.

Needs only torch and this repository (no OpenMM, ASE or NumPy): run it from the repo root.

    python benchmarks/bench_gpu.py                       # lent GPU machine, ~7 minutes
    python benchmarks/bench_gpu.py --device cpu --quick  # smoke test on a CPU

Models (random weights): ``small`` (hidden 64, 2 layers, 4 heads, knn_k 20, cutoff 6 A,
both masks) and ``md_neno`` (the released model's size: hidden 640, 10 layers, 10 heads,
knn_k 30, cutoff 6 A, both masks). Systems: periodic liquid-water boxes (216 waters = 648
atoms and up). A series stops at the first size that runs out of memory or time.
On CUDA the peak is ``torch.cuda.max_memory_allocated`` (weights included); on CPU each case
runs in its own process and the peak is the resident-set high-water mark of the calls (reset
through /proc/self/clear_refs) minus the resident set before them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from allscaip.config import ModelConfig  # noqa: E402
from allscaip.export import script_model  # noqa: E402
from allscaip.model import AllScAIP  # noqa: E402

MODELS = {
    "small": dict(hidden_size=64, num_layers=2, atten_num_heads=4, max_radius=6.0, knn_k=20,
                  freequency_list=[4, 4, 4, 2, 2], smooth_node_order=True),
    "md_neno": dict(hidden_size=640, num_layers=10, atten_num_heads=10, max_radius=6.0, knn_k=30),
}
WATERS = [216, 512, 1000, 2000, 3334, 5000, 6667, 10000, 16667, 23334, 33334]  # 648 ... 100002 atoms
WATER_GEOMETRY = [[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]]  # O, H, H
TF32_FORCE_TOLERANCE = 1e-3  # max |dF| / rms |F| against float64 for TF32 to be timed
CARD_MB = 1024.0 ** 2


def water_box(n_molecules: int, density: float = 0.997, seed: int = 0):
    """Periodic cubic water box on a grid, random orientations: (positions, numbers, cell)."""
    length = (n_molecules * 18.015 / (density * 6.02214076e23) * 1e24) ** (1.0 / 3.0)
    per_side = math.ceil(n_molecules ** (1.0 / 3.0))
    spacing = length / per_side
    generator = torch.Generator().manual_seed(seed)
    grid = torch.arange(per_side, dtype=torch.float64)
    sites = torch.cartesian_prod(grid, grid, grid)
    sites = sites[torch.randperm(len(sites), generator=generator)[:n_molecules]] * spacing + 0.25 * spacing
    q, r = torch.linalg.qr(torch.randn(n_molecules, 3, 3, dtype=torch.float64, generator=generator))
    rotations = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)
    molecule = torch.tensor(WATER_GEOMETRY, dtype=torch.float64)
    positions = (sites[:, None, :] + molecule @ rotations.transpose(1, 2)).reshape(-1, 3)
    numbers = torch.tensor([8, 1, 1] * n_molecules)
    return positions, numbers, torch.eye(3, dtype=torch.float64) * length


def make_model(name: str, dtype: torch.dtype, device: str, block: int) -> AllScAIP:
    torch.manual_seed(0)
    config = ModelConfig(**MODELS[name], node_attention_block_size=block)
    return AllScAIP(config).to(device=device, dtype=dtype).eval()


def model_inputs(waters: int, dtype: torch.dtype, device: str, seed: int = 0) -> tuple:
    positions, numbers, cell = water_box(waters, seed=seed)
    return (positions.to(device, dtype), numbers.to(device), cell.to(device, dtype),
            torch.ones(3, dtype=torch.bool, device=device), torch.tensor(0, device=device),
            torch.tensor(1, device=device))


def resident_kb(field: str) -> int:
    """VmRSS (now) or VmHWM (high-water mark) of this process from /proc, in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def evaluate(model, inputs, virial: bool = False):
    energy, forces, stress = model(*inputs, True, virial)
    return energy.detach().cpu(), forces.detach().cpu(), stress.detach().cpu()


def time_case(model_name: str, waters: int, precision: str, block: int, device: str,
              repeats: int) -> dict:
    """One size in this process: median ms per energy+forces call and peak memory (MB)."""
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    dtype = torch.float64 if precision == "float64" else torch.float32
    model = make_model(model_name, dtype, device, block)
    inputs = model_inputs(waters, dtype, device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        evaluate(model, model_inputs(8, dtype, device))  # first-call set-up on a tiny box
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
        before = resident_kb("VmRSS")
    times = []
    for repeat in range(repeats + 1):  # the first call warms up
        start = time.perf_counter()
        evaluate(model, inputs)
        synchronize(device)
        if repeat > 0 or repeats == 0:
            times.append(1000 * (time.perf_counter() - start))
        if times and times[-1] > 20000:
            break
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / CARD_MB
    else:
        peak = (resident_kb("VmHWM") - before) / 1024
    return {"ms": statistics.median(times), "peak_mb": peak, "atoms": 3 * waters}


def run_case(args, model_name, waters, precision, block) -> dict:
    """A case on CUDA in-process; on CPU in a fresh process (honest peak memory)."""
    try:
        if args.device.startswith("cuda"):
            return time_case(model_name, waters, precision, block, args.device, args.repeats)
        command = [sys.executable, __file__, "--device", args.device, "--repeats", str(args.repeats),
                   "--case", json.dumps([model_name, waters, precision, block])]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1][:200]}
        return json.loads(result.stdout.strip().splitlines()[-1])
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"error": "out of memory"}


def differences(reference, other) -> dict:
    """Max |dE| per atom, max |dF| and max |dF| / rms |F| (and max |dW| when present)."""
    energy, forces, virial = (t.to(torch.float64) for t in reference)
    result = {"dE_per_atom": float((other[0].double() - energy).abs()) / forces.shape[0],
              "dF": float((other[1].double() - forces).abs().max()),
              "dF_rel": float((other[1].double() - forces).abs().max() / forces.square().mean().sqrt())}
    if virial.numel() and other[2].numel():
        result["dW"] = float((other[2].double() - virial).abs().max())
    return result


def parity_checks(args) -> list[dict]:
    """float64 on the device (eager dense / blocked, TorchScript blocked) vs CPU eager dense."""
    rows = []
    for name in args.models:
        inputs_cpu = model_inputs(16, torch.float64, "cpu", seed=3)
        reference = evaluate(make_model(name, torch.float64, "cpu", 0), inputs_cpu, virial=True)
        inputs = model_inputs(16, torch.float64, args.device, seed=3)
        for label, block in (("eager dense", 0), ("eager blocked", 16)):
            result = evaluate(make_model(name, torch.float64, args.device, block), inputs, virial=True)
            rows.append({"model": name, "case": f"{args.device} {label} vs cpu dense",
                         **differences(reference, result)})
        scripted = script_model(make_model(name, torch.float64, args.device, 16), torch.float64)
        rows.append({"model": name, "case": f"{args.device} torchscript blocked vs cpu dense",
                     **differences(reference, tuple(t.cpu() for t in scripted(*inputs)))})
    return rows


def precision_checks(args) -> list[dict]:
    """float32 and TF32 (dense and blocked) against float64 on the device, 216 waters."""
    rows = []
    waters = 64 if args.quick else 216
    precisions = ["float32", "tf32"] if args.device.startswith("cuda") else ["float32"]
    for name in args.models:
        torch.set_float32_matmul_precision("highest")
        reference = evaluate(make_model(name, torch.float64, args.device, 0),
                             model_inputs(waters, torch.float64, args.device))
        for precision in precisions:
            torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
            for block in (0, args.block):
                result = evaluate(make_model(name, torch.float32, args.device, block),
                                  model_inputs(waters, torch.float32, args.device))
                rows.append({"model": name, "precision": precision, "block": block,
                             **differences(reference, result)})
    torch.set_float32_matmul_precision("highest")
    return rows


def scaling(args, precision_rows) -> list[dict]:
    """Time and memory vs size; a series stops at its first failure or slow call."""
    rows = []
    started = time.perf_counter()
    for name in args.models:
        precisions = ["float32"]
        tf32_ok = [r for r in precision_rows if r["model"] == name and r["precision"] == "tf32"]
        if tf32_ok and all(r["dF_rel"] < TF32_FORCE_TOLERANCE for r in tf32_ok):
            precisions.append("tf32")
        for precision in precisions:
            for block in (args.block, 0):
                for waters in args.waters:
                    if block == 0 and waters > args.dense_max_waters:
                        break
                    if time.perf_counter() - started > args.budget_s:
                        rows.append({"model": name, "precision": precision, "block": block,
                                     "waters": waters, "error": "time budget used up"})
                        break
                    case = run_case(args, name, waters, precision, block)
                    row = {"model": name, "precision": precision, "block": block, "waters": waters,
                           "atoms": 3 * waters, **case}
                    rows.append(row)
                    print(format_scaling_row(row), flush=True)
                    if "error" in case or case["ms"] > args.max_ms:
                        break
    return rows


def format_scaling_row(row: dict) -> str:
    mode = f"blocked {row['block']}" if row["block"] else "dense"
    head = f"{row['model']:>8} {row['precision']:>8} {mode:>12} {row['waters']:>6} {3 * row['waters']:>6}"
    if "error" in row:
        return f"{head}  {row['error']}"
    return f"{head} {row['ms']:>10.1f} {row['peak_mb']:>10.0f}"


def markdown(card: str, results: dict) -> str:
    lines = [f"# AllScAIP benchmark on {card}", "", f"torch {torch.__version__}, {results['when']}", "",
             "## Parity (float64) against CPU eager dense, 16 waters", "",
             "| model | case | max dE/atom (eV) | max dF (eV/A) | max dW (eV) |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['case']} | {r['dE_per_atom']:.1e} | {r['dF']:.1e} | {r.get('dW', 0):.1e} |"
              for r in results["parity"]]
    lines += ["", "## float32 / TF32 against float64 on the device", "",
              "| model | precision | block | max dE/atom (eV) | max dF (eV/A) | max dF / rms F |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['precision']} | {r['block']} | {r['dE_per_atom']:.1e} | {r['dF']:.1e} "
              f"| {r['dF_rel']:.1e} |" for r in results["precision"]]
    lines += ["", "## Energy + forces per call", "", "```",
              f"{'model':>8} {'dtype':>8} {'mode':>12} {'waters':>6} {'atoms':>6} {'ms/call':>10} {'peak MB':>10}"]
    lines += [format_scaling_row(r) for r in results["scaling"]] + ["```", ""]
    return "\n".join(lines)


def card_name(device: str) -> str:
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = f"cpu-{os.cpu_count()}cores"
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small model, two small sizes")
    parser.add_argument("--models", nargs="+", default=None, choices=sorted(MODELS))
    parser.add_argument("--waters", type=int, nargs="+", default=None)
    parser.add_argument("--block", type=int, default=256, help="query block of blocked node attention")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=360.0, help="time for the scaling series")
    parser.add_argument("--max-ms", type=float, default=15000.0, help="stop a series after a slower call")
    parser.add_argument("--dense-max-waters", type=int, default=10**9,
                        help="largest box for dense node attention (CPU memory guard)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        name, waters, precision, block = json.loads(args.case)
        print(json.dumps(time_case(name, waters, precision, block, args.device, args.repeats)))
        return
    args.models = args.models or (["small"] if args.quick else ["md_neno", "small"])  # target first
    args.waters = args.waters or ([64, 216] if args.quick else WATERS)
    if args.quick:
        args.block = min(args.block, 64)

    card = card_name(args.device)
    print(f"AllScAIP benchmark: {card}, torch {torch.__version__}, device {args.device}", flush=True)
    results = {"card": card, "torch": torch.__version__, "device": args.device,
               "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    results["parity"] = parity_checks(args)
    for row in results["parity"]:
        print(f"parity {row['model']:>8} {row['case']:<40} dE/atom {row['dE_per_atom']:.1e} "
              f"dF {row['dF']:.1e} dW {row.get('dW', 0):.1e}", flush=True)
    results["precision"] = precision_checks(args)
    for row in results["precision"]:
        print(f"precision {row['model']:>8} {row['precision']:>8} block {row['block']:>4} "
              f"dE/atom {row['dE_per_atom']:.1e} dF {row['dF']:.1e} dF/rmsF {row['dF_rel']:.1e}", flush=True)
    print(f"{'model':>8} {'dtype':>8} {'mode':>12} {'waters':>6} {'atoms':>6} {'ms/call':>10} {'peak MB':>10}")
    results["scaling"] = scaling(args, results["precision"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{card}.json").write_text(json.dumps(results, indent=1))
    (out / f"{card}.md").write_text(markdown(card, results))
    print(f"wrote {out / card}.json and .md")


if __name__ == "__main__":
    main()
