"""The study scripts of docs/results.md on tiny inputs: what they compute, not the studies themselves."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from amcl.losses import amcl_nt_xent_loss, nt_xent_loss
from amcl.train import pretrain
from builders import tiny_config

STUDIES = Path(__file__).resolve().parents[1] / "studies"
sys.path.insert(0, str(STUDIES))

import collapse  # noqa: E402
import temperatures  # noqa: E402
import tuning  # noqa: E402


def test_shrinking_towards_the_mean_takes_eq_2_1_to_zero_and_nt_xent_to_log_2b_minus_1():
    torch.manual_seed(0)
    batch, tau = 32, 0.5
    # 4 classes, the views of an image no closer to each other than to other images of its class: the
    # situation of a trained encoder, where the nearest view is usually another image of the same class
    centres = 3.0 * torch.randn(4, 16) + 2.0  # a mean away from the origin
    classes = torch.arange(batch) % 4
    z1, z2 = (centres[classes] + 0.3 * torch.randn(batch, 16) for _ in range(2))
    rows = collapse.shrinking(z1, z2, tau, lambdas=(1.0, 0.1, 1e-4))
    assert [r[0] for r in rows] == [1.0, 0.1, 1e-4]
    # lambda = 1 is the batch as it is
    assert rows[0][2] == pytest.approx(float(amcl_nt_xent_loss(z1, z2, tau, beta=0.0, topk=1)), rel=1e-6)
    assert rows[0][3] == pytest.approx(float(nt_xent_loss(z1, z2, tau)), rel=1e-6)
    collapsed = rows[-1]
    assert collapsed[1] > 0.999  # every view is (almost) the mean
    assert abs(collapsed[2]) < 1e-3 and collapsed[3] == pytest.approx(math.log(2 * batch - 1), abs=1e-3)
    assert rows[0][3] < collapsed[3] and rows[0][2] > collapsed[2]  # NT-Xent penalises the collapse, Eq. 2.1 rewards it


@pytest.mark.slow
def test_temperature_table_reads_the_last_epoch_of_each_run(tmp_path):
    grid = tmp_path / "grid"
    for mode, options in (("baseline", {}), ("softmax", {"amcl": True, "heads": 2})):
        pretrain(tiny_config(epochs=2, max_steps=4, knn_k=10, out=str(grid / f"simclr-{mode}-a" / "seed-0"), **options))
    last = json.loads((grid / "simclr-softmax-a" / "seed-0" / "metrics.json").read_text())["epochs"][-1]
    table = temperatures.table(temperatures.last_epochs(grid))
    rows = [line for line in table.splitlines() if line.startswith("| simclr-")]
    assert len(rows) == 1 and rows[0].startswith("| simclr-softmax-a | 1 |")  # the baseline has no temperatures
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert float(cells[2]) == pytest.approx(last["head1/tau_pos_mean"], abs=5e-4)
    assert float(cells[4]) == pytest.approx(last["head1/tau_spread"], abs=5e-4)
    printed = subprocess.run([sys.executable, str(STUDIES / "temperatures.py"), str(grid)], capture_output=True,
                             text=True, check=True).stdout
    assert printed.strip() == table
    empty = subprocess.run([sys.executable, str(STUDIES / "temperatures.py"), str(tmp_path / "none")],
                           capture_output=True, text=True)
    assert empty.returncode != 0 and "no finished runs" in empty.stderr


def test_tuning_ranks_each_side_on_the_seeds_every_setting_ran(capsys, tmp_path):
    def cell(mode, amcl, seeds, values):
        return {"mode": mode, "options": {"amcl": amcl}, "seeds": seeds, "values": values}

    results = {"metric": "final_val_knn_acc", "cells": [
        cell("baseline", False, [0, 1], [0.70, 0.72]), cell("base-t0.1", False, [0, 1], [0.74, 0.74]),
        cell("amcl-a", True, [0, 1], [0.73, 0.75]), cell("amcl-b", True, [0, 1], [0.76, None]),  # b: seed 1 unfinished
    ]}
    sides = tuning.ranking(results)
    assert [r["mode"] for r in sides["baseline"]] == ["base-t0.1", "baseline"]
    assert [r["mode"] for r in sides["amcl"]] == ["amcl-b", "amcl-a"]  # b on its one seed
    assert sides["baseline"][1]["mean"] == pytest.approx(71.0) and sides["baseline"][1]["std"] == pytest.approx(1.414,
                                                                                                              abs=1e-3)
    same = tuning.ranking(results, seeds=[0, 1])
    assert [r["mode"] for r in same["amcl"]] == ["amcl-a"]  # b has not run every seed of the round
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    tuning.main([str(path), "--top", "1", "--seeds", "0", "1"])
    assert capsys.readouterr().out.strip().endswith("carry on: base-t0.1 amcl-a")
