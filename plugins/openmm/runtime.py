"""Load openmm-torch next to the torch it was built against.

``openmmtorch==1.5`` links the CUDA build of libtorch and needs ``libnvrtc.so.12``;
that library is found only after ``import torch`` has loaded torch's own CUDA
dependencies, so torch must be imported first. Its binaries match torch 2.9.1 only.
"""

from __future__ import annotations

import logging

REQUIRED_TORCH = "2.9.1"
REQUIRED_OPENMM = "8.6.1"
REQUIRED_OPENMMTORCH = "1.5"


def import_openmmtorch():
    """Return the ``openmmtorch`` module, or raise ``ImportError`` saying which versions work."""
    import torch

    torch_version = torch.__version__.split("+")[0]
    try:
        import openmm

        # openmmtorch 1.5 imports the deprecated simtk shim, which logs a warning the user
        # cannot act on; silence it for this import only.
        disabled = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            import openmmtorch
        finally:
            logging.disable(disabled)
    except ImportError as exc:
        raise ImportError(
            f"openmm-torch could not be loaded ({exc}). It needs torch=={REQUIRED_TORCH} "
            f"(found {torch_version}), openmm=={REQUIRED_OPENMM} and "
            f"openmmtorch=={REQUIRED_OPENMMTORCH}; install those three together "
            "(`make venv` does)."
        ) from exc
    if torch_version != REQUIRED_TORCH:
        raise ImportError(
            f"openmmtorch {REQUIRED_OPENMMTORCH} is built for torch {REQUIRED_TORCH}, "
            f"but torch {torch_version} is installed; pin torch=={REQUIRED_TORCH}."
        )
    _load_torch_kernels(openmm)
    return openmmtorch


def _load_torch_kernels(openmm) -> None:
    """If ``import openmm`` ran before ``import torch``, OpenMM's plugin loader could not
    load the TorchForce kernels (libnvrtc was not yet loaded): load them again now."""
    import os

    reference = openmm.Platform.getPlatformByName("Reference")
    if reference.supportsKernels(["CalcTorchForce"]):
        return
    directory = os.path.join(openmm.version.openmm_library_path, "plugins")
    openmm.Platform.loadPluginsFromDirectory(directory)
    if not reference.supportsKernels(["CalcTorchForce"]):
        raise ImportError("OpenMM could not load the TorchForce kernels from " + directory + ": "
                          + "; ".join(openmm.Platform.getPluginLoadFailures()))


def choose_platform(name: str = "auto"):
    """An OpenMM Platform by name; ``"auto"`` takes CUDA when OpenMM has it (the
    ``allscaip-md[cuda12]`` extra) and torch sees a GPU, else CPU."""
    import openmm
    import torch

    if name != "auto":
        return openmm.Platform.getPlatformByName(name)
    names = {openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())}
    if "CUDA" in names and torch.cuda.is_available():
        return openmm.Platform.getPlatformByName("CUDA")
    return openmm.Platform.getPlatformByName("CPU")
