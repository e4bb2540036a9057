"""``amcl preview``: the augmentation grid, the sampled images, and the command end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from amcl.cli import main
from amcl.data.folders import FolderSplits, read_image_folder
from amcl.data.preview import augmentation_grid, sample_images
from amcl.data.readers import ImageSplits

S = 8


def random_images(n: int = 16, channels: int = 3, size: int = S, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


def write_folder(root: Path, size: int = 16) -> None:
    """train/{a,b} with 6 images and val/a with one; image k has blue = 10 * k (its identity)."""
    k = 0
    for cls, count in (("a", 4), ("b", 2)):
        for j in range(count):
            img = np.zeros((size, size, 3), np.uint8)
            img[..., 0] = (np.arange(size) * (256 // size))[None, :]
            img[..., 2] = 10 * k
            (root / "train" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "train" / cls / f"{j}.png")
            k += 1
    (root / "val/a").mkdir(parents=True)
    Image.fromarray(np.full((size, size, 3), 77, np.uint8)).save(root / "val/a/v.png")


# --------------------------------------------------------------------------- augmentation_grid


def test_grid_shape_original_column_and_flip_policy() -> None:
    images = random_images()
    original = images.float() / 255
    grid = augmentation_grid(images, ["e"], S, seed=0)
    assert grid.shape == (16, 3, 3, S, S) and grid.dtype == torch.float32
    torch.testing.assert_close(grid[:, 0], original, rtol=0, atol=1e-6)
    outcomes = set()
    for view in (grid[:, 1], grid[:, 2]):
        for i in range(len(images)):
            same = torch.allclose(view[i], original[i], atol=1e-6)
            mirrored = torch.allclose(view[i], original[i].flip(-1), atol=1e-6)
            assert same or mirrored, i
            outcomes.add("mirrored" if mirrored else "same")
    assert outcomes == {"same", "mirrored"}  # p = 0.5 over 32 views: both happen


def test_grid_grayscale_policy_and_two_policies() -> None:
    images = random_images(n=32)
    original = images.float() / 255
    grid = augmentation_grid(images, ["c", "e"], S, seed=1)
    assert grid.shape == (32, 5, 3, S, S)
    grey_views = 0
    for view in (grid[:, 1], grid[:, 2]):
        for i in range(len(images)):
            if torch.allclose(view[i], original[i], atol=1e-6):
                continue
            # colour dropped: three equal channels holding the luma of the original
            assert torch.equal(view[i, 0], view[i, 1]) and torch.equal(view[i, 1], view[i, 2]), i
            r, g, b = original[i]
            torch.testing.assert_close(view[i, 0], 0.299 * r + 0.587 * g + 0.114 * b, rtol=0, atol=1e-5)
            grey_views += 1
    assert 0 < grey_views < 64  # p = 0.2
    for view in (grid[:, 3], grid[:, 4]):  # the "e" columns: flipped or not
        for i in range(len(images)):
            assert torch.allclose(view[i], original[i], atol=1e-6) or torch.allclose(view[i], original[i].flip(-1),
                                                                                      atol=1e-6)


def test_grid_is_seeded_and_leaves_the_global_rng_alone() -> None:
    images = random_images()
    state = torch.get_rng_state()
    a = augmentation_grid(images, ["a", "default"], S, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    b = augmentation_grid(images, ["a", "default"], S, seed=5)
    c = augmentation_grid(images, ["a", "default"], S, seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a[:, 1:], c[:, 1:]) and torch.equal(a[:, 0], c[:, 0])
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a[:, 1], a[:, 2])  # the two views of a policy are independent


def test_grid_of_grey_images_resized_to_three_channels() -> None:
    images = torch.tensor([0, 51, 200, 255], dtype=torch.uint8)[:, None, None, None].expand(4, 1, 8, 8).clone()
    images[:, :, :, 4:] //= 2  # right half darker
    grid = augmentation_grid(images, ["e"], 16)
    assert grid.shape == (4, 3, 3, 16, 16)
    first = grid[:, 0]
    assert torch.equal(first[:, 0], first[:, 1]) and torch.equal(first[:, 1], first[:, 2])
    # 8 -> 16 pixels: away from the edge between the halves, each half keeps its grey level
    left = images[:, 0, 0, 0].float() / 255
    torch.testing.assert_close(first[:, 0, :, :6], left[:, None, None].expand(4, 16, 6), rtol=0, atol=1e-6)
    torch.testing.assert_close(first[:, 0, :, 10:], (images[:, 0, 0, 7].float() / 255)[:, None, None].expand(4, 16, 6),
                               rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- sample_images


def _tagged_splits(n: int = 20) -> ImageSplits:
    """Image i is filled with the value i, so a sample names the images it holds."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 3, 4, 4).clone()
    return ImageSplits("t", images, torch.arange(n) % 2, images[:2], torch.tensor([0, 1]), ("x", "y"))


