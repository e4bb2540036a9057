"""SimSiam (Eq. 1.2 / 2.2) and Barlow Twins (Eq. 1.3 / 2.3) losses against written-out formulas."""

import math

import pytest
import torch

from amcl.losses import (
    PairTemperatures,
    amcl_barlow_twins_loss,
    amcl_simsiam_loss,
    barlow_twins_loss,
    kernels,
    simsiam_loss,
    temperature_from_scores,
)
from amcl.losses.barlow_twins import TemperatureScores, _BarlowTerms
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


# --- the fused AMCL Barlow Twins pass (_BarlowTerms): scores or temperatures in, analytic gradients ---

def reference_barlow_terms(c, tau, lambd, beta, dim):
    """Eq. 2.3 from a given cross-correlation, entry by entry in float64."""
    total = 0.0
    for h in range(c.shape[0]):
        for l in range(c.shape[1]):
            for m in range(c.shape[2]):
                corr, t = float(c[h, l, m]), float(tau[h, l, m])
                if l == m:
                    total += (1 - corr / t) ** 2 + beta * reference_omega(t, dim)
                else:
                    total += lambd * corr ** 2 / t - beta * reference_omega(t, dim)
    return total


@pytest.fixture
def small_blocks(monkeypatch):
    """Row blocks of 2 rows of a 5-wide matrix: several blocks per head and a short last one."""
    monkeypatch.setattr(kernels, "BLOCK_ELEMENTS", 10)


def scores_to_tau(s, tau_min, tau_max):
    return torch.tensor([[[tau_min + (tau_max - tau_min) / (1 + math.exp(float(v))) for v in row] for row in head]
                         for head in s], dtype=torch.float64)


@pytest.mark.parametrize("blocked", [False, True])
def test_fused_barlow_terms_match_formula(blocked, request):
    if blocked:
        request.getfixturevalue("small_blocks")
    torch.manual_seed(3)
    c, s = torch.randn(2, 5, 5, dtype=torch.float64), 2 * torch.randn(2, 5, 5, dtype=torch.float64)
    tau = scores_to_tau(s, 0.05, 2.0)
    expected = reference_barlow_terms(c, tau, 0.1, 1e-2, 7)
    from_scores = _BarlowTerms.apply(c, s, 0.1, 1e-2, 3.5, (0.05, 2.0))
    from_tau = _BarlowTerms.apply(c, tau, 0.1, 1e-2, 3.5, None)
    assert from_scores.item() == pytest.approx(expected, rel=1e-12)
    assert from_tau.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("blocked", [False, True])
def test_fused_barlow_terms_gradcheck(blocked, request):
    """Analytic gradients against finite differences in float64, w.r.t. c and the scores or the temperatures,
    diagonal entries included (full [C, d, d] inputs)."""
    if blocked:
        request.getfixturevalue("small_blocks")
    torch.manual_seed(4)
    c = (0.5 * torch.randn(2, 5, 5, dtype=torch.float64)).requires_grad_()
    s = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True)
    tau = (torch.rand(2, 5, 5, dtype=torch.float64) + 0.3).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: _BarlowTerms.apply(a, b, 0.2, 0.05, 2.5, (0.1, 1.5)), (c, s))
    assert torch.autograd.gradcheck(lambda a, b: _BarlowTerms.apply(a, b, 0.2, 0.05, 2.5, None), (c, tau))
    # one gradient only: the other is not computed
    assert torch.autograd.gradcheck(lambda a: _BarlowTerms.apply(a, s.detach(), 0.2, 0.05, 2.5, (0.1, 1.5)),
                                    (c,))
    assert torch.autograd.gradcheck(lambda b: _BarlowTerms.apply(c.detach(), b, 0.2, 0.05, 2.5, None), (tau,))


def test_amcl_barlow_twins_scores_match_temperatures_and_formula(small_blocks):
    torch.manual_seed(5)
    z1, z2 = torch.randn(2, 6, 5, dtype=torch.float64), torch.randn(2, 6, 5, dtype=torch.float64)
    left, right = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64)
    s = left @ right.transpose(1, 2)
    tau = scores_to_tau(s, 1e-2, 2.0)
    expected = reference_amcl_barlow(z1, z2, tau, 0.1, 1e-3, 5)
    for temperatures in (TemperatureScores(s, 1e-2, 2.0), PairTemperatures(left, right, 1e-2, 2.0), tau):
        got = amcl_barlow_twins_loss(z1, z2, temperatures, lambd=0.1, beta=1e-3)
        assert got.item() == pytest.approx(expected, rel=1e-12)
    assert torch.allclose(TemperatureScores(s, 1e-2, 2.0).matrix(), tau, rtol=1e-12)
    # the loss's gradients through the scores match those through the materialised matrix
    z = z1.clone().requires_grad_()
    sl, st = s.clone().requires_grad_(), s.clone().requires_grad_()
    g_fused = torch.autograd.grad(amcl_barlow_twins_loss(z, z2, TemperatureScores(sl, 1e-2, 2.0), 0.1, 1e-3),
                                  (z, sl))
    g_plain = torch.autograd.grad(amcl_barlow_twins_loss(z, z2, temperature_from_scores(st, 1e-2, 2.0), 0.1, 1e-3),
                                  (z, st))
    for a, b in zip(g_fused, g_plain):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="temperature scores must be"):
        amcl_barlow_twins_loss(z1, z2, TemperatureScores(s[:, :4], 1e-2, 2.0))


