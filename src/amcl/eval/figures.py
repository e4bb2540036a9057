"""The figures of ``amcl analyze``, drawn from the panels of ``analysis.json`` (matplotlib, without
pyplot): similarity histograms as in the AMCL paper's motivation figure (negatives blue, positives
orange), the temperatures per head, and the overlap and AUC of every panel."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from amcl.eval.separation import LOG_BINS_FROM
from amcl.files import write_atomic

__all__ = ["overlap_figure", "save_figure", "similarity_histograms", "temperature_figure"]

NEGATIVE_COLOR, POSITIVE_COLOR, ALPHA = "tab:blue", "tab:orange", 0.5


def _figure(panels: int, width: float = 3.3, height: float = 2.7, per_row: int = 4):
    from matplotlib.figure import Figure  # no pyplot: no global backend, no open-figure registry

    cols = min(panels, per_row)
    rows = -(-panels // cols)
    fig = Figure(figsize=(width * cols, height * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_axis_off()
    return fig, axes[:panels]


def similarity_histograms(panels: Sequence[dict[str, Any]], title: str = ""):
    """The similarity histograms of ``panels`` (entries of analysis.json's backbone / heads) as a
    matplotlib Figure: negatives blue, positives orange, semi-transparent, on each panel's shared bins."""
    fig, axes = _figure(len(panels))
    # one x-range for every panel, so that the backbone's and the heads' similarities compare by eye
    low = min(panel["histogram"]["edges"][0] for panel in panels)
    high = max(panel["histogram"]["edges"][-1] for panel in panels)
    for ax, panel in zip(axes, panels):
        edges = panel["histogram"]["edges"]
        counts = panel["histogram"]  # filled steps: the look of edgeless bars, drawn as one polygon each
        ax.stairs(counts["negative"], edges, fill=True, color=NEGATIVE_COLOR, alpha=ALPHA, label="negative pairs")
        ax.stairs(counts["positive"], edges, fill=True, color=POSITIVE_COLOR, alpha=ALPHA, label="positive pairs")
        ax.set_xlim(low, high)
        ax.set_xlabel("Similarity score")
        ax.set_ylabel("Counts")
        ax.set_title(f"{panel['name']}: overlap {panel['overlap']:.2f}, AUC {panel['auc']:.2f}", fontsize=9)
    axes[0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def temperature_figure(heads: Sequence[dict[str, Any]], tau_min: float, tau_max: float, title: str):
    fig, axes = _figure(len(heads))
    for ax, head in zip(axes, heads):
        temps = head["temperature"]
        edges = temps["edges"]
        for side, color, label in (("negative", NEGATIVE_COLOR, "negative"), ("positive", POSITIVE_COLOR, "positive")):
            info = temps[side]
            if info["adaptive"]:
                share = np.asarray(info["counts"], dtype=np.float64) / max(1, info["count"])
                ax.stairs(share, edges, fill=True, color=color, alpha=ALPHA, label=f"{label} pairs")
            else:
                ax.axvline(info["constant"], color=color, linestyle="--", linewidth=1.5,
                           label=f"{label}: constant {info['constant']:g}")
        # each head on its own range (log where it spans decades), constants included
        constants = [temps[s]["constant"] for s in ("positive", "negative") if not temps[s]["adaptive"]]
        low, high = min([edges[0], *constants]), max([edges[-1], *constants])
        if high / low > LOG_BINS_FROM:
            ax.set_xscale("log")
        ax.set_xlim(low, high)
        ax.set_xlabel("Temperature τ")
        ax.set_ylabel("Share of pairs")
        means = [f"τ{'+' if s == 'positive' else '−'} {temps[s].get('mean', temps[s].get('constant')):.3g}"
                 for s in ("positive", "negative")]
        ax.set_title(f"{head['name']}: mean {', '.join(means)}", fontsize=9)
    axes[0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def overlap_figure(panels: Sequence[dict[str, Any]], title: str):
    """Overlap (lower is better) and AUC (higher is better) of every panel, each on its own axis."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2 * max(3.0, 0.9 * len(panels) + 1.2), 3.0), layout="constrained")
    x = np.arange(len(panels))
    measures = (("overlap", "tab:purple", "Overlap of the histograms (lower: better separated)"),
                ("auc", "tab:green", "AUC P(s+ > s−) (higher: better separated)"))
    for ax, (key, colour, label) in zip(fig.subplots(1, 2), measures):
        values = [p[key] for p in panels]
        ax.bar(x, values, 0.6, color=colour, alpha=0.8)
        for xi, value in zip(x, values):
            ax.text(xi, value + 0.01, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, [p["name"] for p in panels])
        ax.set_ylim(0, 1.12)
        ax.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save_figure(fig, path: Path) -> None:
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
