"""The Python examples of README.md and docs/library.md run as written (each file's blocks in order, sharing
one namespace per file), and the README stays short enough to read in a few minutes."""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parent.parent
#: The README's size limit in bytes (12 KiB): the details live in docs/.
README_LIMIT = 12 * 1024


def _run_python_blocks(name: str) -> dict:
    text = (ROOT / name).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"{name} has no python blocks"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, name, "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name", ["README.md", "docs/library.md"])
def test_python_examples_run(name):
    namespace = _run_python_blocks(name)
    # both files end with an AMCL loss and a [C = 3, 128, 128] temperature matrix
    assert isinstance(namespace["loss"], torch.Tensor) and namespace["loss"].dim() == 0
    assert torch.isfinite(namespace["loss"])
    assert namespace["taus"].shape == (3, 128, 128)


def test_readme_is_short():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move details into docs/ (limit {README_LIMIT})"