def _ids(sample: torch.Tensor) -> list[int]:
    assert (sample == sample[:, :1, :1, :1]).all()  # each sampled image is one whole image
    return sample[:, 0, 0, 0].tolist()


def test_sample_images_from_memory() -> None:
    splits = _tagged_splits()
    a = sample_images(splits, 5, seed=0)
    assert a.shape == (5, 3, 4, 4) and a.dtype == torch.uint8
    ids = _ids(a)
    assert len(set(ids)) == 5 and all(0 <= i < 20 for i in ids)
    assert torch.equal(a, sample_images(splits, 5, seed=0))
    assert len({tuple(_ids(sample_images(splits, 5, seed=s))) for s in range(4)}) > 1
    assert sorted(_ids(sample_images(splits, 50, seed=1))) == list(range(20))  # more than there are: all


def test_sample_images_from_a_folder_match_the_cached_folder(tmp_path: Path) -> None:
    write_folder(tmp_path)
    streamed = read_image_folder(tmp_path, S, cache="never", workers=0)
    cached = read_image_folder(tmp_path, S, cache="always", workers=0)
    assert isinstance(streamed, FolderSplits) and isinstance(cached, ImageSplits)
    for seed in (0, 1, 2):
        a, b = sample_images(streamed, 3, seed), sample_images(cached, 3, seed)
        assert a.shape == (3, 3, S, S) and torch.equal(a, b)  # decoded at image_size, the same picks
        tags = a[:, 2, 0, 0].tolist()
        assert len(set(tags)) == 3 and set(tags) <= {0, 10, 20, 30, 40, 50}
        assert torch.equal(a, sample_images(streamed, 3, seed))
    assert len({tuple(sample_images(streamed, 3, s)[:, 2, 0, 0].tolist()) for s in range(4)}) > 1


# --------------------------------------------------------------------------- the command


def test_preview_command_writes_a_png(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sub" / "p.png"
    assert main(["preview", "--dataset", "digits", "--augs", "a,ab", "--num-images", "3", "--out", str(out)]) == 0
    assert f"wrote {out}: 3 images" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > im.height  # 5 columns, 3 rows
        assert im.width >= 5 * 1.1 * 100 - 1  # 16 px digits drawn at >= 100 dpi: legible 8 pt titles


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--augs", "a,xz"], ["argument --augs", "'x', 'z'", "'xz'"]),
        (["--augs", " , "], ["give at least one policy"]),
        (["--num-images", "0"], ["--num-images must be at least 1"]),
        (["--dataset", "folder"], ["needs --data-root"]),
        (["--num-images", "2", "--out", "{tmp}/grid.txt"], [".txt is not an image format", "use --out with .png"]),
    ],
)
def test_preview_mistakes_exit_2_with_one_line(tmp_path: Path, capsys, args: list[str], fragments) -> None:
    out = tmp_path / "p.png"
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(["preview", "--out", str(out), *[a.format(tmp=tmp_path) for a in args]]))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("amcl"), err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists()


def test_preview_command_on_a_folder(tmp_path: Path, capsys) -> None:
    write_folder(tmp_path / "data")
    out = tmp_path / "f.png"
    code = main(["preview", "--dataset", "folder", "--data-root", str(tmp_path / "data"), "--image-size", "16",
                 "--workers", "0", "--augs", "e", "--num-images", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0 and captured.err == ""
    assert f"wrote {out}: 2 images, two views under each of e" in captured.out
    with Image.open(out) as im:
        assert im.width > im.height


def test_preview_takes_only_the_dataset_options_of_a_pretraining_preset(tmp_path: Path, capsys) -> None:
    # options that pretrain would refuse (--topk larger than the batch's negatives) do not matter here
    preset = tmp_path / "preset.yaml"
    preset.write_text("method: simclr\ndataset: digits\nepochs: 5\namcl: true\nbatch_size: 4\ntopk: 1000\n"
                      "augs: default\nimage-size: 12\n")
    out = tmp_path / "p.png"
    assert main(["preview", "--config", str(preset), "--augs", "e", "--num-images", "2", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["pretrain", "--config", str(preset), "--out", str(tmp_path / "run")]) == 2
    assert "--topk 1000" in capsys.readouterr().err
    # the dataset options do come from the file; the command line wins over it
    preset.write_text(f"method: moco\nepochs: 5\ndataset: folder\ndata_root: {tmp_path / 'missing'}\nworkers: 0\n")
    assert main(["preview", "--config", str(preset), "--out", str(out)]) == 2
    assert "missing does not exist" in capsys.readouterr().err
    write_folder(tmp_path / "data")
    code = main(["preview", "--config", str(preset), "--data-root", str(tmp_path / "data"), "--image-size", "16",
                 "--augs", "e", "--num-images", "1", "--out", str(out)])
    assert code == 0 and "1 images" in capsys.readouterr().out
