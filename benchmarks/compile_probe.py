"""What torch.compile (inductor) buys on this machine: the network part of one energy + forces
call compiled for a fixed shape, the featurize part (graph, features, input block) eager.

Prints, per system size: compile time (first compiled call), the largest difference from eager
(energy, forces), and eager vs compiled ms per call (medians, alternating, same run). The
network is compiled with ``dynamic=False``: every new slot count P or atom count recompiles,
which is why the fast-path issue asks for a fixed slot width before compile is switched on.

    .venv/bin/python benchmarks/compile_probe.py --waters 1 64
    .venv/bin/python benchmarks/compile_probe.py --waters 64 --pad-slots 8   # bucketed width
    .venv/bin/python benchmarks/compile_probe.py --gas --waters 1 5   # compile=True, no box
    .venv/bin/python benchmarks/compile_probe.py --box --waters 64 216 --configurations 4  # compile=True, box
    .venv/bin/python benchmarks/compile_probe.py --box --waters 64 --without-slot-kernel  # what the kernel buys

``--gas`` times what ``compile=True`` gives a molecule or cluster without a box instead: the
whole call compiled (fixed-shape molecule graph, one graph), against the same model eager.
``--box`` times ``compile=True`` in a box: the fused wide-cell graph (cells wider than twice the
search radius) and, beside it, the network-only compilation that narrower cells get.

The max differences compare with the unpadded eager call, so with ``--pad-slots`` they also
check that the padding leaves the function unchanged.
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


def split_call(model, pad_multiple: int = 0):
    """(featurize, network): eager featurize, and the blocks + energy head as one function of
    the featurized tensors (what would be compiled). ``pad_multiple``: widen the slot layout
    to the next multiple (what a bucketed fixed width would give; same energy)."""
    from allscaip.batch import widen_slots
    from allscaip.model import BlockInputs

    backbone = model.backbone

    def network(x, src_bias, dst_bias, to_dst, to_src, src_angles, dst_angles, sines, sine_index):
        inputs = BlockInputs(src_bias, dst_bias, to_dst, to_src, src_angles, dst_angles, sines, sine_index, None)
        for block in backbone.transformer_blocks:
            x = block(x, inputs, backbone.sinc_omega, 0)
        return model.energy_head(x[:, 0]).sum()

    def featurize(positions, numbers, cell, pbc, charge, spin):
        x, inputs = backbone.prepare(positions, numbers, cell, pbc, charge, spin)
        n_slots = int(x.shape[1])
        width = -(-n_slots // pad_multiple) * pad_multiple if pad_multiple else n_slots
        return widen_slots(x, inputs, width) + (inputs.sines, inputs.sine_index)

    return featurize, network


def energy_forces(featurize, network, inputs):
    positions = inputs[0].clone().requires_grad_(True)
    energy = network(*featurize(positions, *inputs[1:]))
    return energy.detach(), -torch.autograd.grad(energy, positions)[0]


def model_probe(model, args) -> None:
    """Eager vs ``compile_network()`` model (what ``compile=True`` does), whole energy + forces
    calls over rattled configurations whose slot counts P differ: without a box (``--gas``: the
    fused molecule graph), or in a box (``--box``: the fused wide-cell graph where the cell is
    wide enough, and beside it the network-only compilation that narrower cells get)."""
    import copy

    from bench_ops import system

    variants = {"compiled": copy.deepcopy(model).compile_network()}
    if args.without_slot_kernel:  # the same compiled path with inductor's attention kernels
        variants["no slot kernel"] = copy.deepcopy(model).compile_network()
        variants["no slot kernel"].compiled.slot_kernel = False
    if args.box:
        variants["network only"] = copy.deepcopy(model).compile_network()
        variants["network only"].compiled.wide_failed = True  # what a narrow cell runs
    what = "no box, whole call compiled" if args.gas else "box"
    print(f"{args.model.name}, float32, {args.threads} threads, {what}, compile=True vs eager, "
          f"{args.configurations} configurations; ms per energy + forces call (median)")
    header = f"{'waters':>6} {'atoms':>6} {'eager P':>8}"
    for name in variants:
        header += f" {name + ' s':>16} {'graphs':>6} {'max |dF| eV/A':>14}"
    header += f" {'eager ms':>9}" + "".join(f" {name + ' ms':>17}" for name in variants)
    print(header)
    generator = torch.Generator().manual_seed(0)
    for waters in args.waters:
        base = system(waters, torch.float32, gas=args.gas)
        configurations = [(base[0] + (0.05 * torch.randn(base[0].shape, generator=generator) if index else 0.0),)
                          + base[1:] for index in range(args.configurations)]
        call = lambda m, inputs: [t.detach() for t in m(*inputs, True, False)[:2]]  # noqa: E731
        slots = sorted({int(model.backbone.prepare(*inputs)[0].shape[1]) for inputs in configurations})
        row = f"{waters:>6} {3 * waters:>6} {','.join(map(str, slots)):>8}"
        for compiled_model in variants.values():
            before = compiled_model.compiled.compilations
            start = time.perf_counter()
            call(compiled_model, configurations[0])
            compile_s = time.perf_counter() - start
            max_df = 0.0
            for inputs in configurations:
                (_, forces), (_, eager_forces) = call(compiled_model, inputs), call(model, inputs)
                max_df = max(max_df, float((forces - eager_forces).abs().max()))
            row += f" {compile_s:16.1f} {compiled_model.compiled.compilations - before:>6} {max_df:14.2e}"
        times: dict[str, list[float]] = {name: [] for name in ["eager", *variants]}
        for _ in range(args.repeats):
            for inputs in configurations:
                for name, m in (("eager", model), *variants.items()):
                    start = time.perf_counter()
                    call(m, inputs)
                    times[name].append(1e3 * (time.perf_counter() - start))
        row += "".join(f" {statistics.median(times[name]):{9 if name == 'eager' else 17}.2f}" for name in times)
        print(row, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--waters", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pad-slots", type=int, default=0,
                        help="widen the slot layout to a multiple of this (a bucketed fixed width)")
    parser.add_argument("--gas", action="store_true",
                        help="the waters without a box, whole call compiled (compile=True)")
    parser.add_argument("--box", action="store_true",
                        help="compile=True in a box: the fused wide-cell graph, and the network-only path")
    parser.add_argument("--without-slot-kernel", action="store_true",
                        help="--gas/--box: also the compiled path without the fused slot-attention kernel")
    parser.add_argument("--configurations", type=int, default=1,
                        help="--gas/--box: rattled configurations timed (different slot counts)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from bench_ops import system

    from allscaip.io import load_model

    model = load_model(str(args.model)).float().eval()
    if model.backbone.block_size or model.direct_forces:
        sys.exit("the probe covers dense node attention and conserving forces only")
    if args.gas or args.box:
        model_probe(model, args)
        return 0
    featurize, network = split_call(model, args.pad_slots)
    plain_featurize, _ = split_call(model)
    print(f"{args.model.name}, float32, {args.threads} threads, network compiled (inductor, dynamic=False), "
          "featurize eager")
    print(f"{'waters':>6} {'atoms':>6} {'compile s':>10} {'max |dE| eV':>12} {'max |dF| eV/A':>14} "
          f"{'eager ms':>9} {'compiled ms':>12}" + (f" {'eager unpadded ms':>18}" if args.pad_slots else ""))
    for waters in args.waters:
        inputs = system(waters, torch.float32)
        compiled = torch.compile(network, dynamic=False)
        start = time.perf_counter()
        energy, forces = energy_forces(featurize, compiled, inputs)
        compile_s = time.perf_counter() - start
        eager_energy, eager_forces = energy_forces(plain_featurize, network, inputs)
        times: dict[str, list[float]] = {"eager": [], "compiled": [], "unpadded": []}
        runs = [("eager", featurize, network), ("compiled", featurize, compiled)]
        if args.pad_slots:
            runs.append(("unpadded", plain_featurize, network))
        for _ in range(args.repeats):
            for name, features, net in runs:
                start = time.perf_counter()
                energy_forces(features, net, inputs)
                times[name].append(1e3 * (time.perf_counter() - start))
        print(f"{waters:>6} {3 * waters:>6} {compile_s:10.1f} {float((energy - eager_energy).abs()):12.2e} "
              f"{float((forces - eager_forces).abs().max()):14.2e} {statistics.median(times['eager']):9.1f} "
              f"{statistics.median(times['compiled']):12.1f}"
              + (f" {statistics.median(times['unpadded']):18.1f}" if args.pad_slots else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
