"""Models shipped in the repository's ``models/`` folder."""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = MODELS_DIR / "allscaip-spcfw-water" / "model.pt"  # card: MODEL_CARD.md there


def default_model_path() -> Path:
    """The shipped default model, or a FileNotFoundError saying how to get one."""
    if not DEFAULT_MODEL.is_file():
        raise FileNotFoundError(
            f"no default model at {DEFAULT_MODEL}; pass a model file explicitly (convert a fairchem "
            "checkpoint with `allscaip convert-fairchem`, or train one with `allscaip train`)")
    return DEFAULT_MODEL
