"""``amcl analyze``: how well a pre-trained encoder separates positive from negative pairs.

On held-out images, a **positive pair** is two augmented views of one image and a **negative
pair** a view of image i with a view of another image pi(i) (pi a seeded derangement, so never
the same image). For the backbone features and for every projection head this module measures
the cosine similarities of both kinds of pair and how much their distributions overlap (the
motivation figure of the AMCL paper: with one head and strong augmentations the two histograms
overlap; several heads with pair-adaptive temperatures pull them apart). When the checkpoint
learned temperatures, it also records the temperatures the shared temperature network gives
positive and negative pairs, per head, exactly as the method's loss would use them.

Two numbers summarise the separation of a panel (see :mod:`amcl.eval.separation`): ``overlap``, the
overlap coefficient of the two histograms on shared bins (0 disjoint, 1 identical), and ``auc``, the
probability that a random positive pair is more similar than a random negative one.

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
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from amcl.data.augment import TwoViews
from amcl.data.module import ContrastiveDataModule
from amcl.errors import AmclError, warn
from amcl.eval.checkpoint import load_pretrained, resolve_device
from amcl.eval.features import evaluation_config, evaluation_data
from amcl.eval.figures import overlap_figure, save_figure, similarity_histograms, temperature_figure
from amcl.eval.options import AnalyzeOptions
from amcl.eval.separation import (
    SATURATION_TOLERANCE,
    derangement,
    distribution_overlap,
    separation_auc,
    similarity_panel,
    temperature_edges,
    temperature_summary,
)
from amcl.files import write_json
from amcl.methods.base import HeadTemperatures
from amcl.specs import METHOD_SPECS

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


# --------------------------------------------------------------------------- features of the views


@dataclass
class PairFeatures:
    """What the model makes of two views of each of N images (view 1 and view 2 row-aligned)."""

    backbone1: Tensor  # [N, D]
    backbone2: Tensor  # [N, D]
    z1: Tensor  # [C, N, d] projections of view 1
    z2: Tensor  # [C, N, d]
    p1: Tensor | None = None  # [C, N, d] the method's analysis_outputs of view 1 (SimSiam: its predictions)

    def __len__(self) -> int:
        return self.backbone1.shape[0]


@torch.no_grad()
def embed_views(
    model: Any, images: Tensor, two_views: TwoViews | Callable[[Tensor], tuple[Tensor, Tensor]], seed: int = 0,
    batch_size: int = 512,
) -> PairFeatures:
    """Two augmented views of every image (uint8 or float ``[N, C, H, W]``, on the model's device) drawn
    under ``seed`` without touching the global random state, through the model in eval mode: backbone
    features, every head's projection and what the method computes from them besides
    (:meth:`~amcl.methods.base.PretrainMethod.analysis_outputs`: SimSiam's predictions).

    For MoCo these are the online (query) encoder's; the momentum copy is not used.
    """
    device = images.device
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {"h": [], "z": [], "p": []}
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for chunk in images.split(batch_size):
                view1, view2 = two_views(chunk)
                h = model.backbone(torch.cat([view1, view2])).float()
                z = model.projector(h).float()
                parts["h"].append(h.view(2, len(chunk), -1))
                parts["z"].append(z.view(z.shape[0], 2, len(chunk), -1))
                outputs = model.analysis_outputs(z)  # the method's own (SimSiam: the predictions), or None
                if outputs is not None:
                    parts["p"].append(outputs.float().view(z.shape[0], 2, len(chunk), -1)[:, 0])
    finally:
        model.train(was_training)
    h, z = torch.cat(parts["h"], dim=1), torch.cat(parts["z"], dim=2)
    return PairFeatures(h[0], h[1], z[:, 0], z[:, 1], torch.cat(parts["p"], dim=1) if parts["p"] else None)


def _cosine(a: Tensor, b: Tensor) -> np.ndarray:
    """Row-wise cosine similarity, clipped to [-1, 1] against float32 rounding, as float64 numpy."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1).clamp(-1, 1).cpu().double().numpy()


# --------------------------------------------------------------------------- temperatures


def pair_temperatures_by_head(
    model: Any, features: PairFeatures, partner: Tensor
) -> tuple[list[HeadTemperatures] | None, str]:
    """The temperatures the model's loss gives positive and negative pairs, per head, and what they are
    (``"pair"`` or Barlow Twins' ``"channel"``); ``(None, reason)`` when it has none. Each method says
    how (:meth:`amcl.methods.base.PretrainMethod.analysis_temperatures`): SimCLR and MoCo tau(z_a, z_b)
    of (view 1 of i, view 2 of i) and (view 1 of i, view 2 of partner[i]); SimSiam tau(p_a, z_b) as in
    Eq. 2.2; Barlow Twins the channel pairs' tau_lm of its first global batch."""
    return model.analysis_temperatures(features.z1, features.z2, features.p1, partner)


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
    if METHOD_SPECS[config.method].baseline_temperature:
        return float(config.temperature), f"the baseline uses the constant temperature {config.temperature:g}"
    return None, f"the {config.method} baseline loss has no temperature"


def analyze_checkpoint(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, **options: Any
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
    opts = AnalyzeOptions(out=None if out is None else str(out), **options)
    opts.validate()
    pairs, bins, seed = int(opts.pairs), int(opts.bins), opts.seed
    target = resolve_device(opts.device)
    pretrained = load_pretrained(checkpoint, target)
    model, config = pretrained.model, pretrained.config
    # only held-out images are analysed (never an unlabeled split), and of a folder only the drawn files decoded
    data = evaluation_data(pretrained, evaluation_config(config, opts, augs=opts.augs, stream_folder=True))
    held_out, name = len(data.splits.test_labels), data.splits.name
    if held_out < 2:
        raise AmclError(
            f"analyze needs held-out images: {name} has {'no' if held_out == 0 else 'only one'} held-out (test/val) "
            "image; put images in <root>/val/<class>/ (or test/) of the image folder, or pick a --dataset with a "
            "test split"
        )
    notes: list[str] = []
    learns = getattr(model, "temperature_net", None) is not None
    generator = torch.Generator().manual_seed(seed)
    images = _held_out_images(data, min(held_out, max(pairs, model.analysis_images())), generator, target)
    used = min(pairs, len(images))
    if used < 2:
        raise AmclError(f"analyze needs held-out images: fewer than 2 of the drawn {name} held-out images are readable")
    if used < pairs:  # in the result and on the console
        notes.append(f"the held-out split of {name} has {held_out} images"
                     + (f" ({len(images)} readable of those drawn)" if len(images) < min(held_out, pairs) else "")
                     + f": {used} positive and {used} negative pairs instead of {pairs}")
        warn(notes[-1])
    partner = derangement(used, generator).to(target)
    features = embed_views(model, images, data.two_views, seed, data.eval_batch_size)

    h1, h2 = features.backbone1[:used], features.backbone2[:used]
    backbone = {**similarity_panel("backbone", _cosine(h1, h2), _cosine(h1, h2[partner]), bins),
                "dim": int(h1.shape[-1])}
    z1, z2 = features.z1[:, :used], features.z2[:, :used]
    positive, negative = _cosine(z1, z2), _cosine(z1, z2[:, partner])
    heads = [{**similarity_panel(f"head {c + 1}", positive[c], negative[c], bins), "dim": int(z1.shape[-1])}
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
        temperature["kind"] = kind
        temperature["saturation_tolerance"] = SATURATION_TOLERANCE
        note = METHOD_SPECS[config.method].temperature_note
        if note:
            temperature["note"] = note.format(global_batch=config.global_batch)
        for head, taus in zip(heads, by_head):
            edges = temperature_edges([taus.positive, taus.negative], tau_min, tau_max, bins)  # the head's own range
            head["temperature"] = {"edges": edges.tolist(),
                                   "positive": temperature_summary(taus.positive, tau_min, tau_max, edges),
                                   "negative": temperature_summary(taus.negative, tau_min, tau_max, edges)}
    else:
        for head in heads:
            head["temperature"] = None
    if METHOD_SPECS[config.method].analysis_note:
        notes.append(METHOD_SPECS[config.method].analysis_note)

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

    folder = Path(opts.out) if opts.out is not None else pretrained.path.parent / "analysis"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AmclError(f"cannot create the output folder {folder}: {err.strerror}; choose a writable --out") from None
    what = f"{config.method} {'AMCL' if config.amcl else 'baseline'}, policy {policy}"
    panels = [backbone, *heads]
    figures = {"similarity": "similarity-histograms.png", "overlap": "overlap.png"}
    save_figure(similarity_histograms(panels, f"{what}: {used} positive (orange) and {used} negative (blue) pairs"),
                 folder / figures["similarity"])
    save_figure(overlap_figure(panels, what), folder / figures["overlap"])
    stale = folder / "temperature-histograms.png"
    if by_head is not None:
        figures["temperature"] = stale.name
        save_figure(temperature_figure(heads, tau_min, tau_max, f"{what}: learned temperatures"), stale)
    elif stale.exists():
        stale.unlink()  # from an earlier analysis of another checkpoint into this folder
    result["figures"] = figures
    json_path = folder / "analysis.json"
    write_json(json_path, result, indent=1)
    files = [str(folder / f) for f in figures.values()] + [str(json_path)]
    return {**result, "files": files}
