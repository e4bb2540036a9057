"""A small real-photo image folder that can be built offline: patches of the sample photos that ship
with scikit-image, scikit-learn and matplotlib, one class per photo.

    python -m amcl.data.photos --out data/photos      # then: amcl pretrain --dataset folder --data-root data/photos

Each class is one photo (an astronaut, a cat, a cup of coffee, a rocket, a motorcycle, a Chinese temple,
a flower, Grace Hopper, the Hubble deep field, a tissue sample). Its images are square patches of random
size (15-40% of the photo's shorter side) and position, resized to ``--size`` pixels and saved as JPEG
in the usual ``train/<class>/`` and ``val/<class>/`` layout. Training patches come from the top part of
each photo and held-out patches from the bottom part (``--held-out``, 30% of the rows), so no held-out
patch shares a pixel with a training one: the kNN monitor and the linear probe measure how well a
representation recognises unseen regions of a photo, mostly by colour and texture.

The scikit-image photos need the optional ``study`` extra (``pip install 'amcl[study]'``, which
``make photos`` does); :data:`BUILTIN_PHOTOS` (scikit-learn's and matplotlib's) need nothing more.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from amcl.errors import AmclError

__all__ = ["BUILTIN_PHOTOS", "PHOTOS", "build_photo_folder", "load_photo"]

#: Class name -> (package, file inside its sample-data folder).
PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "astronaut.png"),
    "cat": ("skimage", "chelsea.png"),
    "coffee": ("skimage", "coffee.png"),
    "rocket": ("skimage", "rocket.jpg"),
    "motorcycle": ("skimage", "motorcycle_left.png"),
    "hubble": ("skimage", "hubble_deep_field.jpg"),
    "tissue": ("skimage", "ihc.png"),
    "temple": ("sklearn", "china.jpg"),
    "flower": ("sklearn", "flower.jpg"),
    "hopper": ("matplotlib", "grace_hopper.jpg"),
}
#: The photos available without the ``study`` extra (scikit-learn and matplotlib are dependencies).
BUILTIN_PHOTOS = tuple(name for name, (package, _) in PHOTOS.items() if package != "skimage")


def _sample_folder(package: str) -> Path:
    if package == "skimage":
        try:
            import skimage.data
        except ImportError:
            raise AmclError("the scikit-image photos need the scikit-image package: pip install 'amcl[study]' "
                            f"(or make photos), or keep to --photos {' '.join(BUILTIN_PHOTOS)}") from None
        return Path(skimage.data.__file__).parent
    if package == "sklearn":
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).parent / "images"
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data"


def load_photo(name: str) -> np.ndarray:
    """One of :data:`PHOTOS` as a uint8 ``[H, W, 3]`` RGB array."""
    if name not in PHOTOS:
        raise AmclError(f"unknown photo {name!r}; choose from: {', '.join(PHOTOS)}")
    package, file = PHOTOS[name]
    with Image.open(_sample_folder(package) / file) as image:
        return np.asarray(image.convert("RGB"))


def _patches(photo: np.ndarray, count: int, size: int, rows: tuple[int, int], scale: tuple[float, float],
             rng: np.random.Generator) -> list[Image.Image]:
    """``count`` square patches whose side is ``scale`` times the photo's shorter side, lying within ``rows``."""
    height, width = photo.shape[:2]
    top, bottom = rows
    image = Image.fromarray(photo)
    out = []
    for _ in range(count):
        side = int(round(rng.uniform(*scale) * min(height, width)))
        side = max(4, min(side, bottom - top, width))
        y = int(rng.integers(top, bottom - side + 1))
        x = int(rng.integers(0, width - side + 1))
        out.append(image.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BICUBIC))
    return out


def build_photo_folder(
    out: str | Path,
    photos: tuple[str, ...] | list[str] = tuple(PHOTOS),
    train_per_class: int = 120,
    val_per_class: int = 40,
    size: int = 24,
    held_out: float = 0.3,
    scale: tuple[float, float] = (0.15, 0.4),
    seed: int = 0,
) -> dict[str, int]:
    """Write the photo-patch folder into ``out`` (``train/<class>/*.jpg``, ``val/<class>/*.jpg``); returns the
    number of images per split. The same arguments give the same files."""
    if not 0 < held_out < 1:
        raise AmclError(f"--held-out must be between 0 and 1 (the share of each photo's rows kept for val/), "
                        f"got {held_out}")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise AmclError(f"patch scale must satisfy 0 < low <= high <= 1, got {scale}")
    if train_per_class < 1 or val_per_class < 1 or size < 4:
        raise AmclError("need at least 1 training and 1 held-out patch per class, of at least 4 pixels")
    if len(set(photos)) < 2:
        raise AmclError("need at least 2 photos (classes)")
    images = {name: load_photo(name) for name in photos}  # every photo checked before anything is written
    root = Path(out)
    if (root / "train").exists() or (root / "val").exists():
        raise AmclError(f"{root} already holds train/ or val/; choose an empty --out")
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "val": 0}
    for name, photo in images.items():
        split_row = int(round(photo.shape[0] * (1 - held_out)))
        for split, count, rows in (("train", train_per_class, (0, split_row)),
                                   ("val", val_per_class, (split_row, photo.shape[0]))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, patch in enumerate(_patches(photo, count, size, rows, scale, rng)):
                patch.save(folder / f"{name}_{i:04d}.jpg", quality=92)
            counts[split] += count
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m amcl.data.photos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to create (must not hold train/ or val/ yet)")
    parser.add_argument("--photos", nargs="+", default=list(PHOTOS), choices=list(PHOTOS),
                        help="classes (photos) to use [default: all ten]")
    parser.add_argument("--train-per-class", type=int, default=120)
    parser.add_argument("--val-per-class", type=int, default=40)
    parser.add_argument("--size", type=int, default=24, help="patch side in pixels [default: 24]")
    parser.add_argument("--held-out", type=float, default=0.3,
                        help="share of each photo's rows (at the bottom) that held-out patches come from")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        counts = build_photo_folder(args.out, args.photos, args.train_per_class, args.val_per_class, args.size,
                                    args.held_out, seed=args.seed)
    except AmclError as exc:
        print(f"amcl.data.photos: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {counts['train']} training and {counts['val']} held-out images of {len(args.photos)} classes "
          f"to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
