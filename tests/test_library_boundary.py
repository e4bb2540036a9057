"""The public loss functions and modules refuse bad input with a TypeError or ValueError naming the argument,
what it got and what it needs, instead of returning a plausible number (checked from shapes and Python
numbers only: tensor values are never read)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amcl.losses import (
    amcl_barlow_twins_loss,
    amcl_moco_loss,
    amcl_nt_xent_loss,
    amcl_simsiam_loss,
    amcl_softmax_moco_loss,
    amcl_softmax_nt_xent_loss,
    barlow_twins_loss,
    hardest_negatives,
    moco_infonce_loss,
    negative_regularization,
    nt_xent_loss,
    omega,
    pair_temperatures,
    paired_temperatures,
    process_anchors,
    temperature_from_scores,
    view_similarities,
)
from amcl.nn import FeatureQueue, MultiHeadProjector, TemperatureNet

Z1, Z2 = torch.randn(3, 8, 16), torch.randn(3, 8, 16)  # C = 3 heads, B = 8, d = 16: 2B = 16 views
Q, K, QUEUE = torch.randn(3, 8, 16), torch.randn(3, 8, 16), torch.randn(3, 32, 16)
TAUS = torch.rand(3, 16, 16) + 0.1
PHI = torch.randn(4, 8)

CASES = [
    # (id, call, error type, fragments of the message)
    ("temperature 0", lambda: nt_xent_loss(Z1, Z2, 0.0), ValueError, "temperature must be a positive number, got 0.0"),
    ("temperature negative", lambda: nt_xent_loss(Z1, Z2, -0.5), ValueError, "temperature must be a positive number"),
    ("temperature inf", lambda: moco_infonce_loss(Q, K, QUEUE, float("inf")), ValueError, "got inf"),
    ("numpy features", lambda: nt_xent_loss(Z1.numpy(), Z2), TypeError,
     "z1 must be a torch.Tensor", "numpy ndarray (convert it with torch.from_numpy)"),
    ("integer features", lambda: view_similarities(Z1.long(), Z2.long()), TypeError,
     "z1 must hold floating-point features, got dtype torch.int64"),
    ("zero heads", lambda: nt_xent_loss(torch.randn(0, 8, 16), torch.randn(0, 8, 16)), ValueError,
     "z1 is empty (shape (0, 8, 16))"),
    ("one-dimensional features", lambda: nt_xent_loss(torch.randn(8), torch.randn(8)), ValueError,
     "z1 must be [B, d] or [C, B, d], got shape (8,)"),
    ("temperatures 1-D [2B]", lambda: amcl_nt_xent_loss(Z1, Z2, torch.rand(16)), ValueError,
     "temperatures must be [3, 16, 16]", "got shape (16,)"),
    ("temperatures wrong last dimension", lambda: amcl_nt_xent_loss(Z1, Z2, torch.rand(3, 16, 15)), ValueError,
     "got shape (3, 16, 15)"),
    ("temperatures of other heads", lambda: amcl_softmax_nt_xent_loss(Z1, Z2, torch.rand(2, 16, 16)), ValueError,
     "C = 3 may be left out or 1"),
    ("constant temperature 0", lambda: amcl_nt_xent_loss(Z1, Z2, 0.0), ValueError,
     "temperatures must be a positive number, got 0.0"),
    ("negative temperatures of another shape",
     lambda: amcl_nt_xent_loss(Z1, Z2, TAUS, negative_temperatures=TAUS[0, 0]), ValueError,
     "negative_temperatures must be [3, 16, 16]"),
    ("beta negative", lambda: amcl_nt_xent_loss(Z1, Z2, TAUS, beta=-1.0), ValueError,
     "beta must be a non-negative number, got -1.0"),
    ("topk not an int", lambda: amcl_nt_xent_loss(Z1, Z2, TAUS, topk=1.5), TypeError,
     "topk must be an int, got float 1.5"),
    ("unknown regulariser", lambda: amcl_nt_xent_loss(Z1, Z2, TAUS, negative_regularizer="l2"), ValueError,
     "negative_regularizer must be one of mean_omega, sum_log_inverse, got 'l2'"),
    ("hardest negatives k 0", lambda: hardest_negatives(TAUS, 0), ValueError, "k must be at least 1, got 0"),
    ("anchors as floats", lambda: nt_xent_loss(Z1, Z2, anchors=torch.tensor([0.0, 1.0])), ValueError,
     "anchors must be a non-empty 1-D int64 tensor of view indices", "got torch.float32 of shape (2,)"),
    ("anchors as a list", lambda: amcl_nt_xent_loss(Z1, Z2, TAUS, anchors=[0, 1]), TypeError,
     "anchors must be a non-empty 1-D int64 tensor", "got list"),
    ("temperatures of all rows with anchors", lambda: amcl_nt_xent_loss(Z1, Z2, TAUS, anchors=process_anchors(4, 0, 2)),
     ValueError, "temperatures must be [3, 8, 16]", "got shape (3, 16, 16)"),
    ("rank beyond the world", lambda: process_anchors(4, 2, 2), ValueError, "rank must be below world_size (2), got 2"),
    ("empty MoCo queue", lambda: moco_infonce_loss(Q, K, torch.randn(3, 0, 16)), ValueError,
     "queue is empty (shape (3, 0, 16))"),
    ("MoCo queue temperatures [C, N]", lambda: amcl_moco_loss(Q, K, QUEUE, torch.rand(3, 8), torch.rand(3, 8)),
     ValueError, "queue_temperatures must be [3, 8, 32]", "got shape (3, 8)"),
    ("MoCo positive temperatures transposed",
     lambda: amcl_softmax_moco_loss(Q, K, QUEUE, torch.rand(8, 3), torch.rand(3, 8, 32)), ValueError,
     "positive_temperatures must be [3, 8]"),
    ("SimSiam temperatures of another batch", lambda: amcl_simsiam_loss(Z1, Z2, Z1, Z2, torch.rand(3, 7), 1.0),
     ValueError, "tau1 must be [3, 8]"),
    ("Barlow Twins temperatures [C, d]", lambda: amcl_barlow_twins_loss(Z1, Z2, torch.rand(3, 16)), ValueError,
     "temperatures must be [3, 16, 16]"),
    ("Barlow Twins lambda negative", lambda: barlow_twins_loss(Z1, Z2, lambd=-1.0), ValueError,
     "lambd must be a non-negative number"),
    ("tau_min above tau_max", lambda: pair_temperatures(PHI, PHI, 2.0, 1.0), ValueError,
     "need tau_min < tau_max, got tau_min=2.0, tau_max=1.0"),
    ("tau_min negative", lambda: temperature_from_scores(torch.zeros(2), -0.1, 1.0), ValueError,
     "tau_min must be a non-negative number, got -0.1"),
    ("tau bounds not numbers", lambda: temperature_from_scores(torch.zeros(2), "0", 1.0), TypeError,
     "tau_min must be a number, got str '0'"),
    ("embeddings of other sizes", lambda: pair_temperatures(PHI, torch.randn(4, 7), 0.1, 1.0), ValueError,
     "phi_a and phi_b need the same embedding size h"),
    ("paired embeddings of other shapes", lambda: paired_temperatures(PHI, torch.randn(5, 8), 0.1, 1.0), ValueError,
     "phi_a and phi_b need the same shape"),
    ("numpy embeddings", lambda: pair_temperatures(PHI.numpy(), PHI, 0.1, 1.0), TypeError, "phi_a must be a"),
    ("omega dim 0", lambda: omega(torch.ones(2), 0), ValueError, "dim must be at least 1, got 0"),
    ("regulariser dim not an int", lambda: negative_regularization(torch.ones(1, 2), 2.5), TypeError,
     "dim must be an int, got float 2.5"),
    ("projector with no heads", lambda: MultiHeadProjector(8, 8, 4, heads=0), ValueError, "need at least one head"),
    ("temperature net bounds reversed", lambda: TemperatureNet(8, tau_min=1.0, tau_max=0.5), ValueError,
     "tau_min < tau_max"),
    ("queue of size 0", lambda: FeatureQueue(3, 0, 8), ValueError, "must be positive"),
]


@pytest.mark.parametrize("call,error,fragments", [pytest.param(c[1], c[2], c[3:], id=c[0]) for c in CASES])
def test_bad_input_is_refused_with_the_argument_named(call, error, fragments):
    with pytest.raises(error) as raised:
        call()
    for fragment in fragments:
        assert fragment in str(raised.value), (fragment, str(raised.value))


def test_valid_temperature_layouts_are_accepted():
    """Left-out or single heads, 0-d tensors and numbers: the layouts the docstrings allow."""
    for taus in (TAUS, TAUS[:1], TAUS[0], torch.tensor(0.5), 0.5):
        assert torch.isfinite(amcl_nt_xent_loss(Z1, Z2, taus))
    assert torch.isfinite(amcl_moco_loss(Q, K, QUEUE, torch.rand(8) + 0.1, torch.rand(8, 32) + 0.1))
    assert np.isfinite(float(nt_xent_loss(Z1[0], Z2[0], 1)))  # an int temperature is a number too
