"""Tests for amcl.data.folders: real PNG/JPEG trees written into tmp_path, read back pixel for pixel."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from amcl.data.folders import FOLDER_LAYOUT, DecodedImages, FolderSplits, read_image_folder
from amcl.data.module import ContrastiveDataModule
from amcl.data.readers import DatasetError, ImageSplits
from amcl.errors import AmclError, AmclWarning

S = 8  # image side used by most tests
CPU = torch.device("cpu")
CACHES = ["always", "never"]


# --------------------------------------------------------------------------- helpers


def pattern(tag: int, h: int = S, w: int = S) -> np.ndarray:
    """An asymmetric [h, w, 3] image: red = 16 * x, green = 16 * y, blue = ``tag`` (identifies the file)."""
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[..., 0] = (np.arange(w) * 16)[None, :]
    img[..., 1] = (np.arange(h) * 16)[:, None]
    img[..., 2] = tag
    return img


def save(path: Path, hwc: np.ndarray, **options) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(hwc).save(path, **options)
    return hwc


def chw(hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)))


def write_files(root: Path, spec: dict[str, list[str]], start: int = 0) -> dict[str, torch.Tensor]:
    """Write ``pattern`` PNGs at ``root/<rel>``; returns rel path -> expected uint8 [3, S, S]. Files are
    written in reverse order so that nothing depends on creation order."""
    out = {}
    tag = start
    for folder, names in spec.items():
        for name in names:
            out[f"{folder}/{name}" if folder else name] = tag
            tag += 1
    for rel in reversed(list(out)):
        out[rel] = chw(save(root / rel, pattern(out[rel])))
    return out


def make_tree(root: Path) -> tuple[dict, dict]:
    """train/{ant,cat,dog} and val/{cat,dog}; returns the expected train and val pixels by relative path."""
    train = write_files(root, {"train/dog": ["x.png"], "train/cat": ["b.png", "a.png"], "train/ant": ["q.png"]})
    val = write_files(root, {"val/dog": ["m.png", "k.png"], "val/cat": ["z.png"]}, start=100)
    return train, val


def decoded(splits: ImageSplits | FolderSplits, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's uint8 images and labels, decoding a FolderSplits through DecodedImages."""
    if isinstance(splits, ImageSplits):
        return getattr(splits, f"{split}_images"), getattr(splits, f"{split}_labels")
    files = getattr(splits, split).files
    data = DecodedImages(files, splits.image_size)
    items = [data[i] for i in range(len(data))]
    assert all(broken == -1 for _, _, broken, _ in items)
    if not items:
        return torch.empty(0, 3, splits.image_size, splits.image_size, dtype=torch.uint8), files.labels
    images = torch.stack([item[0] for item in items])
    labels = torch.tensor([item[1] for item in items])
    assert torch.equal(labels, files.labels)
    return images, labels


def read(root: Path, cache: str, **options) -> ImageSplits | FolderSplits:
    options.setdefault("workers", 0)
    splits = read_image_folder(root, options.pop("image_size", S), cache=cache, **options)
    assert isinstance(splits, ImageSplits if cache == "always" else FolderSplits)
    return splits


def amcl_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, AmclWarning)]


def dataset_error(fn, *args, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, AmclError)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def truncated_jpeg(path: Path, keep: float = 0.6) -> None:
    """A 200x200 random JPEG cut to ``keep`` of its bytes: the header is intact, the pixels are not."""
    rng = np.random.default_rng(0)
    save(path, rng.integers(0, 256, (200, 200, 3), dtype=np.uint8), quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# --------------------------------------------------------------------------- pixels, labels, orientation


@pytest.mark.parametrize("cache", CACHES)
def test_exact_pixels_labels_and_sorted_classes(tmp_path: Path, cache: str) -> None:
    train, val = make_tree(tmp_path)
    splits = read(tmp_path, cache)
    assert splits.classes == ("ant", "cat", "dog") and splits.num_classes == 3
    assert splits.name == tmp_path.name
    images, labels = decoded(splits, "train")
    assert images.dtype == torch.uint8 and images.shape == (4, 3, S, S)
    order = ["train/ant/q.png", "train/cat/a.png", "train/cat/b.png", "train/dog/x.png"]
    assert torch.equal(images, torch.stack([train[k] for k in order]))
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 1, 2]
    images, labels = decoded(splits, "test")
    assert torch.equal(images, torch.stack([val[k] for k in ["val/cat/z.png", "val/dog/k.png", "val/dog/m.png"]]))
    assert labels.tolist() == [1, 2, 2]
    # orientation: red grows to the right, green downwards (not transposed, not flipped)
    img = images[0]
    for y, x in [(0, 0), (0, 7), (7, 0), (2, 5)]:
        assert (int(img[0, y, x]), int(img[1, y, x]), int(img[2, y, x])) == (16 * x, 16 * y, 100 + 2)


