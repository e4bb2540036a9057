import pytest


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    """Keep tests deterministic and light on the 2-core CI machine."""
    import torch

    torch.set_num_threads(2)
