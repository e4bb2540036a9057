"""The linear evaluation protocol: a linear classifier trained on a frozen encoder's features.

Both variants standardise the features with the mean and standard deviation of the plain training
features (what a non-affine BatchNorm in eval mode does), train one ``nn.Linear`` (zero-initialised)
with SGD (momentum 0.9) and a cosine learning-rate schedule over all steps on the cross-entropy, and
report top-1 and top-5 accuracy on the plain test features.

* :func:`linear_probe` trains on precomputed features (fast: the encoder runs once). All features
  live on ``device``; mini-batches are index batches drawn from a seeded generator.
* :func:`linear_probe_augmented` passes every training batch, each epoch, through a random
  crop + flip (policy ``"ae"``) and the frozen encoder first (slower, usually a little better).
"""

from __future__ import annotations

import math
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amcl.data.augment import ViewAugmentation
from amcl.eval.features import extract_features
from amcl.eval.knn import topk_accuracies

__all__ = ["linear_probe", "linear_probe_augmented", "standardization"]

#: Added to the variance of each feature, as BatchNorm's eps.
EPS = 1e-5
_EVAL_CHUNK = 8192


def standardization(features: Tensor) -> tuple[Tensor, Tensor]:
    """Per-feature ``(mean, 1 / sqrt(var + eps))`` of ``[N, D]`` features (biased variance, as BatchNorm)."""
    features = features.float()
    mean = features.mean(0)
    var = features.var(0, unbiased=False) if features.shape[0] > 1 else torch.zeros_like(mean)
    return mean, (var + EPS).rsqrt()


