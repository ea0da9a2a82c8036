"""The MD segment loop every engine shares (OpenMM runs, LAMMPS protocol phases).

A run advances in segments of ``report_interval`` steps. After each segment the state is
checked (finite energy, temperature below a blow-up limit) and only a good state is written
(molecules collapsed into each other, ``allscaip.plugins.contacts``, give a warning),
in this order: a DCD frame, a CSV row, the checkpoint (written to a temporary file, then
renamed) and ``status.json`` with the checkpointed step. A resumed run continues from the step
of the state it read back and trims the DCD and CSV to it (``resume_outputs``), so an
interruption at any moment loses nothing and duplicates nothing. Engines supply a ``SegmentEngine``; the files are the same for all.
"""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import numpy as np

from allscaip.plugins import contacts

CSV_FIELDS = ["step", "time_ps", "potential_kJ_mol", "kinetic_kJ_mol", "total_kJ_mol",
              "temperature_K", "volume_nm3", "density_g_cm3", "ns_per_day"]


class SimulationExploded(RuntimeError):
    """The energy became non-finite or the temperature ran away."""


class CollapsedMolecules(RuntimeWarning):
    """Atoms of different molecules came closer than their covalent radii (the potential has
    no repulsion there): the run goes on, but its averages are not physical."""


class SegmentEngine(Protocol):
    """What the loop needs from an engine."""

    def advance(self, steps: int) -> None: ...

    def thermo_row(self, step: int, ns_per_day: float) -> dict:
        """A CSV_FIELDS row of the current state (kJ/mol, K, nm^3, g/cm^3)."""

    def frame(self) -> tuple[Any, Optional[Any]]:
        """Positions and box vectors (or None) as openmm.unit quantities, for the DCD."""

    def save_checkpoint(self, path: Path) -> None: ...


@dataclass
class SegmentFiles:
    """A run folder's outputs."""

    out: Path
    checkpoint: Path

    @property
    def status(self) -> Path:
        return self.out / "status.json"

    @property
    def table(self) -> Path:
        return self.out / "thermo.csv"

    @property
    def trajectory(self) -> Path:
        return self.out / "trajectory.dcd"


def truncate_dcd(path: Path, n_frames: int) -> None:
    """Keep the first ``n_frames`` frames of an OpenMM DCD file (header count updated). The frame
    size comes from the header (atom count, unit-cell flag), so a frame cut short by an
    interrupted write, which the header may already count, is dropped too."""
    with open(path, "r+b") as handle:
        handle.seek(8)
        stored = struct.unpack("<i", handle.read(4))[0]
        handle.seek(12)
        first_step, interval = struct.unpack("<ii", handle.read(8))
        handle.seek(48)
        has_cell = struct.unpack("<i", handle.read(4))[0] != 0
        handle.seek(92)
        comment_bytes = struct.unpack("<i", handle.read(4))[0]
        handle.seek(104 + comment_bytes)
        n_atoms = struct.unpack("<i", handle.read(4))[0]
        header = 104 + comment_bytes + 8  # the comment block, then 4, the atom count, 4
        frame_size = (56 if has_cell else 0) + 3 * (4 * n_atoms + 8)  # cell record, then x, y, z records
        size = os.path.getsize(path)
        keep = min(n_frames, (size - header) // frame_size)
        if stored == keep and size == header + keep * frame_size:
            return
        handle.truncate(header + keep * frame_size)
        handle.seek(8)
        handle.write(struct.pack("<i", keep))
        handle.seek(20)
        handle.write(struct.pack("<i", first_step + (keep - 1) * interval))


def trim_csv(path: Path, last_step: int) -> int:
    """Drop rows after ``last_step``; return the rows kept."""
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= last_step]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def trim_outputs(files: SegmentFiles, step: int) -> None:
    """Cut the CSV and DCD back to the checkpointed ``step`` before resuming."""
    truncate_dcd(files.trajectory, trim_csv(files.table, step))