def test_amcl_barlow_twins_constant_and_broadcast_temperatures(small_blocks):
    torch.manual_seed(6)
    z1 = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(2, 6, 5, dtype=torch.float64)
    full = torch.full((2, 5, 5), 0.7, dtype=torch.float64)
    expected = reference_amcl_barlow(z1.detach(), z2, full, 0.1, 1e-3, 5)
    assert amcl_barlow_twins_loss(z1, z2, 0.7, 0.1, 1e-3).item() == pytest.approx(expected, rel=1e-12)
    # a 0-d tensor and one [d, d] matrix for every head: broadcast views, gradients summed back
    for shared in (torch.tensor(0.7, dtype=torch.float64), torch.full((5, 5), 0.7, dtype=torch.float64)):
        shared.requires_grad_()
        assert amcl_barlow_twins_loss(z1, z2, shared, 0.1, 1e-3).item() == pytest.approx(expected, rel=1e-12)
        assert torch.autograd.gradcheck(lambda a, t: amcl_barlow_twins_loss(a, z2, t, 0.1, 1e-3), (z1, shared))
    assert torch.autograd.gradcheck(lambda a: amcl_barlow_twins_loss(a, z2, 0.7, 0.1, 1e-3), (z1,))


def test_amcl_barlow_twins_beta_zero_tau_one_is_the_baseline_with_its_gradients(small_blocks):
    torch.manual_seed(7)
    z1 = torch.randn(3, 8, 5, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(3, 8, 5, dtype=torch.float64, requires_grad=True)
    base = barlow_twins_loss(z1, z2, 0.02)
    for tau in (1.0, torch.ones(3, 5, 5, dtype=torch.float64)):
        amcl = amcl_barlow_twins_loss(z1, z2, tau, lambd=0.02, beta=0.0)
        assert amcl.item() == pytest.approx(base.item(), rel=1e-12)
        for a, b in zip(torch.autograd.grad(amcl, (z1, z2)), torch.autograd.grad(base, (z1, z2), retain_graph=True)):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_channel_summary_of_scores_matches_the_matrix(small_blocks):
    from amcl.methods.barlow_twins import channel_statistics, channel_summary

    torch.manual_seed(8)
    s = 3 * torch.randn(2, 5, 5)
    s[0, 1, 1], s[1, 2, 3] = 40.0, -40.0  # one entry at tau_min, one at tau_max
    taus = temperature_from_scores(s, 0.1, 2.0)
    from_scores = channel_summary(s, 0.1, 2.0, scores=True)
    eye = torch.eye(5, dtype=torch.bool)
    assert torch.equal(from_scores.diagonal, torch.diagonal(taus, dim1=1, dim2=2))
    assert torch.equal(from_scores.off_min, taus[:, ~eye].amin(1))
    assert torch.equal(from_scores.off_max, taus[:, ~eye].amax(1))
    assert torch.allclose(from_scores.off_sum, taus[:, ~eye].sum(1))
    assert from_scores.at_min.tolist() == [1.0, 0.0] and from_scores.at_max.tolist() == [0.0, 1.0]
    stats = from_scores.statistics(0.1, 2.0)
    for key, value in channel_statistics(taus, 0.1, 2.0).items():
        assert torch.allclose(stats[key], value), key


def test_barlow_twins_with_a_one_process_total_is_the_plain_loss():
    """``total`` (the sum over processes, identity here) gives the same statistics and cross-correlation; the
    2-process equality with the global batch is pinned in test_distributed.py."""
    torch.manual_seed(21)
    z1, z2 = torch.randn(2, 6, 5, dtype=torch.float64), torch.randn(2, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(barlow_twins_loss(z1, z2, 0.01, total=lambda x: x), barlow_twins_loss(z1, z2, 0.01),
                               rtol=1e-12, atol=1e-12)
