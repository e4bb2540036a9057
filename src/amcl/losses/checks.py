"""Argument checks at the public loss functions: types, shapes and Python-number arguments.

Tensor *values* are never read here (that would synchronise the device at every step), so a tensor of
temperatures is checked for its shape only. Each mistake is a ``TypeError`` (not a tensor, not
floating point) or a ``ValueError`` (a shape or a number out of range) naming the argument, what it got
and what it needs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from amcl.losses.kernels import at_least_float32

__all__ = ["check_count", "check_features", "check_number", "check_temperature_bounds", "check_temperatures",
           "checked_heads"]


def _got(value: Any) -> str:
    kind = type(value)
    if kind.__module__ == "numpy":
        return f"a numpy {kind.__name__} (convert it with torch.from_numpy)"
    return f"{kind.__name__} {value!r}" if isinstance(value, (int, float, str)) else kind.__name__


def check_features(name: str, value: Any, shapes: str = "[B, d] or [C, B, d]") -> None:
    """``value`` is a non-empty floating-point tensor with 2 or 3 dimensions."""
    if not torch.is_tensor(value):
        raise TypeError(f"{name} must be a torch.Tensor {shapes}, got {_got(value)}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must hold floating-point features, got dtype {value.dtype}")
    if value.dim() not in (2, 3):
        raise ValueError(f"{name} must be {shapes}, got shape {tuple(value.shape)}")
    if value.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(value.shape)}): it needs at least one head, one image "
                         "and one feature")


def check_number(name: str, value: Any, positive: bool = True) -> None:
    """A Python number (not a tensor) that is finite and positive (or, with ``positive=False``, >= 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {_got(value)}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'a positive' if positive else 'a non-negative'} number, got {value}")


def check_count(name: str, value: Any, low: int = 1) -> None:
    """An ``int`` of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {_got(value)}")
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")


def check_temperature_bounds(tau_min: Any, tau_max: Any) -> None:
    """Python-number bounds with ``0 <= tau_min < tau_max`` (reversed bounds would invert every temperature)."""
    check_number("tau_min", tau_min, positive=False)
    check_number("tau_max", tau_max)
    if not tau_min < tau_max:
        raise ValueError(f"need tau_min < tau_max, got tau_min={tau_min}, tau_max={tau_max}")


def check_temperatures(name: str, value: Any, shape: tuple[int, ...]) -> None:
    """A temperature source for pairs laid out as ``shape`` (``[C, ...]``): a positive number, a 0-d tensor,
    or a tensor (or :class:`amcl.losses.PairTemperatures`, by its matrix's shape) whose shape is ``shape`` with
    C (or C and more) left out, or C = 1. A tensor of another shape would broadcast silently onto the wrong
    pairs, so it is refused."""
    factored = hasattr(value, "pair_shape")  # a PairTemperatures: its matrix's shape, nothing computed
    if not torch.is_tensor(value) and not factored:
        check_number(name, value)
        return
    got = tuple(value.pair_shape if factored else value.shape)
    if len(got) == 0:
        return
    heads, pairs = shape[0], tuple(shape[1:])
    fits = got == pairs or (len(got) == len(shape) and got[1:] == pairs and got[0] in (1, heads))
    if not fits:
        layout = ", ".join(map(str, shape))
        raise ValueError(f"{name} must be [{layout}] (one temperature per pair; C = {heads} may be left out or 1) "
                         f"or a number, got shape {got}")


def checked_heads(names: str, *tensors: Tensor) -> list[Tensor]:
    """Features named by ``names`` (space-separated) checked to be of one shape, each as ``[C, B, d]`` (a
    ``[B, d]`` is one head) in at least float32."""
    for name, tensor in zip(names.split(), tensors):
        check_features(name, tensor)
    shape = tensors[0].shape
    if any(t.shape != shape for t in tensors):
        raise ValueError(f"all inputs must have one shape, got {[tuple(t.shape) for t in tensors]}")
    if len(shape) not in (2, 3):
        raise ValueError(f"features must be [B, d] or [C, B, d], got {tuple(shape)}")
    return [at_least_float32(t if t.dim() == 3 else t.unsqueeze(0)) for t in tensors]