class _Probe:
    """The linear layer, its optimiser and cosine schedule, and the standardisation of its inputs."""

    def __init__(self, dim: int, num_classes: int, mean: Tensor, inv_std: Tensor, total_steps: int, lr: float,
                 weight_decay: float, device: torch.device) -> None:
        self.layer = nn.Linear(dim, num_classes).to(device)
        nn.init.zeros_(self.layer.weight)
        nn.init.zeros_(self.layer.bias)
        self.mean, self.inv_std = mean.to(device), inv_std.to(device)
        self.optimizer = torch.optim.SGD(self.layer.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
        self.lr, self.total, self.step_count = lr, max(1, total_steps), 0

    def logits(self, features: Tensor) -> Tensor:
        return self.layer((features.float() - self.mean) * self.inv_std)

    def step(self, features: Tensor, labels: Tensor) -> float:
        """One SGD step on a batch; returns its mean cross-entropy."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * min(self.step_count, self.total) / self.total))
        loss = F.cross_entropy(self.logits(features), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step_count += 1
        return loss.item()

    @torch.no_grad()
    def scores(self, features: Tensor) -> Tensor:
        device = self.mean.device
        return torch.cat([self.logits(chunk.to(device)) for chunk in features.split(_EVAL_CHUNK)]) if len(features) \
            else torch.zeros(0, self.layer.out_features, device=device)


def _check(features: Tensor, labels: Tensor, num_classes: int, what: str) -> None:
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"{what}: need features [N, D] and labels [N], got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}")
    if len(labels) == 0:
        raise ValueError(f"{what}: no labelled features")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"{what}: labels must lie in [0, {num_classes}), got {int(labels.min())}..{int(labels.max())}")


def _check_options(epochs: int, lr: float, batch_size: int, weight_decay: float) -> None:
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"need epochs >= 1 and batch_size >= 1, got {epochs} and {batch_size}")
    if not (math.isfinite(lr) and lr > 0) or not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"need lr > 0 and weight_decay >= 0, got {lr} and {weight_decay}")


def _result(probe: _Probe, train_loss: float, train_features: Tensor, train_labels: Tensor, test_features: Tensor,
            test_labels: Tensor, epochs: int, also: Mapping[str, tuple[Tensor, Tensor]] | None = None) -> dict:
    device = probe.mean.device
    test = topk_accuracies(probe.scores(test_features), test_labels.to(device))
    train_top1 = topk_accuracies(probe.scores(train_features), train_labels.to(device), (1,))[1]
    train_loss = train_loss if math.isfinite(train_loss) else None  # diverged (lr too high): JSON has no NaN
    result = {"top1": test[1], "top5": test[5], "train_loss": train_loss, "train_top1": train_top1, "epochs": epochs,
              "steps": probe.step_count}
    for name, (features, labels) in (also or {}).items():  # e.g. the validation split
        accuracy = topk_accuracies(probe.scores(features), labels.to(device))
        result.update({f"{name}_top1": accuracy[1], f"{name}_top5": accuracy[5]})
    return result


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    *,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    also: Mapping[str, tuple[Tensor, Tensor]] | None = None,
) -> dict:
    """Train a linear classifier on precomputed ``[N, D]`` features; evaluate it on the test features (and on
    each ``also`` set of features and labels, as ``<name>_top1`` and ``<name>_top5``).

    Returns ``{"top1", "top5"}`` (test accuracy, 0-1; top-5 is capped at the number of classes),
    ``"train_loss"`` (mean cross-entropy of the last epoch; None if it diverged), ``"train_top1"`` (accuracy on the
    training features after training), ``"epochs"`` and ``"steps"``. The same inputs and ``seed``
    give the same result on the CPU. Labels must lie in ``[0, num_classes)`` (drop unlabeled ones).
    """
    _check_options(epochs, lr, batch_size, weight_decay)
    _check(train_features, train_labels, num_classes, "training set")
    _check(test_features, test_labels, num_classes, "test set")
    device = torch.device(device)
    x = train_features.to(device, torch.float32)
    y = train_labels.to(device, torch.long)
    n = len(y)
    steps_per_epoch = math.ceil(n / batch_size)
    mean, inv_std = standardization(x)
    probe = _Probe(x.shape[1], num_classes, mean, inv_std, epochs * steps_per_epoch, lr, weight_decay, device)
    generator = torch.Generator().manual_seed(seed)
    train_loss = float("nan")
    for _ in range(epochs):
        total = 0.0
        for index in torch.randperm(n, generator=generator).split(batch_size):
            index = index.to(device)
            total += probe.step(x[index], y[index]) * len(index)
        train_loss = total / n
    return _result(probe, train_loss, x, y, test_features, test_labels, epochs, also)


def linear_probe_augmented(
    encoder: nn.Module,
    data_module,
    num_classes: int,
    *,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    policy: str = "ae",
    train_features: Tensor | None = None,
    train_labels: Tensor | None = None,
    test_features: Tensor | None = None,
    test_labels: Tensor | None = None,
) -> dict:
    """A linear probe trained on augmented views: each epoch, every batch of labelled training images
    goes through ``policy`` (default random resized crop + horizontal flip, normalised as the data
    module normalises) and the frozen ``encoder`` (eval mode, no gradients) before the linear step.

    ``data_module`` is a :class:`~amcl.data.module.ContrastiveDataModule`; both in-memory and streamed
    (image folder) splits work: streamed images are decoded by its DataLoader workers every epoch.
    The standardisation comes from the plain training features, and the evaluation uses the plain
    test features; pass them (``train_features``, ``train_labels``, ``test_features``, ``test_labels``, as
    :func:`~amcl.eval.features.extract_features` returns them) if already computed. Returns what
    :func:`linear_probe` returns, plus ``"policy"``. Seeded: augmentations and batch order follow
    ``seed`` (the global RNG state is restored afterwards).
    """
    _check_options(epochs, lr, batch_size, weight_decay)
    device = torch.device(device)
    was_training = encoder.training
    encoder.eval()
    if train_features is None or train_labels is None:
        train_features, train_labels = extract_features(encoder, data_module.plain_batches("train", device))
    if test_features is None or test_labels is None:
        test_features, test_labels = extract_features(encoder, data_module.plain_batches("test", device))
    _check(train_features, train_labels, num_classes, "training set")
    _check(test_features, test_labels, num_classes, "test set")
    augment = ViewAugmentation(policy, data_module.augment.image_size, data_module.augment.color_strength,
                               data_module.normalization["mean"], data_module.normalization["std"]).to(device)
    n = len(train_features)
    mean, inv_std = standardization(train_features)
    probe = _Probe(train_features.shape[1], num_classes, mean, inv_std, epochs * math.ceil(n / batch_size), lr,
                   weight_decay, device)
    generator = torch.Generator().manual_seed(seed)
    devices = [device.index or 0] if device.type == "cuda" else []
    train_loss = float("nan")
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for _ in range(epochs):
            total, seen = 0.0, 0
            for images, labels in _shuffled_batches(data_module, batch_size, generator, device):
                with torch.no_grad():
                    features = encoder(augment(images)).float()
                total += probe.step(features, labels) * len(labels)
                seen += len(labels)
            train_loss = total / max(seen, 1)
    encoder.train(was_training)
    result = _result(probe, train_loss, train_features, train_labels, test_features, test_labels, epochs)
    result["policy"] = augment.policy
    return result


def _shuffled_batches(data_module, batch_size: int, generator: torch.Generator,
                      device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled batches of the labelled uint8 training images on ``device``, in the order ``generator``
    draws. Streamed images are decoded by the data module's workers; an unreadable file is replaced
    by the next one, and reported, as in pre-training."""
    train = data_module.splits.train
    labelled = train.labelled()
    order = labelled[torch.randperm(len(labelled), generator=generator)]
    return train.batches(batch_size, device, order, workers=data_module.workers, replace_unreadable=True,
                         on_unreadable=data_module.note_unreadable)
