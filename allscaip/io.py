"""Our model file: a ``torch.save``d dict that ``torch.load(weights_only=True)`` reads.

Contents: format tag and version, the architecture (``ModelConfig`` as a dict), the
state dict, output normalisation (scales, shift), float64 element reference energies,
free-form metadata (source, units) and a sha256 over the weights that is checked on load.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from allscaip.config import ModelConfig
from allscaip.model import AllScAIP

FORMAT = "allscaip-model"
FORMAT_VERSION = 1
NORMALIZATION_KEYS = ("energy_scale", "energy_shift", "force_scale", "stress_scale")
PAYLOAD_KEYS = ("config", "state_dict", "normalization", "element_references", "metadata",
                "weights_sha256")


class ModelFileError(ValueError):
    """A model file is missing, corrupt or not an AllScAIP model."""


def weights_sha256(state_dict: dict[str, torch.Tensor], references: torch.Tensor) -> str:
    """Content hash of the weights and element references (order-independent of dict order)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    digest.update(references.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(model: AllScAIP, config: ModelConfig, path: str | Path,
               metadata: dict | None = None) -> Path:
    """Write ``model`` (weights stored as float32) to ``path``; return the path."""
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()
             if k != "element_references"}
    references = model.element_references.detach().to("cpu")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "state_dict": state,
        "normalization": {key: float(getattr(model, key)) for key in NORMALIZATION_KEYS},
        "element_references": references,
        "metadata": dict(metadata or {}),
        "weights_sha256": weights_sha256(state, references),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def describe_unreadable(path: Path) -> str:
    """What a file that torch cannot load looks like (empty, LFS pointer, HTML, text, ...)."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if not head:
        return "the file is empty"
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the file itself; run `git lfs pull`"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<")):
        return "it is an HTML/XML page (a failed download?)"
    if b"\0" not in head:
        try:
            head.decode("utf-8")
            return "it is a text file"
        except UnicodeDecodeError:
            pass
    if head.startswith(b"PK"):
        return "it is a zip archive that is truncated or holds no torch data"
    return "it is damaged or not a torch file"


def safe_torch_load(path: Path, what: str, allowed: tuple = ()) -> object:
    """``torch.load(weights_only=True)`` (no code runs) whose every failure is a ModelFileError
    naming the file and what it looks like."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, KeyError, UnpicklingError, EOFError ...
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path} is not a readable {what}: {describe_unreadable(path)} "
                             f"(torch.load said: {detail[:200]})") from exc


def read_model_file(path: str | Path) -> dict:
    """Load and validate the raw payload (no code execution: weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    convert_hint = ("If it is a fairchem checkpoint, convert it first: "
                    "`allscaip convert-fairchem CKPT -o MODEL.pt`.")
    try:
        payload = safe_torch_load(path, "AllScAIP model file")
    except ModelFileError as exc:
        raise ModelFileError(f"{exc}. {convert_hint}") from exc.__cause__
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not an AllScAIP model file (no '{FORMAT}' format tag). "
                             + convert_hint)
    if payload.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path} has format version {payload.get('format_version')}; "
                             f"this version of allscaip reads version {FORMAT_VERSION}")
    missing = [key for key in PAYLOAD_KEYS if key not in payload]
    if missing:
        raise ModelFileError(f"{path} is an incomplete AllScAIP model file (missing {missing})")
    expected = payload.get("weights_sha256")
    actual = weights_sha256(payload["state_dict"], payload["element_references"])
    if expected != actual:
        raise ModelFileError(f"{path} is corrupt: weights checksum {actual[:12]}... does not "
                             f"match the recorded {str(expected)[:12]}...")
    return payload


def load_model(path: str | Path, dtype: torch.dtype = torch.float64,
               device: str | torch.device = "cpu") -> AllScAIP:
    """Build the network from a model file, in evaluation mode."""
    payload = read_model_file(path)
    try:
        config = ModelConfig.from_dict(payload["config"], where=f"{path}'s config")
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: {exc}") from exc
    model = AllScAIP(config, element_references=payload["element_references"],
                     **payload["normalization"])
    model.load_state_dict(payload["state_dict"], strict=False)
    expected = set(model.state_dict()) - {"element_references"}
    if set(payload["state_dict"]) != expected:
        raise ModelFileError(f"{path}: weights do not match the architecture in its config")
    model.metadata = dict(payload["metadata"], weights_sha256=payload["weights_sha256"])
    return model.to(device=device, dtype=dtype).eval()
