"""`amcl compare` on the bundled digits: a tiny grid whose table matches its runs, resuming, bad grids."""

import json
import math
import re
import shutil
import statistics
import sys

import pytest

from amcl.cli import main
from amcl.compare import run_comparison
from amcl.config import PretrainConfig
from amcl.errors import AmclError
from builders import cli_args, tiny_options

TINY = tiny_options(epochs=1, max_steps=2, knn_k=10)
GRID = dict(methods=["simclr"], policies=["a", "ae"], seeds=[0, 1])
CELLS = [(mode, policy) for policy in ("a", "ae") for mode in ("baseline", "amcl")]
CLI_TINY = cli_args(TINY)


def metrics_files(out):
    return sorted(out.glob("*/seed-*/metrics.json"))


def mtimes(out):
    return {p: p.stat().st_mtime_ns for p in metrics_files(out)}


def table_rows(markdown):
    """{(method, policy): [cell texts]} of the results table."""
    rows = {}
    for line in markdown.splitlines():
        parts = [p.strip() for p in line.strip("|").split("|")]
        if line.startswith("| simclr"):
            rows[(parts[0], parts[1])] = parts[2:]
    return rows


def copy_grid(src, dst, checkpoints=False):
    """The finished grid, by default without its checkpoints (skipping finished runs needs only config.yaml
    and metrics.json)."""
    shutil.copytree(src, dst, ignore=None if checkpoints else shutil.ignore_patterns("*.ckpt"))
    return dst


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "grid"
    result = run_comparison(PretrainConfig(**TINY), out=str(out), **GRID)
    return out, result


@pytest.mark.slow
def test_table_cells_match_the_individual_runs(grid):
    out, result = grid
    assert result["trained"] == 8 and result["reused"] == 0
    markdown = (out / "results.md").read_text()
    data = json.loads((out / "results.json").read_text())
    assert result["markdown"] == str(out / "results.md") and result["json"] == str(out / "results.json")
    assert result["table"] in markdown and result["cells"] == data["cells"]
    assert data["metric"] == "final_knn_acc" and data["runs_finished"] == data["runs_total"] == 8
    assert data["config"]["epochs"] == 1 and data["config"]["lr"] is None  # shared; lr is per method
    rows = table_rows(markdown)
    assert set(rows) == {("simclr", "a"), ("simclr", "ae")}
    cells = {(c["mode"], c["policy"]): c for c in data["cells"]}
    assert set(cells) == set(CELLS)
    means = {}
    for mode, policy in CELLS:
        runs = [json.loads((out / f"simclr-{mode}-{policy}" / f"seed-{s}" / "metrics.json").read_text())
                for s in (0, 1)]
        assert all(r["complete"] for r in runs)
        values = [r["final_knn_acc"] for r in runs]
        mean, std = statistics.fmean(values), statistics.stdev(values)
        means[(mode, policy)] = mean
        cell = cells[(mode, policy)]
        assert cell["values"] == values and cell["seeds"] == cell["finished_seeds"] == [0, 1]
        assert cell["mean"] == mean and cell["std"] == std and cell["n"] == 2 and cell["status"] == "complete"
        assert cell["summary"]["final_knn_acc"]["values"] == values
        assert cell["summary"]["best_knn_acc"]["values"] == [r["best_knn_acc"] for r in runs]
        assert [s["final_loss"] for s in cell["per_seed"]] == [r["final_loss"] for r in runs]
        assert cell["config"]["heads"] == (3 if mode == "amcl" else 1) and cell["config"]["lr"] == 0.06
        # every option a method, form or bound resolves is recorded per cell (the AMCL form's floor and reduction)
        assert (cell["config"]["tau_min"], cell["config"]["tau_max"], cell["config"]["head_reduction"]) == \
            ((0.05, 2.0, "mean") if mode == "amcl" else (1e-5, 2.0, "sum"))
        assert cell["config"]["amcl_form"] == ("softmax" if mode == "amcl" else None)
        shown = rows[("simclr", policy)][0 if mode == "baseline" else 1]
        assert shown.strip("*") == f"{100 * mean:.2f} ± {100 * std:.2f}"
    for policy in ("a", "ae"):
        baseline, amcl, delta = rows[("simclr", policy)]
        b, a = (round(100 * means[(m, policy)], 2) for m in ("baseline", "amcl"))
        assert baseline.startswith("**") == (b > a) and amcl.startswith("**") == (a > b)  # a tie: neither
        # the paired difference: seed by seed, then its mean, sample std and wins/ties/losses
        differences = [100 * (v - w) for v, w in zip(cells[("amcl", policy)]["values"],
                                                     cells[("baseline", policy)]["values"])]
        mean = f"{statistics.fmean(differences):+.2f}"
        mean = mean.lstrip("+-") if float(mean) == 0 else mean
        record = (sum(d > 0 for d in differences), sum(d == 0 for d in differences), sum(d < 0 for d in differences))
        # two seeds: Student's t with one degree of freedom is the Cauchy distribution, written out here
        std = statistics.stdev(differences)
        half = math.tan(math.pi * 0.475) * std / math.sqrt(2)  # t(0.975, 1) = 12.706
        centre = statistics.fmean(differences)
        p = 1.0 if std == 0 and centre == 0 else 2 * (0.5 - math.atan(abs(centre) / (std / math.sqrt(2))) / math.pi)
        verdict = "no difference detected" if p >= 0.05 else "better" if centre > 0 else "worse"
        assert delta == (f"{mean} ± {std:.2f} [{centre - half:+.2f}, {centre + half:+.2f}] p {p:.3f}, {verdict} "
                         f"({record[0]}/{record[1]}/{record[2]})")
        paired = cells[("amcl", policy)]["paired"]
        assert paired["reference"] == "baseline" and paired["seeds"] == [0, 1]
        assert paired["differences"] == pytest.approx([d / 100 for d in differences])
        assert (paired["wins"], paired["ties"], paired["losses"]) == record
        assert cells[("baseline", policy)]["paired"] is None
    assert "dataset digits" in markdown and "backbone small_cnn" in markdown and "batch size 128" in markdown
    assert "in %" in markdown and "2 seeds" in markdown and "8 of 8 runs finished" in markdown


