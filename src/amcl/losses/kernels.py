"""The numerical kernels the losses share: a log-sum-exp that keeps one matrix for its backward, the k largest
entries of each row by integer order keys, the row blocks of the fused CPU passes, and float32 promotion.
Each is written once here and measured in ``benchmarks/``; the loss modules compose them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor


def at_least_float32(x: Tensor) -> Tensor:
    """Half and bfloat16 tensors as float32; float32 and float64 unchanged (gradcheck runs in float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class _MaskedLogSumExp(torch.autograd.Function):
    """Row-wise ``log sum_j exp(x_ij)`` over the entries ``mask`` leaves in (``None``: all), keeping one matrix.

    It saves ``exp(x - max)`` (which the forward computes anyway) instead of ``x``, and its backward is
    that matrix times ``grad / sum``: one new matrix, where autograd's logsumexp and masked_fill keep
    the masked copy and make three more (the shifted logits, their exp, the product) and one for the mask.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, mask: Tensor | None) -> Tensor:
        shifted = logits.clone() if mask is None else logits.masked_fill(mask, float("-inf"))
        peak = shifted.amax(-1, keepdim=True)
        exp = shifted.sub_(peak).exp_()  # in place: masked entries become exp(-inf) = 0
        total = exp.sum(-1, keepdim=True)
        ctx.save_for_backward(exp, total)
        return (peak + total.log()).squeeze(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        exp, total = ctx.saved_tensors
        return exp * (grad.unsqueeze(-1) / total), None  # the softmax times the incoming gradient


def log_sum_exp(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """:class:`_MaskedLogSumExp` where a gradient is wanted, else torch's logsumexp (no copy kept)."""
    if torch.is_grad_enabled() and logits.requires_grad:
        return _MaskedLogSumExp.apply(logits, mask)
    return torch.logsumexp(logits if mask is None else logits.masked_fill(mask, float("-inf")), dim=-1)


#: The signed integer type of each float type's size, for :func:`order_keys_`.
KEY_TYPES = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
              torch.bfloat16: torch.int16}


#: Elements of :func:`order_keys_`'s block: its temporary stays at 4 MiB whatever the matrix's size.
KEY_BLOCK = 1 << 20


def order_keys_(bits: Tensor) -> Tensor:
    """The bits of floats (a contiguous integer view) turned in place into integers of the same order as the
    floats (IEEE 754: flip all but the sign bit of the negative ones), block by block. It is its own inverse:
    applied to such keys it gives the floats' bits back. NaN keys land beyond +-inf, by their sign bit."""
    width, largest = bits.element_size() * 8, torch.iinfo(bits.dtype).max
    for block in bits.view(-1).split(KEY_BLOCK):
        sign = block.bitwise_right_shift(width - 1)  # -1 for the negative ones, else 0
        block.bitwise_xor_(sign.bitwise_and_(largest))
    return bits


def largest_entries(matrix: Tensor, k: int, excluded: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The k largest entries of each row outside ``excluded`` (a mask broadcast over ``matrix``), unsorted:
    ``(values, indices)``. ``matrix`` is used up: its storage holds their order keys afterwards.

    The selection runs on integer keys of the same order: the CPU's top-k compares floats with NaN checks
    and takes 1.6x as long (B = 256, k = 100; unsorted, since the order of the k plays no part)."""
    keys = order_keys_(matrix.detach().view(KEY_TYPES[matrix.dtype]))
    if excluded is not None:
        keys.masked_fill_(excluded, torch.iinfo(keys.dtype).min)
    values, index = keys.topk(k, dim=-1, sorted=False)
    return order_keys_(values).view(matrix.dtype), index


#: Entries per row block of the fused Barlow Twins pass on the CPU: its few block-sized temporaries
#: then stay in the L2/L3 caches, so each of the ~10 elementwise steps reads cache, not memory (measured
#: on a 2-core EPYC: 2^16 to 2^18 are alike, whole-matrix passes 2-3x slower). Other devices take the
#: whole matrix at once (one kernel per step, no launch per block).
BLOCK_ELEMENTS = 1 << 17


def row_blocks(heads: int, rows: int, cols: int, device: torch.device) -> Iterator[tuple[int, slice]]:
    """``(head, rows)`` of the row blocks of a ``[heads, rows, cols]`` matrix, about
    :data:`BLOCK_ELEMENTS` entries each on the CPU, one block per head elsewhere."""
    step = max(1, BLOCK_ELEMENTS // max(1, cols)) if device.type == "cpu" else rows
    for head in range(heads):
        for start in range(0, rows, step):
            yield head, slice(start, min(rows, start + step))
