"""Exact pairing (common random numbers): with one --seed, every mode sees the same batches in the same order
with the same augmentations; the model's initial weights come from a generator of their own."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from amcl.train import build_model, model_seed, pretrain_once
from builders import SMALL_HEADS, tiny_config


class ViewRecorder(Callback):
    """Keeps the two augmented views of the first training batches (after the data module augmented them)."""

    def __init__(self) -> None:
        self.views: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.views.append((batch[0].detach().clone(), batch[1].detach().clone()))


def _views(tmp_path, name: str, **options) -> list[tuple[torch.Tensor, torch.Tensor]]:
    recorder = ViewRecorder()
    config = tiny_config(epochs=2, max_steps=13, knn_every=5, out=str(tmp_path / name), **options).resolved()
    pretrain_once(config, callbacks=[recorder])
    return recorder.views


@pytest.mark.slow
def test_baseline_and_amcl_with_one_seed_see_bit_identical_views(tmp_path):
    """13 steps: the whole first epoch (11 batches) and the first batches of the second, whose order is drawn
    after a whole epoch of augmentations: a mode that drew more or fewer random numbers would show there."""
    baseline = _views(tmp_path, "baseline")
    for name, options in {"amcl-softmax": dict(amcl=True), "amcl-hardest-1-head": dict(amcl=True, heads=1,
                                                                                      amcl_form="hardest"),
                          "moco-amcl": dict(method="moco", amcl=True, queue_size=256),
                          "barlow-amcl": dict(method="barlow_twins", amcl=True, **SMALL_HEADS)}.items():
        other = _views(tmp_path, name, **options)
        assert len(other) == len(baseline) == 13, name
        for step, ((a1, a2), (b1, b2)) in enumerate(zip(baseline, other)):
            assert torch.equal(a1, b1) and torch.equal(a2, b2), f"{name}: step {step} saw other views"
    another_seed = _views(tmp_path, "seed-1", seed=1)
    assert not torch.equal(another_seed[0][0], baseline[0][0])


def test_initial_weights_come_from_their_own_generator():
    config = tiny_config().resolved()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = build_model(config, 10, None)
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is untouched
    torch.manual_seed(999)
    second = build_model(config, 10, None)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    other = build_model(tiny_config(seed=1).resolved(), 10, None)
    assert not torch.equal(next(iter(other.backbone.parameters())), next(iter(first.backbone.parameters())))
    amcl = build_model(tiny_config(amcl=True).resolved(), 10, None)  # the backbone is built first: same weights
    assert all(torch.equal(a, b) for a, b in zip(amcl.backbone.state_dict().values(),
                                                 first.backbone.state_dict().values()))
    assert model_seed(0) != model_seed(1) and 0 <= model_seed(2**32 - 1) < 2**63
