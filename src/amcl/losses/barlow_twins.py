"""Barlow Twins' loss: the cross-correlation of the two views' standardised projections driven to the identity
(Eq. 1.3), and its AMCL form with a temperature per channel pair (Eq. 2.3), fused over row blocks on the CPU.
Per-head inputs ``[C, B, d]`` (``[B, d]`` is one head); summed over heads; float32 even under autocast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from amcl.losses.checks import check_number, check_temperature_bounds, check_temperatures, checked_heads
from amcl.losses.kernels import at_least_float32, row_blocks
from amcl.losses.temperature import PairTemperatures, Temperatures, temperature_from_scores

__all__ = ["TemperatureScores", "amcl_barlow_twins_loss", "barlow_twins_loss", "batch_standardise",
           "cross_correlation"]


def batch_standardise(z: Tensor, eps: float = 1e-5, total: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Each channel of ``[C, B, d]`` standardised over the batch, as BatchNorm without affine
    (biased variance plus ``eps``). Its channel vectors ``z[c, :, l]`` are what Barlow Twins
    correlates, and what the AMCL temperature net reads (Eq. 2.3).

    With ``total`` (a differentiable sum over the processes that hold the batch's shards, e.g.
    :func:`amcl.distributed.sum_with_grad`) the mean and variance are those of the global batch."""
    if total is None:
        return (z - z.mean(-2, keepdim=True)) / torch.sqrt(z.var(-2, unbiased=False, keepdim=True) + eps)
    count = total(z.new_full((), float(z.shape[-2])))
    centred = z - total(z.sum(-2, keepdim=True)) / count
    return centred / torch.sqrt(total(centred.square().sum(-2, keepdim=True)) / count + eps)


def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5, total: Callable[[Tensor], Tensor] | None = None
                      ) -> Tensor:
    """Barlow Twins' cross-correlation ``[C, d, d]`` of the batch-standardised views
    (:func:`batch_standardise`).

    With ``total`` (see :func:`batch_standardise`) each process passes only its own rows: the statistics
    and the ``d x d`` sum of products are totalled over the processes, so every process gets the global
    batch's matrix from ``B d^2`` work of its own instead of ``BW d^2`` on gathered features."""
    z1, z2 = checked_heads("z1 z2", z1, z2)
    batch = z1.shape[1]
    if batch < 2 and total is None:
        raise ValueError("Barlow Twins needs at least 2 images per batch")
    if total is None:
        return batch_standardise(z1, eps).transpose(1, 2) @ batch_standardise(z2, eps) / batch
    products = batch_standardise(z1, eps, total).transpose(1, 2) @ batch_standardise(z2, eps, total)
    return total(products) / total(z1.new_full((), float(batch)))


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float = 5e-3, total: Callable[[Tensor], Tensor] | None = None
                      ) -> Tensor:
    """Barlow Twins (Eq. 1.3): ``sum_l (1 - C_ll)^2 + lambda * sum_{l != m} C_lm^2``, summed over heads.

    ``total``: each process's own rows, with the cross-correlation totalled over processes (see
    :func:`cross_correlation`); every process then computes the same loss."""
    check_number("lambd", lambd, positive=False)
    z1, z2 = checked_heads("z1 z2", z1, z2)
    with torch.autocast(z1.device.type, enabled=False):
        c = cross_correlation(z1, z2, total=total)
        diagonal = torch.diagonal(c, dim1=1, dim2=2)
        off_diagonal = c.pow(2).sum((1, 2)) - diagonal.pow(2).sum(-1)
        return ((1 - diagonal).pow(2).sum(-1) + lambd * off_diagonal).sum()


class TemperatureScores(NamedTuple):
    """A ``[C, d, d]`` temperature matrix kept as its scores: ``tau = tau_min + (tau_max - tau_min) *
    sigmoid(-scores)`` (:func:`amcl.losses.temperature_from_scores`). :func:`amcl_barlow_twins_loss` maps
    them inside its fused pass, so the temperature matrix is never stored; :meth:`matrix` materialises it.
    """

    scores: Tensor
    tau_min: float
    tau_max: float

    def matrix(self) -> Tensor:
        return temperature_from_scores(self.scores, self.tau_min, self.tau_max)


