"""What SimCLR's and MoCo's AMCL losses share (:mod:`amcl.losses.simclr`, :mod:`amcl.losses.moco`): the terms
of a contrastive loss (:class:`ContrastiveTerms`), their assembly for the hardest-negative forms (Eq. 2.1 /
2.4) and the softmax form, the temperatures of selected pairs, and the argument checks.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from amcl.losses.checks import check_count, check_number
from amcl.losses.kernels import at_least_float32
from amcl.losses.temperature import (
    NEGATIVE_REGULARIZERS,
    PairTemperatures,
    Temperatures,
    negative_regularization,
    omega,
)

__all__ = ["ContrastiveTerms", "scalar_loss"]


def scalar_loss(terms: Callable[..., ContrastiveTerms], name: str, doc: str) -> Callable[..., Tensor]:
    """The loss of a ``*_terms`` function as one number: a function named ``name`` that takes the same
    arguments (its signature, for ``help()`` and editors) and returns ``terms(...).loss()``."""

    @functools.wraps(terms)
    def loss(*args: Any, **kwargs: Any) -> Tensor:
        return terms(*args, **kwargs).loss()

    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = doc
    loss.__annotations__ = {**terms.__annotations__, "return": "Tensor"}
    loss.__signature__ = inspect.signature(terms).replace(return_annotation="Tensor")  # type: ignore[attr-defined]
    return loss


def check_constant(name: str, value: Any) -> None:
    """A constant temperature given as a Python number must be positive (a tensor is not read)."""
    if not torch.is_tensor(value):
        check_number(name, value)


def check_amcl_arguments(beta: Any, omega_dim: Any, negative_regularizer: Any) -> None:
    check_number("beta", beta, positive=False)
    if omega_dim is not None:
        check_count("omega_dim", omega_dim)
    if negative_regularizer not in NEGATIVE_REGULARIZERS:
        raise ValueError(f"negative_regularizer must be one of {', '.join(NEGATIVE_REGULARIZERS)}, got "
                         f"{negative_regularizer!r}")


def check_topk(k: int, candidates: int) -> None:
    """k hardest of ``candidates``: SimCLR's 2B - 2 other views (2B - 1 with the positive), MoCo's K (+ 1)."""
    if not 1 <= k <= candidates:
        raise ValueError(f"top-k must be between 1 and the number of negatives ({candidates}), got {k}")


class ContrastiveTerms(NamedTuple):
    """The parts of an AMCL contrastive loss, per head (each ``[C]``), and the temperatures used.

    ``loss()`` is their sum over parts and heads. For the hardest-negative forms (Eq. 2.1 / 2.4) the
    negative tensors hold the k selected negatives of each anchor, ``[C, N, k]``. For the softmax
    form they hold every candidate, ``[C, N, M]``, and ``negative_mask`` (``[N, M]``, broadcast over
    heads) marks which entries are negatives (SimCLR's matrix also holds each view itself and its
    positive); ``None`` means every entry is one.
    """

    positive: Tensor  # mean over anchors of -sim(i, i+)/tau(i, i+)
    negative: Tensor  # hardest forms: mean over anchors and the top-k of sim(i, n)/tau(i, n);
    #                   softmax form: mean over anchors of log(exp(s+/tau+) + sum_n exp(s_n/tau_n))
    regularizer: Tensor  # beta * (Omega(tau+) - the negative side), averaged over anchors
    positive_temperatures: Tensor  # [C, N]
    negative_temperatures: Tensor  # [C, N, k] or [C, N, M]
    positive_similarities: Tensor  # [C, N]
    negative_similarities: Tensor  # [C, N, k] or [C, N, M]
    negative_mask: Tensor | None = None  # [N, M] bool: which entries of the negative tensors are negatives

    def loss(self) -> Tensor:
        return (self.positive + self.negative + self.regularizer).sum()


def select_temperatures(temperatures: Temperatures, index: Tensor, like: Tensor) -> Tensor:
    """Entries of a pair-temperature matrix (or its factors, or a constant) at ``index`` along the last axis."""
    if isinstance(temperatures, PairTemperatures):
        return temperatures.at(index)
    if not torch.is_tensor(temperatures) or temperatures.dim() == 0:
        return torch.as_tensor(temperatures, dtype=like.dtype, device=like.device).expand_as(like)
    full = at_least_float32(temperatures).expand(*like.shape[:-1], temperatures.shape[-1])
    return full.gather(-1, index)


def hardest_terms(
    pos_sim: Tensor, pos_tau: Tensor, neg_sim: Tensor, neg_tau: Tensor, beta: float, omega_dim: int,
    negative_regularizer: str = "mean_omega",
) -> ContrastiveTerms:
    """Eq. 2.1 from the gathered positive ``[C, N]`` and hardest-negative ``[C, N, k]`` pairs."""
    negative_side = negative_regularization(neg_tau, omega_dim, negative_regularizer)
    regularizer = beta * (omega(pos_tau, omega_dim) - negative_side)
    return ContrastiveTerms(
        positive=(-pos_sim / pos_tau).mean(-1),
        negative=(neg_sim / neg_tau).mean(-1).mean(-1),
        regularizer=regularizer.mean(-1),
        positive_temperatures=pos_tau,
        negative_temperatures=neg_tau,
        positive_similarities=pos_sim,
        negative_similarities=neg_sim,
    )


def pair_matrix(temperatures: Temperatures, like: Tensor) -> Tensor:
    """A pair-temperature source (a tensor broadcastable to ``like``, its factors, or a constant) as a
    ``like``-shaped tensor; a constant is only expanded, never copied."""
    if isinstance(temperatures, PairTemperatures):
        return temperatures.matrix().expand_as(like)
    if torch.is_tensor(temperatures):
        return at_least_float32(temperatures).expand_as(like)
    return torch.as_tensor(temperatures, dtype=like.dtype, device=like.device).expand_as(like)


def softmax_terms(pos_sim: Tensor, pos_tau: Tensor, log_partition: Tensor, negative_side: Tensor, sim: Tensor,
                   tau: Tensor, beta: float, omega_dim: int, negative_mask: Tensor | None = None) -> ContrastiveTerms:
    """The softmax form's terms from the positives ``[C, N]``, each anchor's log-partition and negative side of
    the regulariser ``[C, N]``, and the candidates' similarity and temperature matrices."""
    return ContrastiveTerms(
        positive=(-pos_sim / pos_tau).mean(-1),
        negative=log_partition.mean(-1),
        regularizer=(beta * (omega(pos_tau, omega_dim) - negative_side)).mean(-1),
        positive_temperatures=pos_tau,
        negative_temperatures=tau,
        positive_similarities=pos_sim,
        negative_similarities=sim,
        negative_mask=negative_mask,
    )
