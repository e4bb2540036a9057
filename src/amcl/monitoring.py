"""Watching what AMCL learns: per-head temperature and similarity statistics, epoch by epoch.

A temperature that collapses onto ``tau_min`` or ``tau_max`` is the first sign of a bad run, long
before the loss or the kNN accuracy show it. Each training step adds its statistics to an
:class:`EpochStatistics` on the device (no host synchronisation); once per epoch they are reduced
(over steps and processes) into plain numbers, written to ``metrics.json``/``metrics.csv`` and,
when TensorBoard is installed, to its event files. :func:`plot_curves` draws ``curves.png``.

Keys are ``head<c>/<kind>``; each kind is reduced over the epoch by :data:`REDUCTIONS` (mean
unless listed).
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from amcl.distributed import is_distributed
from amcl.files import write_atomic

__all__ = [
    "COLLAPSE_SIMILARITY", "EpochStatistics", "REDUCTIONS", "bound_shares", "bound_warnings", "collapse_warning",
    "masked_mean_min_max", "plot_curves", "temperature_statistics", "write_csv",
]

#: A head whose mean positive and mean negative similarity both exceed this has collapsed.
COLLAPSE_SIMILARITY = 0.9


def bound_warnings(record: dict[str, float], tau_min: float, tau_max: float, bound_is_expected: bool,
                   warned: set[str]) -> list[str]:
    """Warnings for an epoch's ``record`` in which most of a head's temperatures sit on ``tau_min`` or
    ``tau_max``, each (head, bound) once: the keys already warned about are in ``warned``, which grows.

    None where ``bound_is_expected`` (SimSiam, Barlow Twins): their temperatures rest on a bound by
    construction (Eq. 2.2 / 2.3 have no interior optimum), whatever the bounds; their collapse shows in the
    similarities (:func:`collapse_warning`) or as a non-finite loss."""
    if bound_is_expected:
        return []
    messages = []
    for key, share in record.items():
        if not key.endswith(("/share_at_tau_min", "/share_at_tau_max")) or share <= 0.5 or key in warned:
            continue
        warned.add(key)
        head, bound = key.split("/")[0], key.rsplit("_", 1)[-1]
        value = tau_min if bound == "min" else tau_max
        messages.append(f"{share:.0%} of {head}'s temperatures sit at tau_{bound} = {value:g} in epoch "
                        f"{int(record['epoch'])}: AMCL may be collapsing (see 'Reading the curves' in "
                        f"docs/monitoring.md); watch curves.png, or try another --tau-{bound}, --beta or --lr")
    return messages


def collapse_warning(record: dict[str, float], warned: set[str]) -> str | None:
    """One warning for the heads of an epoch's ``record`` whose mean positive and negative similarities both
    pass :data:`COLLAPSE_SIMILARITY` (every image then maps to nearly one point, whatever the loss says), each
    head once (``<head>/collapse`` in ``warned``, which grows); None if there is none."""
    collapsing = []
    for key, positive in record.items():
        head = key.split("/")[0]
        negative = record.get(f"{head}/sim_neg_mean")
        if not key.endswith("/sim_pos_mean") or negative is None or f"{head}/collapse" in warned:
            continue
        if min(positive, negative) > COLLAPSE_SIMILARITY:
            warned.add(f"{head}/collapse")
            collapsing.append(f"{head} {positive:.3f} and {negative:.3f}")
    if not collapsing:
        return None
    return (f"projections are collapsing in epoch {int(record['epoch'])}: mean similarity of positive and negative "
            f"pairs {'; '.join(collapsing)}, so all images map close to one point (see 'Reading the curves' in "
            "docs/monitoring.md and the similarity panel of curves.png); try a larger --tau-min or --beta, "
            "--temperature-input detached, or a smaller --lr")

#: How a statistic is reduced over the steps of an epoch (and over processes); the rest are means.
REDUCTIONS = {"tau_pos_min": "min", "tau_pos_max": "max", "tau_neg_min": "min", "tau_neg_max": "max"}
#: A temperature counts as "at a bound" within this fraction of (tau_max - tau_min) from it.
BOUND_TOLERANCE = 1e-3


def bound_shares(temperatures: Tensor, tau_min: float, tau_max: float) -> tuple[Tensor, Tensor]:
    """Per head (dim 0), the share of temperatures at ``tau_min`` and at ``tau_max``."""
    flat = temperatures.detach().float().flatten(1)
    margin = BOUND_TOLERANCE * (tau_max - tau_min)
    return (flat <= tau_min + margin).float().mean(1), (flat >= tau_max - margin).float().mean(1)


def temperature_statistics(
    tau_min: float,
    tau_max: float,
    positive: Tensor | None = None,
    negative: Tensor | None = None,
    positive_similarities: Tensor | None = None,
    negative_similarities: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """One step's statistics per head: mean, min and max of the positive-pair and negative temperatures
    (``[C, ...]`` each; ``negative_mask``, broadcastable to the negative tensors, marks which entries
    are negatives when they are full matrices), the share of all of them at ``tau_min`` / ``tau_max``,
    the mean positive and negative similarities, and whether the temperatures adapt to the pair:

    * ``tau_spread``: standard deviation over mean of the learned temperatures of every pair in the
      loss (0 means one temperature for all pairs, however it moves over training);
    * ``tau_sim_corr``: their Pearson correlation with the pairs' similarities (negative: alike pairs
      get lower temperatures; 0 when the temperature does not depend on the pair), when the
      similarities are given.

    Missing inputs are left out."""
    stats: dict[str, Tensor] = {}
    masks = {"pos": None, "neg": negative_mask}
    for side, taus in (("pos", positive), ("neg", negative)):
        if taus is not None:
            mean, low, high = masked_mean_min_max(taus, masks[side])
            stats |= _per_head(f"tau_{side}_mean", mean) | _per_head(f"tau_{side}_min", low)
            stats |= _per_head(f"tau_{side}_max", high)
    learned = [(t, s, masks[side]) for side, t, s in (("pos", positive, positive_similarities),
                                                      ("neg", negative, negative_similarities)) if t is not None]
    if learned:
        at_min, at_max, spread, correlation = _pooled_statistics(learned, tau_min, tau_max)
        stats |= _per_head("share_at_tau_min", at_min) | _per_head("share_at_tau_max", at_max)
        stats |= _per_head("tau_spread", spread)
        if correlation is not None:
            stats |= _per_head("tau_sim_corr", correlation)
    for side, sims in (("pos", positive_similarities), ("neg", negative_similarities)):
        if sims is not None:
            stats |= _per_head(f"sim_{side}_mean", masked_mean_min_max(sims, masks[side])[0])
    return stats


def _flat(values: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``values`` as ``[C, M]`` and ``mask`` (broadcastable to ``values``) as a matching view, or None."""
    return values.detach().float().flatten(1), None if mask is None else mask.expand(values.shape).flatten(1)


