"""The liquid-property protocol: build boxes, run liquid (NPT) and gas (NVT) phases per
replica, extend production until target uncertainties are met, analyse, plot, report.

Folder layout (``--out``): ``settings.json``, ``gas.pdb``, ``replica-K/{box.pdb, liquid/,
gas/}`` (each phase folder: thermo.csv, trajectory.dcd, checkpoint, status.json), then
``report.json``, ``summary.md``, ``timeseries.csv``, ``rdf.csv`` and ``plots/*.png``.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from allscaip.protocols import analysis, boxes, refdata
from allscaip.protocols.engines import Phase, completed_steps, run_phase
from allscaip.protocols.molecules import Molecule, load_molecule
from allscaip.protocols.settings import ProtocolSettings

EXTENSION_FRACTION = 0.25  # each extension adds this fraction of the production length
DEFAULT_MAX_FACTOR = 4.0  # without --max-production, extend to at most 4x production
WALL_TIME_INTERVAL = 60.0  # seconds between writes of wall_time.json while phases run


class Progress:
    """Reporter lines, at most one per ``interval`` seconds per phase (plus notices)."""

    def __init__(self, interval: float = 10.0, echo=print):
        self.interval, self.echo, self.prefix, self.last = interval, echo, "", 0.0

    def phase(self, prefix: str) -> None:
        self.prefix, self.last = prefix, 0.0

    def __call__(self, line: str) -> None:
        now = time.monotonic()
        if not line.startswith("step") or now - self.last >= self.interval:
            self.echo(f"[{self.prefix}] {line}" if self.prefix else line, flush=True)
            self.last = now


def model_elements(model) -> tuple[set[str], str]:
    """Elements a model covers and how that was decided: its metadata's ``elements`` list;
    else the elements with a fitted (non-zero) reference energy -- a trained model fits
    references only for the elements of its data; else every Z the embedding accepts."""
    from ase.data import chemical_symbols

    listed = model.metadata.get("elements")
    if listed:
        return {chemical_symbols[e] if isinstance(e, int) else str(e) for e in listed}, "its metadata"
    highest = min(model.max_atomic_number, model.element_references.numel() - 1)
    fitted = [int(z) for z in model.element_references[1:highest + 1].nonzero().flatten() + 1]
    if fitted:
        return {chemical_symbols[z] for z in fitted}, "its element reference energies"
    return set(chemical_symbols[1:highest + 1]), f"its embedding (Z = 1..{highest})"


def check_model_elements(model_path: str, molecule: Molecule):
    """Load the model; raise ValueError when it does not cover the molecule's elements."""
    from allscaip.io import load_model

    model = load_model(model_path)
    covered, basis = model_elements(model)
    missing = sorted(set(molecule.symbols) - covered)
    if missing:
        shown = ", ".join(sorted(covered)) if len(covered) < 20 else f"{len(covered)} elements"
        raise ValueError(f"model {model_path} does not cover element(s) {', '.join(missing)} of "
                         f"{molecule.name}: it covers {shown} (from {basis})")
    return model


def start_density(settings: ProtocolSettings, experiment: dict | None) -> float:
    if settings.start_density is not None:
        return settings.start_density
    if experiment and experiment["density_g_cm3"]:
        return boxes.START_FRACTION * experiment["density_g_cm3"]
    return boxes.DEFAULT_START_DENSITY


def make_phase(settings: ProtocolSettings, kind: str, pdb: Path, out: Path, steps: int, seed: int) -> Phase:
    liquid = kind == "liquid"
    return Phase(name=kind, pdb=pdb, out=out, model=settings.model, ensemble="npt" if liquid else "nvt",
                 steps=steps, temperature=settings.temperature, pressure=settings.pressure,
                 timestep=settings.timestep, report_interval=settings.report_interval,
                 friction=settings.friction if liquid else settings.gas_friction, seed=seed,
                 charge=settings.charge, spin=settings.spin, hydrogen_mass=settings.hydrogen_mass,
                 precision=settings.precision,
                 backend="python" if settings.compile else "torchforce",
                 compile=settings.compile,
                 # one molecule: OpenMM's Reference platform has far less overhead than CPU
                 platform=settings.platform if liquid else "Reference",
                 barostat_interval=settings.barostat_interval,
                 # a single molecule's instantaneous temperature has only ~3N-3 degrees of
                 # freedom and fluctuates far more than a liquid's
                 max_temperature_factor=5.0 if liquid else 25.0, forcefield=settings.forcefield)


def replica_folder(settings: ProtocolSettings, replica: int) -> Path:
    return Path(settings.out) / f"replica-{replica}"


