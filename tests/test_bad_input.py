"""Bad input across the whole CLI: one table of user mistakes, each expecting exit status 2 and one error line.

Every row runs ``amcl <command> ...`` (in-process through :func:`amcl.cli.main`) on a mistake a user can make:
unknown names, numbers out of range, options that do not apply, broken or misplaced data files, unwritable
outputs, broken config files, checkpoints that are not ours and resumes with other settings. The test asserts

* exit status 2 and no Python traceback;
* exactly one stderr line that is not an ``amcl: warning:`` line, starting ``amcl <command>: error:``;
* that line holds the row's fragments (the option or file named, and the fix);
* nothing was written: the row's temporary folder (the working directory too, so default outputs such as
  ``runs/pretrain`` or ``preview.png`` land there) and the shared pre-trained runs are as they were.

Rows whose mistake is not caught that way are kept as strict xfails, naming what goes wrong. A few rows also
run through ``python -m amcl.cli`` in a real process. Data sets are tiny files in their real formats (the
writers of ``builders.py``); checkpoints are two one-step digits runs made once for the module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from amcl.cli import main
from amcl.config import PretrainConfig
from amcl.train import pretrain
from builders import SMALL_HEADS, cli_args, make_archive, make_cifar10, make_stl10, tiny_options, write_pickle

TINY = tiny_options(batch_size=64, epochs=1, max_steps=1, knn_k=5)

# Options that keep a run tiny should a mistake slip through (the shared runs' options but the dataset, which
# rows choose, and with --workers 0); a row's own options come after them and win.
PRETRAIN_SAFE = ("--out", "{out}", *cli_args(TINY, dataset=None, workers=0))
COMPARE_SAFE = ("--out", "{out}", "--methods", "simclr", "--modes", "baseline", "--seeds", "0", "--augs", "a",
                *PRETRAIN_SAFE[2:])


# --------------------------------------------------------------------------- set-ups (files in the row's tmp_path)


def _png(path: Path, shade: int = 100, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (shade, 255 - shade, 60)).save(path)


def labelled_folder(tmp: Path, runs) -> None:
    """data/train/{a,b}/ and data/val/{a,b}/, two 8x8 PNGs each."""
    for split in ("train", "val"):
        for c, name in enumerate("ab"):
            for i in range(2):
                _png(tmp / "data" / split / name / f"{i}.png", 40 * c + 10 * i)


def folder_with_empty_class(tmp: Path, runs) -> None:
    _png(tmp / "data" / "train" / "cat" / "0.png")
    (tmp / "data" / "train" / "dog").mkdir()


def folder_of_unreadable_files(tmp: Path, runs) -> None:
    for i in range(2):
        path = tmp / "data" / "train" / "cat" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x89PNG but not really")


def class_list_naming_a_missing_class(tmp: Path, runs) -> None:
    labelled_folder(tmp, runs)
    (tmp / "classes.txt").write_text("a\nzebra\n")


def folder_without_train(tmp: Path, runs) -> None:
    for i in range(3):
        _png(tmp / "data" / f"{i}.png", 40 * i)


def folder_without_held_out(tmp: Path, runs) -> None:
    for c, name in enumerate("ab"):
        for i in range(2):
            _png(tmp / "data" / "train" / name / f"{i}.png", 40 * c + 10 * i)


def class_list_file(tmp: Path, runs) -> None:
    (tmp / "classes.txt").write_text("a\n")


def class_list_not_text(tmp: Path, runs) -> None:
    labelled_folder(tmp, runs)
    (tmp / "classes.txt").write_bytes(b"\xff\xfe\x00a\x00\xff")


def images_outside_class_folders(tmp: Path, runs) -> None:
    _png(tmp / "data" / "train" / "0.png")


def held_out_class_not_in_train(tmp: Path, runs) -> None:
    labelled_folder(tmp, runs)
    _png(tmp / "data" / "val" / "zebra" / "0.png")


def a_file(tmp: Path, runs) -> None:
    (tmp / "file.txt").write_text("just text\n")


def cifar10(tmp: Path, runs) -> None:
    make_cifar10(tmp / "data")  # 20 training and 3 test images


def cifar10_corrupt_pickle(tmp: Path, runs) -> None:
    make_cifar10(tmp / "data")
    path = tmp / "data" / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:50])


def cifar10_with_64px_images(tmp: Path, runs) -> None:
    make_cifar10(tmp / "data")
    bad = {b"data": np.zeros((4, 3 * 64 * 64), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
    write_pickle(tmp / "data" / "cifar-10-batches-py" / "data_batch_2", bad)


def cifar10_truncated_archive(tmp: Path, runs) -> None:
    make_cifar10(tmp / "src")
    (tmp / "data").mkdir()
    archive = tmp / "data" / "cifar-10-python.tar.gz"
    make_archive(tmp / "src" / "cifar-10-batches-py", archive)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    shutil.rmtree(tmp / "src")


def stl10_truncated(tmp: Path, runs) -> None:
    make_stl10(tmp / "data")
    path = tmp / "data" / "stl10_binary" / "train_X.bin"
    path.write_bytes(path.read_bytes()[:-100])


def stl10_without_unlabeled(tmp: Path, runs) -> None:
    make_stl10(tmp / "data")
    (tmp / "data" / "stl10_binary" / "unlabeled_X.bin").unlink()


def config_file(text: str) -> Callable[[Path, object], None]:
    def write(tmp: Path, runs) -> None:
        (tmp / "config.yaml").write_text(text)

    return write


def copied_run(name: str, damage: Callable[[Path], None] | None = None) -> Callable[[Path, object], None]:
    """The shared pre-trained run ``name`` copied to tmp/run (so a resume that slips through cannot touch it)."""

    def setup(tmp: Path, runs) -> None:
        shutil.copytree(runs.folder(name), tmp / "run")
        if damage is not None:
            damage(tmp / "run" / "last.ckpt")

    setup.needs_runs = True
    return setup


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def foreign_torch_file(path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, path)


def text_checkpoint(tmp: Path, runs) -> None:
    (tmp / "notes.ckpt").write_text("not a checkpoint\n")


def truncated_checkpoint(tmp: Path, runs) -> None:
    shutil.copy(runs.checkpoint("simclr"), tmp / "truncated.ckpt")
    truncate(tmp / "truncated.ckpt")


truncated_checkpoint.needs_runs = True


def foreign_checkpoint(tmp: Path, runs) -> None:
    foreign_torch_file(tmp / "foreign.ckpt")


def empty_folder(tmp: Path, runs) -> None:
    (tmp / "empty").mkdir()


def edit_config(change: Callable[[str], str]) -> Callable[[Path], None]:
    """A ``copied_run`` damage that rewrites the run's config.yaml."""

    def damage(ckpt: Path) -> None:
        path = ckpt.parent / "config.yaml"
        path.write_text(change(path.read_text()))

    return damage