class _BarlowTerms(torch.autograd.Function):
    """The temperature terms of Eq. 2.3 summed over heads, from the cross-correlation ``c`` and ``x``,
    which is the temperature matrix (``bounds`` None) or its scores (``bounds = (tau_min, tau_max)``,
    tau = tau_min + (tau_max - tau_min) sigmoid(-x)), both ``[C, d, d]``:

        sum_l (1 - c_ll/tau_l)^2 + beta Omega(tau_l)  +  sum_{l != m} (lambda c_lm^2 - beta)/tau_lm - beta k log tau_lm

    (k = d'/2; the off-diagonal summand is lambda c^2/tau - beta Omega(tau)). Forward and backward run
    the off-diagonal formula over every entry in cache-sized row blocks (:func:`row_blocks`) and then
    swap the d diagonal entries per head for the diagonal formula; only the inputs are saved, so no
    ``[C, d, d]`` intermediate outlives the call. The gradients are analytic:

        d/dc   = 2 lambda c / tau                              (diagonal: -2 (1 - c/tau) / tau)
        d/dtau = -((lambda c^2 - beta)/tau + beta k) / tau
                                       (diagonal: 2 (1 - c/tau) c/tau^2 + beta (k/tau - 1/tau^2))
        d/ds   = d/dtau * dtau/ds,  dtau/ds = -(tau_max - tau_min) q (1 - q),  q = sigmoid(-s).
    """

    @staticmethod
    def forward(ctx: Any, c: Tensor, x: Tensor, lambd: float, beta: float, k: float,
                bounds: tuple[float, float] | None) -> Tensor:
        ctx.save_for_backward(c, x)
        ctx.constants = lambd, beta, k, bounds
        heads, rows, cols = c.shape
        step = next(iter(row_blocks(heads, rows, cols, c.device)))[1]
        work = [c.new_empty(step.stop - step.start, cols) for _ in range(2)]
        squares, inverses, logs = [], [], []
        for head, block in row_blocks(heads, rows, cols, c.device):
            cb, xb, inv, other = c[head, block], x[head, block], *(w[: block.stop - block.start] for w in work)
            tau = xb if bounds is None else _map(xb, bounds, out=inv)
            logs.append(torch.log(tau, out=other).sum())
            torch.reciprocal(tau, out=inv)
            inverses.append(inv.sum())
            squares.append(torch.vdot(torch.mul(cb, inv, out=other).flatten(), cb.flatten()))
        full = (lambd * torch.stack(squares).sum() - beta * torch.stack(inverses).sum()
                - beta * k * torch.stack(logs).sum())
        # the d diagonal entries per head: their off-diagonal summand out, the diagonal one in
        cd, taud = _diagonals(c, x, bounds)
        off = (lambd * cd.square() - beta) / taud - beta * k * torch.log(taud)
        on = (1 - cd / taud).square() + beta * (k * torch.log(taud) + taud.reciprocal())
        return full + (on - off).sum()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        c, x = ctx.saved_tensors
        lambd, beta, k, bounds = ctx.constants
        want_c, want_x = ctx.needs_input_grad[:2]
        heads, rows, cols = c.shape
        step = next(iter(row_blocks(heads, rows, cols, c.device)))[1]
        work = [c.new_empty(step.stop - step.start, cols) for _ in range(3)]
        grad_c = torch.empty_like(c, memory_format=torch.contiguous_format)
        grad_x = torch.empty_like(c, memory_format=torch.contiguous_format) if want_x else None
        width = 0.0 if bounds is None else bounds[1] - bounds[0]
        # dL/dx = grad * (-u / tau) * dtau/dx: scale by -grad for temperatures, by width * grad for scores
        scale_x = -grad if bounds is None else width * grad
        for head, block in row_blocks(heads, rows, cols, c.device):
            cb, xb = c[head, block], x[head, block]
            q, inv, u = (w[: block.stop - block.start] for w in work)
            if bounds is None:
                torch.reciprocal(xb, out=inv)
            else:
                torch.sigmoid(torch.neg(xb, out=q), out=q)  # q = sigmoid(-s), kept for dtau/ds
                torch.mul(q, width, out=inv).add_(bounds[0]).reciprocal_()
            gc = torch.mul(cb, inv, out=grad_c[head, block])  # c / tau
            if grad_x is not None:
                # u / tau with u = lambda c^2/tau - beta/tau + beta k
                torch.mul(inv, -beta, out=u).addcmul_(cb, gc, value=lambd).add_(beta * k).mul_(inv)
                gx = grad_x[head, block]
                if bounds is None:
                    torch.mul(u, scale_x, out=gx)
                else:
                    torch.mul(u, torch.addcmul(q, q, q, value=-1, out=inv), out=gx).mul_(scale_x)
            gc.mul_(2 * lambd * grad)
        cd, taud = _diagonals(c, x, bounds)
        error = 1 - cd / taud
        torch.diagonal(grad_c, dim1=1, dim2=2).copy_(-2 * error / taud * grad)
        if grad_x is not None:
            dtau = 2 * error * cd / taud.square() + beta * (k / taud - taud.square().reciprocal())
            if bounds is not None:
                qd = torch.sigmoid(-torch.diagonal(x, dim1=1, dim2=2))
                dtau = dtau * (-width * qd * (1 - qd))
            torch.diagonal(grad_x, dim1=1, dim2=2).copy_(dtau * grad)
        return (grad_c if want_c else None), grad_x, None, None, None, None