def run_replica(settings: ProtocolSettings, replica: int, liquid_steps: int, gas_steps: int,
                progress: Progress | None = None, threads: int | None = None) -> None:
    """Run (or continue) one replica's liquid and gas phases to the given lengths (in a
    worker process: with ``threads`` threads)."""
    if threads is not None:
        use_threads(threads)
    progress = progress or Progress()
    folder = replica_folder(settings, replica)
    phases = [make_phase(settings, "liquid", folder / "box.pdb", folder / "liquid", liquid_steps,
                         settings.seed + 2 * replica)]
    if settings.needs_gas:
        phases.append(make_phase(settings, "gas", Path(settings.out) / "gas.pdb", folder / "gas", gas_steps,
                                 settings.seed + 2 * replica + 1))
    for phase in phases:
        progress.phase(f"replica {replica + 1}/{settings.replicas} {phase.name} {settings.engine}")
        run_phase(settings.engine, phase, progress)


def replica_threads(replicas: int, workers: int, cores: int) -> list[int]:
    """Threads of each replica's job when ``workers`` run at once: an equal share of the
    cores; the jobs of an incomplete last round (replicas not a multiple of workers) run
    with fewer beside them, so they share the cores among themselves."""
    last_round = replicas % workers
    shares = [max(1, cores // workers)] * (replicas - last_round)
    if last_round:
        shares += [max(1, cores // last_round)] * last_round
    return shares


def use_threads(threads: int) -> None:
    """In a worker process: torch, OpenMP and OpenMM's CPU platform use ``threads`` threads."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENMM_CPU_THREADS"):
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)


def read_thermo(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path} holds no samples")
    return {key: np.array([float(r[key]) for r in rows]) for key in rows[0]}


def production_windows(tables: list[dict[str, np.ndarray]], burn_in_ps: float,
                       observables: list[dict[str, np.ndarray]]) -> list[dict]:
    """The production window of one phase in each replica of a run (``tables``, with each
    replica's ``observables``): discard ``burn_in_ps``, then detect equilibration on all
    observables and replicas jointly (``analysis.common_start``), so every replica starts at
    the same time. Returns each replica's window and production series (``series``), not yet
    estimated."""
    firsts = [int(np.searchsorted(t["time_ps"], burn_in_ps, side="right")) for t in tables]
    remaining = min(len(t["time_ps"]) - first for t, first in zip(tables, firsts))
    if remaining < analysis.MIN_SAMPLES:
        raise ValueError(f"only {remaining} samples after the {burn_in_ps} ps equilibration; "
                         f"production needs at least {analysis.MIN_SAMPLES} reports")
    offset = analysis.common_start([[values[first:] for values, first in zip(column, firsts)]
                                    for column in zip(*(o.values() for o in observables))])
    # never discard more than MAX_EQUILIBRATION_FRACTION of the production; a later detection
    # makes the run "still relaxing" (not converged), see analysis.relaxing_problem
    limit = int(analysis.MAX_EQUILIBRATION_FRACTION * remaining)
    windows = []
    for table, first, values in zip(tables, firsts, observables):
        times = table["time_ps"]
        start = first + min(offset, limit)
        at = lambda index: float(times[index - 1]) if index > 0 else 0.0
        windows.append({
            "t_equil_ps": at(start), "t_equil_detected_ps": at(first + offset),
            "equilibration_capped": offset > limit, "start_index": start,
            "n_samples": int(len(times) - start), "length_ps": float(times[-1]),
            "production_ps": float(times[-1]) - at(start), "ns_per_day": float(np.median(table["ns_per_day"])),
            "series": {name: np.asarray(v[start:], dtype=float) for name, v in values.items()}})
    return windows


def estimate_phases(phases: list[dict]) -> None:
    """Estimate every observable of the same phase of several replicas, in place: with two or
    more replicas each replica's error uses the statistical inefficiency pooled over all of
    them (``analysis.pooled_statistical_inefficiency``); a single replica has only its own."""
    for name in phases[0]["series"]:
        series = [phase["series"][name] for phase in phases]
        pooled = analysis.pooled_statistical_inefficiency(series) if len(series) > 1 else None
        for phase, values in zip(phases, series):
            phase[name] = analysis.estimate(values, pooled).as_dict()
    for phase in phases:
        del phase["series"]


class LiquidProtocol:
    """One protocol run in ``settings.out`` (see the module docstring)."""

    def __init__(self, settings: ProtocolSettings, progress: Progress | None = None):
        self.settings = settings
        self.out = Path(settings.out)
        self.progress = progress or Progress()
        self.molecule = load_molecule(settings.molecule, settings.charge, settings.spin, settings.name)
        self.experiment = refdata.experiment(self.molecule.name)
        self.references = refdata.reference_models(self.molecule.name)
        self.model = None if settings.forcefield else check_model_elements(settings.model, self.molecule)
        self.began = time.perf_counter()
        self.previous_wall = 0.0

    # -- running -------------------------------------------------------------------------
    def replica_dir(self, replica: int) -> Path:
        return replica_folder(self.settings, replica)

    def prepare(self) -> None:
        s = self.settings
        self.out.mkdir(parents=True, exist_ok=True)
        s.to_json(self.out / "settings.json")
        wall = self.out / "wall_time.json"
        self.previous_wall = json.loads(wall.read_text())["seconds"] if wall.exists() else 0.0
        if s.needs_gas and not (self.out / "gas.pdb").exists():
            boxes.build_gas(self.molecule, self.out / "gas.pdb")
        density = start_density(s, self.experiment)
        for replica in range(s.replicas):
            box = self.replica_dir(replica) / "box.pdb"
            if not box.exists():
                box.parent.mkdir(parents=True, exist_ok=True)
                boxes.build_liquid(self.molecule, s.n_molecules, density, s.seed + replica, box)

    def wall_time(self) -> float:
        total = self.previous_wall + time.perf_counter() - self.began
        (self.out / "wall_time.json").write_text(json.dumps({"seconds": total}))
        return total

    @contextmanager
    def wall_clock(self):
        """Keep ``wall_time.json`` current while phases run, so that a killed run (a session's
        end, SIGKILL) loses at most WALL_TIME_INTERVAL seconds of its wall time when resumed."""
        stop = threading.Event()

        def beat():
            while not stop.wait(WALL_TIME_INTERVAL):
                self.wall_time()

        thread = threading.Thread(target=beat, name="wall-clock", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.wall_time()

    def run_phases(self, liquid_steps: int, gas_steps: int) -> None:
        """Run every replica's phases to the given lengths: one after another, or with
        ``workers`` > 1 that many replicas at once in worker processes."""
        with self.wall_clock():
            self._run_phases(liquid_steps, gas_steps)

    def _run_phases(self, liquid_steps: int, gas_steps: int) -> None:
        s = self.settings
        workers = min(s.workers, s.replicas)
        if workers == 1:
            for replica in range(s.replicas):
                run_replica(s, replica, liquid_steps, gas_steps, self.progress)
            return
        import torch

        cores = torch.get_num_threads()  # the cores, or OMP_NUM_THREADS
        shares = replica_threads(s.replicas, workers, cores)
        self.progress(f"{s.replicas} replicas on {workers} worker processes, "
                      f"{'/'.join(str(t) for t in sorted(set(shares)))} thread(s) each")
        # spawn, not fork: the parent may hold torch/OpenMP thread pools
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [pool.submit(run_replica, s, replica, liquid_steps, gas_steps, None, threads)
                    for replica, threads in enumerate(shares)]
            for job in jobs:
                job.result()  # re-raises a worker's error (e.g. SimulationExploded)

    def completed(self, kind: str) -> int:
        return min(completed_steps(self.replica_dir(r) / kind) for r in range(self.settings.replicas))

    def run(self) -> dict:
        """Simulate (resuming whatever is in the folder), extend if needed, report."""
        s = self.settings
        self.prepare()
        liquid_steps = max(s.steps(s.equilibration + s.production), self.completed("liquid"))
        gas_steps = max(s.steps(s.gas_equilibration + s.gas_production), self.completed("gas")) if s.needs_gas else 0
        max_production = s.max_production or DEFAULT_MAX_FACTOR * s.production
        chunk = s.steps(EXTENSION_FRACTION * s.production)
        while True:
            self.run_phases(liquid_steps, gas_steps)
            results = self.analyse()
            extend = self.needs_extension(results)
            if extend is None:
                break
            if extend == "liquid":
                if liquid_steps + chunk > s.steps(s.equilibration + max_production):
                    self.progress(f"target uncertainty not reached within --max-production {max_production} ps")
                    break
                liquid_steps += chunk
            else:
                if gas_steps + chunk > s.steps(s.gas_equilibration + DEFAULT_MAX_FACTOR * s.gas_production):
                    self.progress("target uncertainty not reached within the gas-phase limit")
                    break
                gas_steps += chunk
            self.progress(f"uncertainty above target: extending the {extend} phase to {liquid_steps if extend == 'liquid' else gas_steps} steps")
        from allscaip.protocols.report import write_outputs

        return write_outputs(self, results)

    def needs_extension(self, results: dict) -> str | None:
        """Which phase to extend to meet the tolerances (None when met or none set). With a
        tolerance set, a run that is not converged by the report's rule is extended first."""
        s = self.settings
        if s.density_tolerance is None and s.hvap_tolerance is None:
            return None
        unconverged = {phase for r in results["replicas"] for phase in r["unconverged_phases"]}
        if unconverged:
            return "liquid" if "liquid" in unconverged else "gas"
        if s.density_tolerance is not None and results["density_g_cm3"]["stderr"] > s.density_tolerance:
            return "liquid"
        if s.needs_gas and s.hvap_tolerance is not None and results["hvap_kj_mol"]["stderr"] > s.hvap_tolerance:
            liquid_part = np.mean([r["liquid"]["potential_per_molecule"]["stderr"] for r in results["replicas"]])
            gas_part = np.mean([r["gas"]["potential"]["stderr"] for r in results["replicas"]])
            return "gas" if gas_part > liquid_part else "liquid"
        return None

    # -- analysis ------------------------------------------------------------------------
    def analyse(self) -> dict:
        s = self.settings
        replicas = analyse_replicas(self, list(range(s.replicas)))
        results = {"replicas": replicas, "density_g_cm3": analysis.combine_replicas(
            [(r["density_g_cm3"]["mean"], r["density_g_cm3"]["stderr"]) for r in replicas])}
        if s.needs_gas:
            results["hvap_kj_mol"] = analysis.combine_replicas(
                [(r["hvap_kj_mol"]["mean"], r["hvap_kj_mol"]["stderr"]) for r in replicas])
        return results


def analyse_replicas(protocol: LiquidProtocol, indices: list[int]) -> list[dict]:
    """Estimates of the replicas ``indices`` from their stored time series, analysed together
    as one protocol run: liquid (and gas) phase statistics, density, ΔHvap and the pV term, and
    each replica's convergence verdict."""
    s = protocol.settings
    folders = [protocol.replica_dir(replica) for replica in indices]
    tables = [read_thermo(folder / "liquid" / "thermo.csv") for folder in folders]
    liquids = production_windows(tables, s.equilibration, [{
        "density": t["density_g_cm3"], "potential_per_molecule": t["potential_kJ_mol"] / s.n_molecules,
        "volume_nm3": t["volume_nm3"]} for t in tables])
    entries = [{"replica": replica, "liquid": liquid} for replica, liquid in zip(indices, liquids)]
    gases = []
    if s.needs_gas:
        tables = [read_thermo(folder / "gas" / "thermo.csv") for folder in folders]
        gases = production_windows(tables, s.gas_equilibration, [{"potential": t["potential_kJ_mol"]}
                                                                  for t in tables])
        for entry, gas in zip(entries, gases):
            entry["gas"] = gas
    estimate_phases(liquids)
    if gases:
        estimate_phases(gases)
    for entry in entries:
        liquid = entry["liquid"]
        entry["density_g_cm3"] = {k: liquid["density"][k] for k in ("mean", "stderr")}
        entry["pv_term_kj_mol"] = analysis.pv_term(s.pressure, liquid["volume_nm3"]["mean"], s.n_molecules)
        if "gas" in entry:
            entry["hvap_kj_mol"] = analysis.hvap(analysis.Estimate.from_dict(entry["gas"]["potential"]),
                                                 analysis.Estimate.from_dict(liquid["potential_per_molecule"]),
                                                 s.temperature)
        problems = replica_problems(entry, s)
        entry["problems"] = [text for _, text in problems]
        entry["unconverged_phases"] = sorted({phase for phase, _ in problems})
        entry["converged"] = not problems
    return entries


def replica_problems(entry: dict, s: ProtocolSettings) -> list[tuple[str, str]]:
    """(phase, reason) for each estimate of this replica that is not converged by the rule of
    ``analysis.convergence_problems`` (empty when all are)."""
    phases = [("liquid", entry["liquid"], ["density", "potential_per_molecule"])]
    if "gas" in entry:
        phases.append(("gas", entry["gas"], ["potential"]))
    problems = []
    for phase_name, phase, names in phases:
        relaxing = analysis.relaxing_problem(phase)
        if relaxing:
            problems.append((phase_name, f"{phase_name} (all replicas): {relaxing}"))
        for name in names:
            problems += [(phase_name, f"replica {entry['replica'] + 1} {phase_name} {name}: {p}")
                         for p in analysis.convergence_problems(phase[name])]
    return problems