def resume_outputs(files: SegmentFiles, restored: int, progress: Callable[[str], None]) -> int:
    """Prepare the outputs for a run resumed from a state at step ``restored`` (the step the
    engine read back with the checkpoint); return that step. Frames and rows are written before
    the checkpoint and ``status.json`` after it, so a run stopped between the last two writes has
    a checkpoint one report ahead of its status: it continues from the checkpoint, whose frame
    and row are on disk, and the status is brought up to date. A checkpoint behind its status
    cannot come from one run: an error."""
    status = json.loads(files.status.read_text())
    if restored < status["step"]:
        raise RuntimeError(f"{files.checkpoint} is at step {restored} but {files.status} records step "
                           f"{status['step']}: the files come from different runs; start the run again "
                           "in an empty folder")
    if restored > status["step"]:
        progress(f"{files.checkpoint} is at step {restored}, {files.status} at step {status['step']} (the run "
                 f"stopped between the two writes): continuing from step {restored}")
        files.status.write_text(json.dumps({**status, "step": restored}))
    trim_outputs(files, restored)
    return restored


def start_table(files: SegmentFiles) -> None:
    with open(files.table, "w", newline="") as handle:
        csv.DictWriter(handle, fieldnames=CSV_FIELDS).writeheader()


def run_segments(engine: SegmentEngine, files: SegmentFiles, topology, *, start: int, steps: int,
                 report_interval: int, timestep_fs: float, temperature: float,
                 max_temperature_factor: float, progress: Callable[[str], None]) -> int:
    """Advance ``engine`` from step ``start`` to ``steps``; return the last step written."""
    from openmm import app, unit

    append = start > 0 and files.trajectory.exists()
    handle = open(files.trajectory, "r+b" if append else "wb")
    dcd = app.DCDFile(handle, topology, timestep_fs * unit.femtoseconds, firstStep=report_interval,
                      interval=report_interval, append=append)
    limit = max_temperature_factor * temperature
    molecules = contacts.molecule_labels(topology)
    radii = contacts.covalent_radii(topology)
    periodic = topology.getPeriodicBoxVectors() is not None
    collapse_reported = False
    try:
        step = start
        wall_start = time.perf_counter()
        while step < steps:
            began = time.perf_counter()
            engine.advance(report_interval)
            step += report_interval
            ns_per_day = report_interval * timestep_fs * 1e-6 / (time.perf_counter() - began) * 86400
            row = engine.thermo_row(step, ns_per_day)
            if not math.isfinite(row["potential_kJ_mol"]) or row["temperature_K"] > limit:
                raise SimulationExploded(
                    f"step {step}: potential energy {row['potential_kJ_mol']:.4g} kJ/mol, temperature "
                    f"{row['temperature_K']:.4g} K (limit {limit:.0f} K). The simulation is unstable: "
                    "reduce --timestep, check the starting structure and that the model covers it. "
                    f"The last good state is in {files.checkpoint}.")
            positions, box = engine.frame()
            if molecules is not None:
                contact = contacts.closest_contact(
                    np.asarray(positions.value_in_unit(unit.angstrom)),
                    np.asarray(box.value_in_unit(unit.angstrom)) if periodic and box is not None else None,
                    molecules, radii)
                if contact.ratio < 1.0 and not collapse_reported:  # reported once per run
                    message = f"step {step}: {contacts.collapse_message(contact, topology)}"
                    warnings.warn(message, CollapsedMolecules)
                    progress(f"WARNING {message}")
                    collapse_reported = True
            dcd.writeModel(positions, periodicBoxVectors=box)
            handle.flush()
            with open(files.table, "a", newline="") as stream:
                csv.DictWriter(stream, fieldnames=CSV_FIELDS).writerow(row)
            temporary = files.checkpoint.with_name(files.checkpoint.name + ".tmp")
            engine.save_checkpoint(temporary)
            os.replace(temporary, files.checkpoint)
            files.status.write_text(json.dumps({"step": step, "steps": steps}))
            done = (step - start) / (steps - start)
            remaining = (time.perf_counter() - wall_start) * (1 - done) / done
            progress(f"step {step}/{steps}  E_pot {row['potential_kJ_mol']:.2f} kJ/mol  "
                     f"T {row['temperature_K']:.1f} K  {ns_per_day:.3f} ns/day  {100 * done:.0f}%  "
                     f"remaining {remaining:.0f} s")
    finally:
        handle.close()
    return step
