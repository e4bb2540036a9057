"""The separation measures of ``amcl analyze``: how much the similarities of positive and negative
pairs overlap, and the summaries of similarities and temperatures that ``analysis.json`` holds. Pure
functions of arrays (numpy, and torch for the seeded :func:`derangement` of negatives).

Two numbers summarise the separation of a panel:

* ``overlap`` (:func:`distribution_overlap`): the overlap coefficient of the two normalised
  histograms on shared bins, 1 for identical distributions and 0 for disjoint ones (lower is
  better separated). It depends on the bins, which are recorded with it.
* ``auc`` (:func:`separation_auc`): the probability that a random positive pair is more similar
  than a random negative one (ties count one half), i.e. the ROC AUC of the similarity as a
  positive/negative classifier: 0.5 for identical distributions, 1 for perfectly separated
  ones. It needs no bins.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["derangement", "distribution_overlap", "separation_auc", "similarity_panel", "temperature_summary"]

#: A temperature counts as saturated ("at tau_min" / "at tau_max") when it lies within this share of
#: the range tau_max - tau_min from the bound, i.e. when the network's sigmoid is below 1e-3 or above 1 - 1e-3.
SATURATION_TOLERANCE = 1e-3
#: Temperature arrays up to this size are stored whole in analysis.json (Barlow Twins' off-diagonal
#: channel pairs, d(d-1) per head, are summarised by statistics and a histogram only).
MAX_STORED_TEMPERATURES = 4096


def _as_array(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    return array


def _shared_histograms(
    a: Any, b: Any, bins: int, value_range: tuple[float, float] | None, min_width: float = 1e-9
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin edges shared by ``a`` and ``b`` and the counts of each (values outside the range are
    clipped into the end bins). A data range narrower than ``min_width`` is widened to it, centred."""
    if int(bins) < 1:
        raise ValueError(f"need at least one bin, got {bins}")
    x, y = _as_array(a, "a"), _as_array(b, "b")
    if value_range is None:
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    else:
        lo, hi = map(float, value_range)
        if not hi > lo:
            raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    if hi - lo < min_width:  # e.g. all values equal
        centre = (lo + hi) / 2
        lo, hi = centre - min_width / 2, centre + min_width / 2
    edges = np.linspace(lo, hi, int(bins) + 1)
    count_a = np.histogram(np.clip(x, lo, hi), bins=edges)[0]
    count_b = np.histogram(np.clip(y, lo, hi), bins=edges)[0]
    return edges, count_a, count_b


def distribution_overlap(
    a: Any, b: Any, bins: int = 40, value_range: tuple[float, float] | None = None
) -> float:
    """The overlap coefficient of two samples' distributions, in [0, 1].

    Both samples are histogrammed on the same ``bins`` equal-width bins over ``value_range``
    (default: from the smallest to the largest value of both samples; values outside a given range
    are clipped into the end bins), each histogram is normalised to sum to 1 (p and q), and the
    overlap is ``sum_i min(p_i, q_i)``: 1 when the histograms are identical, 0 when no bin holds
    values of both. It is symmetric in ``a`` and ``b``.

    Example:
        >>> distribution_overlap([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
        1.0
        >>> distribution_overlap([0.0, 0.1], [0.9, 1.0], bins=4)
        0.0
    """
    _, count_a, count_b = _shared_histograms(a, b, bins, value_range)
    p, q = count_a / count_a.sum(), count_b / count_b.sum()
    return float(np.minimum(p, q).sum().clip(0.0, 1.0))


def separation_auc(positive: Any, negative: Any) -> float:
    """P(s_pos > s_neg) + P(s_pos = s_neg) / 2 over all (positive, negative) value pairs: the ROC AUC
    of the value as a score telling positives from negatives (0.5: no separation, 1: every positive
    above every negative, 0: the reverse). Computed from average ranks (Mann-Whitney U), without bins.

    Example:
        >>> separation_auc([0.8, 0.9], [0.1, 0.2])
        1.0
    """
    pos, neg = _as_array(positive, "positive"), _as_array(negative, "negative")
    values = np.concatenate([pos, neg])
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]  # the first element of each group of ties
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    sizes = np.diff(np.r_[starts, values.size])
    ranks = np.empty(values.size)
    ranks[order] = (starts + (sizes + 1) / 2)[group]  # 1-based average rank of each tie group
    n_pos, n_neg = pos.size, neg.size
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def derangement(n: int, generator: torch.Generator | None = None) -> Tensor:
    """A random permutation of ``range(n)`` without fixed points (``perm[i] != i`` for all i), as int64.

    A random cyclic shift (by 1 to n - 1 places) of a random order: each element's partner is the one
    ``shift`` places after it in that order. Seeded by ``generator``.
    """
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 elements, got {n}")
    order = torch.randperm(n, generator=generator)
    shift = int(torch.randint(1, n, (1,), generator=generator))
    perm = torch.empty(n, dtype=torch.int64)
    perm[order] = order.roll(-shift)
    return perm