def _map(x: Tensor, bounds: tuple[float, float] | None, out: Tensor) -> Tensor:
    """Temperatures into ``out``: ``x`` itself, or tau_min + (tau_max - tau_min) sigmoid(-x) as
    :func:`temperature_from_scores` (sigmoid(-s), not 1 - sigmoid(s), keeps tau near tau_min exact)."""
    if bounds is None:
        return out.copy_(x)
    return torch.sigmoid(torch.neg(x, out=out), out=out).mul_(bounds[1] - bounds[0]).add_(bounds[0])


def _diagonals(c: Tensor, x: Tensor, bounds: tuple[float, float] | None) -> tuple[Tensor, Tensor]:
    """The ``[C, d]`` diagonals of ``c`` and of the temperatures."""
    xd = torch.diagonal(x, dim1=1, dim2=2)
    return torch.diagonal(c, dim1=1, dim2=2), (xd if bounds is None else _map(xd, bounds, torch.empty_like(xd)))


def amcl_barlow_twins_loss(
    z1: Tensor, z2: Tensor, temperatures: Temperatures | TemperatureScores,
    lambd: float = 5e-3, beta: float = 1e-6, omega_dim: int | None = None,
    total: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """AMCL Barlow Twins (Eq. 2.3), per head:

        sum_l (1 - C_ll/tau_l)^2 + lambda * sum_{l != m} C_lm^2/tau_lm
            + beta * sum_l Omega(tau_l) - beta * sum_{l != m} Omega(tau_lm),
        Omega(tau) = (d'/2) log tau + 1/tau,

    summed over heads. ``temperatures`` is a ``[C, d, d]`` tensor (tau_l on the diagonal; from a
    temperature net over the batch-wise channel vectors, so its input size is the batch size; smaller
    shapes broadcast), a constant, or the matrix as its scores (:class:`TemperatureScores`, or the net's
    :class:`~amcl.losses.PairTemperatures` factors): then the sigmoid mapping is fused into the loss and
    no temperature matrix is stored. One fused pass forward and one backward (:class:`_BarlowTerms`).

    ``total``: each process passes its own rows and the cross-correlation is totalled over the processes
    (see :func:`cross_correlation`); the temperatures are then the global batch's too (e.g. the net's factors
    of this process's shard of the channel vectors, :class:`amcl.nn.Shard`), and every process computes the
    same loss.
    """
    z1, z2 = checked_heads("z1 z2", z1, z2)
    with torch.autocast(z1.device.type, enabled=False):
        c = cross_correlation(z1, z2, total=total)
        check_number("lambd", lambd, positive=False)
        check_number("beta", beta, positive=False)
        omega_dim = c.shape[-1] if omega_dim is None else omega_dim
        bounds: tuple[float, float] | None = None
        if isinstance(temperatures, PairTemperatures):
            left, right = at_least_float32(temperatures.left), at_least_float32(temperatures.right)
            temperatures = TemperatureScores(left @ right.transpose(-1, -2), temperatures.tau_min,
                                             temperatures.tau_max)
        if isinstance(temperatures, TemperatureScores):
            check_temperature_bounds(temperatures.tau_min, temperatures.tau_max)
            scores = temperatures.scores
            if not torch.is_tensor(scores) or tuple(scores.shape) != tuple(c.shape):
                got = tuple(scores.shape) if torch.is_tensor(scores) else type(scores).__name__
                raise ValueError(f"temperature scores must be {tuple(c.shape)}, got {got}")
            x, bounds = at_least_float32(scores).to(c.dtype), (temperatures.tau_min, temperatures.tau_max)
        else:
            check_temperatures("temperatures", temperatures, tuple(c.shape))
            # a constant or a broadcast tensor as a stride-0 view: blocks read it without a copy
            x = (at_least_float32(temperatures) if torch.is_tensor(temperatures)
                 else c.new_tensor(float(temperatures))).to(c.dtype).expand_as(c)
        return _BarlowTerms.apply(c.contiguous(), x, float(lambd), float(beta), 0.5 * omega_dim, bounds)
