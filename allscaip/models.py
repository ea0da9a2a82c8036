"""Models shipped in the repository's ``models/`` folder (each folder has its MODEL_CARD.md)."""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
# hidden 32, knn_k 16: the small, fast water model; tests use it as a realistic trained model
SMALL_WATER_MODEL = MODELS_DIR / "allscaip-spcfw-water" / "model.pt"
# hidden 64, knn_k 32: reproduces its SPC/Fw teacher's liquid; what the protocols use without a model
DEFAULT_MODEL = MODELS_DIR / "allscaip-spcfw-water-v2" / "model.pt"


def shipped_model_path(path: Path) -> Path:
    """``path`` if the file is there, or a FileNotFoundError saying how to get a model."""
    if not path.is_file():
        raise FileNotFoundError(
            f"no model at {path}; pass a model file explicitly (convert a fairchem "
            "checkpoint with `allscaip convert-fairchem`, or train one with `allscaip train`)")
    return path


def default_model_path() -> Path:
    """The shipped default model."""
    return shipped_model_path(DEFAULT_MODEL)


def small_water_model_path() -> Path:
    """The shipped small water model (hidden 32, ``knn_k`` 16)."""
    return shipped_model_path(SMALL_WATER_MODEL)
