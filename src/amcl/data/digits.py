"""scikit-learn's bundled digits (1797 8x8 grey images, 10 classes): the embedded real dataset."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from amcl.data.readers import ImageSplits


def read_digits(seed: int = 0, test_fraction: float = 0.2) -> ImageSplits:
    """Digits as uint8 ``[N, 1, 8, 8]`` (0-16 scaled to 0-255), split into train/test by ``seed``.

    The split is stratified-free but fixed by the seed: the same seed gives the same split.
    """
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(test_fraction * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return ImageSplits(
        name="digits",
        train_images=torch.from_numpy(images[train]),
        train_labels=torch.from_numpy(labels[train]),
        test_images=torch.from_numpy(images[test]),
        test_labels=torch.from_numpy(labels[test]),
        classes=tuple(str(c) for c in bunch.target_names),
    )
