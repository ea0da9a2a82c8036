"""Model predictions on labelled frames and the usual error metrics.

Metrics (what MLIP papers report): energy per atom MAE/RMSE (meV/atom), force component
MAE/RMSE (meV/A) and its ratio to the labels' RMS force, stress component MAE/RMSE
(meV/A^3) and the MAE's ratio to the labels' stress spread (standard deviation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from allscaip.batch import evaluate_batch
from allscaip.data import Frame, batches
from allscaip.model import AllScAIP

BAR_PER_EV_A3 = 1.602176634e6  # 1 eV/A^3 = 160.2176634 GPa


@dataclass
class FrameTensors:
    """A frame as model inputs and labels (stress as -virial/V, ASE sign)."""

    positions: torch.Tensor
    numbers: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    charge: torch.Tensor
    spin: torch.Tensor
    energy: float
    forces: torch.Tensor | None
    stress: torch.Tensor | None

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    def __len__(self) -> int:
        return self.n_atoms


def frame_tensors(frame: Frame, dtype: torch.dtype = torch.float64) -> FrameTensors:
    def tensor(array):
        return None if array is None else torch.as_tensor(np.asarray(array), dtype=dtype)

    return FrameTensors(
        positions=tensor(frame.positions), numbers=torch.as_tensor(frame.numbers, dtype=torch.long),
        cell=tensor(frame.cell), pbc=torch.as_tensor(frame.pbc, dtype=torch.bool),
        charge=torch.tensor(frame.charge), spin=torch.tensor(frame.spin), energy=float(frame.energy),
        forces=tensor(frame.forces), stress=tensor(frame.stress) if frame.pbc.all() else None)


def frame_on(frame: FrameTensors, device: torch.device | str) -> FrameTensors:
    """The frame's tensors on ``device`` (the same object when they are there already)."""
    if frame.positions.device == torch.device(device):
        return frame
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return FrameTensors(move(frame.positions), move(frame.numbers), move(frame.cell), move(frame.pbc),
                        move(frame.charge), move(frame.spin), frame.energy, move(frame.forces), move(frame.stress))


def predict_batch(model: AllScAIP, frames: list[FrameTensors], with_stress: bool, check_inputs: bool = True):
    """Energy (eV, float64 tensor), forces (eV/A) and stress (eV/A^3, or None without a stress
    label) of every frame, from one batched model call (``allscaip.batch``)."""
    stressed = [with_stress and frame.stress is not None and not model.direct_forces for frame in frames]
    result = evaluate_batch(model, frames, True, any(stressed), check_inputs)
    predictions = []
    for index, frame in enumerate(frames):
        forces = result.forces[result.offsets[index]:result.offsets[index + 1]]
        stress = -result.virials[index] / torch.abs(torch.det(frame.cell)) if stressed[index] else None
        predictions.append((result.energies[index], forces, stress))
    return predictions


@dataclass
class FrameErrors:
    """One frame's prediction errors (eV, eV/A, eV/A^3) and labels, for the metrics."""

    n_atoms: int
    periodic: bool
    energy: float
    forces: np.ndarray | None = None
    force_labels: np.ndarray | None = None
    stress: np.ndarray | None = None
    stress_labels: np.ndarray | None = None


def frame_errors(model: AllScAIP, frames: list[FrameTensors], max_atoms: int = 1000) -> list[FrameErrors]:
    """Errors of ``model`` on each of ``frames`` (no gradients kept), evaluated in batches of at
    most ``max_atoms`` atoms (a larger frame goes alone)."""
    device = next(model.parameters()).device
    numpy = lambda t: t.detach().flatten().double().cpu().numpy()  # noqa: E731
    errors = []
    for group in batches(frames, max_atoms, shuffle=False):
        group = [frame_on(frame, device) for frame in group]
        for frame, (energy, forces, stress) in zip(group, predict_batch(model, group, with_stress=True)):
            record = FrameErrors(frame.n_atoms, bool(frame.pbc.any()), float(energy.detach()) - frame.energy)
            if frame.forces is not None:
                record.forces, record.force_labels = numpy(forces - frame.forces), numpy(frame.forces)
            if stress is not None:
                record.stress, record.stress_labels = numpy(stress - frame.stress), numpy(frame.stress)
            errors.append(record)
    return errors


