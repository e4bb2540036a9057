"""``amcl preview``: a PNG grid showing what augmentation policies do to a dataset's images.

Each row is one image: first as the encoder sees it un-augmented, then a pair of independent
views under each policy, exactly as pre-training draws them (same batched on-device ops, without
the normalisation so the colours stay readable).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from amcl.data.augment import AUGMENTATION_CODES, ViewAugmentation, parse_policy
from amcl.data.folders import FolderSplits
from amcl.data.splits import ImageSplits
from amcl.errors import AmclError
from amcl.files import write_atomic

__all__ = ["augmentation_grid", "sample_images", "save_preview", "policy_title"]


def sample_images(splits: ImageSplits | FolderSplits, count: int, seed: int = 0) -> Tensor:
    """``count`` training images (uint8 ``[n, C, H, W]``) picked at random by ``seed``; only those are decoded
    (an unreadable one is left out)."""
    index = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    return splits.train.images(index)


def augmentation_grid(
    images: Tensor, policies: Sequence[str], image_size: int, color_strength: float = 0.5, seed: int = 0
) -> Tensor:
    """Float ``[N, 1 + 2P, 3, S, S]`` in [0, 1]: each image un-augmented, then two views per policy."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        columns = [ViewAugmentation("a", image_size).prepare(images)]
        for policy in policies:
            augment = ViewAugmentation(policy, image_size, color_strength)
            columns += [augment(images), augment(images)]
    return torch.stack(columns, dim=1).clamp(0, 1)


def policy_title(policy: str) -> str:
    """A short column title: the policy's letters and, for one letter, what it does."""
    canonical = parse_policy(policy)
    if len(canonical) == 1:
        return f"{canonical}: {AUGMENTATION_CODES[canonical].split(' (')[0]}"
    return policy if policy == canonical else f"{policy} ({canonical})"


def save_preview(grid: Tensor, policies: Sequence[str], path: str | os.PathLike[str], title: str = "") -> None:
    """Write ``grid`` (from :func:`augmentation_grid`) as a PNG with the policies as column titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols, _, size, _ = grid.shape
    gap = max(1, size // 16)
    canvas = torch.ones(3, rows * (size + gap) - gap, cols * (size + gap) - gap)
    for r in range(rows):
        for c in range(cols):
            y, x = r * (size + gap), c * (size + gap)
            canvas[:, y:y + size, x:x + size] = grid[r, c]
    cell_inches = 1.1
    fig = plt.figure(figsize=(cols * cell_inches, rows * cell_inches + 0.7))
    ax = fig.add_axes((0, 0, 1, rows / (rows + 0.7 / cell_inches)))
    ax.imshow(canvas.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_axis_off()
    step = size + gap
    ax.text(size / 2, -gap, "original", ha="center", va="bottom", fontsize=8)
    for p, policy in enumerate(policies):
        ax.text((1 + 2 * p) * step + size + gap / 2, -gap, policy_title(policy), ha="center", va="bottom", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9, y=0.995)
    # at least 100 dots per inch, so that the 8 pt column titles are 11 px tall however small the images
    dpi = max(110, min(size, 160)) / cell_inches
    target = Path(path)
    kind = target.suffix.lstrip(".").lower() or "png"
    if kind not in fig.canvas.get_supported_filetypes():  # e.g. --out grid.txt: one line, not matplotlib's error
        plt.close(fig)
        raise AmclError(f"cannot write {path}: .{kind} is not an image format; use --out with .png, .pdf, .svg "
                        "or .jpg")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        plt.close(fig)
        raise AmclError(f"cannot write {path}: {err.strerror}; choose a writable --out") from None
    try:
        write_atomic(target, lambda tmp: fig.savefig(tmp, format=kind, dpi=dpi))
    finally:
        plt.close(fig)