def cut_after_backbone(text: str) -> str:
    return text[: text.index("backbone:") + len("backbone:")]


def edit_checkpoint(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """A ``copied_run`` damage that rewrites last.ckpt with ``change`` applied to its dict."""

    def damage(ckpt: Path) -> None:
        checkpoint = torch.load(ckpt, weights_only=True)
        change(checkpoint)
        torch.save(checkpoint, ckpt)

    return damage


def unfinished(damage: Callable[[Path], None]) -> Callable[[Path], None]:
    """``damage``, in a run cut off before its final files (no run.json: it is resumed, not returned as it is)."""

    def both_damages(ckpt: Path) -> None:
        damage(ckpt)
        (ckpt.parent / "run.json").unlink()

    return both_damages


def of_seed_1(checkpoint: dict) -> None:
    checkpoint["hyper_parameters"]["config"]["seed"] = 1


def with_a_wider_layer(checkpoint: dict) -> None:
    state = checkpoint["state_dict"]
    name = next(k for k, v in state.items() if v.ndim == 2)
    state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1])


def checkpoint_of(other: str) -> Callable[[Path, object], None]:
    """The shared ``simclr`` run with the checkpoint of the shared run ``other`` in its place."""

    def setup(tmp: Path, runs) -> None:
        copied_run("simclr")(tmp, runs)
        shutil.copy(runs.checkpoint(other), tmp / "run" / "last.ckpt")

    setup.needs_runs = True
    return setup


def another_tools_folder(tmp: Path, runs) -> None:
    """A folder with another tool's config.yaml beside a file of the user's."""
    (tmp / "thesis" / "src").mkdir(parents=True)
    (tmp / "thesis" / "config.yaml").write_text("title: my thesis\n")
    (tmp / "thesis" / "src" / "thesis.tex").write_text("\\documentclass{article}\n")


def git_work_tree(tmp: Path, runs) -> None:
    (tmp / "project" / ".git").mkdir(parents=True)
    (tmp / "project" / "notes.txt").write_text("mine\n")


def marked_compare_grid(tmp: Path, runs) -> None:
    (tmp / "grid").mkdir()
    (tmp / "grid" / "amcl-run.json").write_text('{"written_by": "amcl", "kind": "grid"}\n')
    (tmp / "grid" / "results.md").write_text("| cell |\n")


def config_bytes(data: bytes) -> Callable[[Path, object], None]:
    def write(tmp: Path, runs) -> None:
        (tmp / "config.yaml").write_bytes(data)

    return write


def a_folder_named_config(tmp: Path, runs) -> None:
    (tmp / "config.yaml").mkdir()


