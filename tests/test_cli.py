"""The `amcl` command: help, config files, and one-line errors (exit 2) for user mistakes."""

import re
import subprocess
import sys

import pytest
import yaml
from PIL import Image

from amcl.cli import main


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--method", "byol"], ["unknown method 'byol'", "simclr"]),
        (["--dataset", "imagenet"], ["unknown dataset 'imagenet'", "digits", "cifar10"]),
        (["--augs", "abx"], ["'x'", "valid codes", "a=random resized crop"]),
        (["--augs", "aa"], ["repeated", "'a'"]),
        (["--heads", "0"], ["--heads must be at least 1"]),
        (["--tau-min", "0.5", "--tau-max", "0.1"], ["0 < --tau-min < --tau-max"]),
        (["--tau-min", "0"], ["--tau-min must be a positive number, got 0.0"]),
        (["--amcl", "--amcl-form", "hardest", "--batch-size", "4", "--topk", "7"],
         ["--topk 7", "6 negatives", "--topk <= 6"]),
        (["--batch-size", "5000"], ["--batch-size 5000", "1438 training images", "--batch-size <= 1438"]),
        (["--dataset", "cifar10"], ["needs --data-root"]),
        (["--dataset", "stl10", "--data-root", "/no/such/dir"], ["does not exist", "stl10_binary"]),
        (["--backbone", "vgg11"], ["unknown backbone 'vgg11'", "resnet18"]),
        (["--heads", "three"], ["expected int", "'three'"]),
        (["--temperature", "-1"], ["--temperature must be a positive number"]),
        (["--no-such-option"], ["unrecognized arguments"]),
        (["--epoch", "3"], ["unrecognized arguments: --epoch 3", "did you mean --epochs?"]),  # no prefix matching
        (["--amc"], ["unrecognized arguments: --amc", "did you mean --amcl?"]),
        (["--accelerator", "gpu"], ["cannot set up training", "--accelerator gpu"]),
        (["--precision", "7"], ["cannot set up training", "Allowed precision values"]),
        (["--beta", "-1"], ["--beta must be a number >= 0"]),
        (["--out", "/proc/version/run", "--max-steps", "1"], ["cannot write outputs to --out"]),
        (["--method", "moco", "--amcl", "--amcl-form", "hardest", "--queue-size", "8", "--topk", "9"],
         ["--topk 9", "8 entries of the --queue-size 8 queue", "--topk <= 8"]),
        (["--method", "moco", "--amcl", "--amcl-form", "hardest_with_positive", "--queue-size", "8", "--topk", "10"],
         ["9 entries", "--topk <= 9"]),
        (["--method", "moco", "--queue-size", "0"], ["--queue-size must be at least 1"]),
        (["--method", "moco", "--ema-momentum", "1"], ["--ema-momentum must be in [0, 1)"]),
        (["--method", "simsiam", "--amcl", "--amcl-form", "hardest_with_positive"], ["applies to simclr and moco"]),
        (["--method", "barlow_twins", "--amcl", "--amcl-form", "hardest_with_positive"],
         ["applies to simclr and moco"]),
        (["--method", "simsiam", "--amcl", "--temperature-mode", "negative"], ["simsiam does not have"]),
        (["--method", "barlow_twins", "--barlow-lambda", "-0.1"], ["--barlow-lambda must be a number >= 0"]),
        (["--amcl-form", "max"], ["unknown amcl_form 'max'", "hardest_with_positive"]),
        (["--dataset", "cifar10", "--data-root", "x", "--unlabeled"], ["--unlabeled applies to stl10 and folder"]),
        (["--class-list", "classes.txt"], ["--class-list applies to --dataset folder, not digits"]),
        (["--dataset", "folder"], ["--dataset folder needs --data-root"]),
        (["--dataset", "folder", "--data-root", "/no/such/dir"],
         ["image folder /no/such/dir does not exist", "<root>/train/<class>/<images>"]),
        (["--workers", "-1"], ["--workers must be a number >= 0 (0: decode in the main process)"]),
        (["--seed", "-1"], ["--seed must be in 0..4294967295"]),
        (["--cache-images", "maybe"], ["unknown cache_images 'maybe'", "auto, always, never"]),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(args, fragments, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(main(["pretrain", "--out", str(tmp_path / "run"), "--epochs", "1", *args]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("amcl")
    for fragment in fragments:
        assert fragment in err
    assert not (tmp_path / "run").exists()  # nothing written for a run that cannot start


@pytest.mark.slow
def test_config_file_sets_options_and_command_line_wins(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("dataset: digits\nbackbone: small_cnn\nimage-size: 12\nbatch_size: 64\nepochs: 3\n"
                      "max-steps: 2\nknn-k: 10\nprogress: false\n")
    out = tmp_path / "run"
    assert main(["pretrain", "--config", str(config), "--epochs", "1", "--amcl", "--out", str(out)]) == 0
    saved = (out / "config.yaml").read_text()
    assert "epochs: 1\n" in saved and "batch_size: 64\n" in saved and "amcl: true\n" in saved
    assert "heads: 3\n" in saved and "image_size: 12\n" in saved
    assert "best kNN accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content,fragment",
    [("heads: [1, 2]\n", "expected int"), ("colour: red\n", "unknown option 'colour'"), ("a: [\n", "not valid YAML"),
     ("- 1\n", "mapping")],
)
def test_bad_config_files(tmp_path, capsys, content, fragment):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    assert main(["pretrain", "--config", str(config)]) == 2
    assert fragment in capsys.readouterr().err


def test_missing_config_file(tmp_path, capsys):
    assert main(["pretrain", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_several_config_files_merge_in_order_and_the_command_line_wins(tmp_path, capsys):
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("dataset: digits\nepochs: 3\nheads: 2\nbatch-size: 64\n")
    second.write_text("epochs: 5\nimage_size: 12\n")
    args = ["pretrain", "--config", str(first), "--config", str(second), "--heads", "4", "--print-config"]
    assert main(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["epochs"] == 5 and printed["image_size"] == 12  # the second file wins over the first
    assert printed["heads"] == 4 and printed["batch_size"] == 64  # the command line wins over both
    assert printed["temperature"] == 0.5 and printed["backbone"] == "resnet18"  # resolved: defaults filled in
    assert not (tmp_path / "runs").exists() and not list(tmp_path.glob("*/config.yaml"))  # nothing trained


def test_compare_merges_the_variants_of_several_files(tmp_path, capsys):
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("dataset: digits\nvariants:\n  low: {lr: 0.03}\n  high: {lr: 0.12}\n")
    second.write_text("epochs: 2\nvariants:\n  high: {lr: 0.24}\n")
    assert main(["compare", "--config", str(first), "--config", str(second), "--variant", "one", "heads=1",
                 "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["dataset"] == "digits" and printed["epochs"] == 2
    assert printed["variants"] == {"low": {"lr": 0.03}, "high": {"lr": 0.24}, "one": {"heads": "1"}}


def test_help_and_usage_errors_import_neither_torch_nor_lightning():
    script = ("import sys\nfrom amcl.cli import main\n"
              "for argv in (['--help'], ['pretrain', '--help'], ['compare', '--help'], ['eval', '--help'],"
              " ['pretrain', '--epoch', '3']):\n"
              "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
              "print(sorted(m for m in ('torch', 'lightning', 'kornia') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_console_script_help_and_error_without_traceback():
    out = subprocess.run([sys.executable, "-m", "amcl.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "pretrain" in out.stdout
    out = subprocess.run([sys.executable, "-m", "amcl.cli", "pretrain", "--help"], capture_output=True, text=True)
    for option in ("--amcl", "--heads", "--beta", "--tau-min", "--tau-max", "--topk", "--temperature", "--config",
                   "--dataset", "--data-root", "--augs", "--epochs", "--batch-size", "--backbone", "--runs",
                   "--seed", "--out", "--max-steps"):
        assert option in out.stdout
    out = subprocess.run([sys.executable, "-m", "amcl.cli", "pretrain", "--heads", "0"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "--heads must be at least 1" in out.stderr


def test_every_preset_loads_and_resolves():
    from pathlib import Path

    from amcl.config import PretrainConfig, load_yaml
    from amcl.specs import METHOD_SPECS

    presets = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert len(presets) >= 3
    for preset in presets:
        values = load_yaml(preset, extras=("variants",))  # the compare configs of studies name their variants
        variants = values.pop("variants", None) or {}
        from amcl.config import FILE_DATASETS

        root = {"data_root": "DIR"} if values.get("dataset", "digits") in FILE_DATASETS else {}
        config = PretrainConfig(**{**values, **root}).resolved()  # root given on the CLI
        assert config.heads >= 1 and config.lr > 0
        for options in variants.values():  # every variant resolves too (as amcl compare builds it)
            from amcl.compare import parse_variants

            for parsed in parse_variants({"v": options}).values():  # AMCL unless the variant says amcl: false
                assert PretrainConfig(**{**values, **parsed, **root}).resolved().amcl == options.get("amcl", True)
    for method in METHOD_SPECS:  # a baseline and an AMCL preset per built-in method
        name = method.replace("_", "-")
        base = PretrainConfig(**load_yaml(presets[0].parent / f"{name}-cifar10.yaml"), data_root="DIR").resolved()
        amcl = PretrainConfig(**load_yaml(presets[0].parent / f"{name}-amcl-cifar10.yaml"), data_root="DIR").resolved()
        assert base.method == amcl.method == method and not base.amcl and amcl.amcl
        assert (amcl.heads, amcl.tau_min, amcl.tau_max, base.heads) == (3, 1e-5, 2.0, 1)
        # the paper's presets: its equations
        assert amcl.amcl_form == METHOD_SPECS[method].paper_literal.get("amcl_form")
        if amcl.amcl_form:  # "--amcl-form softmax" on a paper preset gives the recommended form, not Eq. 2.1's floor
            preset = load_yaml(presets[0].parent / f"{name}-amcl-cifar10.yaml")
            softmax = PretrainConfig(**{**preset, "amcl_form": "softmax", "data_root": "DIR"}).resolved()
            assert (softmax.tau_min, softmax.beta, softmax.head_reduction) == (0.05, 0.01, "mean")
        assert amcl.beta == (1e-6 if method == "barlow_twins" else 1e-4)
        # every preset value is the method's default in the method's spec (amcl.specs): presets and code agree
        defaults = PretrainConfig(method=method, amcl=True, dataset="cifar10", data_root="DIR",
                                  **METHOD_SPECS[method].paper_literal).resolved()
        for key in ("lr", "beta", "temperature", "proj_hidden", "proj_dim", "proj_layers", "batch_size", "epochs"):
            assert getattr(amcl, key) == getattr(defaults, key), (method, key)


def _empty_class(root):
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "dog").mkdir()
    Image.new("RGB", (8, 8)).save(root / "train" / "cat" / "0.png")


def _flat_train(root):
    (root / "train").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "train" / "0.png")


def _truncated_stl(root):
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for name in ("train_X.bin", "test_X.bin"):
        (folder / name).write_bytes(bytes(3 * 96 * 96 - 5))
    for name in ("train_y.bin", "test_y.bin"):
        (folder / name).write_bytes(bytes([1]))
    (folder / "class_names.txt").write_text("a\n")


def _stl_as_cifar(root):
    _truncated_stl(root)


def _corrupt_and_good(root):
    _only_corrupt(root)
    Image.new("RGB", (8, 8)).save(root / "train" / "cat" / "1.png")


def _only_corrupt(root):
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "cat" / "0.png").write_bytes(b"\x89PNG but not really")


@pytest.mark.parametrize(
    "dataset,build,extra,fragments",
    [
        ("folder", _empty_class, [], ["class folder", "dog is empty", "add its images or remove the folder"]),
        ("folder", _flat_train, [], ["holds images outside class folders", "train/<class>/"]),
        ("folder", _only_corrupt, [], ["none of the 1 files", "is a readable image", "0.png"]),
        ("folder", _corrupt_and_good, ["--strict-data"], ["1 of 2 files", "not readable images", "0.png"]),
        ("stl10", _truncated_stl, [], ["train_X.bin has 27643 bytes", "truncated"]),
        ("cifar10", _stl_as_cifar, [], ["CIFAR-10 folder", "is missing data_batch_1", "cifar-10-batches-py"]),
    ],
)
def test_dataset_mistakes_give_one_line_and_exit_2(tmp_path, capsys, dataset, build, extra, fragments):
    build(tmp_path / "data")
    code = main(["pretrain", "--dataset", dataset, "--data-root", str(tmp_path / "data"), "--out",
                 str(tmp_path / "run"), "--image-size", "8", "--workers", "0", *extra])
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if not line.startswith("amcl: warning: ")]  # warnings may come first
    assert code == 2 and len(errors) == 1 and errors[0].startswith("amcl pretrain: error: "), lines
    for fragment in fragments:
        assert fragment in errors[0]
    assert not (tmp_path / "run").exists()


def test_every_warning_that_reaches_the_user_is_one_line(capsys):
    import warnings

    from amcl.errors import warn, warnings_on_one_line

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with warnings_on_one_line():
            warnings.warn("constrained_layout not applied because axes sizes collapsed\nmore detail", UserWarning,
                          stacklevel=1)
            warn("ours")
    assert capsys.readouterr().err.splitlines() == [
        "amcl: warning (UserWarning): constrained_layout not applied because axes sizes collapsed",
        "amcl: warning: ours"]


def test_the_command_line_reference_is_the_parsers_help(capsys, monkeypatch):
    from pathlib import Path

    from amcl.cli_reference import reference_markdown

    page = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert page == reference_markdown(), "docs/cli.md is stale: python -m amcl.cli_reference > docs/cli.md"
    sections = dict(re.findall(r"^## amcl (\w+)\n(.*?)(?=^## |\Z)", page, flags=re.S | re.M))
    assert set(sections) == {"pretrain", "preview", "eval", "analyze", "export", "compare"}
    monkeypatch.setenv("COLUMNS", "10000")  # --help unwrapped: no flag split at a hyphen
    for command, section in sections.items():
        with pytest.raises(SystemExit):
            main([command, "--help"])
        shown = capsys.readouterr().out
        flags = set(re.findall(r"^\s+(--[a-z][a-z0-9-]*)", shown, flags=re.M))  # the option lines' flags
        documented = set(re.findall(r"`(--[a-z][a-z0-9-]*)", section))
        assert flags <= documented | {f"--no-{f[2:]}" for f in documented}, (command, flags - documented)
        for flag in documented:
            assert flag in shown, (command, flag)
