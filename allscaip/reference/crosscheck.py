"""OpenMM labels against the same SPC/Fw model in LAMMPS (Ewald, analytic virial).

Energies and forces: OpenMM PME vs LAMMPS Ewald on the same frames. Stress: the labels'
LAMMPS virial (tail-corrected) vs the finite-difference strain derivative of the OpenMM
energy (dispersion-corrected). With Lennard-Jones truncated at the cutoff, pairs crossing it
under strain make the energy jump, so the finite-difference stress carries some noise; the
comparison reports its isotropic and deviatoric parts against the spread of the labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from allscaip.data import read_shard
from allscaip.reference.labels import KJ_PER_EV, SpcfwLabeller
from allscaip.reference.spcfw_lammps import spcfw_lammps_labels


def compare_engines(folder: str | Path, n_frames: int) -> dict:
    """Statistics of OpenMM-vs-LAMMPS label differences on the first liquid frames."""
    frames = [frame for shard in sorted(Path(folder).glob("liquid-*.npz"))
              for frame in read_shard(shard)][:n_frames]
    if not frames:
        raise ValueError(f"no liquid frames in {folder}")
    finite_difference = SpcfwLabeller(stress="finite-difference")
    offsets, force_errors, force_rms, isotropic, deviatoric, spread = ([] for _ in range(6))
    for frame in frames:
        energy, forces, _ = spcfw_lammps_labels(frame.positions, frame.cell, cutoff=9.0, tail=True)
        offsets.append(energy / KJ_PER_EV - frame.energy)
        force_errors.append(np.sqrt(np.mean((forces / KJ_PER_EV / 10 - frame.forces) ** 2)))
        force_rms.append(np.sqrt(np.mean(frame.forces ** 2)))
        fd_stress = finite_difference.label(frame.numbers, frame.positions, frame.cell).stress
        difference = fd_stress - frame.stress
        isotropic.append(np.trace(difference) / 3)
        deviatoric.append(np.abs(difference - np.eye(3) * isotropic[-1]).max())
        spread.append(frame.stress)
    offsets = np.array(offsets)
    return {
        "frames": len(frames),
        "atoms": [len(f) for f in frames],
        "energy_offset_ev": {"mean": float(offsets.mean()), "std": float(offsets.std())},
        "force_rmse_ev_a": float(np.max(force_errors)),
        "force_rms_ev_a": float(np.mean(force_rms)),
        "stress_spread_ev_a3": float(np.std(np.array(spread))),
        "fd_minus_lammps_isotropic_ev_a3": [float(x) for x in isotropic],
        "fd_minus_lammps_deviatoric_max_ev_a3": float(np.max(deviatoric)),
    }


def write_comparison(comparison: dict, folder: str | Path) -> str:
    """Save as ``engines.json`` in ``folder``; returns a short text summary."""
    Path(folder, "engines.json").write_text(json.dumps(comparison, indent=1))
    c = comparison
    return (f"OpenMM vs LAMMPS on {c['frames']} liquid frames: force RMSE {c['force_rmse_ev_a']:.2e} eV/A "
            f"(force RMS {c['force_rms_ev_a']:.3f}); energy offset {c['energy_offset_ev']['mean']:+.5f} eV "
            f"(std over frames {c['energy_offset_ev']['std']:.1e}). Stress, OpenMM finite difference minus "
            f"LAMMPS virial: isotropic {np.mean(c['fd_minus_lammps_isotropic_ev_a3']):+.1e} "
            f"+- {np.std(c['fd_minus_lammps_isotropic_ev_a3']):.1e} eV/A^3, deviatoric max {c['fd_minus_lammps_deviatoric_max_ev_a3']:.1e} (stress spread {c['stress_spread_ev_a3']:.1e})")
