"""``make demo``: each method as its baseline, as the paper prints AMCL, and as we recommend it."""

import json

import pytest
import yaml

from amcl.demo import format_table, main, run_demo


@pytest.mark.slow
def test_demo_runs_baseline_paper_and_recommended_forms(tmp_path, capsys):
    config = tmp_path / "demo.yaml"
    config.write_text("dataset: digits\nimage-size: 16\nbackbone: small_cnn\nbatch-size: 128\nknn-k: 10\n"
                      "max-steps: 2\nprogress: false\n")
    rows = run_demo(str(config), str(tmp_path / "runs"), epochs=1)
    assert [r["run"] for r in rows] == ["simclr", "simclr-amcl-paper", "simclr-amcl"]
    forms = [yaml.safe_load((tmp_path / "runs" / r["run"] / "config.yaml").read_text()) for r in rows]
    assert not forms[0]["amcl"] and forms[0]["heads"] == 1
    assert forms[1]["amcl"] and forms[1]["amcl_form"] == "hardest" and forms[1]["beta"] == 1e-4
    assert forms[1]["head_reduction"] == "sum"
    assert forms[2]["amcl"] and forms[2]["amcl_form"] == "softmax" and forms[2]["beta"] == 0.01
    assert forms[2]["head_reduction"] == "mean" and forms[2]["heads"] == 3
    for row in rows:
        metrics = json.loads((tmp_path / "runs" / row["run"] / "metrics.json").read_text())
        assert row["knn"] == metrics["best_knn_acc"] and metrics["complete"]
    table = format_table(rows)
    assert "| simclr-amcl-paper | AMCL as printed | 3 |" in table and "AMCL (recommended)" in table
    printed = capsys.readouterr().out
    assert "== simclr-amcl-paper: AMCL as printed (hardest), 3 head(s)" in printed


def test_demo_reports_a_bad_config_in_one_line(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("demo: error:") and len(err.splitlines()) == 1


@pytest.mark.slow
def test_a_failed_run_is_a_row_of_the_table_and_the_demo_exits_non_zero(tmp_path, capsys, monkeypatch):
    """When one run goes non-finite (here: Eq. 2.1 as printed, by an injected fault), the runs that finished
    are still reported, the failed one is marked with its one-line reason, and the exit status says so."""
    from amcl.methods import METHOD_CLASSES

    class FaultyEq21(METHOD_CLASSES["simclr"]):
        def loss(self, view1, view2):
            loss, extras = super().loss(view1, view2)
            return (loss * float("nan") if self.config.amcl_form == "hardest" else loss), extras

    monkeypatch.setitem(METHOD_CLASSES, "simclr", FaultyEq21)
    config = tmp_path / "demo.yaml"
    config.write_text("dataset: digits\nimage-size: 16\nbackbone: small_cnn\nbatch-size: 128\nknn-k: 10\n"
                      "max-steps: 2\nprogress: false\n")
    assert main(["--config", str(config), "--out", str(tmp_path / "runs"), "--epochs", "1"]) == 1
    printed = capsys.readouterr()
    rows = {line.split(" | ")[0].strip("| "): line for line in printed.out.splitlines() if line.startswith("| simclr")}
    assert set(rows) == {"simclr", "simclr-amcl-paper", "simclr-amcl"}
    assert "| failed | failed |" in rows["simclr-amcl-paper"] and "%" in rows["simclr"] and "%" in rows["simclr-amcl"]
    assert "simclr-amcl-paper failed: the loss or its gradients became non-finite" in printed.out
