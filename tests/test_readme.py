"""The README's Python examples run as written (in order, sharing one namespace)."""

import re
from pathlib import Path

import torch


def test_readme_python_examples_run():
    text = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert torch.isfinite(namespace["loss"]) and namespace["taus"].shape == (3, 128, 128)
