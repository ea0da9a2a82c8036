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


def error_metrics(model: AllScAIP, frames: list[FrameTensors], max_atoms: int = 1000) -> dict:
    """Errors of ``model`` on ``frames`` (no gradients kept), evaluated in batches of at most
    ``max_atoms`` atoms (a larger frame goes alone)."""
    energy_errors, force_errors, force_labels, stress_errors, stress_labels = [], [], [], [], []
    device = next(model.parameters()).device
    evaluated = []
    for group in batches(frames, max_atoms, shuffle=False):
        group = [frame_on(frame, device) for frame in group]
        evaluated += zip(group, predict_batch(model, group, with_stress=True))
    for frame, (energy, forces, stress) in evaluated:
        energy_errors.append((float(energy.detach()) - frame.energy) / frame.n_atoms)
        if frame.forces is not None:
            force_errors.append((forces.detach() - frame.forces).flatten().double().cpu().numpy())
            force_labels.append(frame.forces.flatten().double().cpu().numpy())
        if stress is not None:
            stress_errors.append((stress.detach() - frame.stress).flatten().double().cpu().numpy())
            stress_labels.append(frame.stress.flatten().double().cpu().numpy())
    metrics = {"frames": len(frames)}
    if not frames:
        return metrics
    e = np.array(energy_errors) * 1e3
    metrics.update(energy_mae_mev_atom=float(np.abs(e).mean()), energy_rmse_mev_atom=float(np.sqrt((e**2).mean())),
                   energy_mean_error_mev_atom=float(e.mean()))
    if force_errors:
        f, labels = np.concatenate(force_errors) * 1e3, np.concatenate(force_labels) * 1e3
        metrics.update(force_mae_mev_a=float(np.abs(f).mean()), force_rmse_mev_a=float(np.sqrt((f**2).mean())),
                       force_rms_label_mev_a=float(np.sqrt((labels**2).mean())))
        metrics["force_rmse_relative"] = metrics["force_rmse_mev_a"] / metrics["force_rms_label_mev_a"]
    if stress_errors:
        s, labels = np.concatenate(stress_errors) * 1e3, np.concatenate(stress_labels) * 1e3
        metrics.update(stress_mae_mev_a3=float(np.abs(s).mean()), stress_rmse_mev_a3=float(np.sqrt((s**2).mean())),
                       stress_spread_mev_a3=float(labels.std()))
        metrics["stress_mae_relative"] = metrics["stress_mae_mev_a3"] / metrics["stress_spread_mev_a3"]
        # pressure = -trace(stress) / 3; a bias here shifts an NPT density
        pressure_errors = -np.trace(np.stack(stress_errors).reshape(-1, 3, 3), axis1=1, axis2=2) / 3
        metrics["pressure_mean_error_bar"] = float(pressure_errors.mean() * BAR_PER_EV_A3)
    return metrics


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


def metrics_table(rows: dict[str, dict]) -> str:
    """Markdown table, one row per data set."""
    header = "| set | " + " | ".join(title for _, title, _ in METRIC_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(METRIC_COLUMNS) + 1)]
    for name, metrics in rows.items():
        cells = [fmt.format(metrics[key]) if key in metrics else "-" for key, _, fmt in METRIC_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