@pytest.mark.parametrize("cache", CACHES)
def test_non_square_images_keep_the_centre(tmp_path: Path, cache: str) -> None:
    wide = save(tmp_path / "train/a/wide.png", pattern(1, h=S, w=2 * S))  # 8 x 16: no resize, middle columns
    tall = save(tmp_path / "train/b/tall.png", pattern(2, h=2 * S, w=S))  # 16 x 8: middle rows
    const = np.zeros((40, 24, 3), np.uint8)
    const[...] = (200, 30, 90)
    save(tmp_path / "train/c/big.png", const)  # a larger constant image stays that colour
    ramp = np.zeros((32, 64, 3), np.uint8)
    ramp[..., 0] = (np.arange(64) * 4)[None, :]
    ramp[..., 1] = 100
    save(tmp_path / "train/d/ramp.png", ramp)
    save(tmp_path / "val/a/v.png", pattern(3))
    images, _ = decoded(read(tmp_path, cache), "train")
    assert torch.equal(images[0], chw(wide[:, 4:12]))
    assert torch.equal(images[1], chw(tall[4:12, :]))
    assert torch.equal(images[2], torch.tensor([200, 30, 90], dtype=torch.uint8)[:, None, None].expand(3, S, S))
    # 64x32 -> 16x8 (factor 4), centre columns 4..11; a linear ramp stays linear away from the borders:
    # output column c samples the source at (c + 4 + 0.5) * 4 - 0.5, where red = 4 * x
    expected = torch.tensor([4 * ((c + 4.5) * 4 - 0.5) for c in range(S)])
    assert (images[3, 0].float() - expected).abs().max() <= 1
    assert (images[3, 0] == images[3, 0, :1]).all()  # every row alike
    assert (images[3, 1] == 100).all() and (images[3, 2] == 0).all()


