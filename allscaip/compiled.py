"""``torch.compile`` (inductor) of the model's energy for eager callers: the ASE calculator,
OpenMM's PythonForce and anything else holding an ``Evaluator`` with ``compile=True``.

- A molecule (no periodic axis): the whole call, featurization included, with inductor's C++
  wrapper. Up to k + delta atoms the graph has fixed shapes (``graph.molecule_graph``), so the
  call is one graph that compiles once; larger molecules are split by dynamo where the graph
  builder's sizes depend on the data. This is where compilation pays most: a small molecule's
  call is per-operation overhead (a gas-phase water: ~3x faster per call, ``compile_probe.py
  --gas``; ~4x per OpenMM step against TorchForce, ``bench_openmm.py --gas``).
- A periodic system: the attention blocks and the energy head only. Its graph's sizes change
  every step, so featurization stays eager; a new atom count or slot count P compiles again.

Forces come from autograd through the compiled graphs (inductor compiles the backward too).
Inference only: force training differentiates twice, which compiled graphs do not support.
"""

from __future__ import annotations

import logging
import time
import warnings

import torch

logger = logging.getLogger(__name__)


class CompiledEnergy:
    """The model's raw energy compiled on first use (the whole call for a molecule, the
    network for a periodic system), with its compilations counted and timed; any failure to
    compile (no C++ compiler, an unsupported operation) warns once and runs eagerly from then on."""

    def __init__(self, model):
        self.model = model
        self.compilations = 0  # graphs inductor compiled (a steady run adds none)
        self.compile_seconds: list[float] = []  # wall time of each call that compiled
        self.failed = False
        self._network = None
        self._whole = None

    def __getstate__(self) -> dict:
        """Picklable (PythonForce Systems are serialised): the compiled code is rebuilt on use."""
        return {"model": self.model, "failed": self.failed}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model"])
        self.failed = state["failed"]

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
        if self._network is None:
            self._network = torch.compile(self.model.network_energy, backend=self._backend, dynamic=False)
        return self._network(x, inputs)

    def __call__(self, positions, atomic_numbers, cell, pbc, charge, spin, plan) -> torch.Tensor:
        arguments = (positions, atomic_numbers, cell, pbc, charge, spin, plan)
        if self.failed:
            return self.eager_energy(*arguments)
        before, start = self.compilations, time.perf_counter()
        try:
            if any(plan.periodic):
                energy = self._periodic_energy(*arguments)
            else:
                if self._whole is None:  # automatic dynamic shapes: a molecule whose graph grows recompiles once
                    self._whole = torch.compile(self.eager_energy, backend=self._molecule_backend)
                energy = self._whole(*arguments)
        except Exception as error:  # noqa: BLE001 -- any compiler failure: fall back, say why
            self.failed = True
            cause: BaseException = error
            while True:  # dynamo wraps the compiler's own error
                inner = getattr(cause, "inner_exception", None) or cause.__cause__
                if inner is None:
                    break
                cause = inner
            reason = (str(cause).strip().splitlines() or [""])[0]
            warnings.warn(f"torch.compile of the AllScAIP model failed ({type(cause).__name__}: {reason}); "
                          "continuing without compilation", RuntimeWarning, stacklevel=2)
            return self.eager_energy(*arguments)
        if self.compilations > before:
            self.compile_seconds.append(time.perf_counter() - start)
            logger.info("compiled the AllScAIP model (%d graphs) for %d atoms in %.1f s",
                        self.compilations - before, positions.shape[0], self.compile_seconds[-1])
        return energy
