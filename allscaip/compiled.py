"""``torch.compile`` (inductor) of the model's energy for eager callers: the ASE calculator,
OpenMM's PythonForce and anything else holding an ``Evaluator`` with ``compile=True``.

- A molecule of at most k + delta atoms (no periodic axis): energy and gradients in one graph
  (one per atom count; if it does not compile, the next path below with a warning).
  Its neighbour graph has fixed shapes (``graph.molecule_graph``), so ``torch.func``'s
  ``grad_and_value`` of the whole call, featurization included, compiles (with inductor's C++
  wrapper) into one graph that holds the backward too and runs without the autograd engine.
  This is where compilation pays most: a small molecule's call is per-operation overhead
  (``compile_probe.py --gas``, ``bench_openmm.py --gas``).
- A larger molecule: the whole energy call compiled, forces by autograd through it; dynamo
  splits it where the graph builder's sizes depend on the data.
- A periodic cell wide enough for minimum images (``CellPlan.wide``: every plane spacing
  above twice the search radius, e.g. 64 waters or more): energy and gradients in one graph
  as for a molecule, on ``graph.wide_cell_graph``'s fixed-width layouts (a graph per atom
  count and slot width). The width is the widest layout the first call needed plus a margin;
  every call reports the width it needed, and one that needed more is recomputed with a wider
  layout (compiled anew), so a result is never cut short.
- Any other periodic system (a cell narrower than that, or where the fused graph failed): the
  attention blocks and the energy head only, compiled once with symbolic sizes (the slot count
  P changes as neighbours come and go, and a new atom count needs no new graph either);
  featurization stays eager. On 2 CPU cores this gains 1.15-1.3x at 64 waters
  (``benchmarks/RESULTS.md``).

On the CPU, every path's neighbourhood attention calls the fused kernel of
``allscaip.slot_kernel`` (where it builds; else inductor's kernels).

Inference only: force training differentiates twice, which compiled graphs do not support.
"""

from __future__ import annotations

import logging
import time
import warnings

import torch

from allscaip.graph import has_fixed_shapes, wide_cell_graph
from allscaip.model import apply_strain  # model.py imports this module lazily (no cycle)

logger = logging.getLogger(__name__)

SLOT_MARGIN = 3  # slots beyond the widest layout seen, so that MD rarely has to widen (and recompile)


