"""The batched multi-head projector equals C separate MLPs built from the same weights."""

import pytest
import torch
import torch.nn.functional as F

from amcl.nn import MultiHeadProjector


def per_head_reference(proj, h, c, hidden_layers, batch_norm, last_batch_norm):
    """Head c computed alone with plain functional ops on that head's slice of the weights."""
    width = proj.first.out_features // proj.heads
    x = F.linear(h, proj.first.weight[c * width:(c + 1) * width], proj.first.bias[c * width:(c + 1) * width])
    modules = list(proj.rest)
    for m in modules:
        name = type(m).__name__
        if name == "_HeadwiseBatchNorm":
            d = m.num_features // proj.heads
            sl = slice(c * d, (c + 1) * d)
            weight = m.weight[sl] if m.affine else None
            bias = m.bias[sl] if m.affine else None
            x = F.batch_norm(x, None, None, weight, bias, training=True, eps=m.eps)
        elif name == "ReLU":
            x = torch.relu(x)
        else:
            x = x @ m.weight[c] + m.bias[c, 0]
    return x


@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("hidden,batch_norm,last_bn", [(16, False, False), ([16, 12], True, True), ([], False, False)])
def test_batched_heads_equal_separate_heads(heads, hidden, batch_norm, last_bn):
    torch.manual_seed(heads)
    proj = MultiHeadProjector(10, hidden, 6, heads=heads, batch_norm=batch_norm, last_batch_norm=last_bn)
    h = torch.randn(9, 10)
    out = proj(h)
    assert out.shape == (heads, 9, 6)
    for c in range(heads):
        ref = per_head_reference(proj, h, c, hidden, batch_norm, last_bn)
        torch.testing.assert_close(out[c], ref, rtol=1e-5, atol=1e-5)


def test_heads_are_independent():
    torch.manual_seed(0)
    proj = MultiHeadProjector(8, [16, 16], 4, heads=3, batch_norm=True)
    out = proj(torch.randn(5, 8))
    assert not torch.allclose(out[0], out[1])
    out[1].sum().backward()
    # only head 1's slice of each batched layer receives gradient
    grad = proj.rest[-1].weight.grad
    assert grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0
    first = proj.first.weight.grad.view(3, 16, 8)
    assert first[1].abs().sum() > 0 and first[0].abs().sum() == 0


def test_init_matches_nn_linear_scale():
    proj = MultiHeadProjector(400, 300, 100, heads=4)
    bound = 1 / 300 ** 0.5
    w = proj.rest[-1].weight
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound


def test_zero_heads_rejected():
    with pytest.raises(ValueError, match="at least one head"):
        MultiHeadProjector(8, 8, 4, heads=0)


def test_predictor_heads_equal_separate_predictors():
    """Each head's predictor reads only its own head's projection, through its own weights."""
    from amcl.nn import MultiHeadPredictor

    torch.manual_seed(0)
    pred = MultiHeadPredictor(6, 4, 6, heads=3)
    z = torch.randn(3, 5, 6)
    out = pred(z)
    bn = pred.rest[0]
    for c in range(3):
        x = z[c] @ pred.first.weight[c] + pred.first.bias[c, 0]
        x = F.batch_norm(x, None, None, bn.weight[c * 4:(c + 1) * 4], bn.bias[c * 4:(c + 1) * 4], training=True)
        x = torch.relu(x) @ pred.rest[2].weight[c] + pred.rest[2].bias[c, 0]
        assert torch.allclose(out[c], x, atol=1e-5)
    changed = z.clone()
    changed[1] += 1.0
    assert torch.equal(pred(changed)[0], out[0]) and torch.equal(pred(changed)[2], out[2])
    with pytest.raises(ValueError, match="per-head projections"):
        pred(torch.randn(2, 5, 6))
