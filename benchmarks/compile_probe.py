"""What torch.compile (inductor) buys on this machine: the network part of one energy + forces
call compiled for a fixed shape, the featurize part (graph, features, input block) eager.

Prints, per system size: compile time (first compiled call), the largest difference from eager
(energy, forces), and eager vs compiled ms per call (medians, alternating, same run). The
network is compiled with ``dynamic=False``: every new slot count P or atom count recompiles,
which is why the fast-path issue asks for a fixed slot width before compile is switched on.

    .venv/bin/python benchmarks/compile_probe.py --waters 1 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE.parent / "models" / "allscaip-spcfw-water" / "model.pt"


def split_call(model):
    """(featurize, network): eager featurize, and the blocks + energy head as one function of
    the featurized tensors (what would be compiled)."""
    from allscaip.model import BlockInputs

    backbone = model.backbone

    def network(x, src_bias, dst_bias, to_dst, to_src, src_angles, dst_angles, sines):
        inputs = BlockInputs(src_bias, dst_bias, to_dst, to_src, src_angles, dst_angles, sines, None)
        for block in backbone.transformer_blocks:
            x = block(x, inputs, backbone.sinc_omega, 0)
        return model.energy_head(x[:, 0]).sum()

    def featurize(positions, numbers, cell, pbc, charge, spin):
        x, inputs = backbone.prepare(positions, numbers, cell, pbc, charge, spin)
        return (x, inputs.src_bias, inputs.dst_bias, inputs.to_dst, inputs.to_src, inputs.src_angles,
                inputs.dst_angles, inputs.sines)

    return featurize, network


def energy_forces(featurize, network, inputs):
    positions = inputs[0].clone().requires_grad_(True)
    energy = network(*featurize(positions, *inputs[1:]))
    return energy.detach(), -torch.autograd.grad(energy, positions)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--waters", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from bench_ops import system

    from allscaip.io import load_model

    model = load_model(str(args.model)).float().eval()
    if model.backbone.block_size or model.direct_forces:
        sys.exit("the probe covers dense node attention and conserving forces only")
    featurize, network = split_call(model)
    print(f"{args.model.name}, float32, {args.threads} threads, network compiled (inductor, dynamic=False), "
          "featurize eager")
    print(f"{'waters':>6} {'atoms':>6} {'compile s':>10} {'max |dE| eV':>12} {'max |dF| eV/A':>14} "
          f"{'eager ms':>9} {'compiled ms':>12}")
    for waters in args.waters:
        inputs = system(waters, torch.float32)
        compiled = torch.compile(network, dynamic=False)
        start = time.perf_counter()
        energy, forces = energy_forces(featurize, compiled, inputs)
        compile_s = time.perf_counter() - start
        eager_energy, eager_forces = energy_forces(featurize, network, inputs)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(args.repeats):
            for name, net in (("eager", network), ("compiled", compiled)):
                start = time.perf_counter()
                energy_forces(featurize, net, inputs)
                times[name].append(1e3 * (time.perf_counter() - start))
        print(f"{waters:>6} {3 * waters:>6} {compile_s:10.1f} {float((energy - eager_energy).abs()):12.2e} "
              f"{float((forces - eager_forces).abs().max()):14.2e} {statistics.median(times['eager']):9.1f} "
              f"{statistics.median(times['compiled']):12.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