def _kept_sum(x: Tensor, keep: Tensor | None) -> Tensor:
    return x.sum(1) if keep is None else torch.where(keep, x, 0.0).sum(1)


def masked_mean_min_max(values: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per head (dim 0): the mean, min and max of ``values`` over the entries ``mask`` keeps (all without one)."""
    flat, keep = _flat(values, mask)
    if keep is None:
        return flat.mean(1), flat.amin(1), flat.amax(1)
    mean = _kept_sum(flat, keep) / keep.sum(1).clamp_min(1)
    return mean, torch.where(keep, flat, float("inf")).amin(1), torch.where(keep, flat, float("-inf")).amax(1)


def _pooled_statistics(
    parts: list[tuple[Tensor, Tensor | None, Tensor | None]], tau_min: float, tau_max: float
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Per head, over the kept entries of every (temperatures, similarities, mask) part together: the shares
    at tau_min / tau_max, std/mean of the temperatures, and their correlation with the similarities (None when
    a part has none). Summed part by part, so the full ``[C, N, M]`` matrices are never concatenated; centred
    in a second pass so that a small spread is not lost to rounding."""
    margin = BOUND_TOLERANCE * (tau_max - tau_min)
    flats = [(*_flat(t, m), None if s is None else _flat(s, None)[0]) for t, s, m in parts]
    with_sims = all(s is not None for _, _, s in flats)
    count = sum(t.shape[1] if k is None else k.sum(1) for t, k, _ in flats)
    count = torch.as_tensor(count, dtype=torch.float32, device=flats[0][0].device).clamp_min(1)
    at_min = sum(_kept_sum((t <= tau_min + margin).float(), k) for t, k, _ in flats) / count
    at_max = sum(_kept_sum((t >= tau_max - margin).float(), k) for t, k, _ in flats) / count
    tau_mean = sum(_kept_sum(t, k) for t, k, _ in flats) / count
    tau_std = (sum(_kept_sum((t - tau_mean[:, None]).pow(2), k) for t, k, _ in flats) / count).sqrt()
    spread = tau_std / tau_mean.clamp_min(1e-12)
    if not with_sims:
        return at_min, at_max, spread, None
    sim_mean = sum(_kept_sum(s, k) for _, k, s in flats) / count
    sim_std = (sum(_kept_sum((s - sim_mean[:, None]).pow(2), k) for _, k, s in flats) / count).sqrt()
    covariance = sum(_kept_sum((t - tau_mean[:, None]) * (s - sim_mean[:, None]), k) for t, k, s in flats) / count
    # one temperature for all pairs (or identical similarities) has no correlation: 0, not 0/0
    correlation = torch.where((tau_std > 1e-7 * tau_mean.abs()) & (sim_std > 1e-7),
                              covariance / (tau_std * sim_std).clamp_min(1e-30), torch.zeros_like(covariance))
    return at_min, at_max, spread, correlation


def _per_head(kind: str, values: Tensor) -> dict[str, Tensor]:
    return {f"head{c + 1}/{kind}": v for c, v in enumerate(values)}


def _reduction(key: str) -> str:
    return REDUCTIONS.get(key.rsplit("/", 1)[-1], "mean")


class EpochStatistics:
    """Running per-epoch reductions of step statistics, kept on the device until :meth:`compute`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._values: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}

    def update(self, stats: dict[str, Tensor]) -> None:
        for key, value in stats.items():
            value = value.detach().float()
            if key not in self._values:
                self._values[key], self._counts[key] = value.clone(), 1
                continue
            kind = _reduction(key)
            if kind == "min":
                self._values[key] = torch.minimum(self._values[key], value)
            elif kind == "max":
                self._values[key] = torch.maximum(self._values[key], value)
            else:
                self._values[key] = self._values[key] + value
            self._counts[key] += 1

    def compute(self) -> dict[str, float]:
        """The epoch's values (one host synchronisation), reduced over processes too."""
        out = {}
        for key, value in self._values.items():
            kind = _reduction(key)
            value = value / self._counts[key] if kind == "mean" else value.clone()
            if is_distributed():
                op = {"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}.get(kind, dist.ReduceOp.SUM)
                dist.all_reduce(value, op=op)
                if kind == "mean":
                    value /= dist.get_world_size()
            out[key] = float(value)
        return out


def write_csv(path: str | os.PathLike[str], epochs: Sequence[dict[str, Any]]) -> None:
    """``metrics.csv``: one row per epoch, one column per value ever logged (blank where absent)."""
    columns = list(dict.fromkeys(key for record in epochs for key in record))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(epochs)
    write_atomic(path, text.getvalue())


#: The curves.png panels drawn as plain lines per head: (metric key after "head<c>/", line style, label suffix).
PER_HEAD_LINES = {
    "tau_spread": (("tau_spread", "-", ""),),
    "tau_sim_corr": (("tau_sim_corr", "-", ""),),
    "sim": (("sim_pos_mean", "-", " positive"), ("sim_neg_mean", "--", " negative")),
    "bound": (("share_at_tau_min", "-", " at tau_min"), ("share_at_tau_max", "--", " at tau_max")),
}


#: At most this many heads get their own lines in ``curves.png`` (more would be unreadable).
MAX_PLOTTED_HEADS = 8


def plot_curves(path: str | os.PathLike[str], epochs: Sequence[dict[str, Any]], title: str = "",
                pairs: tuple[str, str | None] = ("positive pairs", "negative pairs")) -> None:
    """``curves.png``: loss, kNN accuracy, learning rate and, per head, the temperatures (mean with the
    min-max range shaded), the share at the bounds, the spread of the temperatures over pairs and their
    correlation with similarity, and the mean similarities, over epochs. ``pairs`` names the method's
    positive and negative pairs (Barlow Twins: diagonal and off-diagonal channel pairs; None: no
    negatives, as SimSiam). With more than :data:`MAX_PLOTTED_HEADS` heads, the first ones are drawn."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    def series(key: str) -> tuple[list[float], list[float]]:
        points = [(e["epoch"], e[key]) for e in epochs if key in e]
        return [p[0] for p in points], [p[1] for p in points]

    def marker(points: int) -> str | None:
        return "o" if points <= 3 else "." if points < 30 else None  # a line of one epoch is a dot

    all_heads = sorted({k.split("/")[0] for e in epochs for k in e if k.startswith("head")},
                       key=lambda h: int(h[4:]))
    heads = all_heads[:MAX_PLOTTED_HEADS]
    positive, negative = pairs
    panels: list[tuple[str, Any]] = [("loss", ["loss"]), ("kNN accuracy", ["knn_acc"]), ("learning rate", ["lr"])]
    if heads:
        panels.append((f"temperature of {positive}", "pos"))
        if negative:
            panels.append((f"temperature of {negative}", "neg"))
        panels += [("share of temperatures at a bound", "bound"),
                   ("temperature spread over pairs (std / mean)", "tau_spread"),
                   ("correlation of temperature with similarity", "tau_sim_corr"),
                   (f"similarity ({positive} solid, {negative} dashed)" if negative else
                    f"similarity of {positive}", "sim")]
    fig = Figure(figsize=(4.2 * min(3, len(panels)), 3.2 * ((len(panels) + 2) // 3)), layout="constrained")
    axes = fig.subplots((len(panels) + 2) // 3, min(3, len(panels)), squeeze=False).flatten()
    for ax, (name, what) in zip(axes, panels):
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if isinstance(what, list):
            for key in what:
                x, y = series(key)
                ax.plot(x, y, marker=marker(len(x)))
            continue
        for index, head in enumerate(heads):
            colour = f"C{index}"  # one colour per head in every panel; its negative line dashed
            if what in PER_HEAD_LINES:
                for key, style, label in PER_HEAD_LINES[what]:
                    x, y = series(f"{head}/{key}")
                    if x:
                        ax.plot(x, y, style, color=colour, marker=marker(len(x)), label=f"{head}{label}")
                if what == "bound":
                    ax.set_ylim(-0.02, 1.02)
                continue
            x, mean = series(f"{head}/tau_{what}_mean")
            if not x:
                continue
            line, = ax.plot(x, mean, color=colour, marker=marker(len(x)), label=head)
            _, low = series(f"{head}/tau_{what}_min")
            _, high = series(f"{head}/tau_{what}_max")
            if len(low) == len(x) == len(high):
                ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
            ax.set_yscale("log")
        if ax.lines and len(ax.lines) <= 2 * MAX_PLOTTED_HEADS:
            ax.legend(fontsize=7)
    seen = sorted({e["epoch"] for e in epochs})
    for ax in axes[:len(panels)]:
        if len(seen) == 1:  # one epoch: its dots in the middle, at a whole-epoch tick
            ax.set_xlim(seen[0] - 0.5, seen[0] + 0.5)
            ax.set_xticks(seen)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if len(all_heads) > len(heads):
        title = f"{title} ({len(heads)} of {len(all_heads)} heads shown)".strip()
    if title:
        fig.suptitle(title, fontsize=10)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