@pytest.mark.parametrize("cache", CACHES)
def test_grey_rgba_palette_and_jpeg_become_rgb(tmp_path: Path, cache: str) -> None:
    grey = (np.arange(S * S, dtype=np.uint8) * 3).reshape(S, S)
    save(tmp_path / "train/a/grey.png", grey)
    rgba = np.concatenate([pattern(7), np.full((S, S, 1), 40, np.uint8)], axis=2)
    save(tmp_path / "train/b/rgba.png", rgba)
    pal = Image.new("P", (S, S), 0)
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    for x in range(S // 2):
        for y in range(S):
            pal.putpixel((x, y), 1)
    (tmp_path / "train/c").mkdir(parents=True)
    pal.save(tmp_path / "train/c/pal.png")
    pal.save(tmp_path / "train/c/pal_transparent.png", transparency=0)
    smooth = np.zeros((16, 16, 3), np.uint8)
    smooth[..., 0] = (np.arange(16) * 12)[None, :]
    smooth[..., 1] = (np.arange(16) * 8)[:, None]
    smooth[..., 2] = 90
    save(tmp_path / "train/d/photo.jpg", smooth, quality=95, subsampling=0)
    save(tmp_path / "val/a/v.png", pattern(0))
    images, _ = decoded(read(tmp_path, cache), "train")
    assert images.shape == (5, 3, S, S)
    assert torch.equal(images[0], torch.from_numpy(grey)[None].expand(3, S, S))
    assert torch.equal(images[1], chw(pattern(7)))  # alpha dropped, colour kept
    left = torch.tensor([200, 100, 50], dtype=torch.uint8)[:, None, None].expand(3, S, S // 2)
    right = torch.tensor([10, 20, 30], dtype=torch.uint8)[:, None, None].expand(3, S, S // 2)
    for img in images[2:4]:
        assert torch.equal(img[:, :, : S // 2], left) and torch.equal(img[:, :, S // 2 :], right)
    # the 16x16 JPEG is halved to 8x8: close to the 2x2 means of what was written
    halved = smooth.reshape(8, 2, 8, 2, 3).mean(axis=(1, 3))
    err = (images[4].float() - chw(halved.astype(np.float32)).float()).abs().max()
    assert err <= 6, err


def test_jpeg_roundtrip_at_full_size(tmp_path: Path) -> None:
    smooth = np.zeros((16, 16, 3), np.uint8)
    smooth[..., 0] = (np.arange(16) * 12)[None, :]
    smooth[..., 1] = (np.arange(16) * 8)[:, None]
    smooth[..., 2] = 90
    save(tmp_path / "train/a/photo.jpg", smooth, quality=95, subsampling=0)
    save(tmp_path / "val/a/v.png", pattern(0, 16, 16))
    images, _ = decoded(read(tmp_path, "always", image_size=16), "train")
    assert (images[0].int() - chw(smooth).int()).abs().max() <= 4


@pytest.mark.parametrize(("orientation", "quadrant"), [(1, (0, 0)), (6, (0, 1)), (8, (1, 0)), (3, (1, 1))])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, quadrant: tuple[int, int]) -> None:
    # stored: only the top-left quadrant red. EXIF 6 = display rotated 90 degrees clockwise (stored row 0
    # becomes the right column, so top-left -> top-right); 8 = counter-clockwise (-> bottom-left); 3 = 180.
    stored = np.zeros((16, 16, 3), np.uint8)
    stored[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    save(tmp_path / "train/a/o.jpg", stored, quality=95, subsampling=0, exif=exif.tobytes())
    save(tmp_path / "val/a/v.png", pattern(0, 16, 16))
    images, _ = decoded(read(tmp_path, "always", image_size=16), "train")
    red = images[0, 0].float()
    means = [[float(red[8 * r : 8 * r + 8, 8 * c : 8 * c + 8].mean()) for c in (0, 1)] for r in (0, 1)]
    for r in (0, 1):
        for c in (0, 1):
            assert (means[r][c] > 240) == ((r, c) == quadrant), means


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("cache", CACHES)
def test_test_folder_hidden_entries_and_nested_folders(tmp_path: Path, cache: str) -> None:
    train = write_files(tmp_path, {"train/cat": ["a.png", "z.png"], "train/cat/sub/deeper": ["c.png"],
                                   "train/dog": ["d.png"]})
    test = write_files(tmp_path, {"test/dog": ["t.png"]}, start=50)
    # hidden files and folders are ignored everywhere (a hidden class, a hidden folder in a class, dot files)
    write_files(tmp_path, {"train/.cache": ["h.png"], "train/cat/.thumbs": ["h.png"], "train/dog": [".h.png"]}, 200)
    (tmp_path / "train/cat/.DS_Store").write_bytes(b"\0\1junk")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        splits = read(tmp_path, cache)
    assert amcl_warnings(record) == []
    assert splits.classes == ("cat", "dog")
    images, labels = decoded(splits, "train")
    order = ["train/cat/a.png", "train/cat/sub/deeper/c.png", "train/cat/z.png", "train/dog/d.png"]
    assert torch.equal(images, torch.stack([train[k] for k in order]))
    assert labels.tolist() == [0, 0, 0, 1]
    images, labels = decoded(splits, "test")
    assert torch.equal(images, test["test/dog/t.png"][None]) and labels.tolist() == [1]


def test_val_is_preferred_over_test(tmp_path: Path) -> None:
    write_files(tmp_path, {"train/a": ["1.png"], "val/a": ["2.png"], "test/a": ["3.png", "4.png"]})
    splits = read(tmp_path, "always")
    assert splits.test_images.shape[0] == 1 and int(splits.test_images[0, 2, 0, 0]) == 1


@pytest.mark.parametrize("cache", CACHES)
def test_class_list_subset_reindexed(tmp_path: Path, cache: str) -> None:
    train = write_files(tmp_path, {"train/ant": ["1.png"], "train/bee": ["2.png"], "train/cat": ["3.png"],
                                   "train/dog": ["4.png"]})
    write_files(tmp_path, {"val/bee": ["5.png"], "val/dog": ["6.png"], "val/cat": ["7.png"]}, 100)
    classes = tmp_path / "classes.txt"
    classes.write_text("# my subset\n\ndog   # the dogs\n  bee\n\ndog\n")
    splits = read(tmp_path, cache, class_list=classes)
    assert splits.classes == ("bee", "dog")
    images, labels = decoded(splits, "train")
    assert torch.equal(images, torch.stack([train["train/bee/2.png"], train["train/dog/4.png"]]))
    assert labels.tolist() == [0, 1]
    images, labels = decoded(splits, "test")
    assert images[:, 2, 0, 0].tolist() == [100, 101] and labels.tolist() == [0, 1]  # val/cat left out


def test_class_list_naming_a_missing_class(tmp_path: Path) -> None:
    write_files(tmp_path, {"train/ant": ["1.png"], "train/bee": ["2.png"], "val/ant": ["3.png"]})
    classes = tmp_path / "classes.txt"
    classes.write_text("ant\nwasp\n")
    msg = dataset_error(read_image_folder, tmp_path, S, class_list=classes, workers=0)
    assert "names 1 classes with no folder in" in msg and msg.endswith(": wasp; fix the list or the folder")
    classes.write_text("# nothing\n\n")
    assert "names no classes" in dataset_error(read_image_folder, tmp_path, S, class_list=classes, workers=0)


# --------------------------------------------------------------------------- unlabeled


@pytest.mark.parametrize("cache", CACHES)
def test_folder_without_train_is_unlabeled(tmp_path: Path, cache: str) -> None:
    files = write_files(tmp_path, {"": ["b.png", "a.png"], "misc/deep": ["c.png"]})
    with pytest.warns(AmclWarning, match="no train/ folder: its 3 files are unlabeled images, for pre-training only"):
        splits = read(tmp_path, cache)
    assert splits.classes == () and splits.num_classes == 0
    images, labels = decoded(splits, "train")
    assert torch.equal(images, torch.stack([files[k] for k in ["a.png", "b.png", "misc/deep/c.png"]]))
    assert labels.tolist() == [-1, -1, -1]
    assert len(splits.test_labels) == 0
    dm = ContrastiveDataModule(splits, batch_size=2, image_size=S, workers=0)
    assert not dm.can_monitor


@pytest.mark.parametrize("cache", CACHES)
def test_unlabeled_folder_appended_after_labelled(tmp_path: Path, cache: str) -> None:
    train = write_files(tmp_path, {"train/b": ["1.png"], "train/a": ["2.png"], "val/a": ["3.png"]})
    extra = write_files(tmp_path, {"unlabeled": ["u2.png", "u1.png"], "unlabeled/x": ["u0.png"]}, 100)
    splits = read(tmp_path, cache, unlabeled=True)
    images, labels = decoded(splits, "train")
    order = [train["train/a/2.png"], train["train/b/1.png"], extra["unlabeled/u1.png"], extra["unlabeled/u2.png"],
             extra["unlabeled/x/u0.png"]]
    assert torch.equal(images, torch.stack(order))
    assert labels.tolist() == [0, 1, -1, -1, -1]
    assert ContrastiveDataModule(splits, batch_size=2, image_size=S, workers=0).can_monitor
    # without --unlabeled the extra folder is not read
    assert len(read(tmp_path, cache).train_labels) == 2


def test_unlabeled_needs_the_folder_and_train(tmp_path: Path) -> None:
    write_files(tmp_path, {"train/a": ["1.png"], "val/a": ["2.png"]})
    msg = dataset_error(read_image_folder, tmp_path, S, unlabeled=True, workers=0)
    assert "unlabeled" in msg and "does not exist" in msg
    flat = tmp_path / "flat"
    write_files(flat, {"": ["1.png"]})
    assert "--unlabeled needs" in dataset_error(read_image_folder, flat, S, unlabeled=True, workers=0)


# --------------------------------------------------------------------------- bad input


def _missing(root: Path) -> Path:
    return root / "nope"


def _a_file(root: Path) -> Path:
    save(root / "img.png", pattern(0))
    return root / "img.png"


def _images_in_train(root: Path) -> Path:
    write_files(root, {"train": ["loose.png"], "train/a": ["1.png"]})
    return root


def _no_class_folders(root: Path) -> Path:
    (root / "train").mkdir()
    (root / "train/readme.txt").write_text("hello")
    return root


def _empty_class(root: Path) -> Path:
    write_files(root, {"train/a": ["1.png"], "val/a": ["2.png"]})
    (root / "train/b/.hidden").mkdir(parents=True)  # only hidden content: still empty
    return root


def _extra_val_class(root: Path) -> Path:
    write_files(root, {"train/a": ["1.png"], "val/a": ["2.png"], "val/zebra": ["3.png"]})
    return root


def _empty_root(root: Path) -> Path:
    (root / ".git").mkdir()
    (root / ".git/x.png").write_bytes(b"x")
    return root


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (_missing, ["nope does not exist", FOLDER_LAYOUT]),
        (_a_file, ["img.png is a file, not a folder"]),
        (_images_in_train, ["holds images outside class folders", "loose.png"]),
        (_no_class_folders, ["train has no class sub-folders", "expected <root>/train/<class>/"]),
        (_empty_class, ["train/b is empty"]),
        (_extra_val_class, ["class folders that", "zebra"]),
        (_empty_root, ["holds no files"]),
    ],
    ids=["missing", "file", "loose-images", "no-classes", "empty-class", "val-extra-class", "empty-root"],
)
def test_bad_layouts_are_one_line_dataset_errors(tmp_path: Path, make, fragments: list[str]) -> None:
    path = make(tmp_path)
    for cache in CACHES:
        msg = dataset_error(read_image_folder, path, S, cache=cache, workers=0)
        for fragment in fragments:
            assert fragment in msg, msg


def test_unknown_cache_mode(tmp_path: Path) -> None:
    write_files(tmp_path, {"train/a": ["1.png"]})
    with pytest.raises(ValueError, match="cache must be"):
        read_image_folder(tmp_path, S, cache="sometimes")


# --------------------------------------------------------------------------- unreadable files


def _tree_with_bad_files(root: Path) -> dict:
    train = write_files(root, {"train/a": ["1.png", "c.png"], "train/b": ["2.png"]})
    write_files(root, {"val/a": ["3.png"]}, 100)
    (root / "train/a/notes.txt").write_text("not an image\n")
    (root / "train/a/broken.png").write_bytes(np.random.default_rng(1).bytes(300))
    return train


@pytest.mark.parametrize("cache", CACHES)
def test_unreadable_files_skipped_with_one_warning(tmp_path: Path, cache: str) -> None:
    train = _tree_with_bad_files(tmp_path)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        splits = read(tmp_path, cache)
    messages = amcl_warnings(record)
    assert len(messages) == 1, messages
    assert "skipped 2 of 5 files" in messages[0] and "broken.png" in messages[0]
    images, labels = decoded(splits, "train")
    assert torch.equal(images, torch.stack([train[k] for k in ["train/a/1.png", "train/a/c.png", "train/b/2.png"]]))
    assert labels.tolist() == [0, 0, 1]


@pytest.mark.parametrize("cache", CACHES)
def test_unreadable_files_strict(tmp_path: Path, cache: str) -> None:
    _tree_with_bad_files(tmp_path)
    msg = dataset_error(read_image_folder, tmp_path, S, strict=True, cache=cache, workers=0)
    assert "2 of 5 files" in msg  # each named with its reason
    assert f"({tmp_path / 'train/a/broken.png'}: " in msg and f"; {tmp_path / 'train/a/notes.txt'}: " in msg


def test_strict_data_names_the_first_three_and_counts_the_rest(tmp_path: Path) -> None:
    write_files(tmp_path, {"train/a": ["1.png"], "val/a": ["2.png"]})
    for i in range(5):
        (tmp_path / f"train/a/bad{i}.png").write_bytes(b"not a png")
    msg = dataset_error(read_image_folder, tmp_path, S, strict=True, cache="always", workers=0)
    assert "5 of 6 files" in msg and "bad2.png: " in msg and "bad3.png" not in msg and "; and 2 more" in msg


def test_a_symbolic_link_loop_in_an_image_folder_is_read_once(tmp_path: Path) -> None:
    write_files(tmp_path, {"train/a": ["1.png", "2.png"], "val/a": ["3.png"]})
    (tmp_path / "train/a/loop").symlink_to(tmp_path / "train/a")  # a -> loop -> a -> ...
    (tmp_path / "train/a/up").symlink_to(tmp_path / "train")
    with pytest.warns(AmclWarning, match=r"did not follow 2 symbolic link\(s\)"):
        splits = read_image_folder(tmp_path, S, cache="always", workers=0)
    assert len(splits.train_labels) == 2


@pytest.mark.parametrize("link,target", [("train/a/up", ".."), ("train/a/other", "../b"),
                                         ("val/a/train", "../../train")])
def test_a_link_to_another_class_or_above_does_not_relabel_its_images(tmp_path: Path, link: str, target: str) -> None:
    """The issue's case: `train/a/up -> ..` read class b's images as class a too (48 vs 24), and the kNN fell."""
    write_files(tmp_path, {"train/a": ["1.png", "2.png"], "train/b": ["3.png", "4.png", "5.png"], "val/a": ["6.png"],
                           "val/b": ["7.png"]})
    (tmp_path / link).symlink_to(target)
    named = rf"did not follow 1 symbolic link\(s\) .*\(e\.g\. .*{link.split('/')[-1]} -> "
    with pytest.warns(AmclWarning, match=named):
        splits = read_image_folder(tmp_path, S, cache="always", workers=0)
    assert splits.train_labels.tolist() == [0, 0, 1, 1, 1] and splits.test_labels.tolist() == [0, 1]


def test_a_link_to_a_folder_outside_the_data_root_is_followed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_files(root, {"train/a": ["1.png"], "val/a": ["2.png"]})
    write_files(tmp_path / "elsewhere", {"more": ["3.png", "4.png"]})
    (root / "train/a/more").symlink_to(tmp_path / "elsewhere" / "more")  # data spread over disks
    with warnings.catch_warnings():
        warnings.simplefilter("error", AmclWarning)
        splits = read_image_folder(root, S, cache="always", workers=0)
    assert splits.train_labels.tolist() == [0, 0, 0]


@pytest.mark.parametrize("cache", ["always", "never"])
def test_a_file_linked_to_itself_is_left_out_like_an_unreadable_image(tmp_path: Path, cache: str) -> None:
    write_files(tmp_path, {"train/a": ["1.png", "2.png"], "val/a": ["3.png"]})
    (tmp_path / "train/a/self.png").symlink_to("self.png")  # ELOOP when read
    (tmp_path / "train/a/gone.png").symlink_to(tmp_path / "missing.png")
    with pytest.warns(AmclWarning, match=r"skipped 2 of 4 files .*(gone|self)\.png"):
        splits = read_image_folder(tmp_path, S, cache=cache, workers=0)
    assert len(splits.train_labels) == 2


def test_an_unreadable_folder_link_is_one_line(tmp_path: Path) -> None:
    write_files(tmp_path, {"train/a": ["1.png"], "val/a": ["3.png"]})
    (tmp_path / "train/b").symlink_to(tmp_path / "missing")  # a dangling link is no folder: skipped
    (tmp_path / "train/a/sub").mkdir()
    (tmp_path / "train/a/sub").chmod(0)
    try:
        if os.access(tmp_path / "train/a/sub", os.R_OK):
            pytest.skip("this user reads folders without read permission (root)")
        msg = dataset_error(read_image_folder, tmp_path, S, cache="always", workers=0)
        assert "cannot read the image folder" in msg and "sub" in msg
    finally:
        (tmp_path / "train/a/sub").chmod(0o755)


def test_truncated_jpeg_cached_is_dropped(tmp_path: Path) -> None:
    train = write_files(tmp_path, {"train/a": ["1.png", "3.png"], "train/b": ["4.png"], "val/a": ["5.png"]})
    truncated_jpeg(tmp_path / "train/a/2.jpg")
    with pytest.warns(AmclWarning, match=r"skipped 1 of 4 files .*2\.jpg: image file is truncated"):
        splits = read(tmp_path, "always")
    assert torch.equal(splits.train_images, torch.stack([train[k] for k in ["train/a/1.png", "train/a/3.png",
                                                                             "train/b/4.png"]]))
    assert splits.train_labels.tolist() == [0, 0, 1]
    assert "2.jpg" in dataset_error(read_image_folder, tmp_path, S, strict=True, cache="always", workers=0)


def test_truncated_jpeg_streamed_is_replaced_by_the_next_image(tmp_path: Path) -> None:
    train = write_files(tmp_path, {"train/a": ["1.png"], "train/b": ["3.png"], "val/a": ["5.png"]})
    truncated_jpeg(tmp_path / "train/a/2.jpg")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        splits = read(tmp_path, "never", strict=True)  # only headers are checked: nothing to refuse yet
    assert amcl_warnings(record) == []
    assert splits.train.paths[1].endswith("2.jpg") and splits.train_labels.tolist() == [0, 0, 1]
    data = DecodedImages(splits.train.files, S)
    image, label, broken, short = data[1]
    assert torch.equal(image, train["train/b/3.png"]) and label == 1 and broken == 1 and short == S
    image, label, broken, _ = data[2]
    assert torch.equal(image, train["train/b/3.png"]) and label == 1 and broken == -1


@pytest.mark.parametrize("cache", CACHES)
def test_many_unreadable_files_in_a_row_are_skipped(tmp_path: Path, cache: str) -> None:
    # more than DecodedImages.max_substitutes (32) unreadable files in a row: still skipped, not refused
    write_files(tmp_path, {"train/a": ["1.png"], "train/b": ["2.png"], "val/a": ["3.png"]})
    for i in range(33):
        (tmp_path / f"train/a/meta_{i:02d}.txt").write_text("annotation\n")
    with pytest.warns(AmclWarning, match="skipped 33 of 35 files"):
        splits = read(tmp_path, cache)
    assert splits.train_labels.tolist() == [0, 1]


@pytest.mark.parametrize("cache", CACHES)
def test_a_split_without_any_readable_image(tmp_path: Path, cache: str) -> None:
    write_files(tmp_path, {"train/a": ["1.png"]})
    (tmp_path / "val/a").mkdir(parents=True)
    (tmp_path / "val/a/notes.txt").write_text("not an image")
    msg = dataset_error(read_image_folder, tmp_path, S, cache=cache, workers=0)
    assert "none of the 1 files" in msg and "notes.txt" in msg


def test_16_bit_greyscale_png_is_scaled_to_8_bits(tmp_path: Path) -> None:
    save(tmp_path / "train/a/g16.png", np.full((S, S), 32768, np.uint16))
    save(tmp_path / "val/a/v.png", pattern(0))
    splits = read(tmp_path, "always")
    assert abs(int(splits.train_images[0, 0, 0, 0]) - 128) <= 1


# --------------------------------------------------------------------------- streamed data module


class _Trainer:
    """The attributes of a Lightning Trainer that the data module reads: whether it is training, and the
    device (for pinned memory)."""

    def __init__(self, training: bool) -> None:
        self.training = training
        self.strategy = SimpleNamespace(root_device=CPU)


def test_streamed_module_reports_unreadable_file_once(tmp_path: Path) -> None:
    write_files(tmp_path, {"train/a": ["1.png", "3.png"], "train/b": ["4.png"], "val/a": ["5.png"]})
    truncated_jpeg(tmp_path / "train/a/2.jpg")
    bad = str(tmp_path / "train/a/2.jpg")
    splits = read(tmp_path, "never")
    dm = ContrastiveDataModule(splits, batch_size=4, image_size=S, workers=0, policy="e")
    dm.trainer = _Trainer(training=True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(2):  # two epochs: reported once
            for batch in dm.train_dataloader():
                images, labels = dm.on_before_batch_transfer(batch, 0)
                assert images.shape == (4, 3, S, S) and labels.shape == (4,)
                v1, v2 = dm.on_after_batch_transfer((images, labels), 0)
                assert v1.shape == v2.shape == (4, 3, S, S)
    messages = amcl_warnings(record)
    assert len(messages) == 1 and f"unreadable image {bad}" in messages[0] and "truncated" in messages[0]
    assert dm.unreadable == {bad}

    strict = ContrastiveDataModule(read(tmp_path, "never", strict=True), batch_size=4, image_size=S, workers=0)
    strict.trainer = _Trainer(training=True)
    batch = next(iter(strict.train_dataloader()))
    with pytest.raises(DatasetError, match=re.escape(f"{bad} is not a readable image")):
        strict.on_before_batch_transfer(batch, 0)


def test_streamed_and_cached_modules_give_identical_batches(tmp_path: Path) -> None:
    write_files(tmp_path, {"train/b": ["1.png", "2.png"], "train/a": ["3.png", "4.png", "5.png"],
                           "val/a": ["6.png"], "val/b": ["7.png", "8.png"]})
    write_files(tmp_path, {"unlabeled": ["u1.png", "u2.png"]}, 100)
    cached = ContrastiveDataModule(read(tmp_path, "always", unlabeled=True), 2, image_size=S, workers=0,
                                   eval_batch_size=2)
    streamed = ContrastiveDataModule(read(tmp_path, "never", unlabeled=True), 2, image_size=S, workers=0,
                                     eval_batch_size=2)
    assert streamed.streamed and not cached.streamed
    for split, labels in (("train", [0, 0, 0, 1, 1]), ("test", [0, 1, 1])):
        a = list(cached.plain_batches(split, CPU))
        b = list(streamed.plain_batches(split, CPU))
        xa, ya = torch.cat([x for x, _ in a]), torch.cat([y for _, y in a])
        xb, yb = torch.cat([x for x, _ in b]), torch.cat([y for _, y in b])
        assert ya.tolist() == yb.tolist() == labels  # only the labelled images
        assert xa.shape == (len(labels), 3, S, S) and torch.equal(xa, xb)
    for dm in (cached, streamed):
        dm.trainer = _Trainer(training=False)
    val_a = [cached.on_after_batch_transfer(cached.on_before_batch_transfer(b, 0), 0) for b in cached.val_dataloader()]
    val_b = [streamed.on_after_batch_transfer(streamed.on_before_batch_transfer(b, 0), 0)
             for b in streamed.val_dataloader()]
    assert torch.equal(torch.cat([x for x, _ in val_a]), torch.cat([x for x, _ in val_b]))
    assert torch.cat([y for _, y in val_a]).tolist() == torch.cat([y for _, y in val_b]).tolist() == [0, 1, 1]
    assert streamed.unreadable == set()


@pytest.mark.parametrize("cache", CACHES)
def test_can_monitor_needs_a_held_out_split(tmp_path: Path, cache: str) -> None:
    write_files(tmp_path, {"train/a": ["1.png"], "train/b": ["2.png"]})
    with pytest.warns(AmclWarning, match="no val/ or test/ folder: no held-out labelled images, so no kNN monitor"):
        splits = read(tmp_path, cache)
    assert not ContrastiveDataModule(splits, 1, image_size=S, workers=0).can_monitor
    write_files(tmp_path, {"val/a": ["3.png"]})
    assert ContrastiveDataModule(read(tmp_path, cache), 1, image_size=S, workers=0).can_monitor


# --------------------------------------------------------------------------- worker processes


def test_worker_processes_give_the_same_result(tmp_path: Path) -> None:
    # 300 files: two decoding batches of 256, so both workers decode part of the folder
    names = [f"{i:03d}.png" for i in range(150)]
    for i, cls in enumerate(["a", "b"]):
        for j, name in enumerate(names):
            img = np.full((4, 4, 3), (j, i * 100, (j * 7) % 256), np.uint8)
            img[0, 0] = (255, 255, 255)
            save(tmp_path / "train" / cls / name, img)
    save(tmp_path / "val/a/v.png", pattern(0, 4, 4))
    (tmp_path / "train/b/zz.txt").write_text("not an image")
    results = []
    for workers in (0, 2):
        with pytest.warns(AmclWarning, match="skipped 1 of 301 files"):
            results.append(read_image_folder(tmp_path, 4, cache="always", workers=workers))
    a, b = results
    assert a.train_images.shape == (300, 3, 4, 4)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.train_labels, b.train_labels)
    assert torch.equal(a.test_images, b.test_images)
    assert b.train_images[:, 0, 1, 1].tolist() == list(range(150)) * 2
    assert b.train_labels.tolist() == [0] * 150 + [1] * 150


def test_streamed_evaluation_drops_unreadable_files_like_the_cache(tmp_path: Path) -> None:
    write_files(tmp_path, {"train/a": ["1.png"], "train/b": ["3.png"], "val/a": ["5.png"], "val/b": ["6.png"]})
    truncated_jpeg(tmp_path / "val/a/2.jpg")
    with pytest.warns(AmclWarning, match="skipped 1 of 3"):
        cached = ContrastiveDataModule(read(tmp_path, "always"), 2, image_size=S, workers=0)
    streamed = ContrastiveDataModule(read(tmp_path, "never"), 2, image_size=S, workers=0)
    with pytest.warns(AmclWarning, match="unreadable image"):
        labels = torch.cat([y for _, y in streamed.plain_batches("test", CPU)])
    assert labels.tolist() == torch.cat([y for _, y in cached.plain_batches("test", CPU)]).tolist() == [0, 1]


# --------------------------------------------------------------------------- one split interface


def _through_loader(split, batch_size: int, index: torch.Tensor, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of ``split.loader`` batches after the two transfer hooks, concatenated."""
    reported: list[str] = []
    batches = [split.after_transfer(split.before_transfer(b, reported.extend))
               for b in split.loader(batch_size, index, **options)]
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def test_cached_and_streamed_splits_answer_the_same_calls_alike(tmp_path: Path) -> None:
    train = write_files(tmp_path, {"train/b": ["1.png", "2.png"], "train/a": ["3.png", "4.png", "5.png"],
                                   "val/a": ["6.png"], "val/b": ["7.png", "8.png"]})
    write_files(tmp_path, {"unlabeled": ["u1.png", "u2.png"]}, 100)
    truncated_jpeg(tmp_path / "train/a/2.jpg")  # readable header, unreadable pixels: only decoding finds it
    bad = str(tmp_path / "train/a/2.jpg")
    with pytest.warns(AmclWarning, match="skipped 1 of 8"):
        cached = read(tmp_path, "always", unlabeled=True)
    streamed = read(tmp_path, "never", unlabeled=True)
    assert not cached.train.streamed and streamed.train.streamed
    assert cached.train.paths is None and bad in streamed.train.paths

    # the held-out split: every file readable, so both give the same images for the same calls
    a, b = cached.test, streamed.test
    assert len(a) == len(b) == 3 and torch.equal(a.labels, b.labels) and torch.equal(a.labelled(), b.labelled())
    index = torch.tensor([2, 0])
    assert torch.equal(a.images(index), b.images(index))
    for split_index in (None, index):
        xa, ya = zip(*a.batches(2, CPU, split_index))
        xb, yb = zip(*b.batches(2, CPU, split_index))
        assert [len(x) for x in xa] == [len(x) for x in xb]
        assert torch.equal(torch.cat(xa), torch.cat(xb)) and torch.equal(torch.cat(ya), torch.cat(yb))
    everything = torch.arange(3)
    assert all(torch.equal(u, v) for u, v in zip(_through_loader(a, 2, everything), _through_loader(b, 2, everything)))

    # the training split: the streamed one still lists the unreadable file; decoding leaves it out and reports it
    assert len(cached.train) == 7 and len(streamed.train) == 8
    reported: list[str] = []
    xb, yb = zip(*streamed.train.batches(3, CPU, on_unreadable=reported.extend))
    xa, ya = zip(*cached.train.batches(3, CPU))
    assert reported == [bad] and torch.equal(torch.cat(xa), torch.cat(xb)) and torch.equal(torch.cat(ya), torch.cat(yb))
    assert torch.cat(ya).tolist() == [0, 0, 0, 1, 1, -1, -1]
    assert torch.equal(streamed.train.images(torch.arange(8)), cached.train.images(torch.arange(7)))
    assert torch.equal(cached.train.images(torch.tensor([0])), train["train/a/3.png"][None])
    # training batches keep their size: the unreadable file is replaced by the next image of the order
    reported.clear()
    kept = list(streamed.train.batches(4, CPU, replace_unreadable=True, on_unreadable=reported.extend))
    assert [len(x) for x, _ in kept] == [4, 4] and reported == [bad]
    assert torch.equal(kept[0][0][0], kept[0][0][1])  # 2.jpg (position 0) replaced by 3.png (position 1)
