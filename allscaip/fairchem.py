"""Convert a fairchem ``MLIPInferenceCheckpoint`` of AllScAIP into our model file,
without fairchem installed and without running arbitrary pickled code.

The checkpoint is unpickled by ``torch.load(weights_only=True)``, which admits tensors,
containers and primitives only; the one fairchem class in the file (the checkpoint
dataclass) is admitted through a local stand-in with the same qualified name that just
stores its fields. Inference in fairchem uses the EMA weights, so we do too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from allscaip.config import ModelConfig
from allscaip.io import ModelFileError, file_sha256, safe_torch_load, save_model
from allscaip.model import AllScAIP

BACKBONE = "fairchem.core.models.allscaip.AllScAIP.AllScAIPBackbone"
ENERGY_HEAD = "fairchem.core.models.allscaip.AllScAIP.AllScAIPEnergyHead"
DIRECT_FORCE_HEAD = "fairchem.core.models.allscaip.AllScAIP.AllScAIPDirectForceHead"
GRADIENT_HEAD = "fairchem.core.models.allscaip.AllScAIP.AllScAIPGradientEnergyForceStressHead"
DATASET_HEAD_WRAPPER = "fairchem.core.models.uma.escn_moe.DatasetSpecificSingleHeadWrapper"
# Backbone keys of fairchem's own that do not change what the network computes in inference
# (class path, compilation, padding, batching limits, attention kernel, training dropout).
FAIRCHEM_RUNTIME_KEYS = ("model", "use_compile", "use_padding", "dataset_list",
                         "skip_single_system_base_mask", "max_atoms", "max_batch_size",
                         "knn_pad_size", "atten_name", "mlp_dropout", "atten_dropout")


class MLIPInferenceCheckpoint:
    """Stand-in for fairchem's checkpoint dataclass: holds the unpickled fields."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


MLIPInferenceCheckpoint.__module__ = "fairchem.core.units.mlip_unit.api.inference"


