"""Optimisers and learning-rate schedules of pre-training: SGD, LARS and AdamW, linear lr scaling, and
a linear warm-up followed by a cosine decay.

Chosen in the config (``--optimizer``, ``--lr-scaling``, ``--warmup-epochs``); the defaults (SGD, no
scaling, no warm-up) are the authors' CIFAR recipe: SGD with momentum and weight decay on every
parameter, and a per-step cosine decay from ``--lr`` to 0.

* **SGD** decays every parameter (``torch.optim.SGD``), as the authors' code does.
* **LARS** (You et al. 2017, as used by SimCLR and BYOL) scales each tensor's update by a trust
  ratio; biases, normalisation parameters, position embeddings and class tokens (see
  :func:`split_decay_groups`) get neither the trust ratio nor weight decay.
* **AdamW** (betas 0.9, 0.999), the ViT recipe; the same parameters as for LARS are not decayed.
  ``--momentum`` is not used.

With ``--lr-scaling linear`` the learning rate is ``--lr x global batch / 256`` (Goyal et al. 2017),
the global batch being ``--batch-size x`` the number of processes.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["LARS", "NO_DECAY_NAMES", "OPTIMIZERS", "LR_SCALINGS", "build_optimizer", "scaled_lr",
           "split_decay_groups", "warmup_cosine", "warmup_steps"]

OPTIMIZERS = ("sgd", "lars", "adamw")
LR_SCALINGS = ("none", "linear")
#: Parameters excluded from weight decay (and LARS' trust ratio) by name, besides biases and every
#: tensor with at most one dimension: a ViT's position embeddings and class token (as DeiT and MAE).
NO_DECAY_NAMES = ("bias", "pos_embed", "cls_token")
#: Batch size at which ``--lr`` is the learning rate under ``--lr-scaling linear``.
REFERENCE_BATCH = 256


class LARS(Optimizer):
    """Layer-wise Adaptive Rate Scaling: SGD with momentum whose step for each tensor is scaled by a
    trust ratio.

    For a tensor ``w`` of a group without ``lars_exclude``::

        g = grad + weight_decay * w
        trust = trust_coefficient * ||w|| / (||g|| + eps)     if ||w|| > 0 and ||g|| > 0, else 1
        v = momentum * v + lr * trust * g                      (v starts at 0)
        w = w - v

    The learning rate sits inside the momentum buffer (the convention of SimCLR's and BYOL's LARS):
    a schedule changes the size of new steps only, not of the momentum already gathered.

    A param group with ``lars_exclude=True`` (biases and normalisation parameters, see
    :func:`split_decay_groups`) gets neither weight decay nor the trust ratio, whatever its
    ``weight_decay``: ``v = momentum * v + lr * grad; w = w - v`` (plain SGD with momentum).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ) -> None:
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay),
                            ("trust_coefficient", trust_coefficient), ("eps", eps)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"LARS: {name} must be a finite number >= 0, got {value}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        eps=eps, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            lr, momentum = group["lr"], group["momentum"]
            if group["lars_exclude"]:
                updates = torch._foreach_mul(grads, lr)
            else:
                if group["weight_decay"] != 0:
                    grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                w_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                ratio = group["trust_coefficient"] * w_norm / (g_norm + group["eps"])
                trust = torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
                # one scale per tensor, kept on the device (no host synchronisation)
                updates = torch._foreach_mul(grads, list((trust * lr).to(grads[0].dtype).unbind()))
            if momentum != 0:
                buffers = []
                for p in params:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    buffers.append(state["momentum_buffer"])
                torch._foreach_mul_(buffers, momentum)
                torch._foreach_add_(buffers, updates)
                updates = buffers
            torch._foreach_sub_(params, updates)
        return loss


def split_decay_groups(
    named_parameters: Iterable[tuple[str, Tensor]],
) -> tuple[list[tuple[str, Tensor]], list[tuple[str, Tensor]]]:
    """Split ``(name, parameter)`` pairs into (decayed, excluded), keeping their order.

    Excluded: every tensor with at most one dimension (biases, BatchNorm and LayerNorm weights and
    biases, the heads' BatchNorm), every parameter whose last name part is in
    :data:`NO_DECAY_NAMES` (biases of any shape, such as the batched heads' ``[C, 1, out]`` biases, a
    ViT's ``pos_embed`` and ``cls_token``). Everything else (convolution and linear weights, the patch
    embedding) is decayed. Parameters with ``requires_grad=False`` are left out of both.
    """
    decayed, excluded = [], []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES:
            excluded.append((name, param))
        else:
            decayed.append((name, param))
    return decayed, excluded


def scaled_lr(lr: float, scaling: str, global_batch: int) -> float:
    """The learning rate used: ``lr`` (``none``) or ``lr * global_batch / 256`` (``linear``)."""
    if scaling == "none":
        return lr
    if scaling == "linear":
        return lr * global_batch / REFERENCE_BATCH
    raise ValueError(f"unknown lr scaling {scaling!r}; choose one of: {', '.join(LR_SCALINGS)}")


def build_optimizer(named_parameters: Iterable[tuple[str, Tensor]], config: Any,
                    world_size: int = 1) -> tuple[Optimizer, float]:
    """The optimiser of ``config`` (``optimizer``, ``lr``, ``lr_scaling``, ``momentum``,
    ``weight_decay``, ``batch_size``) over the parameters that require gradients, and the learning
    rate it starts from (after scaling, before the schedule).

    ``world_size``: processes taking part, so the global batch is ``batch_size * world_size``.
    """
    named = [(n, p) for n, p in named_parameters if p.requires_grad]
    lr = scaled_lr(config.lr, config.lr_scaling, config.batch_size * world_size)
    optimizer: Optimizer
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD([p for _, p in named], lr=lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
        return optimizer, lr
    decayed, excluded = split_decay_groups(named)
    groups = [{"params": [p for _, p in decayed], "weight_decay": config.weight_decay},
              {"params": [p for _, p in excluded], "weight_decay": 0.0, "lars_exclude": True}]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "lars":
        optimizer = LARS(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    elif config.optimizer == "adamw":
        for group in groups:
            group.pop("lars_exclude", None)
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), weight_decay=config.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    return optimizer, lr


def warmup_steps(warmup_epochs: float, epochs: int, total_steps: int) -> int:
    """Warm-up steps of a run of ``total_steps`` steps over ``epochs`` epochs:
    ``round(warmup_epochs * total_steps / epochs)``. With ``--max-steps`` the whole schedule, warm-up
    included, is compressed into those steps (as the cosine decay always was)."""
    if warmup_epochs <= 0:
        return 0
    return min(total_steps, round(warmup_epochs * total_steps / max(1, epochs)))


def warmup_cosine(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """The learning-rate multiplier of optimisation step ``step`` (0-based: step 0 is the first update).

    * warm-up, ``step < warmup_steps``: linear, ``(step + 1) / warmup_steps``, so the first step
      already moves and the last warm-up step uses the full rate;
    * then cosine: ``0.5 * (1 + cos(pi * (step - warmup_steps) / (total_steps - warmup_steps)))``,
      1 at the end of warm-up and 0 at ``total_steps`` (and after it). Never negative.

    Without warm-up this is ``0.5 * (1 + cos(pi * step / total_steps))``, the schedule of the
    authors' code, computed in the same order so the values are identical.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    return max(0.0, 0.5 * (1 + math.cos(math.pi * min(step - warmup_steps, span) / span)))