def both(*setups: Callable[[Path, object], None]) -> Callable[[Path, object], None]:
    def setup(tmp: Path, runs) -> None:
        for s in setups:
            s(tmp, runs)

    setup.needs_runs = any(getattr(s, "needs_runs", False) for s in setups)
    return setup


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # {tmp}, {data}, {out}, {run}: the row's folders; {simclr}, {barlow}: shared checkpoints
    fragments: tuple[str, ...]  # all must appear in the error line
    setup: Callable[[Path, object], None] | None = None
    xfail: str | None = None  # a mistake that is not caught as it should be: why
    needs_no_cuda: bool = False

    @property
    def command(self) -> str:
        return self.argv[0]

    @property
    def needs_runs(self) -> bool:
        """Whether the row reads the shared pre-trained runs (two real training runs): such rows are slow."""
        return any("{simclr}" in arg or "{barlow}" in arg for arg in self.argv) or \
            getattr(self.setup, "needs_runs", False)

    def param(self):
        marks = [pytest.mark.slow] if self.needs_runs else []
        if self.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=self.xfail))
        if self.needs_no_cuda:
            marks.append(pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"))
        return pytest.param(self, id=self.id, marks=marks)


def P(id: str, args: tuple[str, ...] | list[str], *fragments: str, **options) -> Case:
    """A pretrain row (tiny settings first, the row's options after them)."""
    return Case(id, ("pretrain", *PRETRAIN_SAFE, *args), fragments, **options)


def R(id: str, args: tuple[str, ...] | list[str], *fragments: str, **options) -> Case:
    """A pretrain --resume row (no other options: on a resume, every changed option is itself a mistake)."""
    return Case(id, ("pretrain", *args), fragments, **options)


def E(id: str, args: tuple[str, ...] | list[str], *fragments: str, **options) -> Case:
    return Case(id, ("eval", "--out", "{out}/eval.json", *args), fragments, **options)


def A(id: str, args: tuple[str, ...] | list[str], *fragments: str, **options) -> Case:
    return Case(id, ("analyze", "--out", "{out}", "--pairs", "20", *args), fragments, **options)


def X(id: str, args: tuple[str, ...] | list[str], *fragments: str, **options) -> Case:
    return Case(id, ("export", "--out", "{out}", *args), fragments, **options)


def V(id: str, args: tuple[str, ...] | list[str], *fragments: str, **options) -> Case:
    return Case(id, ("preview", "--out", "{out}/preview.png", "--workers", "0", *args), fragments, **options)


def C(id: str, args: tuple[str, ...] | list[str], *fragments: str, **options) -> Case:
    return Case(id, ("compare", *COMPARE_SAFE, *args), fragments, **options)


CKPT = ("--checkpoint", "{simclr}")

CASES = [
    # ------------------------------------------------------------------ pretrain: names and options
    P("pretrain-unknown-method", ["--method", "byol"], "unknown method 'byol'", "simclr, moco, simsiam, barlow_twins"),
    P("pretrain-unknown-dataset", ["--dataset", "imagenet"], "unknown dataset 'imagenet'", "cifar10"),
    P("pretrain-unknown-backbone", ["--backbone", "vgg11"], "unknown backbone 'vgg11'", "resnet18"),
    P("pretrain-unknown-augmentation-code", ["--augs", "abx"], "--augs", "unknown augmentation code(s) 'x'",
      "valid codes"),
    P("pretrain-repeated-augmentation-code", ["--augs", "aa"], "repeated augmentation code(s) 'a'"),
    P("pretrain-unknown-amcl-form", ["--amcl-form", "max"], "unknown amcl_form 'max'",
      "hardest, hardest_with_positive, softmax"),
    P("pretrain-unknown-negative-regularizer", ["--negative-regularizer", "sum"], "unknown negative_regularizer 'sum'",
      "mean_omega, sum_log_inverse"),
    P("pretrain-unknown-temperature-input", ["--temperature-input", "backbone"], "unknown temperature_input",
      "projection, detached"),
    P("pretrain-topk-with-softmax-form", ["--amcl", "--amcl-form", "softmax", "--topk", "5"], "--topk 5",
      "softmax form weighs every negative", "drop --topk"),
    P("pretrain-softmax-form-with-simsiam", ["--method", "simsiam", "--amcl", "--amcl-form", "softmax"],
      "--amcl-form softmax applies to simclr and moco", "drop --amcl-form"),
    P("pretrain-grad-clip-0", ["--grad-clip", "0"], "--grad-clip must be a positive number", "got 0.0"),
    P("pretrain-split-seed-negative", ["--split-seed", "-2"], "--split-seed must be in 0..4294967295, got -2"),
    P("pretrain-unknown-option", ["--no-such-option"], "unrecognized arguments: --no-such-option"),
    P("pretrain-option-without-value", ["--heads"], "argument --heads: expected one argument"),
    # numbers that are not numbers, or out of range
    P("pretrain-heads-not-a-number", ["--heads", "three"], "argument --heads", "expected int, got 'three'"),
    P("pretrain-lr-not-a-number", ["--lr", "fast"], "argument --lr", "expected float, got 'fast'"),
    P("pretrain-heads-0", ["--heads", "0"], "--heads must be at least 1, got 0"),
    P("pretrain-epochs-0", ["--epochs", "0"], "--epochs must be at least 1, got 0"),
    P("pretrain-batch-size-0", ["--batch-size", "0"], "--batch-size must be at least 2", "got 0"),
    P("pretrain-lr-0", ["--lr", "0"], "--lr must be a positive number, got 0.0"),
    P("pretrain-lr-negative", ["--lr", "-1"], "--lr must be a positive number, got -1.0"),
    P("pretrain-lr-nan", ["--lr", "nan"], "--lr must be a positive number, got nan"),
    P("pretrain-max-steps-zero", ["--max-steps", "0"], "--max-steps must be -1 (run all epochs) or at least 1, got 0"),
    P("pretrain-tau-min-equals-tau-max", ["--amcl", "--tau-min", "2", "--tau-max", "2"],
      "need 0 < --tau-min < --tau-max", "tau_min=2.0, tau_max=2.0"),
    P("pretrain-topk-above-negatives", ["--amcl", "--amcl-form", "hardest", "--batch-size", "4", "--topk", "7"],
      "--topk 7",
      "6 negatives of a batch of 4", "--topk <= 6"),
    P("pretrain-moco-queue-size-0", ["--method", "moco", "--queue-size", "0"], "--queue-size must be at least 1"),
    P("pretrain-moco-ema-1", ["--method", "moco", "--ema-momentum", "1"], "--ema-momentum must be in [0, 1), got 1.0"),
    P("pretrain-seed-negative", ["--seed", "-1"], "--seed must be in 0..4294967295, got -1"),
    P("pretrain-workers-negative", ["--workers", "-1"], "--workers must be a number >= 0", "got -1"),
    P("pretrain-devices-0", ["--devices", "0"], "--devices '0'", "give a positive number of devices"),
    P("pretrain-devices-not-a-number", ["--devices", "x"], "--devices 'x'", "give a positive number of devices"),
    P("pretrain-image-size-0", ["--image-size", "0"], "--image-size must be at least 1, got 0"),
    P("pretrain-knn-k-0", ["--knn-k", "0"], "--knn-k must be at least 1, got 0"),
    P("pretrain-runs-0", ["--runs", "0"], "--runs must be at least 1, got 0"),
    P("pretrain-epochs-not-an-integer", ["--epochs", "1.5"], "argument --epochs", "expected int, got '1.5'"),
    P("pretrain-knn-every-0", ["--knn-every", "0"], "--knn-every must be at least 1, got 0"),
    P("pretrain-momentum-nan", ["--momentum", "nan"], "--momentum must be in [0, 1), got nan"),
    P("pretrain-num-nodes-0", ["--num-nodes", "0"], "--num-nodes must be at least 1, got 0"),
    P("pretrain-momentum-5", ["--momentum", "5"], "--momentum must be in [0, 1), got 5.0"),
    P("pretrain-image-size-beyond-memory", ["--image-size", "4096"], "--image-size 4096: a batch of 1024 images",
      "GB as float32, more than half of this machine's", "use a smaller --image-size", needs_no_cuda=True),
    P("pretrain-folder-cache-beyond-memory", ["--dataset", "folder", "--data-root", "{tmp}/data", "--cache-images",
                                              "always", "--image-size", "100000"],
      "--cache-images always: the 8 images", "at 100000 px take", "use --cache-images never", setup=labelled_folder),
    P("pretrain-color-strength-3", ["--color-strength", "3"], "--color-strength must be in [0, 2.5]",
      "hue jitter", "got 3.0"),
    P("pretrain-beta-negative", ["--amcl", "--beta", "-1"], "--beta must be a number >= 0, got -1.0"),
    P("pretrain-data-root-for-digits", ["--data-root", "{tmp}"], "--data-root is for the datasets read from files",
      "--dataset digits takes none"),
    P("pretrain-knn-k-above-the-bank", ["--knn-k", "5000"], "--knn-k 5000 is larger than the kNN monitor's bank",
      "1438 labelled training images of digits", "leave it out to get 20"),
    P("pretrain-max-steps-negative", ["--max-steps", "-5"], "--max-steps must be -1 (run all epochs) or at least 1",
      "got -5"),
    P("pretrain-precision-unknown", ["--precision", "7"], "cannot set up training", "--precision 7"),
    P("pretrain-strategy-unknown", ["--strategy", "bogus"], "cannot set up training", "--strategy bogus",
      "invalid strategy name"),
    P("pretrain-accelerator-gpu-without-gpu", ["--accelerator", "gpu"], "cannot set up training", "--accelerator gpu",
      needs_no_cuda=True),
    P("pretrain-accelerator-tpu-without-torch-xla", ["--accelerator", "tpu"], "cannot set up training",
      "--accelerator tpu"),
    P("pretrain-device-list-on-cpu", ["--devices", "0,1"], "cannot set up training", "--devices 0,1",
      needs_no_cuda=True),
    P("pretrain-batch-size-1", ["--batch-size", "1"], "--batch-size must be at least 2", "got 1"),
    P("pretrain-sync-batchnorm-on-cpu", ["--accelerator", "cpu", "--sync-batchnorm", "--devices", "2"],
      "--sync-batchnorm works with CUDA GPUs only"),
    # options that do not apply
    P("pretrain-eq24-form-with-simsiam", ["--method", "simsiam", "--amcl", "--amcl-form", "hardest_with_positive"],
      "--amcl-form hardest_with_positive", "applies to simclr and moco", "simsiam"),
    P("pretrain-eq24-form-with-barlow-twins",
      ["--method", "barlow_twins", "--amcl", "--amcl-form", "hardest_with_positive"],
      "applies to simclr and moco", "barlow_twins"),
    P("pretrain-negative-mode-with-simsiam", ["--method", "simsiam", "--amcl", "--temperature-mode", "negative"],
      "--temperature-mode negative", "simsiam does not have"),
    P("pretrain-unlabeled-with-cifar10", ["--dataset", "cifar10", "--data-root", "{data}", "--unlabeled"],
      "--unlabeled applies to stl10 and folder", "cifar10 has no unlabeled split", setup=cifar10),
    P("pretrain-class-list-with-stl10", ["--dataset", "stl10", "--data-root", "{data}", "--class-list",
                                         "{tmp}/classes.txt"],
      "--class-list applies to --dataset folder, not stl10", setup=class_list_file),
    # ------------------------------------------------------------------ pretrain: data
    P("pretrain-cifar10-without-data-root", ["--dataset", "cifar10"], "--dataset cifar10 needs --data-root DIR"),
    P("pretrain-mnist-without-data-root", ["--dataset", "mnist"], "--dataset mnist needs --data-root DIR"),
    P("pretrain-fashion-mnist-missing-path", ["--dataset", "fashion_mnist", "--data-root", "{tmp}/nowhere"],
      "Fashion-MNIST path", "nowhere does not exist", "train-images-idx3-ubyte"),
    P("pretrain-train-subset-larger-than-the-classes", ["--train-subset", "5000"], "--train-subset 5000 needs 500 "
      "images of every class", "use --train-subset <="),
    P("pretrain-train-subset-0", ["--train-subset", "0"], "--train-subset must be at least 1, got 0"),
    P("pretrain-val-fraction-1", ["--val-fraction", "1"], "--val-fraction must be in [0, 1), got 1.0"),
    P("pretrain-cifar10-missing-path", ["--dataset", "cifar10", "--data-root", "{tmp}/nowhere"],
      "CIFAR-10 path", "nowhere does not exist", "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}"),
    P("pretrain-stl10-given-a-cifar-folder", ["--dataset", "stl10", "--data-root", "{data}"],
      "STL-10 folder", "is missing train_X.bin", "stl10_binary/{train_X.bin", setup=cifar10),
    P("pretrain-stl10-truncated-file", ["--dataset", "stl10", "--data-root", "{data}"],
      "train_X.bin has 110492 bytes", "not a positive multiple of 27648", "truncated", setup=stl10_truncated),
    P("pretrain-stl10-unlabeled-file-missing", ["--dataset", "stl10", "--data-root", "{data}", "--unlabeled"],
      "is missing unlabeled_X.bin", setup=stl10_without_unlabeled),
    P("pretrain-cifar10-corrupt-pickle", ["--dataset", "cifar10", "--data-root", "{data}"],
      "data_batch_3 is not a valid CIFAR pickle", "re-download", setup=cifar10_corrupt_pickle),
    P("pretrain-cifar10-pickle-of-64px-images", ["--dataset", "cifar10", "--data-root", "{data}"],
      "data_batch_2 holds 64x64 images", "are 32x32", "--dataset folder", setup=cifar10_with_64px_images),
    P("pretrain-cifar10-truncated-archive", ["--dataset", "cifar10", "--data-root", "{data}"],
      "cifar-10-python.tar.gz is truncated or corrupt", setup=cifar10_truncated_archive),
    P("pretrain-folder-empty-class", ["--dataset", "folder", "--data-root", "{data}"],
      "class folder", "dog is empty", "add its images or remove the folder", setup=folder_with_empty_class),
    P("pretrain-folder-only-unreadable-images", ["--dataset", "folder", "--data-root", "{data}"],
      "none of the 2 files", "is a readable image", "0.png", setup=folder_of_unreadable_files),
    P("pretrain-folder-class-list-names-missing-class", ["--dataset", "folder", "--data-root", "{data}",
                                                         "--class-list", "{tmp}/classes.txt"],
      "the class list names 1 classes with no folder", "zebra", setup=class_list_naming_a_missing_class),
    P("pretrain-folder-class-list-file-missing", ["--dataset", "folder", "--data-root", "{data}", "--class-list",
                                                  "{tmp}/none.txt"],
      "class list", "none.txt does not exist", setup=labelled_folder),
    P("pretrain-folder-root-is-a-file", ["--dataset", "folder", "--data-root", "{tmp}/file.txt"],
      "image folder path", "file.txt is a file, not a folder", setup=a_file),
    P("pretrain-folder-images-outside-class-folders", ["--dataset", "folder", "--data-root", "{data}"],
      "holds images outside class folders", "0.png", "sub-folder", setup=images_outside_class_folders),
    P("pretrain-folder-held-out-class-not-in-train", ["--dataset", "folder", "--data-root", "{data}"],
      "has class folders that", "lacks (e.g. zebra)", setup=held_out_class_not_in_train),
    P("pretrain-folder-class-list-not-utf8", ["--dataset", "folder", "--data-root", "{data}", "--class-list",
                                              "{tmp}/classes.txt"],
      "cannot read class list", "it must be a UTF-8 text file", setup=class_list_not_text),
    P("pretrain-folder-unlabeled-without-unlabeled-folder", ["--dataset", "folder", "--data-root", "{data}",
                                                             "--unlabeled"],
      "--unlabeled:", "unlabeled does not exist", setup=labelled_folder),
    P("pretrain-batch-larger-than-dataset", ["--dataset", "cifar10", "--data-root", "{data}", "--batch-size", "64"],
      "--batch-size 64 is larger than the 20 training images of cifar10", "--batch-size <= 20", setup=cifar10),
    P("pretrain-runs-2-batch-larger-than-dataset", ["--runs", "2", "--batch-size", "5000"],
      "--batch-size 5000 is larger than the 1438 training images"),
    # ------------------------------------------------------------------ pretrain: outputs and config files
    P("pretrain-unwritable-out", ["--out", "/proc/version/run"], "cannot write outputs to --out /proc/version/run",
      "choose a writable folder"),
    P("pretrain-out-is-a-file", ["--out", "{tmp}/file.txt"], "cannot write outputs to --out", "file.txt",
      setup=a_file),
    P("pretrain-config-missing", ["--config", "{tmp}/none.yaml"], "config file", "none.yaml' does not exist"),
    P("pretrain-config-invalid-yaml", ["--config", "{tmp}/config.yaml"], "is not valid YAML",
      setup=config_file("heads: [\n")),
    P("pretrain-config-unknown-key", ["--config", "{tmp}/config.yaml"], "unknown option 'colour'", "valid:",
      setup=config_file("colour: red\n")),
    P("pretrain-config-wrong-type", ["--config", "{tmp}/config.yaml"], "option heads: expected int, got [1, 2]",
      setup=config_file("heads: [1, 2]\n")),
    P("pretrain-config-not-a-mapping", ["--config", "{tmp}/config.yaml"], "must hold a mapping of option: value",
      setup=config_file("- 1\n")),
    P("pretrain-config-bad-value", ["--config", "{tmp}/config.yaml"], "--tau-min < --tau-max",
      setup=config_file("tau_min: 3.0\n")),
    P("pretrain-config-not-utf8", ["--config", "{tmp}/config.yaml"], "is not UTF-8 text", "byte 0xff",
      "save it as UTF-8", setup=config_bytes(b"epochs: 2 # caf\xff\n")),
    P("pretrain-config-key-twice", ["--config", "{tmp}/config.yaml"], "names 'epochs' twice (lines 1 and 3)",
      "keep one", setup=config_file("epochs: 2\nseed: 1\nepochs: 3\n")),
    P("pretrain-config-key-twice-in-two-spellings", ["--config", "{tmp}/config.yaml"],
      "names one option twice, as 'batch_size' and 'batch-size'", setup=config_file("batch_size: 8\nbatch-size: 16\n")),
    P("pretrain-config-null-for-a-number", ["--config", "{tmp}/config.yaml"], "option batch-size is empty (null or ~)",
      "leave the key out", setup=config_file("batch-size: ~\n")),
    P("pretrain-config-is-a-folder", ["--config", "{tmp}/config.yaml"], "is a folder, not a YAML file",
      setup=a_folder_named_config),
    P("pretrain-heads-beyond-memory", ["--amcl", "--heads", "100000"], "the model needs about",
      "--heads 100000", "more than half of this machine's", "use fewer --heads", needs_no_cuda=True),
    # ------------------------------------------------------------------ pretrain: folders that are not a run's
    P("pretrain-out-empty", ["--out", ""], "--out is empty", "e.g. --out runs/my-run"),
    P("pretrain-out-current-folder", ["--out", ".", "--overwrite"], "--out . is the current folder",
      "give a folder of its own"),
    P("pretrain-out-current-folder-by-path", ["--out", "{tmp}"], "is the current folder"),
    P("pretrain-out-above-the-current-folder", ["--out", "..", "--overwrite"], "--out .. is a folder above the "
      "current one"),
    P("pretrain-out-filesystem-root", ["--out", "/", "--overwrite"], "--out / is a folder above the current one"),
    P("pretrain-out-git-work-tree", ["--out", "{tmp}/project", "--overwrite"], "is a git work tree (it holds .git)",
      setup=git_work_tree),
    P("pretrain-overwrite-another-tools-folder", ["--out", "{tmp}/thesis", "--overwrite"],
      "thesis is not empty and is not an amcl run (it holds config.yaml, src)",
      "--overwrite replaces only amcl runs", "choose another --out", setup=another_tools_folder),
    P("pretrain-into-another-tools-folder", ["--out", "{tmp}/thesis"], "is not an amcl run", "config.yaml, src",
      setup=another_tools_folder),
    P("pretrain-overwrite-a-compare-grid", ["--out", "{tmp}/grid", "--overwrite"],
      "holds an amcl compare grid", "a pretrain run does not replace it", setup=marked_compare_grid),
    P("pretrain-config-boolean-for-a-number", ["--config", "{tmp}/config.yaml"], "option epochs: expected int",
      "got True", setup=config_file("epochs: yes\n")),
    # ------------------------------------------------------------------ pretrain --resume
    R("resume-missing-folder", ["--resume", "{tmp}/none"], "--resume", "none does not exist",
      "give the --out folder of an amcl pretrain run"),
    R("resume-folder-without-config", ["--resume", "{tmp}/empty"], "empty has no config.yaml", setup=empty_folder),
    R("resume-corrupt-config-yaml", ["--resume", "{run}"], "config.yaml' is not valid YAML",
      setup=copied_run("simclr", lambda ckpt: (ckpt.parent / "config.yaml").write_text("method: [\n"))),
    R("resume-with-another-method", ["--resume", "{run}", "--method", "moco"], "cannot resume",
      "--method 'simclr' in the run, 'moco' now", setup=copied_run("simclr")),
    R("resume-barlow-amcl-with-another-batch-size", ["--resume", "{run}", "--batch-size", "32"], "cannot resume",
      "--batch-size 64 in the run, 32 now", setup=copied_run("barlow")),
    R("resume-truncated-checkpoint", ["--resume", "{run}"], "cannot read checkpoint", "last.ckpt",
      "it is truncated or not a checkpoint written by amcl pretrain", setup=copied_run("simclr", truncate)),
    R("resume-foreign-torch-file", ["--resume", "{run}"], "last.ckpt is a torch file but not an amcl pretrain "
      "checkpoint", setup=copied_run("simclr", foreign_torch_file)),
    R("resume-config-cut-off", ["--resume", "{run}"], "config.yaml lacks --epochs and", "cut off or was edited",
      "restore the file", setup=copied_run("simclr", edit_config(cut_after_backbone))),
    R("resume-config-with-an-edited-lr", ["--resume", "{run}"], "its last.ckpt was trained with other settings",
      "--lr 0.06 in last.ckpt, 0.5 in config.yaml", "restore config.yaml",
      setup=copied_run("simclr", edit_config(lambda text: text.replace("lr: 0.06", "lr: 0.5")))),
    R("resume-config-with-an-edited-lr-given-again", ["--resume", "{run}", "--lr", "0.5"],
      "--lr 0.06 in last.ckpt, 0.5 in config.yaml",
      setup=copied_run("simclr", edit_config(lambda text: text.replace("lr: 0.06", "lr: 0.5")))),
    R("resume-checkpoint-of-another-seed", ["--resume", "{run}"], "--seed 1 in last.ckpt, 0 in config.yaml",
      "belongs to another run", setup=copied_run("simclr", edit_checkpoint(of_seed_1))),
    R("resume-checkpoint-of-another-method", ["--resume", "{run}"], "--method 'barlow_twins' in last.ckpt, "
      "'simclr' in config.yaml", setup=checkpoint_of("barlow")),
    R("resume-checkpoint-of-another-shape", ["--resume", "{run}"], "does not fit this run's model", "has shape",
      "start again with --overwrite", setup=copied_run("simclr", unfinished(edit_checkpoint(with_a_wider_layer)))),
    R("resume-config-null-for-a-number", ["--resume", "{run}"], "option batch_size is empty (null or ~)",
      setup=copied_run("simclr", edit_config(lambda text: text.replace("batch_size: 64", "batch_size: ~")))),
    R("resume-config-not-utf8", ["--resume", "{run}"], "config.yaml' is not UTF-8 text",
      setup=copied_run("simclr", lambda ckpt: (ckpt.parent / "config.yaml").write_bytes(b"method: simclr\xff\n"))),
    R("resume-with-config", ["--resume", "{run}", "--config", "{tmp}/config.yaml"], "reads the run's own config.yaml",
      "drop --config", setup=both(copied_run("simclr"), config_file("epochs: 2\n"))),
    # ------------------------------------------------------------------ eval
    Case("eval-without-checkpoint", ("eval",), ("the following arguments are required: --checkpoint",)),
    E("eval-missing-checkpoint", ["--checkpoint", "{tmp}/missing.ckpt"], "checkpoint", "missing.ckpt does not exist"),
    E("eval-folder-without-checkpoint", ["--checkpoint", "{tmp}/empty"], "is a folder without last.ckpt",
      setup=empty_folder),
    E("eval-text-file-as-checkpoint", ["--checkpoint", "{tmp}/notes.ckpt"], "cannot read checkpoint", "notes.ckpt",
      "not a checkpoint written by amcl pretrain", setup=text_checkpoint),
    E("eval-truncated-checkpoint", ["--checkpoint", "{tmp}/truncated.ckpt"], "cannot read checkpoint",
      "truncated.ckpt", "it is truncated", setup=truncated_checkpoint),
    E("eval-foreign-torch-file", ["--checkpoint", "{tmp}/foreign.ckpt"],
      "foreign.ckpt is a torch file but not an amcl pretrain checkpoint", setup=foreign_checkpoint),
    E("eval-unknown-protocol", [*CKPT, "--protocol", "svm"], "unknown --protocol 'svm'; choose one of: knn, linear"),
    E("eval-epochs-0", [*CKPT, "--protocol", "linear", "--epochs", "0"], "--epochs must be at least 1, got 0"),
    E("eval-lr-0", [*CKPT, "--protocol", "linear", "--lr", "0"], "--lr must be a positive number, got 0.0"),
    E("eval-batch-size-0", [*CKPT, "--protocol", "linear", "--batch-size", "0"], "--batch-size must be at least 1"),
    E("eval-weight-decay-negative", [*CKPT, "--protocol", "linear", "--weight-decay", "-1"],
      "--weight-decay must be a number >= 0, got -1.0"),
    E("eval-knn-k-0", [*CKPT, "--knn-k", "0"], "--knn-k must be at least 1, got 0"),
    E("eval-knn-t-negative", [*CKPT, "--knn-t", "-1"], "--knn-t must be a positive number, got -1.0"),
    E("eval-device-cuda-without-cuda", [*CKPT, "--device", "cuda"], "--device cuda: no CUDA device",
      "--device cpu", needs_no_cuda=True),
    E("eval-device-unknown", [*CKPT, "--device", "tpu9"], "unknown --device 'tpu9'"),
    E("eval-augment-with-knn", [*CKPT, "--augment"], "--augment applies to --protocol linear only"),
    E("eval-unknown-dataset", [*CKPT, "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    E("eval-cifar10-without-data-root", [*CKPT, "--dataset", "cifar10"], "--dataset cifar10 needs --data-root"),
    E("eval-missing-data-path", [*CKPT, "--dataset", "stl10", "--data-root", "{tmp}/nowhere"], "STL-10 path",
      "nowhere does not exist", "stl10_binary/"),
    E("eval-workers-negative", [*CKPT, "--workers", "-1"], "--workers must be 0", "got -1"),
    E("eval-unlabeled-image-folder", [*CKPT, "--dataset", "folder", "--data-root", "{data}", "--workers", "0"],
      "evaluation needs labelled images", "no labelled training images", "/data/train/<class>/",
      setup=folder_without_train),
    E("eval-unwritable-out", [*CKPT, "--out", "/proc/version/eval.json", "--device", "cpu"],
      "cannot write the result to /proc/version/eval.json", "choose a writable --out"),
    # ------------------------------------------------------------------ analyze
    A("analyze-missing-checkpoint", ["--checkpoint", "{tmp}/missing.ckpt"], "missing.ckpt does not exist"),
    A("analyze-pairs-1", [*CKPT, "--pairs", "1"], "--pairs must be at least 2", "got 1"),
    A("analyze-bins-1", [*CKPT, "--bins", "1"], "--bins must be at least 2, got 1"),
    A("analyze-unknown-augmentation-code", [*CKPT, "--augs", "axz"], "--augs: unknown augmentation code(s) 'x', 'z'"),
    A("analyze-no-held-out-split", [*CKPT, "--dataset", "folder", "--data-root", "{data}", "--workers", "0"],
      "analyze needs held-out images", "no held-out (test/val) image", setup=folder_without_held_out),
    A("analyze-unwritable-out", [*CKPT, "--out", "/proc/version/analysis", "--device", "cpu"],
      "cannot create the output folder /proc/version/analysis", "choose a writable --out"),
    # ------------------------------------------------------------------ export
    X("export-missing-checkpoint", ["--checkpoint", "{tmp}/missing.ckpt"], "missing.ckpt does not exist"),
    X("export-unwritable-out", [*CKPT, "--out", "/proc/version/export"],
      "cannot create the output folder /proc/version/export", "choose a writable --out"),
    X("export-unknown-split", [*CKPT, "--features", "--splits", "val"], "argument --splits", "invalid choice: 'val'"),
    X("export-features-of-missing-data", [*CKPT, "--features", "--dataset", "cifar10", "--data-root",
                                          "{tmp}/nowhere"],
      "CIFAR-10 path", "nowhere does not exist"),
    # ------------------------------------------------------------------ preview
    V("preview-unknown-augmentation-code", ["--augs", "a,xz"], "argument --augs", "'x', 'z'"),
    V("preview-no-policy", ["--augs", " , "], "give at least one policy"),
    V("preview-num-images-0", ["--num-images", "0"], "--num-images must be at least 1, got 0"),
    V("preview-folder-without-data-root", ["--dataset", "folder"], "--dataset folder needs --data-root DIR"),
    V("preview-missing-data-path", ["--dataset", "stl10", "--data-root", "{tmp}/nowhere"], "STL-10 path",
      "nowhere does not exist", "stl10_binary/"),
    V("preview-seed-negative", ["--seed", "-1"], "--seed must be in 0..4294967295, got -1"),
    V("preview-image-size-0", ["--image-size", "0"], "--image-size must be at least 1, got 0"),
    V("preview-unwritable-out", ["--out", "/proc/version/p.png", "--num-images", "1", "--augs", "e"],
      "cannot write /proc/version/p.png", "choose a writable --out"),
    # ------------------------------------------------------------------ compare
    C("compare-eq24-form-with-simsiam",
      ["--methods", "simsiam", "--modes", "amcl", "--amcl-form", "hardest_with_positive"],
      "simsiam amcl:", "applies to simclr and moco"),
    C("compare-unknown-method", ["--methods", "byol"], "argument --methods", "invalid choice: 'byol'"),
    C("compare-unknown-augmentation-code", ["--augs", "a,xz"], "argument --augs", "'x', 'z'"),
    C("compare-no-policy", ["--augs", " , "], "give at least one policy"),
    C("compare-negative-seed", ["--seeds", "-1"], "--seeds: -1 is not a seed", "0 to 4294967295"),
    C("compare-seed-not-a-number", ["--seeds", "one"], "argument --seeds", "invalid int value: 'one'"),
    C("compare-topk-above-negatives", ["--modes", "amcl", "--amcl-form", "hardest", "--batch-size", "4", "--topk",
                                       "7"], "simclr amcl:",
      "--topk 7"),
    C("compare-unknown-metric", ["--metric", "top1"], "unknown metric 'top1'", "final_knn_acc",
      "linear_top1_10_per_class"),
    C("compare-val-metric-without-val-split", ["--metric", "final_val_knn_acc"], "reads the validation split",
      "give --val-fraction"),
    C("compare-few-label-metric-without-its-n", ["--metric", "linear_top1_10_per_class"],
      "needs --labels-per-class 10 with --label-protocol linear"),
    C("compare-equivalence-margin-0", ["--equivalence-margin", "0"], "--equivalence-margin must be a positive"),
    C("compare-labels-per-class-0", ["--labels-per-class", "0"], "--labels-per-class: 0 is not a number"),
    C("compare-unknown-mode", ["--modes", "baseline", "sm"], "unknown mode 'sm'", "choose baseline and/or amcl"),
    C("compare-variant-without-equals", ["--variant", "sm", "amcl-form"], "--variant sm", "'amcl-form' is not "
      "OPTION=VALUE"),
    C("compare-variant-unknown-option", ["--variant", "sm", "colour=1"], "variant 'sm'", "unknown option 'colour'"),
    C("compare-variant-sets-a-grid-option", ["--variant", "sm", "seed=3"], "variant 'sm'", "set by the grid"),
    C("compare-variant-bad-value", ["--variant", "sm", "amcl-form=max", "--modes", "baseline", "sm"], "simclr sm:",
      "unknown amcl_form 'max'"),
    C("compare-config-missing", ["--config", "{tmp}/none.yaml"], "config file", "none.yaml' does not exist"),
    C("compare-unwritable-out", ["--out", "/proc/version/grid"], "cannot write outputs to --out /proc/version/grid"),
    C("compare-into-another-tools-folder", ["--out", "{tmp}/thesis"], "is not an amcl compare grid",
      "config.yaml, src", "choose another --out", setup=another_tools_folder),
    C("compare-out-current-folder", ["--out", "."], "--out . is the current folder"),
    C("compare-cifar10-without-data-root", ["--dataset", "cifar10"], "--dataset cifar10 needs --data-root"),
    C("compare-cifar10-missing-data-path", ["--dataset", "cifar10", "--data-root", "{tmp}/nowhere"], "CIFAR-10 path",
      "nowhere does not exist"),
]

assert len({case.id for case in CASES}) == len(CASES), "duplicate row ids"
BY_ID = {case.id: case for case in CASES}


# --------------------------------------------------------------------------- running a row


@pytest.fixture(scope="module")
def pretrained_runs(tmp_path_factory) -> dict[str, Path]:
    """Two real one-step digits runs: SimCLR baseline and Barlow Twins AMCL (its batch size is part of its model)."""
    root = tmp_path_factory.mktemp("bad-input-runs")
    runs = {"simclr": root / "simclr", "barlow": root / "barlow"}
    pretrain(PretrainConfig(out=str(runs["simclr"]), **TINY))
    pretrain(PretrainConfig(out=str(runs["barlow"]), method="barlow_twins", amcl=True, **SMALL_HEADS, **TINY))
    return runs


class _Runs:
    """The shared runs, made on first use only (most rows fail before reading any checkpoint)."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request
        self.used = False

    def folder(self, name: str) -> Path:
        self.used = True
        return self._request.getfixturevalue("pretrained_runs")[name]

    def checkpoint(self, name: str) -> Path:
        return self.folder(name) / "last.ckpt"

    def folders(self) -> list[Path]:
        """The shared runs' folders if this row used them, else none."""
        return list(self._request.getfixturevalue("pretrained_runs").values()) if self.used else []


class _Placeholders(dict):
    def __init__(self, tmp: Path, runs: _Runs) -> None:
        super().__init__(tmp=tmp, data=tmp / "data", out=tmp / "out", run=tmp / "run")
        self.runs = runs

    def __missing__(self, key: str) -> Path:
        return self.runs.checkpoint(key)  # {simclr}, {barlow}


def prepare(case: Case, tmp: Path, request: pytest.FixtureRequest) -> tuple[list[str], _Runs]:
    runs = _Runs(request)
    if case.setup is not None:
        case.setup(tmp, runs)
    names = _Placeholders(tmp, runs)
    return [arg.format_map(names) for arg in case.argv], runs


def tree(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below ``roots``: path -> (size, mtime in ns)."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                stat = os.stat(path)
                out[path] = (stat.st_size if name in filenames else 0, stat.st_mtime_ns)
    return out


def written_roots(tmp: Path, runs: _Runs) -> list[Path]:
    return [tmp, *runs.folders()]


def assert_one_line_error(case: Case, code: object, err: str) -> None:
    assert "Traceback" not in err, err
    assert code == 2, f"exit status {code!r}, stderr:\n{err}"
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("amcl: warning: ")]
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith(f"amcl {case.command}: error: "), line
    missing = [fragment for fragment in case.fragments if fragment not in line]
    assert not missing, f"{missing} not in: {line}"


@pytest.mark.parametrize("case", [case.param() for case in CASES])
def test_user_mistake_exits_2_with_one_line_and_writes_nothing(case, tmp_path, monkeypatch, capsys, request):
    argv, runs = prepare(case, tmp_path, request)
    monkeypatch.chdir(tmp_path)  # default outputs (runs/pretrain, preview.png ...) would land here
    before = tree(*written_roots(tmp_path, runs))
    capsys.readouterr()  # set-up output (the shared runs' training) is not the row's
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's usage errors
        code = exit_info.code
    assert_one_line_error(case, code, capsys.readouterr().err)
    after = tree(*written_roots(tmp_path, runs))
    assert after == before, f"written or changed: {sorted(set(after.items()) ^ set(before.items()))}"
    assert runs.used == case.needs_runs, "the row's slow mark (Case.needs_runs) does not match its use of the runs"


SUBPROCESS_ROWS = ["pretrain-cifar10-corrupt-pickle", "eval-truncated-checkpoint", "compare-eq24-form-with-simsiam"]


@pytest.mark.parametrize("row", SUBPROCESS_ROWS)
@pytest.mark.slow
def test_the_real_command_prints_no_traceback(row, tmp_path, request):
    case = BY_ID[row]
    argv, runs = prepare(case, tmp_path, request)
    before = tree(*written_roots(tmp_path, runs))
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    done = subprocess.run([sys.executable, "-m", "amcl.cli", *argv], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)
    assert "Traceback" not in done.stderr and done.returncode == 2, done.stderr
    assert_one_line_error(case, done.returncode, done.stderr)
    assert tree(*written_roots(tmp_path, runs)) == before
