"""SimSiam (Eq. 1.2 / 2.2) and Barlow Twins (Eq. 1.3 / 2.3) losses against written-out formulas."""

import math

import pytest
import torch

from amcl.losses import amcl_barlow_twins_loss, amcl_simsiam_loss, barlow_twins_loss, simsiam_loss
from builders import cos, reference_omega


def reference_amcl_simsiam(p1, p2, z1, z2, t1, t2, beta, dim):
    total = 0.0
    for c in range(p1.shape[0]):
        head = 0.0
        for i in range(p1.shape[1]):
            a, b = float(t1[c, i]), float(t2[c, i])
            head += (-cos(p1[c, i], z2[c, i]) / (2 * a) - cos(p2[c, i], z1[c, i]) / (2 * b)
                     + beta * (reference_omega(a, dim) + reference_omega(b, dim)))
        total += head / p1.shape[1]
    return total


def reference_correlation(x, y, eps=1e-5):
    """C_lm = (1/B) sum_b xn_bl yn_bm with per-channel standardisation, by explicit loops."""
    batch, d = x.shape
    def standardise(z):
        out = torch.empty_like(z)
        for l in range(d):
            col = z[:, l]
            mean = sum(col.tolist()) / batch
            var = sum((v - mean) ** 2 for v in col.tolist()) / batch
            out[:, l] = (col - mean) / math.sqrt(var + eps)
        return out
    xn, yn = standardise(x), standardise(y)
    return [[sum(float(xn[b, l] * yn[b, m]) for b in range(batch)) / batch for m in range(d)] for l in range(d)]


def reference_amcl_barlow(z1, z2, tau, lambd, beta, dim):
    total = 0.0
    for c in range(z1.shape[0]):
        corr = reference_correlation(z1[c], z2[c])
        d = len(corr)
        for l in range(d):
            t = float(tau[c, l, l])
            total += (1 - corr[l][l] / t) ** 2 + beta * reference_omega(t, dim)
            for m in range(d):
                if m != l:
                    t = float(tau[c, l, m])
                    total += lambd * corr[l][m] ** 2 / t - beta * reference_omega(t, dim)
    return total


@pytest.mark.parametrize("heads,batch,dim", [(1, 3, 4), (3, 5, 6)])
def test_amcl_simsiam_matches_formula(heads, batch, dim):
    torch.manual_seed(heads + batch)
    p1, p2, z1, z2 = (torch.randn(heads, batch, dim, dtype=torch.float64) for _ in range(4))
    t1, t2 = (torch.rand(heads, batch, dtype=torch.float64) + 0.1 for _ in range(2))
    got = amcl_simsiam_loss(p1, p2, z1, z2, t1, t2, beta=0.01)
    assert got.item() == pytest.approx(reference_amcl_simsiam(p1, p2, z1, z2, t1, t2, 0.01, dim), rel=1e-10)


def test_simsiam_identity_and_stop_gradient():
    torch.manual_seed(0)
    p1, p2 = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True)
    z1, z2 = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True)
    base = simsiam_loss(p1, p2, z1, z2)
    expected = sum(-0.5 * cos(p1[i], z2[i]) - 0.5 * cos(p2[i], z1[i]) for i in range(8)) / 8
    assert base.item() == pytest.approx(expected, rel=1e-5)
    # one head, constant tau = 1, beta = 0 is the baseline
    assert amcl_simsiam_loss(p1, p2, z1, z2, 1.0, 1.0, beta=0.0).item() == pytest.approx(base.item(), rel=1e-6)
    base.backward()
    assert z1.grad is None and z2.grad is None and p1.grad is not None


@pytest.mark.parametrize("heads,batch,dim", [(1, 4, 3), (2, 6, 5)])
def test_amcl_barlow_twins_matches_formula(heads, batch, dim):
    torch.manual_seed(heads * 7 + dim)
    z1, z2 = torch.randn(heads, batch, dim, dtype=torch.float64), torch.randn(heads, batch, dim, dtype=torch.float64)
    tau = torch.rand(heads, dim, dim, dtype=torch.float64) + 0.2
    got = amcl_barlow_twins_loss(z1, z2, tau, lambd=0.1, beta=1e-3)
    assert got.item() == pytest.approx(reference_amcl_barlow(z1, z2, tau, 0.1, 1e-3, dim), rel=1e-9)


def test_barlow_twins_baseline_and_identity():
    torch.manual_seed(1)
    z1, z2 = torch.randn(10, 4, dtype=torch.float64), torch.randn(10, 4, dtype=torch.float64)
    corr = reference_correlation(z1, z2)
    expected = sum((1 - corr[l][l]) ** 2 for l in range(4)) + 5e-3 * sum(
        corr[l][m] ** 2 for l in range(4) for m in range(4) if l != m)
    assert barlow_twins_loss(z1, z2).item() == pytest.approx(expected, rel=1e-10)
    # constant tau = 1 and beta = 0 is the baseline
    assert amcl_barlow_twins_loss(z1, z2, 1.0, beta=0.0).item() == pytest.approx(expected, rel=1e-10)
    # identical views are perfectly correlated on the diagonal
    assert barlow_twins_loss(z1, z1, lambd=0.0).item() == pytest.approx(0.0, abs=1e-8)


def test_gradcheck_siamese_losses():
    torch.manual_seed(2)
    p1, p2, z1, z2 = (torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(4))
    t1 = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, t: amcl_simsiam_loss(a, b, z1, z2, t + 0.2, 0.7, beta=0.1),
                                    (p1, p2, t1))
    tau = torch.rand(2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, t: amcl_barlow_twins_loss(a, b, t + 0.3, lambd=0.2, beta=0.01),
                                    (z1, z2, tau))
