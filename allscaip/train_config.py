"""Training configuration: one YAML file, checked on load.

    data:     {train: PATH, test: PATH or null, validation_fraction: 0.1, test_fraction: 0.1, split_seed: 0,
               extra: [PATH, ...], extra_repeat: 1}
              extra: more training frames, all used for training (validation and test come
              from train/test only), each seen extra_repeat times per epoch: e.g. frames of a
              model's own MD labelled by the reference (allscaip datagen md-frames)
    model:    ModelConfig fields; with init_from, only settings that keep the weights' shapes
              (knn_k, knn_delta, max_radius, repulsion), changed in the fine-tuned model
    init_from: model file to fine-tune (e.g. a converted fairchem checkpoint), or null
    loss:     {energy: 1.0, forces: 1.0, stress: 0.1}  (each term divided by its label variance)
    optim:    {lr, weight_decay, warmup_steps, min_lr_ratio, epochs, max_atoms_per_batch,
               grad_clip, ema_decay}
    rotation_augmentation: true
    dtype: float32
    seed: 0
    threads: 2
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from allscaip.config import ModelConfig, check_keys


@dataclass
class DataSettings:
    train: str = ""
    test: str | None = None
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    extra: list[str] = field(default_factory=list)
    extra_repeat: int = 1


@dataclass
class LossWeights:
    energy: float = 1.0
    forces: float = 1.0
    stress: float = 0.1
    # Divide each frame's energy error by the spread of its own phase (periodic or not) rather
    # than of all frames: the gas-liquid gap sets the latter, which drowns the liquid's energies.
    energy_per_phase: bool = False


@dataclass
class OptimSettings:
    lr: float = 1e-3
    weight_decay: float = 1e-6
    warmup_steps: int = 50
    min_lr_ratio: float = 0.02
    epochs: int = 10
    max_atoms_per_batch: int = 400
    grad_clip: float = 10.0
    ema_decay: float = 0.99


@dataclass
class TrainConfig:
    data: DataSettings
    model: dict = field(default_factory=dict)
    init_from: str | None = None
    refit_element_references: bool = True
    loss: LossWeights = field(default_factory=LossWeights)
    optim: OptimSettings = field(default_factory=OptimSettings)
    rotation_augmentation: bool = True
    dtype: str = "float32"
    seed: int = 0
    threads: int = 2
    device: str = "cpu"  # or "cuda" (under torchrun: each rank's local GPU)

    def to_dict(self) -> dict:
        return asdict(self)

    def resolve_paths(self, base: Path) -> None:
        """Make data and init_from paths relative to the config file absolute."""
        self.data.train = str((base / self.data.train).resolve())
        if self.data.test:
            self.data.test = str((base / self.data.test).resolve())
        self.data.extra = [str((base / path).resolve()) for path in self.data.extra]
        if self.init_from:
            self.init_from = str((base / self.init_from).resolve())


def _section(cls, values: dict | None, name: str):
    values = dict(values or {})
    check_keys(values, {f.name for f in fields(cls)}, f"the training config's '{name}' section")
    return cls(**values)


def config_from_dict(values: dict) -> TrainConfig:
    values = dict(values)
    check_keys(values, {f.name for f in fields(TrainConfig)}, "the training config (top level)")
    if values.get("model"):
        check_keys(values["model"], {f.name for f in fields(ModelConfig)},
                   "the training config's 'model' section")
    config = TrainConfig(
        data=_section(DataSettings, values.pop("data", None), "data"),
        loss=_section(LossWeights, values.pop("loss", None), "loss"),
        optim=_section(OptimSettings, values.pop("optim", None), "optim"), **values)
    if not config.data.train:
        raise ValueError("data.train must name a data folder, .npz shard or extended XYZ file")
    if not isinstance(config.data.extra, list):
        raise ValueError("data.extra must be a list of data folders, .npz shards or extended XYZ files")
    if config.data.extra_repeat < 1:
        raise ValueError(f"data.extra_repeat must be at least 1, not {config.data.extra_repeat}")
    if config.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, not {config.dtype!r}")
    if config.device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, not {config.device!r}")
    if not config.model and not config.init_from:
        raise ValueError("give a 'model' section (architecture) or 'init_from' (a model file)")
    return config


def load_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} not found")
    config = config_from_dict(yaml.safe_load(path.read_text()) or {})
    config.resolve_paths(path.parent)
    return config