@pytest.mark.slow
def test_running_again_trains_nothing_and_gives_the_same_results(grid, capsys):
    out, first = grid
    before, results = mtimes(out), json.loads((out / "results.json").read_text())
    again = run_comparison(PretrainConfig(**TINY), out=str(out), **GRID)
    lines = capsys.readouterr().out.splitlines()
    assert again["trained"] == 0 and again["reused"] == 8
    assert sum("skipped (finished earlier)" in line for line in lines) == 8
    assert "[8/8] simclr amcl ae seed 1: skipped" in "\n".join(lines)
    assert mtimes(out) == before and len(before) == 8
    assert json.loads((out / "results.json").read_text()) == results and again["table"] == first["table"]


@pytest.mark.slow
def test_cli_resumes_the_grid_and_prints_the_table(grid, capsys):
    out, first = grid
    before = mtimes(out)
    code = main(["compare", "--methods", "simclr", "--augs", "a,ae", "--seeds", "0", "1", "--out", str(out),
                 *CLI_TINY])
    printed = capsys.readouterr().out
    assert code == 0
    assert first["table"] in printed and f"wrote {out / 'results.md'} and {out / 'results.json'}" in printed
    assert printed.count("skipped (finished earlier)") == 8 and mtimes(out) == before


@pytest.mark.slow
def test_changed_shared_option_with_the_same_out_is_an_error(grid, capsys):
    out, _ = grid
    before = mtimes(out)
    with pytest.raises(AmclError, match=r"other settings \(--epochs 1 in the run, 2 now\).*another --out.*delete"):
        run_comparison(PretrainConfig(**{**TINY, "epochs": 2}), out=str(out), **GRID)
    code = main(["compare", "--methods", "simclr", "--augs", "a,ae", "--seeds", "0", "1", "--out", str(out),
                 *CLI_TINY, "--temperature", "0.2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--temperature 0.5 in the run, 0.2 now" in err
    assert mtimes(out) == before


@pytest.mark.slow
def test_an_unfinished_run_resumes_from_its_checkpoint(grid, tmp_path, capsys):
    out = copy_grid(grid[0], tmp_path / "grid", checkpoints=True)
    cut = out / "simclr-amcl-ae" / "seed-1"
    metrics = json.loads((cut / "metrics.json").read_text())
    (cut / "metrics.json").write_text(json.dumps({**metrics, "complete": False}))
    before = mtimes(out)
    result = run_comparison(PretrainConfig(**TINY), out=str(out), **GRID)
    printed = capsys.readouterr().out
    assert result["trained"] == 1 and printed.count("skipped (finished earlier)") == 7
    assert "[8/8] simclr amcl ae seed 1: resuming from its last checkpoint" in printed
    after = mtimes(out)
    assert {p.parent for p in before if after.get(p) != before[p]} == {cut}  # only that run was touched
    assert json.loads((cut / "metrics.json").read_text()) == metrics  # its checkpoint held the whole run
    assert not list(cut.glob("last-v*.ckpt"))
    cell = next(c for c in result["cells"] if (c["mode"], c["policy"]) == ("amcl", "ae"))
    assert cell["values"][1] == metrics["final_knn_acc"]


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_a_clear_error(grid, tmp_path):
    out = copy_grid(grid[0], tmp_path / "grid")
    cut = out / "simclr-amcl-ae" / "seed-1"
    (cut / "metrics.json").unlink()
    (cut / "last.ckpt").write_text("not a checkpoint")
    with pytest.raises(AmclError, match="cannot read checkpoint .*last.ckpt"):
        run_comparison(PretrainConfig(**TINY), out=str(out), **GRID)


@pytest.mark.slow
def test_killed_grid_leaves_a_partial_table(grid, tmp_path, monkeypatch):
    import amcl.compare

    out = copy_grid(grid[0], tmp_path / "grid")
    for seed in (0, 1):
        (out / "simclr-amcl-ae" / f"seed-{seed}" / "metrics.json").unlink()

    def killed(config, resume=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(amcl.compare, "pretrain_once", killed)  # the run the grid trains next is killed
    with pytest.raises(KeyboardInterrupt):
        run_comparison(PretrainConfig(**TINY), out=str(out), **GRID)
    markdown = (out / "results.md").read_text()
    rows = table_rows(markdown)
    assert rows[("simclr", "ae")][1:] == ["pending", "–"] and "**" not in rows[("simclr", "ae")][0]
    assert rows[("simclr", "a")][2] != "–"
    assert "6 of 8 runs finished" in markdown and "resumes" in markdown
    data = json.loads((out / "results.json").read_text())
    assert data["runs_finished"] == 6 and not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_missing_metric_shows_n_a(grid, tmp_path):
    out = copy_grid(grid[0], tmp_path / "grid")
    for folder, seeds in (("simclr-baseline-a", (0, 1)), ("simclr-amcl-ae", (1,))):
        for seed in seeds:
            path = out / folder / f"seed-{seed}" / "metrics.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "final_knn_acc": None}))
    result = run_comparison(PretrainConfig(**TINY), out=str(out), **GRID)
    assert result["trained"] == 0
    rows = table_rows(result["table"])
    assert rows[("simclr", "a")][0] == "n/a" and rows[("simclr", "a")][2] == "–"
    assert "**" not in "".join(rows[("simclr", "a")])  # no comparison against a missing value
    assert rows[("simclr", "ae")][1].endswith("(1/2 seeds)") and rows[("simclr", "ae")][2] == "–"
    cell = next(c for c in result["cells"] if (c["mode"], c["policy"]) == ("baseline", "a"))
    assert cell["mean"] is None and cell["std"] is None and cell["values"] == [None, None]


@pytest.mark.slow
def test_one_mode_grid_has_no_bold_or_delta(grid, tmp_path):
    out = copy_grid(grid[0], tmp_path / "grid")
    result = run_comparison(PretrainConfig(**TINY), out=str(out), modes=["amcl"], **GRID)
    assert result["trained"] == 0 and len(result["cells"]) == 2
    header = result["table"].splitlines()[0]
    assert "AMCL" in header and "baseline" not in header and "Δ" not in result["table"]
    assert "**" not in (out / "results.md").read_text()
    assert all(len(row) == 1 for row in table_rows(result["table"]).values())


@pytest.mark.slow
def test_duplicates_are_run_once(grid, tmp_path):
    out = copy_grid(grid[0], tmp_path / "grid")
    with pytest.warns(UserWarning, match="'ea' is the same as 'ae'"):
        result = run_comparison(PretrainConfig(**TINY), ["simclr", "simclr"], ["a", "ae", "a", "ea"], [0, 1, 0],
                                modes=["baseline", "amcl", "amcl"], out=str(out))
    assert result["trained"] == 0 and result["reused"] == 8 and len(result["cells"]) == 4


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--methods", "simsiam", "--amcl-form", "hardest_with_positive"], "applies to simclr and moco"),
        (["--methods", "simclr", "barlow_twins", "--amcl-form", "hardest_with_positive"], "barlow_twins amcl"),
        (["--batch-size", "4", "--amcl-form", "hardest", "--topk", "7"], "--topk 7"),
        (["--seeds", "-1"], "--seeds: -1"),
    ],
)
def test_bad_grid_fails_at_once_and_trains_nothing(args, fragment, tmp_path, capsys):
    out = tmp_path / "grid"
    code = main(["compare", "--augs", "a,ae", "--out", str(out), *CLI_TINY, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and fragment in err, err
    assert err.startswith("amcl compare: error:")
    assert not out.exists()


def test_bad_policy_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(main(["compare", "--augs", "a,xz", "--out", str(tmp_path / "grid"), *CLI_TINY]))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "'x'" in err and "'z'" in err
    assert not (tmp_path / "grid").exists()


@pytest.mark.parametrize(
    "changes,fragment",
    [
        ({"methods": []}, "--methods: give at least one"),
        ({"policies": []}, "--augs: give at least one"),
        ({"seeds": []}, "--seeds: give at least one"),
        ({"modes": []}, "--modes: give at least one"),
        ({"methods": ["byol"]}, "unknown method 'byol'"),
        ({"modes": ["both"]}, "unknown mode 'both'"),
        ({"policies": ["a", "xz"]}, "--augs: unknown augmentation code(s) 'x', 'z'"),
        ({"seeds": [0, 2**32]}, "--seeds: 4294967296 is not a seed"),
        ({"metric": "top1"}, "unknown metric 'top1'"),
    ],
)
def test_bad_inputs_raise_before_anything_is_written(changes, fragment, tmp_path):
    out = tmp_path / "grid"
    options = {**GRID, "modes": ["baseline", "amcl"], "metric": "final_knn_acc", **changes}
    with pytest.raises(AmclError, match=re.escape(fragment)):
        run_comparison(PretrainConfig(**TINY), out=str(out), **options)
    assert not out.exists()


@pytest.mark.slow
def test_named_variants_and_the_linear_probe_are_compared_pair_by_pair(tmp_path, capsys):
    """Variants are modes with their own options; every mode is paired with the baseline seed by seed."""
    out = tmp_path / "grid"
    config = tmp_path / "study.yaml"
    config.write_text("epochs: 1\nvariants:\n  softmax: {amcl-form: softmax, tau-min: 0.05}\n")
    code = main(["compare", "--config", str(config), "--augs", "a", "--seeds", "0", "1", "--out", str(out),
                 "--variant", "constant", "temperature-mode=constant", "heads=2", "--linear",
                 *cli_args(TINY, epochs=None)])
    printed = capsys.readouterr().out
    assert code == 0 and "Δ softmax (paired)" in printed and "Δ constant (paired)" in printed  # the table
    data = json.loads((out / "results.json").read_text())
    assert data["modes"] == ["baseline", "softmax", "constant"] and data["metrics"] == ["final_knn_acc", "linear_top1"]
    assert data["variants"]["softmax"] == {"amcl": True, "amcl_form": "softmax", "tau_min": 0.05}
    saved = {}
    for mode in data["modes"]:
        for seed in (0, 1):
            folder = out / f"simclr-{mode}-a" / f"seed-{seed}"
            saved[(mode, seed)] = (json.loads((folder / "metrics.json").read_text())["final_knn_acc"],
                                   json.loads((folder / "eval-linear.json").read_text())["top1"])
    import yaml

    softmax_config = yaml.safe_load((out / "simclr-softmax-a" / "seed-0" / "config.yaml").read_text())
    assert softmax_config["amcl"] and softmax_config["amcl_form"] == "softmax" and softmax_config["tau_min"] == 0.05
    constant_config = yaml.safe_load((out / "simclr-constant-a" / "seed-1" / "config.yaml").read_text())
    assert constant_config["temperature_mode"] == "constant" and constant_config["heads"] == 2
    cells = {c["mode"]: c for c in data["cells"]}
    for mode in ("softmax", "constant"):
        knn = [saved[(mode, s)][0] - saved[("baseline", s)][0] for s in (0, 1)]
        linear = [saved[(mode, s)][1] - saved[("baseline", s)][1] for s in (0, 1)]
        assert cells[mode]["paired"]["differences"] == pytest.approx(knn)
        assert cells[mode]["linear_top1"]["paired"]["differences"] == pytest.approx(linear)
        assert cells[mode]["linear_top1"]["values"] == [saved[(mode, s)][1] for s in (0, 1)]
    markdown = (out / "results.md").read_text()
    assert "Δ softmax (paired)" in markdown and "Δ constant (paired)" in markdown
    assert "## Linear-probe top-1 accuracy" in markdown and "Variants: softmax: --amcl True" in markdown
    # each AMCL mode's settings as resolved; options that differ between modes are not "set for every run"
    assert "softmax: form softmax, adaptive tau in [0.05, " in markdown
    assert "constant: form softmax, constant tau 0.5, beta " in markdown
    every_run = next(line for line in markdown.splitlines() if line.startswith("Shared settings"))
    assert "--tau-min" not in markdown.split("Per method")[0] and "--head-reduction" not in every_run
    # running again evaluates nothing more: the linear results are read back
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/seed-*/eval-linear.json")}
    again = run_comparison(PretrainConfig(**{**TINY, "epochs": 1}), ["simclr"], ["a"], [0, 1], out=str(out),
                           variants={"softmax": {"amcl-form": "softmax", "tau-min": 0.05},
                                     "constant": {"temperature-mode": "constant", "heads": 2}}, linear=True)
    assert again["trained"] == 0 and {p: p.stat().st_mtime_ns for p in before} == before
    assert again["cells"] == json.loads((out / "results.json").read_text())["cells"]


@pytest.mark.parametrize(
    "variants,fragment",
    [
        ({"amcl": {"heads": 2}}, "built-in mode"),
        ({"a b": {"heads": 2}}, "letters, digits"),
        ({"x": {"colour": 1}}, "unknown option 'colour'"),
        ({"x": {"seed": 3}}, "set by the grid"),
        ({"x": {"heads": "many"}}, "expected int"),
        ({"x": "softmax"}, "must map options"),
    ],
)
def test_bad_variants_raise_before_anything_is_written(variants, fragment, tmp_path):
    out = tmp_path / "grid"
    with pytest.raises(AmclError, match=re.escape(fragment)):
        run_comparison(PretrainConfig(**TINY), out=str(out), variants=variants, **GRID)
    assert not out.exists()


def test_unknown_mode_names_the_variants(tmp_path):
    with pytest.raises(AmclError, match=r"unknown mode 'sm'.*variant \(softmax\)"):
        run_comparison(PretrainConfig(**TINY), out=str(tmp_path / "g"), modes=["baseline", "sm"],
                       variants={"softmax": {"amcl-form": "softmax"}}, **GRID)


# --------------------------------------------------------------------------- intervals, validation, few labels


@pytest.mark.slow
def test_a_grid_with_a_validation_split_and_few_labels_reports_intervals_verdicts_and_a_figure(tmp_path, capsys):
    from amcl.stats import holm, paired_test

    out = tmp_path / "grid"
    args = ["compare", "--methods", "simclr", "--augs", "a", "--seeds", "0", "1", "2", "--out", str(out), *CLI_TINY,
            "--val-fraction", "0.2", "--metric", "final_val_knn_acc", "--labels-per-class", "5", "10",
            "--label-protocol", "knn", "--label-draws", "2", "--holm", "--equivalence-margin", "50"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'results.md'}, {out / 'results.json'} and {out / 'few-labels.png'}" in printed
    data = json.loads((out / "results.json").read_text())
    assert data["metrics"] == ["final_val_knn_acc", "knn_top1_5_per_class", "knn_val_top1_5_per_class",
                               "knn_top1_10_per_class", "knn_val_top1_10_per_class"]
    assert data["holm"] is True and data["equivalence_margin"] == 50 and data["labels_per_class"] == [5, 10]
    cells = {c["mode"]: c for c in data["cells"]}
    for metric in data["metrics"]:
        block = cells["amcl"] if metric == data["metric"] else cells["amcl"][metric]
        paired, test = block["paired"], paired_test(block["paired"]["differences"], margin=0.5)
        assert paired["ci95"] == pytest.approx([test.low, test.high]) and paired["p"] == pytest.approx(test.p)
        assert paired["p_holm"] == pytest.approx(holm([test.p])[0])  # one cell per table: Holm changes nothing
        assert paired["equivalence_p"] == pytest.approx(test.equivalence_p)
        expected = ("better" if test.mean > 0 else "worse") if test.p < 0.05 else \
            "equivalent within ±50 points" if test.equivalence_p < 0.05 else "no difference detected"
        assert paired["verdict"] == expected
    few = json.loads((out / "simclr-amcl-a" / "seed-1" / "eval-knn-5-per-class-draws2.json").read_text())
    assert few["label_draws"] == 2 and few["train_images"] == 50 and "val_top1" in few
    assert cells["amcl"]["knn_top1_5_per_class"]["values"][1] == pytest.approx(few["top1"])
    assert (out / "few-labels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "results.md").read_text()
    assert "kNN top-1 accuracy with 10 labelled images per class" in markdown and "Holm-adjusted" in markdown
    assert re.search(r"\| simclr \| a \| .* \| [+-]?\d+\.\d\d ± \d+\.\d\d \[[+-]?\d+\.\d\d, [+-]?\d+\.\d\d\] p "
                     r"(< 0\.001|\d\.\d{3}), (better|worse|no difference detected|equivalent within ±50 points) "
                     r"\(\d/\d/\d\) \|", markdown)
    assert main([*args[:-8], "--labels-per-class", "5", "--label-protocol", "knn", "--label-draws", "3"]) == 0
    assert json.loads((out / "simclr-amcl-a" / "seed-1" / "eval-knn-5-per-class-draws3.json").read_text())[
        "label_draws"] == 3  # another number of draws is evaluated again, not read back
    assert (out / "simclr-amcl-a" / "seed-1" / "eval-knn-5-per-class-draws2.json").is_file()  # and kept beside