def summarise(errors: list[FrameErrors]) -> dict:
    """The metrics of a set of frames' errors (see the module docstring)."""
    metrics = {"frames": len(errors)}
    if not errors:
        return metrics
    e = np.array([record.energy / record.n_atoms for record in errors]) * 1e3
    metrics.update(energy_mae_mev_atom=float(np.abs(e).mean()), energy_rmse_mev_atom=float(np.sqrt((e**2).mean())),
                   energy_mean_error_mev_atom=float(e.mean()))
    forced = [record for record in errors if record.forces is not None]
    if forced:
        f = np.concatenate([record.forces for record in forced]) * 1e3
        labels = np.concatenate([record.force_labels for record in forced]) * 1e3
        metrics.update(force_mae_mev_a=float(np.abs(f).mean()), force_rmse_mev_a=float(np.sqrt((f**2).mean())),
                       force_rms_label_mev_a=float(np.sqrt((labels**2).mean())))
        metrics["force_rmse_relative"] = metrics["force_rmse_mev_a"] / metrics["force_rms_label_mev_a"]
    stressed = [record for record in errors if record.stress is not None]
    if stressed:
        s = np.concatenate([record.stress for record in stressed]) * 1e3
        labels = np.concatenate([record.stress_labels for record in stressed]) * 1e3
        metrics.update(stress_mae_mev_a3=float(np.abs(s).mean()), stress_rmse_mev_a3=float(np.sqrt((s**2).mean())),
                       stress_spread_mev_a3=float(labels.std()))
        metrics["stress_mae_relative"] = metrics["stress_mae_mev_a3"] / metrics["stress_spread_mev_a3"]
        # pressure = -trace(stress) / 3; a bias here shifts an NPT density
        pressure_errors = -np.trace(np.stack([record.stress for record in stressed]).reshape(-1, 3, 3),
                                    axis1=1, axis2=2) / 3
        metrics["pressure_mean_error_bar"] = float(pressure_errors.mean() * BAR_PER_EV_A3)
    return metrics


def error_metrics(model: AllScAIP, frames: list[FrameTensors], max_atoms: int = 1000) -> dict:
    """The metrics of ``model`` on ``frames`` (``frame_errors``, then ``summarise``)."""
    return summarise(frame_errors(model, frames, max_atoms))


def phase_metrics(errors: list[FrameErrors]) -> dict[str, dict]:
    """``summarise`` of the periodic frames and of the isolated ones (molecules, clusters),
    each where the set has any."""
    phases = {"periodic": [r for r in errors if r.periodic], "isolated": [r for r in errors if not r.periodic]}
    return {phase: summarise(records) for phase, records in phases.items() if records}


METRIC_COLUMNS = (
    ("frames", "frames", "{:d}"),
    ("energy_mae_mev_atom", "E MAE (meV/atom)", "{:.3f}"),
    ("energy_rmse_mev_atom", "E RMSE (meV/atom)", "{:.3f}"),
    ("force_mae_mev_a", "F MAE (meV/A)", "{:.1f}"),
    ("force_rmse_mev_a", "F RMSE (meV/A)", "{:.1f}"),
    ("force_rmse_relative", "F RMSE / F RMS", "{:.2%}"),
    ("stress_mae_mev_a3", "S MAE (meV/A^3)", "{:.4f}"),
    ("stress_mae_relative", "S MAE / S spread", "{:.2%}"),
    ("energy_mean_error_mev_atom", "E mean error (meV/atom)", "{:+.3f}"),
    ("pressure_mean_error_bar", "P mean error (bar)", "{:+.0f}"),
)


INTERVAL_COLUMNS = (
    ("energy_mae_mev_atom", "E MAE (meV/atom)", "{:.3f}"),
    ("force_rmse_relative", "F RMSE / F RMS", "{:.2%}"),
    ("stress_mae_relative", "S MAE / S spread", "{:.2%}"),
    ("pressure_mean_error_bar", "P mean error (bar)", "{:+.0f}"),
)


def bootstrap_intervals(errors: list[FrameErrors], groups: list[int], level: float = 0.95,
                        resamples: int = 2000, seed: int = 0) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of the headline metrics (``INTERVAL_COLUMNS``), resampling
    whole groups of frames (``groups[i]`` labels frame i's group: an MD run, whose frames are
    correlated) with replacement, periodic and isolated groups separately so that each resample
    keeps the set's mix of phases. Metrics a resample cannot form are left out."""
    members: dict[int, list[FrameErrors]] = {}
    for record, group in zip(errors, groups):
        members.setdefault(group, []).append(record)
    strata = [[g for g, records in members.items() if records[0].periodic == periodic] for periodic in (True, False)]
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {key: [] for key, _, _ in INTERVAL_COLUMNS}
    for _ in range(resamples):
        drawn = [record for stratum in strata if stratum
                 for group in rng.choice(stratum, size=len(stratum)) for record in members[int(group)]]
        metrics = summarise(drawn)
        for key in samples:
            if key in metrics:
                samples[key].append(metrics[key])
    tail = 50 * (1 - level)
    return {key: [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]
            for key, values in samples.items() if values}


def intervals_table(rows: dict[str, dict]) -> str:
    """Markdown table of ``bootstrap_intervals`` results, one row per data set."""
    lines = ["| set | groups | " + " | ".join(title for _, title, _ in INTERVAL_COLUMNS) + " |",
             "|" + "---|" * (len(INTERVAL_COLUMNS) + 2)]
    for name, intervals in rows.items():
        cells = [" to ".join(fmt.format(v) for v in intervals[key]) if key in intervals else "-"
                 for key, _, fmt in INTERVAL_COLUMNS]
        lines.append(f"| {name} | {intervals['groups']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metrics_table(rows: dict[str, dict]) -> str:
    """Markdown table, one row per data set."""
    header = "| set | " + " | ".join(title for _, title, _ in METRIC_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(METRIC_COLUMNS) + 1)]
    for name, metrics in rows.items():
        cells = [fmt.format(metrics[key]) if key in metrics else "-" for key, _, fmt in METRIC_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