#: A head's temperature histogram is binned on a log scale when its values span more than this ratio.
LOG_BINS_FROM = 10.0


def temperature_edges(sides: Sequence[Tensor | float], tau_min: float, tau_max: float, bins: int) -> np.ndarray:
    """Bin edges over one head's own temperatures (both sides; constants left out): log-spaced when they span
    more than :data:`LOG_BINS_FROM` (a decade), else equal-width; a head whose temperatures are (almost) one
    value gets a narrow range around it, inside [tau_min, tau_max]. Binning over the whole bounds instead
    would put a head whose temperatures sit in [0.4, 0.5] into one bar of a [1e-5, 2] log axis."""
    values = [np.clip(v.detach().cpu().double().numpy().ravel(), tau_min, tau_max) for v in sides
              if isinstance(v, Tensor) and v.numel()]
    if not values:
        return np.geomspace(tau_min, tau_max, bins + 1)
    lo, hi = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
    if hi - lo <= 1e-6 * hi:  # one value: a bin around it
        lo, hi = max(tau_min, lo * (1 - 1e-3)), min(tau_max, hi * (1 + 1e-3))
    return np.geomspace(lo, hi, bins + 1) if hi / lo > LOG_BINS_FROM else np.linspace(lo, hi, bins + 1)


def temperature_summary(values: Tensor | float, tau_min: float, tau_max: float, edges: np.ndarray) -> dict[str, Any]:
    """One side's temperatures as ``analysis.json`` holds them: statistics, the shares at tau_min and
    tau_max (within :data:`SATURATION_TOLERANCE`), counts on ``edges`` and, when few, every value; a
    constant side (a float) as that constant."""
    if not isinstance(values, Tensor):
        return {"adaptive": False, "constant": float(values)}
    # float32 rounding can put tau_min + (tau_max - tau_min) * sigmoid(.) a hair outside the bounds
    x = np.clip(values.detach().cpu().double().numpy().ravel(), tau_min, tau_max)
    tolerance = SATURATION_TOLERANCE * (tau_max - tau_min)
    side = {"adaptive": True, **_stats(x), "share_at_min": float((x <= tau_min + tolerance).mean()),
            "share_at_max": float((x >= tau_max - tolerance).mean()),
            "counts": np.histogram(x, bins=edges)[0].tolist()}
    if x.size <= MAX_STORED_TEMPERATURES:
        side["values"] = x.tolist()
    return side


def _stats(x: np.ndarray) -> dict[str, float | int]:
    return {"count": int(x.size), "mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()),
            "median": float(np.median(x)), "max": float(x.max())}


#: The similarity histograms span at least this much: collapsed features (every similarity within float32
#: rounding of 1) then fall into one bin, overlap 1, instead of being split by rounding noise.
MIN_SIMILARITY_RANGE = 1e-3


def similarity_panel(name: str, positive: np.ndarray, negative: np.ndarray, bins: int) -> dict[str, Any]:
    """Similarities of one representation: bins over the data range of both kinds (at least
    :data:`MIN_SIMILARITY_RANGE` wide), overlap on those bins, AUC, statistics and every value."""
    edges, count_pos, count_neg = _shared_histograms(positive, negative, bins, None, MIN_SIMILARITY_RANGE)
    overlap = float(np.minimum(count_pos / count_pos.sum(), count_neg / count_neg.sum()).sum().clip(0, 1))
    return {
        "name": name,
        "dim": None,
        "overlap": overlap,
        "auc": separation_auc(positive, negative),
        "positive": {**_stats(positive), "values": positive.tolist()},
        "negative": {**_stats(negative), "values": negative.tolist()},
        "histogram": {"edges": edges.tolist(), "positive": count_pos.tolist(), "negative": count_neg.tolist()},
    }
