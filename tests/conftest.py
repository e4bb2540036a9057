"""Shared test set-up. The shared builders (tiny digits configs and command lines, written-out formulas, data
sets in their real formats) are in builders.py: ``from builders import tiny_config`` works in every test module,
as pytest puts this folder on sys.path. Tests marked ``slow`` (pyproject.toml) run end to end."""

import pytest


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    """Keep tests deterministic and light on the 2-core CI machine."""
    import torch

    torch.set_num_threads(2)


# Trained runs shared by the whole session (each trained once, on first use). Tests read them and may add
# evaluation files beside the checkpoint, but never change what training wrote.


@pytest.fixture(scope="session")
def digits_baseline_run(tmp_path_factory):
    """SimCLR's baseline, 5 epochs of the tiny digits setting: ``(folder, summary)``."""
    from amcl.train import pretrain
    from builders import tiny_config

    out = tmp_path_factory.mktemp("digits-baseline")
    return out, pretrain(tiny_config(epochs=5, out=str(out)))


@pytest.fixture(scope="session")
def digits_amcl_run(tmp_path_factory):
    """SimCLR with AMCL, 3 heads, tau in [1e-3, 1.5], 4 epochs of the tiny digits setting: ``(folder, summary)``."""
    from amcl.train import pretrain
    from builders import tiny_config

    out = tmp_path_factory.mktemp("digits-amcl")
    return out, pretrain(tiny_config(epochs=4, amcl=True, heads=3, tau_min=1e-3, tau_max=1.5, out=str(out)))
