"""One entry point for every dataset: ``load_dataset(name, root, seed)`` -> :class:`ImageSplits`."""

from __future__ import annotations

from amcl.data.readers import ImageSplits


def load_dataset(name: str, root: str | None = None, seed: int = 0) -> ImageSplits:
    """Read a dataset by name: digits, synthetic, cifar10, cifar100 or stl10 (the last three from ``root``)."""
    if name == "digits":
        from amcl.data.digits import read_digits

        return read_digits(seed)
    if name == "synthetic":
        from amcl.data.synthetic import make_synthetic

        return make_synthetic(seed=seed)
    from amcl.data import readers

    if name == "cifar10":
        return readers.read_cifar10(root)
    if name == "cifar100":
        return readers.read_cifar100(root)
    if name == "stl10":
        return readers.read_stl10(root)
    raise ValueError(f"unknown dataset {name!r}")