def read_fairchem_checkpoint(path: str | Path) -> dict:
    """The checkpoint's four fields as a dict, via the restricted unpickler."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"fairchem checkpoint {path} does not exist")
    try:
        checkpoint = safe_torch_load(path, "fairchem MLIPInferenceCheckpoint",
                                     allowed=(MLIPInferenceCheckpoint,))
    except ModelFileError as exc:
        raise ModelFileError(f"{exc}. It cannot be read safely: only checkpoints made of tensors, "
                             "dicts and fairchem's MLIPInferenceCheckpoint are accepted.") from exc.__cause__
    fields = getattr(checkpoint, "__dict__", None)
    required = {"model_config", "ema_state_dict", "tasks_config"}
    if not isinstance(checkpoint, MLIPInferenceCheckpoint) or not required <= set(fields or {}):
        raise ModelFileError(f"{path} is not a fairchem MLIPInferenceCheckpoint "
                             f"(expected fields {sorted(required)})")
    return fields


def _head_prefixes(heads: dict) -> tuple[str, str | None]:
    """fairchem state-dict prefixes of the energy head and the direct force head."""
    energy, forces = None, None
    for name, spec in heads.items():
        module = spec.get("module")
        if module == ENERGY_HEAD:
            energy = f"output_heads.{name}."
        elif module == DIRECT_FORCE_HEAD:
            forces = f"output_heads.{name}."
        elif module == DATASET_HEAD_WRAPPER and spec.get("head_cls") == GRADIENT_HEAD:
            energy = f"output_heads.{name}.head."
        else:
            raise ModelFileError(f"unsupported output head {name!r} ({module}); supported: "
                                 "AllScAIP energy, direct-force and gradient heads")
    if energy is None:
        raise ModelFileError("the checkpoint has no AllScAIP energy head")
    return energy, forces


def map_state_dict(ema_state_dict: dict, energy_prefix: str, force_prefix: str | None) -> dict:
    """fairchem EMA keys (``module.`` prefix, ``n_averaged``) -> our parameter names."""
    state = {}
    for key, value in ema_state_dict.items():
        if key == "n_averaged":
            continue
        name = key[len("module."):] if key.startswith("module.") else key
        if name.startswith("backbone."):
            state[name] = value
        elif name.startswith(energy_prefix):
            state["energy_head." + name[len(energy_prefix):]] = value
        elif force_prefix is not None and name.startswith(force_prefix):
            state["force_head." + name[len(force_prefix):]] = value
        else:
            raise ModelFileError(f"unexpected parameter {name!r} in the checkpoint")
    return state


def _tasks_by_property(tasks: list[dict]) -> dict[str, dict]:
    by_property = {}
    for task in tasks:
        datasets = task.get("datasets") or []
        if "omol" in datasets or not by_property.get(task["property"]):
            by_property[task["property"]] = task
    return by_property


def _rmsd(task: dict | None) -> float:
    """Normaliser scale as fairchem holds it: a float32 buffer."""
    if task is None or not task.get("normalizer"):
        return 1.0
    return float(torch.tensor(float(task["normalizer"].get("rmsd", 1.0)), dtype=torch.float32))


def _mean(task: dict | None) -> float:
    if task is None or not task.get("normalizer"):
        return 0.0
    return float(torch.tensor(float(task["normalizer"].get("mean", 0.0)), dtype=torch.float32))


def _element_references(task: dict | None, size: int) -> torch.Tensor:
    refs = (task or {}).get("element_references")
    if not refs:
        return torch.zeros(size, dtype=torch.float64)
    table = refs["element_references"]
    values = table["_args_"][0] if isinstance(table, dict) else table
    return torch.as_tensor(values, dtype=torch.float64).flatten()


def convert_checkpoint(path: str | Path) -> tuple[AllScAIP, ModelConfig, dict]:
    """Build our model from a fairchem checkpoint; returns (model, config, metadata)."""
    fields = read_fairchem_checkpoint(path)
    model_config = fields["model_config"]
    backbone = dict(model_config.get("backbone", {}))
    if backbone.get("model") != BACKBONE:
        raise ModelFileError(f"{path} holds a {backbone.get('model')!r} backbone, not AllScAIP")
    try:
        config = ModelConfig.from_dict(backbone, where=f"{path}'s backbone", ignore=FAIRCHEM_RUNTIME_KEYS)
    except ValueError as exc:
        raise ModelFileError(f"{exc}. This checkpoint uses a backbone option this converter does "
                             "not know; it cannot be converted faithfully") from exc
    energy_prefix, force_prefix = _head_prefixes(model_config.get("heads", {}))
    if config.direct_forces != (force_prefix is not None):
        raise ModelFileError("direct_forces in the backbone does not match the output heads")

    tasks = _tasks_by_property(fields["tasks_config"])
    energy_task = tasks.get("energy")
    references = _element_references(energy_task, config.max_num_elements)
    model = AllScAIP(config, energy_scale=_rmsd(energy_task), energy_shift=_mean(energy_task),
                     force_scale=_rmsd(tasks.get("forces")), stress_scale=_rmsd(tasks.get("stress")),
                     element_references=references)
    state = map_state_dict(fields["ema_state_dict"], energy_prefix, force_prefix)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [name for name in missing if name != "element_references"]
    if missing or unexpected:
        raise ModelFileError(f"{path}: weights do not fit the AllScAIP architecture "
                             f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    metadata = {
        "source": "fairchem MLIPInferenceCheckpoint",
        "source_file": Path(path).name,
        "source_sha256": file_sha256(path),
        "units": {"length": "angstrom", "energy": "eV"},
        "tasks": [task["name"] for task in fields["tasks_config"]],
    }
    return model, config, metadata


def convert_to_model_file(path: str | Path, output: str | Path) -> Path:
    """``allscaip convert-fairchem``: write our model file next to nothing else."""
    model, config, metadata = convert_checkpoint(path)
    return save_model(model, config, output, metadata)
