"""``amcl analyze``: how well a pre-trained encoder separates positive from negative pairs.

On held-out images, a **positive pair** is two augmented views of one image and a **negative
pair** a view of image i with a view of another image pi(i) (pi a seeded derangement, so never
the same image). For the backbone features and for every projection head this module measures
the cosine similarities of both kinds of pair and how much their distributions overlap (the
motivation figure of the AMCL paper: with one head and strong augmentations the two histograms
overlap; several heads with pair-adaptive temperatures pull them apart). When the checkpoint
learned temperatures, it also records the temperatures the shared temperature network gives
positive and negative pairs, per head, exactly as the method's loss would use them.

Two numbers summarise the separation of a panel:

* ``overlap`` (:func:`distribution_overlap`): the overlap coefficient of the two normalised
  histograms on shared bins, 1 for identical distributions and 0 for disjoint ones (lower is
  better separated). It depends on the bins, which are recorded with it.
* ``auc`` (:func:`separation_auc`): the probability that a random positive pair is more similar
  than a random negative one (ties count one half), i.e. the ROC AUC of the similarity as a
  positive/negative classifier: 0.5 for identical distributions, 1 for perfectly separated
  ones. It needs no bins.

Outputs (in ``<checkpoint folder>/analysis/`` by default): ``similarity-histograms.png`` (one
panel for the backbone and one per head, negatives blue and positives orange as in the paper's
figure), ``temperature-histograms.png`` (when temperatures are learned), ``overlap.png``
(overlap and AUC per panel) and ``analysis.json`` (everything, including the similarities of
every pair).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from amcl.data.augment import TwoViews, parse_policy
from amcl.data.module import ContrastiveDataModule
from amcl.errors import AmclError
from amcl.runs import write_atomic, write_json

__all__ = [
    "ANALYSIS_FORMAT",
    "HeadTemperatures",
    "PairFeatures",
    "analyze_checkpoint",
    "derangement",
    "distribution_overlap",
    "embed_views",
    "pair_temperatures_by_head",
    "separation_auc",
    "similarity_histograms",
]

ANALYSIS_FORMAT = "amcl-analysis/1"
#: A temperature counts as saturated ("at tau_min" / "at tau_max") when it lies within this share of
#: the range tau_max - tau_min from the bound, i.e. when the network's sigmoid is below 1e-3 or above 1 - 1e-3.
SATURATION_TOLERANCE = 1e-3
#: Temperature arrays up to this size are stored whole in analysis.json (Barlow Twins' off-diagonal
#: channel pairs, d(d-1) per head, are summarised by statistics and a histogram only).
MAX_STORED_TEMPERATURES = 4096
NEGATIVE_COLOR, POSITIVE_COLOR, ALPHA = "tab:blue", "tab:orange", 0.5


# --------------------------------------------------------------------------- separation measures


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


# --------------------------------------------------------------------------- features of the views


@dataclass
class PairFeatures:
    """What the model makes of two views of each of N images (view 1 and view 2 row-aligned)."""

    backbone1: Tensor  # [N, D]
    backbone2: Tensor  # [N, D]
    z1: Tensor  # [C, N, d] projections of view 1
    z2: Tensor  # [C, N, d]
    p1: Tensor | None = None  # [C, N, d] SimSiam's predictor outputs of view 1

    def __len__(self) -> int:
        return self.backbone1.shape[0]


@torch.no_grad()
def embed_views(
    model: Any, images: Tensor, two_views: TwoViews | Callable[[Tensor], tuple[Tensor, Tensor]], seed: int = 0,
    batch_size: int = 512,
) -> PairFeatures:
    """Two augmented views of every image (uint8 or float ``[N, C, H, W]``, on the model's device) drawn
    under ``seed`` without touching the global random state, through the model in eval mode: backbone
    features, every head's projection and (SimSiam) every head's prediction.

    For MoCo these are the online (query) encoder's; the momentum copy is not used.
    """
    device = images.device
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {"h": [], "z": [], "p": []}
    predictor = getattr(model, "predictor", None)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for chunk in images.split(batch_size):
                view1, view2 = two_views(chunk)
                h = model.backbone(torch.cat([view1, view2])).float()
                z = model.projector(h).float()
                parts["h"].append(h.view(2, len(chunk), -1))
                parts["z"].append(z.view(z.shape[0], 2, len(chunk), -1))
                if predictor is not None:
                    parts["p"].append(predictor(z).float().view(z.shape[0], 2, len(chunk), -1)[:, 0])
    finally:
        model.train(was_training)
    h, z = torch.cat(parts["h"], dim=1), torch.cat(parts["z"], dim=2)
    return PairFeatures(h[0], h[1], z[:, 0], z[:, 1], torch.cat(parts["p"], dim=1) if parts["p"] else None)


def _cosine(a: Tensor, b: Tensor) -> np.ndarray:
    """Row-wise cosine similarity, clipped to [-1, 1] against float32 rounding, as float64 numpy."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1).clamp(-1, 1).cpu().double().numpy()


# --------------------------------------------------------------------------- temperatures


@dataclass
class HeadTemperatures:
    """The temperatures of one head's positive and negative pairs: a tensor of learned values, or the
    constant the loss uses for that side."""

    positive: Tensor | float
    negative: Tensor | float


def _adaptive_sides(model: Any) -> tuple[bool, bool]:
    return bool(getattr(model, "adaptive_positive", False)), bool(getattr(model, "adaptive_negative", False))


@torch.no_grad()
def pair_temperatures_by_head(
    model: Any, features: PairFeatures, partner: Tensor
) -> tuple[list[HeadTemperatures] | None, str]:
    """The temperatures the model's loss gives positive and negative pairs, per head, and what they are.

    Returns ``(None, reason)`` when the model learns no temperature. Otherwise per head:

    * SimCLR, MoCo: tau(z_a, z_b) of the projections of (view 1 of i, view 2 of i) and
      (view 1 of i, view 2 of partner[i]) for the first ``len(partner)`` images; with ``temperature_mode``
      positive / negative the other side is the constant ``config.temperature``, as in the loss. (MoCo's
      loss reads the keys from the momentum encoder and the negatives from the queue; here both sides
      come from the online encoder.)
    * SimSiam: tau(p_a, z_b) with the predictor output of view a and the projection of view b, as in
      Eq. 2.2. SimSiam's loss has no negative pairs: their temperatures show what the network would give them.
    * Barlow Twins: the temperatures are per channel pair (tau_lm over the batch-wise channel vectors):
      the diagonal tau_ll is reported as "positive", the off-diagonal as "negative", computed on the first
      ``config.global_batch`` positive pairs (the global batch its network reads: ``batch_size`` x the
      run's processes); ``(None, reason)`` when there are fewer images.
    """
    net, config = getattr(model, "temperature_net", None), model.config
    if net is None:
        return None, "constant"
    adaptive_pos, adaptive_neg = _adaptive_sides(model)
    z1, z2 = features.z1, features.z2
    if config.method == "barlow_twins":
        batch = config.global_batch
        if len(features) < batch:
            return None, (f"Barlow Twins' temperatures need {batch} images (its global batch), but only "
                          f"{len(features)} were analysed")
        taus = model.channel_temperatures(z1[:, :batch], z2[:, :batch])
        taus = torch.as_tensor(taus).float().expand(z1.shape[0], z1.shape[-1], z1.shape[-1])
        off = ~torch.eye(taus.shape[-1], dtype=torch.bool, device=taus.device)
        diagonal = torch.diagonal(taus, dim1=1, dim2=2)
        negative = taus[:, off]
        return [HeadTemperatures(diagonal[c] if adaptive_pos else float(config.temperature),
                                 negative[c] if adaptive_neg else float(config.temperature))
                for c in range(taus.shape[0])], "channel"
    n = len(partner)  # the pairs analysed: the first n images
    if config.method == "simsiam":
        anchor = features.p1[:, :n]
        adaptive_pos = adaptive_neg = True  # the loss's tau(p1, z2) is learned in every non-constant mode
    else:
        anchor = z1[:, :n]
    positive = net.paired_temperatures(anchor, z2[:, :n])  # [C, n]
    negative = net.paired_temperatures(anchor, z2[:, :n][:, partner])
    return [HeadTemperatures(positive[c] if adaptive_pos else float(config.temperature),
                             negative[c] if adaptive_neg else float(config.temperature))
            for c in range(positive.shape[0])], "pair"


def _temperature_side(values: Tensor | float, tau_min: float, tau_max: float, edges: np.ndarray) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- one panel per representation


#: The similarity histograms span at least this much: collapsed features (every similarity within float32
#: rounding of 1) then fall into one bin, overlap 1, instead of being split by rounding noise.
MIN_SIMILARITY_RANGE = 1e-3


def _panel(name: str, positive: np.ndarray, negative: np.ndarray, bins: int) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- figures


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
    for ax, panel in zip(axes, panels):
        edges = panel["histogram"]["edges"]
        counts = panel["histogram"]  # filled steps: the look of edgeless bars, drawn as one polygon each
        ax.stairs(counts["negative"], edges, fill=True, color=NEGATIVE_COLOR, alpha=ALPHA, label="negative pairs")
        ax.stairs(counts["positive"], edges, fill=True, color=POSITIVE_COLOR, alpha=ALPHA, label="positive pairs")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel("Similarity score")
        ax.set_ylabel("Counts")
        ax.set_title(f"{panel['name']}: overlap {panel['overlap']:.2f}, AUC {panel['auc']:.2f}", fontsize=9)
    axes[0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _temperature_figure(heads: Sequence[dict[str, Any]], tau_min: float, tau_max: float, title: str):
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
        ax.set_xscale("log")
        ax.set_xlim(tau_min, tau_max)
        ax.set_xlabel("Temperature τ")
        ax.set_ylabel("Share of pairs")
        means = [f"τ{'+' if s == 'positive' else '−'} {temps[s].get('mean', temps[s].get('constant')):.3g}"
                 for s in ("positive", "negative")]
        ax.set_title(f"{head['name']}: mean {', '.join(means)}", fontsize=9)
    axes[0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _overlap_figure(panels: Sequence[dict[str, Any]], title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(3.5, 1.1 * len(panels) + 1.5), 3.0), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(panels))
    overlap = [p["overlap"] for p in panels]
    auc = [p["auc"] for p in panels]
    ax.bar(x - 0.2, overlap, 0.4, color="tab:purple", alpha=0.8, label="overlap (lower: better separated)")
    ax.bar(x + 0.2, auc, 0.4, color="tab:green", alpha=0.8, label="AUC P(s+ > s−) (higher: better)")
    for xi, o, a in zip(x, overlap, auc):
        ax.text(xi - 0.2, o + 0.01, f"{o:.2f}", ha="center", va="bottom", fontsize=7)
        ax.text(xi + 0.2, a + 0.01, f"{a:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [p["name"] for p in panels])
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("Positive vs negative pairs")
    ax.legend(fontsize=7, loc="upper right")
    if title:
        ax.set_title(title, fontsize=9)
    return fig


# --------------------------------------------------------------------------- writing


def _save_figure(fig, path: Path) -> None:
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


# --------------------------------------------------------------------------- held-out images


def _held_out_images(data: ContrastiveDataModule, count: int, generator: torch.Generator,
                     device: torch.device) -> Tensor:
    """``count`` held-out images (uint8, on ``device``) drawn at random by ``generator``, whatever their
    labels. Image folders decode only the drawn files; unreadable ones are left out."""
    test = data.splits.test
    index = torch.randperm(len(test), generator=generator)[:count]
    return test.images(index, data.workers).to(device)


# --------------------------------------------------------------------------- the command


def _no_temperature_reason(config: Any) -> tuple[float | None, str]:
    """The constant a model without a temperature network uses, and why it learns none."""
    if config.amcl:
        return float(config.temperature), f"--temperature-mode constant: every pair uses {config.temperature:g}"
    if config.method in ("simclr", "moco"):
        return float(config.temperature), f"the baseline uses the constant temperature {config.temperature:g}"
    return None, f"the {config.method} baseline loss has no temperature"


def analyze_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    pairs: int = 500,
    augs: str | None = None,
    dataset: str | None = None,
    data_root: str | None = None,
    workers: int | None = None,
    bins: int = 40,
    seed: int = 0,
    device: str = "auto",
) -> dict[str, Any]:
    """Compare positive and negative pairs of held-out images under a checkpoint's encoder and heads.

    Draws ``pairs`` held-out images at random (all of them if the split holds fewer, noted in the
    result), two views of each under the checkpoint's augmentation policy (``augs`` overrides it),
    normalised as in pre-training. Positive pairs are (view 1 of i, view 2 of i), negative pairs
    (view 1 of i, view 2 of pi(i)) with pi a seeded :func:`derangement`. For the backbone and each
    head: the cosine similarities of both kinds, their ``overlap`` on ``bins`` shared bins and their
    ``auc``; per head, the learned temperatures of both kinds (see :func:`pair_temperatures_by_head`).

    Writes into ``out`` (default: ``analysis/`` beside the checkpoint) ``similarity-histograms.png``,
    ``overlap.png``, ``temperature-histograms.png`` (only when temperatures are learned; a stale one
    from an earlier analysis is removed) and ``analysis.json``. Returns the JSON's content plus
    ``files``, the paths written. Everything is seeded by ``seed``: the same call gives the same numbers.
    """
    if pairs is None or int(pairs) < 2:
        raise AmclError(f"--pairs must be at least 2 (a negative pair needs two different images), got {pairs}")
    if bins is None or int(bins) < 2:
        raise AmclError(f"--bins must be at least 2, got {bins}")
    if augs is not None:
        try:
            parse_policy(augs)
        except ValueError as exc:
            raise AmclError(f"--augs: {exc}") from None
    from amcl.eval.checkpoint import load_pretrained, resolve_device
    from amcl.eval.features import evaluation_data

    pairs, bins = int(pairs), int(bins)
    target = resolve_device(device)
    pretrained = load_pretrained(checkpoint, target)
    model, config = pretrained.model, pretrained.config
    overrides: dict[str, Any] = {k: v for k, v in (("dataset", dataset), ("data_root", data_root),
                                                   ("workers", workers), ("augs", augs)) if v is not None}
    overrides["unlabeled"] = False  # only held-out images are analysed: never read an unlabeled split
    if dataset is not None and dataset != "folder":
        overrides["class_list"] = None
    if (dataset or config.dataset) == "folder":
        overrides["cache_images"] = "never"  # decode only the drawn held-out files
    data = evaluation_data(pretrained, **overrides)
    held_out, name = len(data.splits.test_labels), data.splits.name
    if held_out < 2:
        raise AmclError(
            f"analyze needs held-out images: {name} has {'no' if held_out == 0 else 'only one'} held-out (test/val) "
            "image; put images in <root>/val/<class>/ (or test/) of the image folder, or pick a --dataset with a "
            "test split"
        )
    notes: list[str] = []
    learns = getattr(model, "temperature_net", None) is not None
    barlow_batch = config.global_batch if (config.method == "barlow_twins" and learns) else 0
    generator = torch.Generator().manual_seed(seed)
    images = _held_out_images(data, min(held_out, max(pairs, barlow_batch)), generator, target)
    used = min(pairs, len(images))
    if used < 2:
        raise AmclError(f"analyze needs held-out images: fewer than 2 of the drawn {name} held-out images are readable")
    if used < pairs:
        notes.append(f"the held-out split of {name} has {held_out} images"
                     + (f" ({len(images)} readable of those drawn)" if len(images) < min(held_out, pairs) else "")
                     + f": {used} positive and {used} negative pairs instead of {pairs}")
    partner = derangement(used, generator).to(target)
    features = embed_views(model, images, data.two_views, seed, data.eval_batch_size)

    h1, h2 = features.backbone1[:used], features.backbone2[:used]
    backbone = {**_panel("backbone", _cosine(h1, h2), _cosine(h1, h2[partner]), bins), "dim": int(h1.shape[-1])}
    z1, z2 = features.z1[:, :used], features.z2[:, :used]
    positive, negative = _cosine(z1, z2), _cosine(z1, z2[:, partner])
    heads = [{**_panel(f"head {c + 1}", positive[c], negative[c], bins), "dim": int(z1.shape[-1])}
             for c in range(z1.shape[0])]

    tau_min, tau_max = float(config.tau_min), float(config.tau_max)
    temperature: dict[str, Any] = {"learned": learns, "mode": config.temperature_mode if config.amcl else "baseline",
                                   "tau_min": tau_min, "tau_max": tau_max}
    if learns:
        by_head, kind = pair_temperatures_by_head(model, features, partner)
    else:
        by_head, kind = None, None
        temperature["constant"], temperature["note"] = _no_temperature_reason(config)
    if learns and by_head is None:
        temperature["note"] = kind
        notes.append(f"temperatures skipped: {kind}")
        kind = None
    if by_head is not None:
        edges = np.geomspace(tau_min, tau_max, bins + 1)
        temperature["kind"] = kind
        temperature["saturation_tolerance"] = SATURATION_TOLERANCE
        if kind == "channel":
            temperature["note"] = (f"Barlow Twins: temperatures of channel pairs on the first {config.global_batch} "
                                   "positive pairs; positive = diagonal tau_ll, negative = off-diagonal tau_lm")
        elif config.method == "simsiam":
            temperature["note"] = ("SimSiam: tau(p_a, z_b) of view a's prediction and view b's projection; its loss "
                                   "has no negative pairs, their temperatures show what the network would give them")
        for head, taus in zip(heads, by_head):
            head["temperature"] = {"edges": edges.tolist(),
                                   "positive": _temperature_side(taus.positive, tau_min, tau_max, edges),
                                   "negative": _temperature_side(taus.negative, tau_min, tau_max, edges)}
    else:
        for head in heads:
            head["temperature"] = None
    if config.method == "moco":
        notes.append("MoCo: features of the online (query) encoder; the momentum copy is not used")

    policy = data.augment.policy
    result: dict[str, Any] = {
        "format": ANALYSIS_FORMAT,
        "checkpoint": str(pretrained.path),
        "method": config.method,
        "amcl": bool(config.amcl),
        "heads": heads,
        "num_heads": len(heads),
        "dataset": name,
        "image_size": config.image_size,
        "policy": policy,
        "color_strength": data.augment.color_strength,
        "seed": seed,
        "pairs": used,
        "pairs_requested": pairs,
        "held_out_images": held_out,
        "bins": bins,
        "similarity": "cosine",
        "overlap_definition": "sum over shared bins of min(p_i, q_i), p and q the normalised histograms of positive "
                              "and negative similarities on bins over the panel's data range (0 disjoint, 1 identical)",
        "auc_definition": "P(s_pos > s_neg) + P(s_pos = s_neg) / 2 over all positive x negative pairs",
        "backbone": backbone,
        "temperature": temperature,
        "notes": notes,
    }

    folder = Path(out) if out is not None else pretrained.path.parent / "analysis"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AmclError(f"cannot create the output folder {folder}: {err.strerror}; choose a writable --out") from None
    what = f"{config.method} {'AMCL' if config.amcl else 'baseline'}, policy {policy}"
    panels = [backbone, *heads]
    figures = {"similarity": "similarity-histograms.png", "overlap": "overlap.png"}
    _save_figure(similarity_histograms(panels, f"{what}: {used} positive (orange) and {used} negative (blue) pairs"),
                 folder / figures["similarity"])
    _save_figure(_overlap_figure(panels, what), folder / figures["overlap"])
    stale = folder / "temperature-histograms.png"
    if by_head is not None:
        figures["temperature"] = stale.name
        _save_figure(_temperature_figure(heads, tau_min, tau_max, f"{what}: learned temperatures"), stale)
    elif stale.exists():
        stale.unlink()  # from an earlier analysis of another checkpoint into this folder
    result["figures"] = figures
    json_path = folder / "analysis.json"
    write_json(json_path, result, indent=1)
    files = [str(folder / f) for f in figures.values()] + [str(json_path)]
    return {**result, "files": files}
