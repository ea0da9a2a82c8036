"""``torch.compile`` (inductor) of the network for eager callers: the ASE calculator, OpenMM's
PythonForce and anything else holding an ``Evaluator`` with ``compile=True``.

Featurization (graph, features, input block) stays eager: the graph's sizes depend on the
data. The attention blocks and the energy head are compiled for fixed shapes; forces come
from autograd through both (inductor compiles the backward too). A new atom count or slot
count P compiles again, so this pays where shapes stay put, e.g. a gas-phase molecule, whose
slot count is fixed (see benchmarks/compile_probe.py and RESULTS.md). Inference only: force
training differentiates twice, which compiled graphs do not support.
"""

from __future__ import annotations

import logging
import time
import warnings

import torch

logger = logging.getLogger(__name__)


class CompiledNetwork:
    """``model.network_energy`` compiled on first use, with its compilations counted and timed;
    any failure to compile (no C++ compiler, an unsupported operation) warns once and runs
    eagerly from then on."""

    def __init__(self, model):
        self.model = model
        self.compilations = 0  # graphs inductor compiled (a steady run adds none)
        self.compile_seconds: list[float] = []  # wall time of each call that compiled
        self.failed = False
        self._function = None

    def __getstate__(self) -> dict:
        """Picklable (PythonForce Systems are serialised): the compiled code is rebuilt on use."""
        return {"model": self.model, "failed": self.failed}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model"])
        self.failed = state["failed"]

    def _backend(self, graph_module, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        self.compilations += 1
        return compile_fx(graph_module, example_inputs)

    def __call__(self, x: torch.Tensor, inputs) -> torch.Tensor:
        if self.failed:
            return self.model.network_energy(x, inputs)
        if self._function is None:
            self._function = torch.compile(self.model.network_energy, backend=self._backend, dynamic=False)
        before, start = self.compilations, time.perf_counter()
        try:
            energy = self._function(x, inputs)
        except Exception as error:  # noqa: BLE001 -- any compiler failure: fall back, say why
            self.failed = True
            cause: BaseException = error
            while True:  # dynamo wraps the compiler's own error
                inner = getattr(cause, "inner_exception", None) or cause.__cause__
                if inner is None:
                    break
                cause = inner
            reason = (str(cause).strip().splitlines() or [""])[0]
            warnings.warn(f"torch.compile of the AllScAIP network failed ({type(cause).__name__}: {reason}); "
                          "continuing without compilation", RuntimeWarning, stacklevel=2)
            return self.model.network_energy(x, inputs)
        if self.compilations > before:
            self.compile_seconds.append(time.perf_counter() - start)
            logger.info("compiled the AllScAIP network for %d atoms, %d slots in %.1f s",
                        x.shape[0], x.shape[1], self.compile_seconds[-1])
        return energy
