"""Shared test set-up. The shared builders (tiny digits configs and command lines, written-out formulas, data
sets in their real formats) are in builders.py: ``from builders import tiny_config`` works in every test module,
as pytest puts this folder on sys.path. Tests marked ``slow`` (pyproject.toml) run end to end."""

import pytest


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    """Keep tests deterministic and light on the 2-core CI machine."""
    import torch

    torch.set_num_threads(2)
