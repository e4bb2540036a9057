"""The offline real-photo folder: layout, sizes, held-out rows, determinism, and that amcl reads it."""

import numpy as np
import pytest
from PIL import Image

from amcl.data.folders import read_image_folder
from amcl.data.photos import BUILTIN_PHOTOS, PHOTOS, _patches, build_photo_folder, load_photo, main
from amcl.errors import AmclError


def test_builtin_photos_need_nothing_beyond_the_dependencies():
    assert set(BUILTIN_PHOTOS) == {"temple", "flower", "hopper"}
    for name in BUILTIN_PHOTOS:
        photo = load_photo(name)
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3 and min(photo.shape[:2]) > 300


def test_folder_layout_counts_and_sizes(tmp_path):
    counts = build_photo_folder(tmp_path / "p", BUILTIN_PHOTOS, train_per_class=6, val_per_class=3, size=24)
    assert counts == {"train": 18, "val": 9}
    for split, per_class in (("train", 6), ("val", 3)):
        assert sorted(p.name for p in (tmp_path / "p" / split).iterdir()) == sorted(BUILTIN_PHOTOS)
        for name in BUILTIN_PHOTOS:
            files = sorted((tmp_path / "p" / split / name).glob("*.jpg"))
            assert len(files) == per_class
            with Image.open(files[0]) as image:
                assert image.size == (24, 24) and image.mode == "RGB"
    splits = read_image_folder(str(tmp_path / "p"), image_size=24)
    assert splits.num_classes == 3 and len(splits.train_labels) == 18 and len(splits.test_labels) == 9


def test_same_arguments_give_the_same_files(tmp_path):
    for name in ("a", "b"):
        build_photo_folder(tmp_path / name, ("temple", "flower"), train_per_class=4, val_per_class=2, seed=3)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


def test_held_out_patches_come_from_rows_no_training_patch_touches():
    """A patch of a photo whose top rows are 0 and bottom rows 255 is all 0 for training, all 255 held out."""
    photo = np.zeros((100, 120, 3), dtype=np.uint8)
    photo[70:] = 255
    rng = np.random.default_rng(0)
    train = _patches(photo, 50, 8, (0, 70), (0.1, 0.5), rng)
    held_out = _patches(photo, 50, 8, (70, 100), (0.1, 0.5), rng)
    assert max(int(np.asarray(p).max()) for p in train) == 0
    assert min(int(np.asarray(p).min()) for p in held_out) == 255


@pytest.mark.parametrize("kwargs,fragment", [
    ({"held_out": 1.0}, "--held-out must be between 0 and 1"),
    ({"photos": ("temple",)}, "at least 2 photos"),
    ({"photos": ("temple", "dog")}, "unknown photo 'dog'"),
    ({"train_per_class": 0}, "at least 1 training"),
])
def test_bad_arguments_are_clear_errors_and_write_nothing(kwargs, fragment, tmp_path):
    with pytest.raises(AmclError, match=fragment):
        build_photo_folder(tmp_path / "p", **{"photos": BUILTIN_PHOTOS, **kwargs})
    assert not (tmp_path / "p").exists()


def test_command_refuses_a_folder_that_holds_a_dataset(tmp_path, capsys):
    args = ["--out", str(tmp_path / "p"), "--photos", "temple", "flower", "--train-per-class", "2",
            "--val-per-class", "1"]
    assert main(args) == 0 and "wrote 4 training and 2 held-out images of 2 classes" in capsys.readouterr().out
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds train/ or val/" in err


def test_every_photo_is_named_after_its_source():
    assert len(PHOTOS) == 10 and all(file.endswith((".png", ".jpg")) for _, file in PHOTOS.values())


def test_missing_scikit_image_names_the_extra(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "skimage", None)  # as if scikit-image were not installed
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(AmclError, match=r"pip install 'amcl\[study\]'.*--photos temple flower hopper"):
        build_photo_folder(tmp_path / "p", ("astronaut", "temple"))
    assert not (tmp_path / "p").exists()