class CompiledEnergy:
    """The model's raw energy compiled on first use (the whole call for a molecule, the
    network for a periodic system), with its compilations counted and timed; any failure to
    compile (no C++ compiler, an unsupported operation) warns once and runs eagerly from then on."""

    def __init__(self, model):
        self.model = model
        self.compilations = 0  # graphs inductor compiled (a steady run adds none)
        self.compile_seconds: list[float] = []  # wall time of each call that compiled
        self.failed = False  # no compilation works: eager from then on
        self.fused_failed = False  # the fused molecule graph does not compile: autograd through __call__
        self.wide_failed = False  # the fused wide-cell graph does not compile: autograd through __call__
        self.wide_slots = 0  # slot width of the wide-cell layouts (0: not chosen yet)
        self._network = None
        self._whole = None
        self._fused = None
        self._wide_fused = None
        self.slot_kernel: bool | None = None  # the fused slot-attention kernel in use (None: not decided)

    def __getstate__(self) -> dict:
        """Picklable (PythonForce Systems are serialised): the compiled code is rebuilt on use."""
        return {"model": self.model, "failed": self.failed, "wide_slots": self.wide_slots}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model"])
        self.failed = state["failed"]
        self.wide_slots = state.get("wide_slots", 0)

    def _prepare(self) -> None:
        """Before the first compilation: let the neighbourhood attention use the fused CPU kernel
        (``allscaip.slot_kernel``) where it applies (frequency mask with equal blocks, at most
        ``MAX_HEAD_DIM`` channels per head, parameters on the CPU) and builds. An unpickled copy
        decides again on its first call, where it runs."""
        if self.slot_kernel is not None:
            return
        from allscaip import slot_kernel
        from allscaip.attention import NeighborhoodAttention

        layers = [m for m in self.model.modules() if isinstance(m, NeighborhoodAttention)]
        fits = all(m.use_freq_mask and len(set(m.frequency_repeats)) == 1
                   and sum(m.frequency_repeats) == m.src_attn.head_dim <= slot_kernel.MAX_HEAD_DIM for m in layers)
        on_cpu = all(p.device.type == "cpu" for p in self.model.parameters())
        self.slot_kernel = bool(layers) and fits and on_cpu and slot_kernel.available()
        self.model.backbone.use_slot_kernel = self.slot_kernel

    def _backend(self, graph_module, example_inputs, config_patches=None):
        from torch._inductor.compile_fx import compile_fx

        self.compilations += 1
        return compile_fx(graph_module, example_inputs, config_patches=config_patches)

    def _molecule_backend(self, graph_module, example_inputs):
        """A molecule's call is one small graph: inductor's C++ wrapper removes the Python
        wrapper's per-kernel cost (about 1.4x per call for a water molecule)."""
        return self._backend(graph_module, example_inputs, {"cpp_wrapper": True})

    def eager_energy(self, positions, atomic_numbers, cell, pbc, charge, spin, plan) -> torch.Tensor:
        """The raw energy without compilation (what every compiled path must equal)."""
        x, inputs = self.model.backbone.prepare(positions, atomic_numbers, cell, pbc, charge, spin, plan)
        return self.model.network_energy(x, inputs)

    def _periodic_energy(self, positions, atomic_numbers, cell, pbc, charge, spin, plan) -> torch.Tensor:
        x, inputs = self.model.backbone.prepare(positions, atomic_numbers, cell, pbc, charge, spin, plan)
        if self._network is None:  # symbolic sizes: new slot or atom counts do not recompile
            self._network = torch.compile(self.model.network_energy, backend=self._backend, dynamic=True)
        return self._network(x, inputs)

    def _molecule_gradients(self, positions, strain, atomic_numbers, cell, pbc, charge, spin, plan, count: int):
        """Raw energy and its gradients with respect to the positions and (``count`` 2) the strain."""
        def energy(p, s):
            strained_positions, strained_cell = apply_strain(p, cell, s)
            return self.eager_energy(strained_positions, atomic_numbers, strained_cell, pbc, charge, spin, plan)

        gradients, value = torch.func.grad_and_value(energy, argnums=(0, 1)[:count])(positions, strain)
        return value, gradients

    def wide_cell_energy(self, positions, atomic_numbers, cell, pbc, charge, spin, plan, n_slots: int):
        """Raw energy on ``wide_cell_graph``'s layouts of ``n_slots`` slots, and the slot count
        the layouts needed (what every compiled wide-cell call must equal, when it fits)."""
        backbone = self.model.backbone
        graph, needed = wide_cell_graph(positions, cell, pbc, backbone.cutoff, backbone.knn_k,
                                        backbone.rank_scale, backbone.lse_scale, backbone.knn_delta, n_slots)
        x, inputs = backbone.featurize(graph, positions, atomic_numbers, cell, pbc, charge, spin, plan)
        return self.model.network_energy(x, inputs), needed

    def _wide_gradients(self, positions, strain, atomic_numbers, cell, pbc, charge, spin, plan, n_slots: int,
                        count: int):
        """Raw energy, its gradients with respect to the positions and (``count`` 2) the strain,
        and the slot count the layouts needed. Forces alone (``count`` 1, e.g. OpenMM) are a
        graph of their own that skips the strain's gradient."""
        def energy(p, s):
            strained_positions, strained_cell = apply_strain(p, cell, s)
            return self.wide_cell_energy(strained_positions, atomic_numbers, strained_cell, pbc, charge, spin,
                                         plan, n_slots)

        gradients, (value, needed) = torch.func.grad_and_value(energy, argnums=(0, 1)[:count], has_aux=True)(
            positions, strain)
        return value, gradients, needed

    def _wide_call(self, positions, strain, atomic_numbers, cell, pbc, charge, spin, plan, count: int) -> tuple:
        """``_wide_gradients`` compiled, on layouts as wide as the system needs: the first call
        measures the width (eagerly, without gradients); a call whose layouts needed more slots
        than they had is recomputed wider."""
        backbone = self.model.backbone
        widest = backbone.knn_k + backbone.knn_delta
        if self.wide_slots == 0:
            with torch.no_grad():
                _, needed = self.wide_cell_energy(positions, atomic_numbers, cell, pbc, charge, spin, plan, widest)
            self.wide_slots = min(widest, int(needed) + SLOT_MARGIN)
        if self._wide_fused is None:
            self._wide_fused = torch.compile(self._wide_gradients, backend=self._molecule_backend, dynamic=False)
        while True:
            with torch.no_grad():
                value, gradients, needed = self._wide_fused(positions.detach(), strain.detach(), atomic_numbers,
                                                            cell, pbc, charge, spin, plan, self.wide_slots, count)
            if int(needed) <= self.wide_slots:
                return value, list(gradients)
            logger.info("a wide-cell layout needed %d slots (had %d): recomputing wider",
                        int(needed), self.wide_slots)
            self.wide_slots = min(widest, int(needed) + SLOT_MARGIN)

    def energy_and_gradients(self, positions, strain, atomic_numbers, cell, pbc, charge, spin, plan,
                             inputs: list) -> tuple:
        """Raw energy and its gradients with respect to ``inputs``: ``positions`` and, when the
        virial is wanted, ``strain`` (both leaves that require grad; see ``AllScAIP.forward``).
        A fixed-shape molecule runs ``_molecule_gradients`` compiled (a graph per atom count);
        everything else, and a molecule whose fused graph failed to compile, ``__call__`` and
        autograd."""
        self._prepare()
        backbone = self.model.backbone
        if (inputs and not self.failed and not self.fused_failed
                and has_fixed_shapes(positions.shape[0], plan, backbone.knn_k, backbone.knn_delta)):
            def fused():
                if self._fused is None:
                    self._fused = torch.compile(self._molecule_gradients, backend=self._molecule_backend,
                                                dynamic=False)
                with torch.no_grad():
                    value, gradients = self._fused(positions.detach(), strain.detach(), atomic_numbers, cell,
                                                   pbc, charge, spin, plan, len(inputs))
                return value, list(gradients)

            def unfused():
                return self.energy_and_gradients(positions, strain, atomic_numbers, cell, pbc, charge, spin,
                                                 plan, inputs)

            return self._guarded(fused, unfused, positions.shape[0], "fused_failed",
                                 "continuing with the compiled energy and autograd forces")
        if inputs and not self.failed and not self.wide_failed and plan.wide and any(plan.periodic):
            def wide():
                return self._wide_call(positions, strain, atomic_numbers, cell, pbc, charge, spin, plan, len(inputs))

            def network_only():
                return self.energy_and_gradients(positions, strain, atomic_numbers, cell, pbc, charge, spin,
                                                 plan, inputs)

            return self._guarded(wide, network_only, positions.shape[0], "wide_failed",
                                 "continuing with the compiled network and autograd forces")
        strained_positions, strained_cell = apply_strain(positions, cell, strain)
        value = self(strained_positions, atomic_numbers, strained_cell, pbc, charge, spin, plan)
        return value, list(torch.autograd.grad([value], inputs)) if inputs else []

    def __call__(self, positions, atomic_numbers, cell, pbc, charge, spin, plan) -> torch.Tensor:
        """Raw energy of strained positions and cell, differentiable by autograd."""
        arguments = (positions, atomic_numbers, cell, pbc, charge, spin, plan)
        self._prepare()
        if self.failed:
            return self.eager_energy(*arguments)

        def compiled():
            if any(plan.periodic):
                return self._periodic_energy(*arguments)
            if self._whole is None:  # automatic dynamic shapes: a molecule whose graph grows recompiles once
                self._whole = torch.compile(self.eager_energy, backend=self._molecule_backend)
            return self._whole(*arguments)

        return self._guarded(compiled, lambda: self.eager_energy(*arguments), positions.shape[0], "failed",
                             "continuing without compilation")

    def _guarded(self, compiled, fallback, n_atoms: int, flag: str, instead: str):
        """``compiled()``, timing any compilation it triggers; on any failure to compile warn
        once (saying what runs ``instead``), set the attribute ``flag`` so that this path is not
        tried again, and return ``fallback()``."""
        before, start = self.compilations, time.perf_counter()
        try:
            result = compiled()
        except Exception as error:  # noqa: BLE001 -- any compiler failure: fall back, say why
            setattr(self, flag, True)
            cause: BaseException = error
            while True:  # dynamo wraps the compiler's own error
                inner = getattr(cause, "inner_exception", None) or cause.__cause__
                if inner is None:
                    break
                cause = inner
            reason = (str(cause).strip().splitlines() or [""])[0]
            warnings.warn(f"torch.compile of the AllScAIP model failed ({type(cause).__name__}: {reason}); "
                          f"{instead}", RuntimeWarning, stacklevel=3)
            return fallback()
        if self.compilations > before:
            self.compile_seconds.append(time.perf_counter() - start)
            logger.info("compiled the AllScAIP model (%d graphs) for %d atoms in %.1f s",
                        self.compilations - before, n_atoms, self.compile_seconds[-1])
        return result
