"""The learning curve of a training run: validation errors against optimiser steps."""

from __future__ import annotations

from pathlib import Path


def plot_learning_curve(history: list[dict], path: str | Path) -> Path:
    """Validation force RMSE relative to the RMS force (and energy MAE, where recorded) per
    epoch, against optimiser steps, on log axes; written as PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt, ticker

    steps = [int(record["step"]) for record in history]
    figure, force_axis = plt.subplots(figsize=(6.0, 4.0))
    forces = [100 * float(record.get("validation_force_rmse_relative", "nan")) for record in history]
    force_axis.plot(steps, forces, "o-", color="tab:blue", label="force RMSE / RMS force")
    force_axis.set_xlabel("optimiser steps")
    force_axis.set_ylabel("validation force RMSE (% of RMS force)", color="tab:blue")
    force_axis.set_xscale("log")
    force_axis.set_yscale("log")
    energies = [float(record.get("validation_energy_mae_mev_atom", "nan")) for record in history]
    energy_axis = force_axis.twinx()
    energy_axis.plot(steps, energies, "s--", color="tab:red", label="energy MAE")
    energy_axis.set_ylabel("validation energy MAE (meV/atom)", color="tab:red")
    energy_axis.set_yscale("log")
    for axis in (force_axis, energy_axis):
        axis.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
        axis.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.3g"))
    force_axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
