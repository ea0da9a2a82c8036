"""``allscaip train CONFIG.yaml``: fit an AllScAIP model to energies, forces and stresses.

- Loss: weighted sum of mean squared errors of energy per atom, force components and stress
  components, each divided by the variance of its training labels (weights are unit-free).
  With ``loss.energy_per_phase`` a frame's energy error is divided by the variance of its own
  phase's energies (periodic frames or isolated ones) instead of all frames'.
- Element energy references fitted by least squares on the training set; the network learns
  the rest, scaled by the RMS force.
- AdamW, linear warm-up then cosine decay, gradient-norm clipping, EMA weights (used for
  validation and the saved model), random rotations of every frame (the architecture is
  not exactly rotation invariant).
- Validation each epoch; ``checkpoint.pt`` after each epoch and every ``checkpoint_seconds``
  within one (``--checkpoint-minutes``), with the position in the epoch; ``--resume`` continues
  from it and reproduces an uninterrupted run exactly (batch order and rotations derive from seed
  and epoch; the rotation stream's state is saved).
  ``--resume`` with a config that differs only in ``optim.epochs`` extends (or shortens) the run:
  the cosine restarts from the current learning rate and ends at the minimum on the new last step.
  ``threads`` and ``device`` may change too (a run moved to a lent GPU or another machine).
- Every optimiser step evaluates its frames in one batched model call (``allscaip.batch``).
- Data parallel under ``torchrun``: every rank takes a share of each global batch (``deal``:
  balanced by atoms), gradients are summed with all-reduce (gloo on CPU, nccl on GPU), so the run equals one process with
  the same global batch.
- Output folder: ``model.pt`` (best EMA weights), ``checkpoint.pt``, ``history.csv``,
  ``learning_curve.png`` (validation errors vs optimiser steps, redrawn every epoch),
  ``results.json`` and ``results.md`` (error table on train / validation / test).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.distributed as dist

from allscaip.config import ModelConfig
from allscaip.data import Frame, batches, read_frames, split_indices
from allscaip.graph import wrap_positions
from allscaip.evaluate import (FrameErrors, FrameTensors, frame_errors, frame_on, frame_tensors, metrics_table,
                               phase_metrics, predict_batch, summarise)
from allscaip.io import load_model, save_model
from allscaip.learning_curve import plot_learning_curve
from allscaip.model import AllScAIP
from allscaip.repulsion import repulsion_energy
from allscaip.train_config import TrainConfig


def fit_element_references(frames: list[Frame], n_elements: int) -> torch.Tensor:
    """Per-element energies (eV) minimising the squared error of sum_i ref[Z_i] vs E."""
    present = sorted({int(z) for frame in frames for z in frame.numbers})
    counts = np.array([[np.count_nonzero(frame.numbers == z) for z in present] for frame in frames], float)
    energies = np.array([frame.energy for frame in frames])
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    references = torch.zeros(n_elements, dtype=torch.float64)
    references[present] = torch.tensor(solution)
    return references


def rotate(frame: FrameTensors, rotation: torch.Tensor) -> FrameTensors:
    """The same frame in rotated axes (positions, cell, forces as rows; stress R S R^T)."""
    return FrameTensors(
        positions=frame.positions @ rotation.T, numbers=frame.numbers, cell=frame.cell @ rotation.T,
        pbc=frame.pbc, charge=frame.charge, spin=frame.spin, energy=frame.energy,
        forces=None if frame.forces is None else frame.forces @ rotation.T,
        stress=None if frame.stress is None else rotation @ frame.stress @ rotation.T)


def random_rotation(generator: np.random.Generator, dtype: torch.dtype) -> torch.Tensor:
    q, r = np.linalg.qr(generator.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return torch.tensor(q, dtype=dtype)



def with_settings(model: AllScAIP, settings: dict) -> AllScAIP:
    """``model`` with some of its configuration changed and its weights kept: settings that
    leave every weight's shape alone (the graph's ``knn_k``, ``knn_delta``, ``max_radius``,
    the wall ``repulsion``), e.g. to fine-tune a trained model with a wider neighbourhood."""
    config = ModelConfig.from_dict({**model.config.to_dict(), **settings},
                                   where="the training config's 'model' section")
    changed = AllScAIP(config, model.energy_scale, model.energy_shift, model.force_scale,
                       model.stress_scale, model.element_references.detach().clone())
    try:
        changed.load_state_dict(model.state_dict())
    except RuntimeError as exc:
        raise ValueError(f"init_from: the 'model' settings {sorted(settings)} change the shapes of the "
                         "network's weights, so the model file's weights cannot be kept; with init_from, "
                         "change only settings such as knn_k, knn_delta, max_radius or repulsion "
                         f"({str(exc).splitlines()[0]})") from exc
    return changed.to(next(model.parameters()).dtype)


class Trainer:
    """One training run in ``output`` (a folder), on one process or one torchrun rank."""

    def __init__(self, config: TrainConfig, output: str | Path, progress: bool = True,
                 checkpoint_seconds: float = 600.0):
        self.config, self.output = config, Path(output)
        self.checkpoint_seconds = checkpoint_seconds
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.progress = progress and self.rank == 0
        self.dtype = getattr(torch, config.dtype)
        self.device = training_device(config.device)
        torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        self._load_data()
        self.model = self._build_model()
        self.ema = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.optim.lr,
                                           weight_decay=config.optim.weight_decay)
        self.epoch, self.step, self.best = 0, 0, math.inf
        self.extended_at: tuple[int, float] | None = None  # (step, lr) where a longer schedule took over
        self.history: list[dict] = []
        self.position: dict | None = None  # where in the current epoch a mid-epoch checkpoint stopped
        self.steps_per_epoch = len(list(batches(self.train_frames, config.optim.max_atoms_per_batch, True, 0)))
        self.total_steps = max(1, self.steps_per_epoch * config.optim.epochs)

    def _load_data(self) -> None:
        data = self.config.data
        frames = read_frames(data.train)
        if not frames:
            raise ValueError(f"no frames in {data.train}")
        split = split_indices(len(frames), data.split_seed, data.validation_fraction,
                              0.0 if data.test else data.test_fraction)
        self.train_raw = [frames[i] for i in split["train"]]
        for path in data.extra:
            extra = read_frames(path)
            if not extra:
                raise ValueError(f"no frames in data.extra entry {path}")
            self.train_raw += extra * data.extra_repeat
        to_tensors = lambda subset: [frame_tensors(f, self.dtype) for f in subset]  # noqa: E731
        self.train_frames = to_tensors(self.train_raw)
        self.validation_frames = to_tensors([frames[i] for i in split["validation"]])
        test_raw = read_frames(data.test) if data.test else [frames[i] for i in split["test"]]
        self.test_frames = to_tensors(test_raw)
        self.split = split
        identity = hashlib.sha256()
        for frame in self.train_raw:
            identity.update(np.asarray(frame.positions, np.float64).tobytes())
            identity.update(np.float64(frame.energy).tobytes())
        self.data_fingerprint = identity.hexdigest()
        labels = [f for f in self.train_frames if f.forces is not None]
        self.force_variance = float(torch.cat([f.forces.flatten() for f in labels]).double().var()) if labels else 1.0
        stresses = [f.stress.flatten() for f in self.train_frames if f.stress is not None]
        self.stress_variance = float(torch.cat(stresses).double().var()) if stresses else 1.0

    def _build_model(self) -> AllScAIP:
        config = self.config
        if config.init_from:
            model = load_model(config.init_from, dtype=self.dtype)
            if config.model:
                model = with_settings(model, config.model)
            if config.refit_element_references:
                model.element_references = fit_element_references(self.train_raw, model.element_references.numel())
        else:
            model_config = ModelConfig.from_dict(config.model)
            references = fit_element_references(self.train_raw, model_config.max_num_elements)
            scale = math.sqrt(self.force_variance)
            model = AllScAIP(model_config, energy_scale=scale, force_scale=scale, stress_scale=scale,
                             element_references=references).to(self.dtype)
        residuals: dict[bool | None, list[float]] = {}
        for frame in self.train_frames:
            residual = (frame.energy - float(model.element_references[frame.numbers].sum())) / frame.n_atoms
            residuals.setdefault(self.energy_phase(frame), []).append(residual)
        self.energy_variances = {phase: max(float(np.var(values)), 1e-12) for phase, values in residuals.items()}
        for frame in self.train_frames + self.validation_frames + self.test_frames:  # once, not per step
            model.check_inputs(frame.positions, frame.numbers, frame.cell, frame.pbc)
        for frame in self.validation_frames:
            self.energy_variance(frame)  # a phase without training frames is an error now
        return model.to(self.device).train()

    def energy_phase(self, frame: FrameTensors) -> bool | None:
        """The group whose energy variance normalises ``frame``'s energy error: periodic or not
        with ``loss.energy_per_phase``, otherwise one group for all frames."""
        return bool(frame.pbc.any()) if self.config.loss.energy_per_phase else None

    def energy_variance(self, frame: FrameTensors) -> float:
        phase = self.energy_phase(frame)
        if phase not in self.energy_variances:
            kind = "periodic" if phase else "non-periodic"
            raise ValueError(f"loss.energy_per_phase: no {kind} frame among the training frames to set the scale "
                             f"of this {kind} frame's energy; add such frames to data.train or data.extra, "
                             "or set energy_per_phase: false")
        return self.energy_variances[phase]

    # ----------------------------------------------------------------- optimisation
    def learning_rate(self, step: int) -> float:
        """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` at the last step. After an
        extension (``resume`` with more epochs) the cosine restarts from the rate reached then,
        so the rate stays continuous and still ends at the minimum."""
        optim = self.config.optim
        if step < optim.warmup_steps:
            return optim.lr * (step + 1) / optim.warmup_steps
        start, peak = optim.warmup_steps, optim.lr
        if self.extended_at is not None and step >= self.extended_at[0]:
            start, peak = self.extended_at
        floor = optim.lr * optim.min_lr_ratio
        progress = min(1.0, (step - start) / max(1, self.total_steps - start))
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def batch_loss(self, batch: list[FrameTensors], generator: np.random.Generator) -> tuple[torch.Tensor, dict]:
        """This rank's share of the global batch loss (sums divided by global counts)."""
        weights = self.config.loss
        rotations = [random_rotation(generator, self.dtype) if self.config.rotation_augmentation else None
                     for _ in batch]  # drawn for the whole batch so every rank's stream agrees
        n_frames = len(batch)
        n_force = sum(3 * f.n_atoms for f in batch if f.forces is not None)
        n_stress = sum(9 for f in batch if f.stress is not None and not self.model.direct_forces)
        energy_sum = force_sum = stress_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        mine = []  # this rank's frames, all evaluated in one batched model call
        for index in deal([f.n_atoms for f in batch], self.world)[self.rank]:
            frame = frame_on(batch[index], self.device)
            mine.append(frame if rotations[index] is None else rotate(frame, rotations[index].to(self.device)))
        if mine:
            with self.attention_kernels():
                predictions = predict_batch(self.model, mine, weights.stress > 0, check_inputs=False)
        else:
            predictions = []
        for frame, (energy, forces, stress) in zip(mine, predictions):
            energy_sum = energy_sum + ((energy - frame.energy) / frame.n_atoms) ** 2 / self.energy_variance(frame)
            if frame.forces is not None:
                force_sum = force_sum + (forces - frame.forces).square().sum().double()
            if stress is not None:
                stress_sum = stress_sum + (stress - frame.stress).square().sum().double()
        terms = {"energy": energy_sum / n_frames,
                 "forces": force_sum / max(n_force, 1) / self.force_variance,
                 "stress": stress_sum / max(n_stress, 1) / self.stress_variance}
        loss = weights.energy * terms["energy"] + weights.forces * terms["forces"] + weights.stress * terms["stress"]
        return loss, {k: float(v.detach()) for k, v in terms.items()}

    @staticmethod
    def attention_kernels():
        """The math attention kernel on every device: the fused ones (CUDA's, and the CPU's
        flash kernel taken when there is no bias, e.g. ``use_sincx_mask: false``) have no
        double backward, which force training needs."""
        return sdpa_kernel([SDPBackend.MATH])

    def train_epoch(self) -> dict:
        """One epoch from ``self.position`` (a resumed mid-epoch checkpoint) or its start."""
        from tqdm import tqdm

        optim = self.config.optim
        epoch_batches = list(batches(self.train_frames, optim.max_atoms_per_batch, True,
                                     seed=self.config.seed * 100003 + self.epoch))
        generator = np.random.default_rng([self.config.seed, self.epoch])
        totals = {"loss": 0.0, "energy": 0.0, "forces": 0.0, "stress": 0.0}
        first, seconds_before = 0, 0.0
        if self.position is not None:
            first, totals = self.position["batch"], dict(self.position["totals"])
            generator.bit_generator.state = self.position["generator"]
            seconds_before = self.position["seconds"]
            self.position = None
        started = last_save = time.perf_counter()
        bar = tqdm(epoch_batches, desc=f"epoch {self.epoch + 1}/{optim.epochs}", unit="batch",
                   disable=not self.progress, leave=False, initial=first)
        for index in range(first, len(epoch_batches)):
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate(self.step)
            loss, terms = self.batch_loss(epoch_batches[index], generator)
            self.optimizer.zero_grad(set_to_none=False)
            if loss.requires_grad:  # a rank may hold no frame of a small batch
                loss.backward()
            parts = self._all_reduce(torch.tensor([float(loss.detach())] + [terms[k] for k in ("energy", "forces", "stress")],
                                                  dtype=torch.float64, device=self.device)).cpu()
            self._all_reduce_gradients()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), optim.grad_clip)
            self.optimizer.step()
            self._update_ema()
            self.step += 1
            for key, value in zip(totals, parts.tolist()):
                totals[key] += value / len(epoch_batches)
            bar.update()
            bar.set_postfix(loss=f"{float(parts[0]):.4f}")
            now = time.perf_counter()
            if self.rank == 0 and index + 1 < len(epoch_batches) and now - last_save >= self.checkpoint_seconds:
                self.save_checkpoint({"batch": index + 1, "totals": dict(totals),
                                      "generator": generator.bit_generator.state,
                                      "seconds": seconds_before + now - started})
                last_save = now
        bar.close()
        self.epoch_seconds = seconds_before + time.perf_counter() - started
        return totals

    def _all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(values)
        return values

    def _all_reduce_gradients(self) -> None:
        if self.world == 1:
            return
        for parameter in self.model.parameters():
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            dist.all_reduce(parameter.grad)

    def _update_ema(self) -> None:
        decay = min(self.config.optim.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for name, parameter in self.model.named_parameters():
                self.ema[name].mul_(decay).add_(parameter.detach(), alpha=1 - decay)

    def ema_model(self) -> AllScAIP:
        """A copy of the model carrying the EMA weights, in evaluation mode."""
        model = AllScAIP(self.model.config, self.model.energy_scale, self.model.energy_shift,
                         self.model.force_scale, self.model.stress_scale,
                         self.model.element_references.detach().cpu().clone()).to(self.dtype)
        state = dict(self.model.state_dict())
        state.update(self.ema)
        model.load_state_dict(state)
        return model.eval()

    # ----------------------------------------------------------------- bookkeeping
    def checkpoint_state(self, position: dict | None = None) -> dict:
        """Everything a resume needs; ``position`` marks a checkpoint inside epoch ``epoch + 1``."""
        return {"epoch": self.epoch, "step": self.step, "best": self.best, "position": position,
                "model": self.model.state_dict(), "ema": self.ema,
                "optimizer": self.optimizer.state_dict(), "history": self.history,
                "extended_at": list(self.extended_at) if self.extended_at else None,
                "data_fingerprint": self.data_fingerprint,
                "config": self.config.to_dict()}

    def save_checkpoint(self, position: dict | None = None) -> None:
        path = self.output / "checkpoint.pt"
        self.output.mkdir(parents=True, exist_ok=True)
        torch.save(self.checkpoint_state(position), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)

    def check_wall_outside_data(self) -> None:
        """A repulsive wall added on --resume must leave the loss unchanged: no training,
        validation or test frame may have a pair inside its onsets."""
        model = self.model
        for frame in self.train_frames + self.validation_frames + self.test_frames:
            plan = model.backbone.cell_plan(frame.cell, frame.pbc)
            wrapped = wrap_positions(frame.positions, frame.cell, frame.pbc, plan.periodic)
            with torch.no_grad():
                energy = repulsion_energy(wrapped.to(self.device), frame.numbers.to(self.device),
                                          frame.cell.to(self.device), frame.pbc.to(self.device), plan,
                                          model.repulsion_onset, model.repulsion_strength, model.repulsion_radius)
            if float(energy) != 0.0:
                raise ValueError("--resume: the repulsive wall (model.repulsion) reaches a pair of a training "
                                 "frame and would change the loss; lower its onsets or start a new run")

    def resume(self) -> None:
        path = self.output / "checkpoint.pt"
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        state = torch.load(path, weights_only=True, map_location=self.device)
        saved, wanted = portable(state["config"]), portable(self.config.to_dict())
        if state.get("data_fingerprint", self.data_fingerprint) != self.data_fingerprint:
            raise ValueError(f"--resume: the training frames differ from those {path} was trained on")
        saved_epochs, wanted_epochs = saved["optim"]["epochs"], wanted["optim"]["epochs"]
        execution = {key: wanted[key] for key in EXECUTION_KEYS if key in wanted}
        wall = wanted["model"].get("repulsion", [])
        saved_model = {key: value for key, value in saved["model"].items() if key != "repulsion"}
        if "repulsion" in wanted["model"]:
            saved_model["repulsion"] = wall
        if {**saved, **execution, "optim": {**saved["optim"], "epochs": wanted_epochs}, "model": saved_model} != wanted:
            raise ValueError(f"--resume: {path} was written with a different training config "
                             f"(only optim.epochs may change, to extend the run, the execution "
                             f"settings {', '.join(EXECUTION_KEYS)}, and a repulsive wall that no "
                             f"training frame reaches)")
        if wall != saved["model"].get("repulsion", []):
            self.check_wall_outside_data()
        if wanted_epochs < state["epoch"]:
            raise ValueError(f"--resume: the run has done {state['epoch']} epochs already; "
                             f"optim.epochs = {wanted_epochs} would end it in the past")
        self.model.load_state_dict(state["model"])
        self.ema = state["ema"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
        self.history = state["history"]
        self.position = state.get("position")
        self.extended_at = tuple(state["extended_at"]) if state.get("extended_at") else None
        if wanted_epochs != saved_epochs:  # a longer (or shorter) schedule from here on
            self.total_steps = max(1, self.steps_per_epoch * saved_epochs)
            rate = self.learning_rate(self.step)
            self.total_steps = max(1, self.steps_per_epoch * wanted_epochs)
            self.extended_at = (self.step, rate)

    def save_model(self, path: Path, metrics: dict) -> None:
        model = self.ema_model()
        metadata = {"source": "allscaip train", "epoch": self.epoch, "validation": metrics,
                    "elements": sorted({int(z) for frame in self.train_raw for z in frame.numbers}),
                    "training_config": portable(self.config.to_dict())}
        save_model(model, model.config, path, metadata)

    def validation_loss(self, errors: list[FrameErrors]) -> float:
        """The training loss's weighted terms on the validation frames (``errors``: theirs)."""
        weights = self.config.loss
        metrics = summarise(errors)
        if weights.energy_per_phase:  # each phase's mean squared error over its own variance
            energy_term = 0.0
            for periodic in (False, True):
                group = [record for record in errors if record.periodic == periodic]
                if group:
                    rmse = summarise(group)["energy_rmse_mev_atom"] * 1e-3
                    energy_term += len(group) * rmse**2 / self.energy_variances[periodic]
            energy_term /= len(errors)
        else:
            energy_term = (metrics["energy_rmse_mev_atom"] * 1e-3) ** 2 / self.energy_variances[None]
        loss = weights.energy * energy_term
        if "force_rmse_mev_a" in metrics:
            loss += weights.forces * (metrics["force_rmse_mev_a"] * 1e-3) ** 2 / self.force_variance
        if "stress_rmse_mev_a3" in metrics:
            loss += weights.stress * (metrics["stress_rmse_mev_a3"] * 1e-3) ** 2 / self.stress_variance
        return loss

    def run(self) -> dict:
        """Train for the configured epochs (from the current epoch) and write the results."""
        self.output.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        while self.epoch < self.config.optim.epochs:
            totals = self.train_epoch()
            self.epoch += 1
            if self.rank == 0:
                model = self.ema_model().to(self.device)
                errors = frame_errors(model, self.validation_frames) if self.validation_frames else []
                metrics = summarise(errors) if errors else {}
                validation = self.validation_loss(errors) if errors else totals["loss"]
                record = {"epoch": self.epoch, "step": self.step, "lr": self.learning_rate(self.step),
                          "train_loss": totals["loss"], "validation_loss": validation,
                          "seconds": round(self.epoch_seconds, 2),
                          **{f"validation_{k}": v for k, v in metrics.items() if k != "frames"},
                          **{f"validation_{phase}_{k}": phase_row[k]
                             for phase, phase_row in phase_metrics(errors).items()
                             for k in ("energy_mae_mev_atom", "energy_mean_error_mev_atom")}}
                self.history.append(record)
                if validation < self.best:
                    self.best = validation
                    self.save_model(self.output / "model.pt", metrics)
                self.save_checkpoint()
                self._write_history()
                plot_learning_curve(self.history, self.output / "learning_curve.png")
                if self.progress:
                    remaining = (self.config.optim.epochs - self.epoch) * record["seconds"]
                    print(f"epoch {self.epoch}: train loss {totals['loss']:.4g}, validation loss {validation:.4g}, "
                          f"F RMSE {metrics.get('force_rmse_mev_a', float('nan')):.1f} meV/A, "
                          f"E MAE {metrics.get('energy_mae_mev_atom', float('nan')):.2f} meV/atom, "
                          f"{record['seconds']:.0f} s, ETA {remaining / 60:.1f} min", flush=True)
            if self.world > 1:
                dist.barrier()
        return self.finish(time.perf_counter() - started) if self.rank == 0 else {}

    def _write_history(self) -> None:
        keys = sorted({k for record in self.history for k in record}, key=lambda k: (k != "epoch", k))
        with open(self.output / "history.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)

    def finish(self, seconds: float) -> dict:
        best = load_model(self.output / "model.pt", dtype=torch.float64)
        to64 = lambda frames: [frame_tensors_like(f) for f in frames]  # noqa: E731
        rows = {}
        for name, frames in (("train (first 200)", self.train_frames[:200]),
                             ("validation", self.validation_frames), ("test", self.test_frames)):
            errors = frame_errors(best, to64(frames))
            rows[name] = summarise(errors)
            rows.update({f"{name} ({phase})": metrics for phase, metrics in phase_metrics(errors).items()})
        results = {"sets": rows, "frames": {"train": len(self.train_frames),
                                            "validation": len(self.validation_frames),
                                            "test": len(self.test_frames)},
                   "epochs": self.epoch, "steps": self.step, "wall_time_s_this_invocation": round(seconds, 1),
                   "epoch_seconds_total": round(sum(r["seconds"] for r in self.history), 1),
                   "world_size": self.world, "config": portable(self.config.to_dict())}
        (self.output / "results.json").write_text(json.dumps(results, indent=1))
        table = metrics_table(rows)
        (self.output / "results.md").write_text(table + "\n")
        if self.progress:
            print(table)
        return results


def deal(sizes: list[int], ranks: int) -> list[list[int]]:
    """Indices of a global batch's frames for each rank: largest frame first, each to the rank
    with the fewest atoms so far (ties to the lower rank), so that the step, which waits for
    the busiest rank, waits least (benchmarks/ddp_balance.py). Every rank computes the same
    deal."""
    loads, hands = [0] * ranks, [[] for _ in range(ranks)]
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = loads.index(min(loads))
        hands[rank].append(index)
        loads[rank] += sizes[index]
    return [sorted(hand) for hand in hands]


# How a run executes, not what it computes: a resumed run may take other threads or another
# device (a lent GPU), which changes round-off only.
EXECUTION_KEYS = ("threads", "device")


def portable(config: dict) -> dict:
    """A config dict with its file paths cut to their last component: a run resumes from
    another checkout (or machine) of the same files; the frames themselves are compared by
    fingerprint."""
    data = dict(config["data"])
    for key in ("train", "test"):
        if data.get(key):
            data[key] = Path(data[key]).name
    if data.get("extra"):
        data["extra"] = [Path(path).name for path in data["extra"]]
    init_from = config.get("init_from")
    return {**config, "data": data, "init_from": Path(init_from).name if init_from else init_from}


def frame_tensors_like(frame: FrameTensors) -> FrameTensors:
    """The frame in float64 (final evaluation of the saved model)."""
    cast = lambda t: None if t is None else t.to(torch.float64)  # noqa: E731
    return FrameTensors(cast(frame.positions), frame.numbers, cast(frame.cell), frame.pbc, frame.charge,
                        frame.spin, frame.energy, cast(frame.forces), cast(frame.stress))


def training_device(name: str) -> torch.device:
    """``cpu``, or this rank's GPU for ``cuda`` (LOCAL_RANK under torchrun)."""
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device: cuda, but torch sees no CUDA device here; use device: cpu "
                           "or a CUDA build of torch on a GPU machine")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(device: str) -> bool:
    """Join the torchrun process group if this process was started by torchrun."""
    if "RANK" not in os.environ or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return True


def train(config: TrainConfig, output: str | Path, resume: bool = False, progress: bool = True,
          checkpoint_seconds: float = 600.0) -> dict:
    started_group = init_distributed(config.device)
    try:
        trainer = Trainer(config, output, progress=progress, checkpoint_seconds=checkpoint_seconds)
        if resume:
            trainer.resume()
        elif (Path(output) / "checkpoint.pt").exists():
            raise ValueError(f"{output} already holds a training run; pass --resume to continue it "
                             "or choose a new output folder")
        return trainer.run()
    finally:
        if started_group:
            dist.destroy_process_group()
