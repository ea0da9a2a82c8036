"""AllScAIP inside a running LAMMPS instance, through ``fix external pf/callback``.

LAMMPS keeps ``pair_style zero`` (for neighbour lists and ghost atoms); every step the
callback gathers the whole system (node attention is global), evaluates the model and
hands LAMMPS the forces of its local atoms, the energy and the global virial
(xx, yy, zz, xy, xz, yz; sum of r_i f_i in energy units, i.e. -dE/dstrain).

Under MPI every rank gathers the full system (an allgather by atom ID), rank 0 evaluates the
model once and broadcasts energy, virial and forces (mpi4py), and each rank keeps its own
atoms' forces. Every rank reports the *whole* energy and virial: fix external's energy is
per-rank global (not summed; minimize uses it on every rank), and LAMMPS averages the global
virial of this fix over ranks (measured: rank 0 alone gives half the pressure under
``mpirun -np 2``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_numbers as ATOMIC_NUMBERS

from allscaip.evaluator import Evaluator
from allscaip.io import load_model

EV_IN = {"metal": 1.0, "real": 23.060547830619026}  # energy unit per eV (real: kcal/mol)
_ATTACHED: dict[int, "AllScAIPBridge"] = {}  # keeps callbacks alive while LAMMPS runs


def h_matrix(boxlo, boxhi, xy, yz, xz) -> np.ndarray:
    """LAMMPS restricted-triclinic box -> cell with rows a=(lx,0,0), b=(xy,ly,0), c=(xz,yz,lz)."""
    lx, ly, lz = (boxhi[k] - boxlo[k] for k in range(3))
    return np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])


def virial_voigt(virial: np.ndarray) -> list[float]:
    """3x3 virial -> LAMMPS order xx, yy, zz, xy, xz, yz."""
    return [virial[0, 0], virial[1, 1], virial[2, 2], virial[0, 1], virial[0, 2], virial[1, 2]]


def element_numbers(elements: list[str]) -> list[int]:
    numbers = []
    for symbol in elements:
        if symbol not in ATOMIC_NUMBERS or symbol == "X":
            raise ValueError(f"pair_coeff: unknown element {symbol!r}; give chemical symbols "
                             "such as O H C, one per atom type")
        numbers.append(ATOMIC_NUMBERS[symbol])
    return numbers


@dataclass
class BridgeSettings:
    model: str
    elements: list[str]
    charge: int = 0
    spin: int = 1
    dtype: str = "float64"
    device: str = "cpu"
    threads: int = 0  # 0: the cores available to this process, shared among its MPI ranks
    fix_id: str = "allscaip"
    block: int | None = None  # node attention query block (0: dense; None: the model's setting)


class AllScAIPBridge:
    """Owns the model and the fix-external callback of one LAMMPS instance."""

    def __init__(self, lmp, settings: BridgeSettings):
        self.lmp = lmp
        self.settings = settings
        units = lmp.extract_global("units")
        if units not in EV_IN:
            raise ValueError(f"pair_style allscaip supports 'units metal' and 'units real', "
                             f"not 'units {units}'")
        self.energy_unit = EV_IN[units]
        n_types = lmp.extract_global("ntypes")
        if len(settings.elements) != n_types:
            raise ValueError(f"pair_coeff * * lists {len(settings.elements)} elements for {n_types} "
                             "atom types: give exactly one element per type, in type order")
        self.type_numbers = np.array([0] + element_numbers(settings.elements))
        self.dtype = getattr(torch, settings.dtype)
        self.device = torch.device(settings.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("pair_style allscaip: device cuda asked for, but torch sees no GPU")
        self.model = load_model(settings.model, dtype=self.dtype, device=self.device)
        if settings.block is not None:
            self.model.set_node_attention_block_size(settings.block)
        highest = min(self.model.max_atomic_number, self.model.element_references.numel() - 1)
        unsupported = [e for e, z in zip(settings.elements, self.type_numbers[1:]) if z > highest]
        if unsupported:
            raise ValueError(f"elements {unsupported} are not supported by {settings.model} "
                             f"(Z = 1..{highest})")
        self.rank = lmp.extract_setting("world_rank")
        self.comm = None
        if lmp.extract_setting("world_size") > 1:
            from mpi4py import MPI

            self.comm = MPI.COMM_WORLD
        # LAMMPS sets OpenMP to one thread at start-up, which would also serialise torch.
        self.threads = settings.threads or max(
            1, len(os.sched_getaffinity(0)) // lmp.extract_setting("world_size"))
        self.evaluator: Evaluator | None = None  # built for the run's atom types and periodicity
        self.evaluator_key: tuple = ()

    def mapping_table(self) -> str:
        rows = [f"  type {t} -> {e} (Z={z})" for t, (e, z) in
                enumerate(zip(self.settings.elements, self.type_numbers[1:]), start=1)]
        block = self.model.backbone.block_size
        attention = f"node attention in query blocks of {block}" if block else "dense node attention"
        return (f"allscaip: {self.settings.model}, {self.settings.dtype} on {self.device}, {attention}, "
                f"{self.threads} torch thread(s) per rank\n"
                "allscaip: atom type -> element\n" + "\n".join(rows))

    def evaluator_for(self, types: np.ndarray, periodicity) -> Evaluator:
        """The evaluator of these atom types and periodic axes (rebuilt only when they change,
        e.g. after a ``set type`` between runs)."""
        key = (types.tobytes(), tuple(bool(p) for p in periodicity))
        if self.evaluator is None or key != self.evaluator_key:
            self.evaluator = Evaluator(self.model, self.type_numbers[types].tolist(), pbc=key[1],
                                       charge=self.settings.charge, spin=self.settings.spin, dtype=self.dtype,
                                       device=self.device, energy_unit=self.energy_unit)
            self.evaluator_key = key
        return self.evaluator

    def evaluate(self, positions: np.ndarray, types: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Model on the gathered system; energy, forces, virial in LAMMPS units."""
        if self.model.direct_forces:
            raise RuntimeError("this direct-force model has no virial: pressure and NPT need a "
                               "conserving model")
        boxlo, boxhi, xy, yz, xz, periodicity, _ = self.lmp.extract_box()
        evaluator = self.evaluator_for(types, periodicity)
        as_tensor = lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)
        energy, forces, virial = evaluator(as_tensor(positions), as_tensor(h_matrix(boxlo, boxhi, xy, yz, xz)),
                                           True)
        return (float(energy), forces.to("cpu", torch.float64).numpy(),
                virial.to("cpu", torch.float64).numpy())

    def evaluate_on_rank_zero(self, positions: np.ndarray, types: np.ndarray):
        """Rank 0 evaluates, every rank receives (energy, virial, forces) in one broadcast."""
        packet = np.full(10 + positions.size, np.nan)
        failure = None
        if self.rank == 0:
            try:
                energy, forces, virial = self.evaluate(positions, types)
                packet[0], packet[1:10], packet[10:] = energy, virial.ravel(), forces.ravel()
            except Exception as exc:  # tell the other ranks instead of leaving them waiting
                failure = exc
        self.comm.Bcast(packet, root=0)
        if failure is not None:
            raise failure
        if np.isnan(packet[0]):
            raise RuntimeError("the AllScAIP evaluation failed on rank 0 (see its error)")
        return packet[0], packet[10:].reshape(-1, 3), packet[1:10].reshape(3, 3)

    def callback(self, caller, step, nlocal, tag, x, f) -> None:
        lmp = self.lmp
        torch.set_num_threads(self.threads)
        positions = np.ctypeslib.as_array(lmp.gather_atoms("x", 1, 3)).reshape(-1, 3)
        types = np.ctypeslib.as_array(lmp.gather_atoms("type", 0, 1))
        if self.comm is None:
            energy, forces, virial = self.evaluate(positions, types)
        else:
            energy, forces, virial = self.evaluate_on_rank_zero(positions, types)
        f[:] = forces[np.asarray(tag) - 1]
        lmp.fix_external_set_energy_global(self.settings.fix_id, energy)
        lmp.fix_external_set_virial_global(self.settings.fix_id, virial_voigt(virial))


