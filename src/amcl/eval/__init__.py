"""Evaluation of frozen encoders: weighted kNN, linear probes, checkpoint protocols, pair analysis.

The names below load on first use (PEP 562), so that ``amcl.eval.options`` (which the CLI reads to build
its parser) imports neither torch nor Lightning: ``amcl --help`` answers at once.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "evaluate_checkpoint": "amcl.eval.protocols",
    "knn_accuracy": "amcl.eval.knn",
    "knn_predict": "amcl.eval.knn",
    "linear_probe": "amcl.eval.linear",
    "linear_probe_augmented": "amcl.eval.linear",
    "topk_accuracies": "amcl.eval.knn",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'amcl.eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
