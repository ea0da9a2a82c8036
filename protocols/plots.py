"""PNG figures of a protocol run (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def running_mean(values: np.ndarray) -> np.ndarray:
    return np.cumsum(values) / np.arange(1, len(values) + 1)


def timeseries(path: Path, panels: list[dict]) -> Path:
    """One panel per observable: each replica's series, its equilibration point (dashed) and
    the running mean of its production part; optional horizontal reference lines.

    panel: {"label", "series": [(time, values, start_index)], "lines": [(value, label)]}"""
    plt = _pyplot()
    figure, axes = plt.subplots(len(panels), 1, figsize=(8, 2.8 * len(panels)), squeeze=False)
    for axis, panel in zip(axes[:, 0], panels):
        for k, (times, values, start) in enumerate(panel["series"]):
            color = f"C{k % 10}"
            axis.plot(times, values, color=color, alpha=0.35, lw=0.8)
            if start < len(values):
                axis.plot(times[start:], running_mean(values[start:]), color=color, lw=2,
                          label=f"replica {k + 1} running mean")
                axis.axvline(times[start - 1] if start > 0 else times[0], color=color, ls="--", lw=1)
        for k, (value, label) in enumerate(panel.get("lines", [])):
            axis.axhline(value, color=("k", "C3", "C2", "C4")[k % 4], ls=":", lw=1.2, label=label)
        axis.set_ylabel(panel["label"])
        axis.legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("time (ps); dashed: detected equilibration")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def rdf(path: Path, r: list[float], g: list[float], site: str) -> Path:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(r, g, lw=1.5)
    axis.axhline(1.0, color="k", lw=0.6, ls=":")
    axis.set_xlabel("r (Å)")
    axis.set_ylabel(f"g(r), {site}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def replicas(path: Path, panels: list[dict]) -> Path:
    """Replica means with standard errors, the combined mean ± stderr as a band, and
    reference lines. panel: {"label", "values": [(mean, se)], "combined": (mean, se), "lines"}"""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        index = np.arange(1, len(panel["values"]) + 1)
        means = [m for m, _ in panel["values"]]
        errors = [e for _, e in panel["values"]]
        axis.errorbar(index, means, yerr=errors, fmt="o", capsize=4, label="replicas")
        mean, stderr = panel["combined"]
        axis.axhspan(mean - stderr, mean + stderr, color="C0", alpha=0.2, label="combined ± stderr")
        for k, (value, label) in enumerate(panel.get("lines", [])):
            axis.axhline(value, color=f"C{k + 1}", ls="--", label=label)
        axis.set_xticks(index)
        axis.set_xlabel("replica")
        axis.set_ylabel(panel["label"])
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def comparison(path: Path, panels: list[dict]) -> Path:
    """This run vs reference potentials vs experiment, one panel per property.

    panel: {"label", "rows": [(name, value, stderr or None)]} (top to bottom)."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 0.6 + 0.55 * max(
        len(p["rows"]) for p in panels)), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        rows = panel["rows"][::-1]
        for k, (name, value, stderr) in enumerate(rows):
            marker = "s" if stderr is None else "o"
            axis.errorbar([value], [k], xerr=None if stderr is None else [[stderr], [stderr]], fmt=marker,
                          color=f"C{k % 10}", capsize=4)
        axis.set_yticks(range(len(rows)))
        axis.set_yticklabels([name for name, _, _ in rows], fontsize=8)
        axis.set_xlabel(panel["label"])
        axis.margins(x=0.25, y=0.3)
        axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def convergence(path: Path, panels: list[dict]) -> Path:
    """Per replica: the running mean of the production part with its ±1σ error band (the
    protocol's estimator applied to each growing prefix) and block averages with their scatter.

    panel: {"label", "series": [(times, running_mean, band, block_times, block_means)]}"""
    plt = _pyplot()
    figure, axes = plt.subplots(len(panels), 1, figsize=(8, 2.8 * len(panels)), squeeze=False)
    for axis, panel in zip(axes[:, 0], panels):
        for k, (times, mean, band, block_times, block_means) in enumerate(panel["series"]):
            color = f"C{k % 10}"
            axis.plot(times, mean, color=color, lw=1.5, label=f"replica {k + 1}")
            axis.fill_between(times, mean - band, mean + band, color=color, alpha=0.2)
            axis.plot(block_times, block_means, "o", color=color, ms=4, mfc="none")
        axis.set_ylabel(panel["label"])
        axis.legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("production time (ps); band: running mean ± 1σ; circles: block means")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