def attach(lmp, model: str | Path, elements: list[str], *, charge: int = 0, spin: int = 1,
           dtype: str = "float64", device: str = "cpu", threads: int = 0, fix_id: str = "allscaip",
           verbose: bool = True, block: int | None = None) -> AllScAIPBridge:
    """Make AllScAIP the potential of ``lmp`` (box and atoms must exist; atom IDs 1..N).

    Issues ``pair_style zero``, ``pair_coeff * *``, ``fix ID all external pf/callback 1 1``
    and ``fix_modify ID energy yes virial yes``; ``elements`` maps atom types 1..ntypes;
    ``device``: cpu or cuda; ``block``: node attention query block (0: dense).
    """
    settings = BridgeSettings(str(model), list(elements), charge, spin, dtype, device, threads, fix_id, block)
    return attach_settings(lmp, settings, verbose=verbose)


def attach_settings(lmp, settings: BridgeSettings, verbose: bool = True) -> AllScAIPBridge:
    """``attach`` with every option in one ``BridgeSettings`` (as parsed from a deck)."""
    bridge = AllScAIPBridge(lmp, settings)
    fix_id = settings.fix_id
    cutoff = bridge.model.config.max_radius
    lmp.commands_list([f"pair_style zero {cutoff}", "pair_coeff * *",
                       f"fix {fix_id} all external pf/callback 1 1",
                       f"fix_modify {fix_id} energy yes virial yes"])
    lmp.set_fix_external_callback(fix_id, bridge.callback)
    _ATTACHED[id(lmp)] = bridge
    if verbose and bridge.rank == 0:
        print(bridge.mapping_table(), flush=True)
    return bridge
