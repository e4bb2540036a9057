"""The softmax AMCL form (our extension) and the negative-side regularisers, against written-out loops."""

import math

import pytest
import torch

from amcl.losses import (
    amcl_moco_loss,
    amcl_nt_xent_loss,
    amcl_softmax_moco_loss,
    amcl_softmax_moco_terms,
    amcl_softmax_nt_xent_loss,
    amcl_softmax_nt_xent_terms,
    moco_infonce_loss,
    negative_regularization,
    nt_xent_loss,
)
from amcl.losses.partition import adaptive_log_partition, negative_side_weights
from amcl.nn import TemperatureNet
from builders import LargestTensor, cos, reference_omega


def reference_negative_side(taus, dim, kind):
    if kind == "mean_omega":
        return sum(reference_omega(t, dim) for t in taus) / len(taus)
    return sum(math.log(t) + 1 / t for t in taus)


def reference_softmax_simclr(z1, z2, tau_of, beta, dim, kind="mean_omega"):
    """Per head and anchor: -s+/tau+ + log(exp(s+/tau+) + sum_n exp(s_n/tau_n)) + beta (Omega(tau+) - neg side)."""
    heads, b = z1.shape[0], z1.shape[1]
    total = 0.0
    for c in range(heads):
        views = list(z1[c]) + list(z2[c])
        n = 2 * b
        head = 0.0
        for i in range(n):
            pos = (i + b) % n
            negatives = [j for j in range(n) if j not in (i, pos)]
            t_pos = tau_of(c, i, pos)
            logits = [cos(views[i], views[pos]) / t_pos]
            logits += [cos(views[i], views[j]) / tau_of(c, i, j) for j in negatives]
            head += -logits[0] + math.log(sum(math.exp(x) for x in logits))
            head += beta * (reference_omega(t_pos, dim)
                            - reference_negative_side([tau_of(c, i, j) for j in negatives], dim, kind))
        total += head / n
    return total


def reference_softmax_moco(q, k, queue, pos_tau, queue_tau, beta, dim, kind="mean_omega"):
    heads, n = q.shape[0], q.shape[1]
    total = 0.0
    for c in range(heads):
        head = 0.0
        for i in range(n):
            t_pos = pos_tau(c, i)
            logits = [cos(q[c, i], k[c, i]) / t_pos]
            logits += [cos(q[c, i], queue[c, j]) / queue_tau(c, i, j) for j in range(queue.shape[1])]
            head += -logits[0] + math.log(sum(math.exp(x) for x in logits))
            negatives = [queue_tau(c, i, j) for j in range(queue.shape[1])]
            head += beta * (reference_omega(t_pos, dim) - reference_negative_side(negatives, dim, kind))
        total += head / n
    return total


@pytest.mark.parametrize("heads,batch,dim", [(1, 2, 3), (3, 4, 8), (2, 6, 16)])
@pytest.mark.parametrize("kind", ["mean_omega", "sum_log_inverse"])
@pytest.mark.parametrize("source", ["matrix", "factors"])  # autograd's matrices / the fused pass over the scores
def test_softmax_simclr_matches_written_formula_with_adaptive_temperatures(heads, batch, dim, kind, source):
    torch.manual_seed(heads * 100 + batch * 10 + dim)
    z1 = torch.randn(heads, batch, dim, dtype=torch.float64)
    z2 = torch.randn(heads, batch, dim, dtype=torch.float64)
    phi = TemperatureNet(dim, hidden=7, tau_min=0.05, tau_max=2.0).double()
    with torch.no_grad():
        views = torch.cat([z1, z2], dim=1)
        temps = phi.pair_temperatures(views)
        given = temps if source == "matrix" else phi.pair_factors(views)
        got = amcl_softmax_nt_xent_loss(z1, z2, given, beta=0.01, negative_regularizer=kind)
    expected = reference_softmax_simclr(z1, z2, lambda c, i, j: float(temps[c, i, j]), 0.01, dim, kind)
    assert got.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("kind", ["mean_omega", "sum_log_inverse"])
def test_fused_log_partition_against_autograd_of_its_formula(kind):
    """adaptive_log_partition's closed-form backward against autograd of the same sums written with masks,
    and float64 gradcheck; the temperatures it returns for monitoring take no gradient."""
    torch.manual_seed(31)
    sim = torch.rand(2, 5, 7, dtype=torch.float64, requires_grad=True)
    scores = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    excluded = torch.rand(5, 7).argsort(-1)[:, :2]  # two columns of each row, another two also not negatives
    not_negative = torch.cat([excluded, torch.rand(5, 7).argsort(-1)[:, :2]], -1)
    weight, scale = negative_side_weights(kind, 6, 4)
    tau = 0.05 + 1.95 * torch.sigmoid(-scores)
    masks = [torch.zeros(5, 7, dtype=torch.bool).scatter_(-1, index, True) for index in (excluded, not_negative)]
    expected = (torch.logsumexp((sim / tau).masked_fill(masks[0], float("-inf")), -1),
                scale * (weight * tau.log() + 1 / tau).masked_fill(masks[1], 0).sum(-1))
    got = adaptive_log_partition(sim, scores, 0.05, 2.0, weight, scale, excluded, not_negative)
    for have, want in zip(got, (*expected, tau)):
        torch.testing.assert_close(have, want)
    assert not got[2].requires_grad
    weights = [torch.randn(2, 5, dtype=torch.float64) for _ in range(2)]
    for have, want in zip(torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, got[:2])), (sim, scores)),
                          torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, expected)), (sim, scores))):
        torch.testing.assert_close(have, want)
    assert torch.autograd.gradcheck(
        lambda s, x: adaptive_log_partition(s, x, 0.05, 2.0, weight, scale, excluded, not_negative)[:2],
        (sim, scores))


def test_softmax_simclr_split_positive_and_negative_temperatures():
    torch.manual_seed(1)
    z1, z2 = torch.randn(2, 4, 5, dtype=torch.float64), torch.randn(2, 4, 5, dtype=torch.float64)
    pos_t = torch.rand(2, 8, 8, dtype=torch.float64) + 0.1
    neg_t = torch.rand(2, 8, 8, dtype=torch.float64) + 0.1

    def tau_of(c, i, j):
        return float(pos_t[c, i, j] if j == (i + 4) % 8 else neg_t[c, i, j])

    got = amcl_softmax_nt_xent_loss(z1, z2, pos_t, beta=0.1, negative_temperatures=neg_t)
    assert got.item() == pytest.approx(reference_softmax_simclr(z1, z2, tau_of, 0.1, 5), rel=1e-10)
    # a constant on one side: the positive-only and negative-only ablations
    got = amcl_softmax_nt_xent_loss(z1, z2, pos_t, beta=0.1, negative_temperatures=0.3)
    expected = reference_softmax_simclr(
        z1, z2, lambda c, i, j: float(pos_t[c, i, j]) if j == (i + 4) % 8 else 0.3, 0.1, 5)
    assert got.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("batch,dim,tau", [(2, 3, 0.5), (8, 32, 0.1)])
def test_softmax_simclr_one_head_constant_temperature_no_regulariser_is_nt_xent(batch, dim, tau):
    """C = 1, constant tau, beta = 0: NT-Xent (Eq. 1.1 in SimCLR's form) exactly."""
    torch.manual_seed(batch)
    z1, z2 = torch.randn(batch, dim, dtype=torch.float64), torch.randn(batch, dim, dtype=torch.float64)
    got = amcl_softmax_nt_xent_loss(z1, z2, tau, beta=0.0)
    assert got.item() == pytest.approx(nt_xent_loss(z1, z2, tau).item(), rel=1e-12)
    # and with a constant temperature matrix and several heads: the sum of the heads' NT-Xent losses
    z1, z2 = torch.randn(3, batch, dim, dtype=torch.float64), torch.randn(3, batch, dim, dtype=torch.float64)
    as_matrix = amcl_softmax_nt_xent_loss(z1, z2, torch.full((3, 2 * batch, 2 * batch), tau, dtype=torch.float64),
                                          beta=0.0)
    assert as_matrix.item() == pytest.approx(nt_xent_loss(z1, z2, tau).item(), rel=1e-12)


def test_softmax_simclr_hand_checked_case():
    # B = 2, each view equal to its positive, the other image orthogonal: s+ = 1, s_n = 0 (2 negatives).
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    tau_pos, tau_neg, beta, d = 0.25, 0.5, 0.1, 2
    temps = torch.full((4, 4), tau_neg, dtype=torch.float64)
    temps[[0, 1, 2, 3], [2, 3, 0, 1]] = tau_pos
    expected = (-4 + math.log(math.exp(4) + 2) + beta * (reference_omega(tau_pos, d) - reference_omega(tau_neg, d)))
    assert amcl_softmax_nt_xent_loss(z1, z1.clone(), temps, beta=beta).item() == pytest.approx(expected, rel=1e-12)


def test_softmax_terms_report_full_matrices_with_a_negative_mask():
    torch.manual_seed(2)
    z1, z2 = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    temps = torch.rand(3, 8, 8) + 0.5
    terms = amcl_softmax_nt_xent_terms(z1, z2, temps, beta=0.01)
    assert terms.negative_temperatures.shape == terms.negative_similarities.shape == (3, 8, 8)
    mask = terms.negative_mask
    assert mask.shape == (8, 8) and mask.sum().item() == 8 * 6  # not itself, not its positive
    assert not mask.diagonal().any() and not mask[torch.arange(8), (torch.arange(8) + 4) % 8].any()
    assert torch.equal(terms.positive_temperatures, temps[:, torch.arange(8), (torch.arange(8) + 4) % 8])
    assert terms.loss().item() == pytest.approx(amcl_softmax_nt_xent_loss(z1, z2, temps, beta=0.01).item())


def test_softmax_upper_bounds_the_eq24_max_form_within_log_candidates():
    """log-sum-exp is the smooth max of Eq. 2.4: max <= lse <= max + log(N + 1), term by term."""
    torch.manual_seed(3)
    z1, z2 = torch.randn(1, 5, 8, dtype=torch.float64), torch.randn(1, 5, 8, dtype=torch.float64)
    tau = 0.2
    smooth = amcl_softmax_nt_xent_loss(z1, z2, tau, beta=0.0)
    hard = amcl_nt_xent_loss(z1, z2, tau, beta=0.0, include_positive=True)
    assert hard.item() <= smooth.item() <= hard.item() + math.log(2 * 5 - 1)


@pytest.mark.parametrize("heads,n,size,dim", [(1, 3, 5, 4), (2, 4, 7, 6)])
@pytest.mark.parametrize("kind", ["mean_omega", "sum_log_inverse"])
def test_softmax_moco_matches_written_formula(heads, n, size, dim, kind):
    torch.manual_seed(heads + n + size)
    q, k = torch.randn(heads, n, dim, dtype=torch.float64), torch.randn(heads, n, dim, dtype=torch.float64)
    queue = torch.randn(heads, size, dim, dtype=torch.float64)
    pos_t = torch.rand(heads, n, dtype=torch.float64) + 0.1
    queue_t = torch.rand(heads, n, size, dtype=torch.float64) + 0.1
    got = amcl_softmax_moco_loss(q, k, queue, pos_t, queue_t, beta=0.02, negative_regularizer=kind)
    expected = reference_softmax_moco(q, k, queue, lambda c, i: float(pos_t[c, i]),
                                      lambda c, i, j: float(queue_t[c, i, j]), 0.02, dim, kind)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # the queue's temperatures as phi's factors: the fused pass
    phi = TemperatureNet(dim, hidden=5, tau_min=0.05, tau_max=2.0).double()
    with torch.no_grad():
        factors = phi.pair_factors(q, queue)
        matrix = factors.matrix()
        got = amcl_softmax_moco_loss(q, k, queue, pos_t, factors, beta=0.02, negative_regularizer=kind)
    expected = reference_softmax_moco(q, k, queue, lambda c, i: float(pos_t[c, i]),
                                      lambda c, i, j: float(matrix[c, i, j]), 0.02, dim, kind)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_softmax_moco_one_head_constant_temperature_no_regulariser_is_infonce():
    torch.manual_seed(4)
    q, k, queue = torch.randn(6, 8), torch.randn(6, 8), torch.randn(32, 8)
    got = amcl_softmax_moco_loss(q, k, queue, 0.1, 0.1, beta=0.0)
    assert got.item() == pytest.approx(moco_infonce_loss(q, k, queue, 0.1).item(), rel=1e-6)


def test_softmax_moco_gradients_reach_queries_and_temperatures_only():
    torch.manual_seed(5)
    q = torch.randn(2, 4, 8, requires_grad=True)
    k, queue = torch.randn(2, 4, 8, requires_grad=True), torch.randn(2, 16, 8, requires_grad=True)
    phi = TemperatureNet(8, hidden=6, tau_min=0.05, tau_max=1.0)
    # the keys come from the momentum encoder without gradients, as in amcl.methods.MoCo
    terms = amcl_softmax_moco_terms(q, k, queue, phi.paired_temperatures(q, k.detach()),
                                    phi.pair_temperatures(q, queue.detach()))
    terms.loss().backward()
    assert q.grad.abs().sum() > 0 and all(p.grad.abs().sum() > 0 for p in phi.parameters())
    assert k.grad is None and queue.grad is None


def test_gradcheck_softmax_losses_in_float64():
    torch.manual_seed(6)
    z1 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    phi = TemperatureNet(4, hidden=5, tau_min=0.05, tau_max=2.0).double()

    def simclr(a, b):
        return amcl_softmax_nt_xent_loss(a, b, phi.pair_temperatures(torch.cat([a, b], dim=1)), beta=0.05)

    assert torch.autograd.gradcheck(simclr, (z1, z2))
    k, queue = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 6, 4, dtype=torch.float64)

    def moco(q):
        return amcl_softmax_moco_loss(q, k, queue, phi.paired_temperatures(q, k), phi.pair_temperatures(q, queue),
                                      beta=0.05, negative_regularizer="sum_log_inverse")

    assert torch.autograd.gradcheck(moco, (z1,))

    def fused(a, b):  # phi's factors: the one fused pass over similarities and scores, its own backward
        views = torch.cat([a, b], dim=1)
        simclr = amcl_softmax_nt_xent_loss(a, b, phi.pair_factors(views), beta=0.05)
        return simclr + amcl_softmax_moco_loss(a, k, queue, phi.paired_temperatures(a, k),
                                               phi.pair_factors(a, queue), beta=0.05)

    assert torch.autograd.gradcheck(fused, (z1, z2))


def test_softmax_loss_builds_nothing_larger_than_the_pair_matrices():
    heads, batch, dim = 3, 64, 128
    z1 = torch.randn(heads, batch, dim, requires_grad=True)
    z2 = torch.randn(heads, batch, dim, requires_grad=True)
    phi = TemperatureNet(dim)
    with LargestTensor() as largest:
        taus = phi.pair_temperatures(torch.cat([z1, z2], dim=1))
        amcl_softmax_nt_xent_loss(z1, z2, taus).backward()
    assert largest.numel <= heads * (2 * batch) ** 2


def test_negative_regularization_forms_and_exclusions():
    tau = torch.tensor([[0.5, 1.0, 2.0]], dtype=torch.float64)
    assert negative_regularization(tau, 4).item() == pytest.approx(
        sum(reference_omega(t, 4) for t in (0.5, 1.0, 2.0)) / 3, rel=1e-12)
    assert negative_regularization(tau, 4, "sum_log_inverse").item() == pytest.approx(
        sum(math.log(t) + 1 / t for t in (0.5, 1.0, 2.0)), rel=1e-12)
    # leaving entry 1 out of the mean and of the sum
    exclude = torch.tensor([[1]])
    assert negative_regularization(tau, 4, exclude=exclude).item() == pytest.approx(
        (reference_omega(0.5, 4) + reference_omega(2.0, 4)) / 2, rel=1e-12)
    assert negative_regularization(tau, 4, "sum_log_inverse", exclude).item() == pytest.approx(
        math.log(0.5) + 2 + math.log(2.0) + 0.5, rel=1e-12)
    with pytest.raises(ValueError, match="mean_omega, sum_log_inverse"):
        negative_regularization(tau, 4, "sum")


def test_hardest_forms_take_the_authors_regulariser_under_topk():
    """sum_log_inverse: beta * sum_k (log tau_k + 1/tau_k) in place of beta * mean_k Omega(tau_k)."""
    torch.manual_seed(7)
    normalize = torch.nn.functional.normalize
    z1, z2 = torch.randn(1, 4, 6, dtype=torch.float64), torch.randn(1, 4, 6, dtype=torch.float64)
    temps = torch.rand(1, 8, 8, dtype=torch.float64) + 0.2
    beta, k = 0.05, 3

    def change(taus):  # what replacing the mean-Omega side by the authors' sum adds to one anchor's loss
        return beta * (reference_negative_side(taus, 6, "mean_omega") - reference_negative_side(taus, 6, "sum"))

    mean_form = amcl_nt_xent_loss(z1, z2, temps, beta=beta, topk=k)
    sum_form = amcl_nt_xent_loss(z1, z2, temps, beta=beta, topk=k, negative_regularizer="sum_log_inverse")
    views = normalize(torch.cat([z1, z2], 1)[0], dim=-1)
    sim = views @ views.T
    expected = 0.0
    for i in range(8):
        hardest = sorted((j for j in range(8) if j not in (i, (i + 4) % 8)), key=lambda j: -float(sim[i, j]))[:k]
        expected += change([float(temps[0, i, j]) for j in hardest]) / 8
    assert (sum_form - mean_form).item() == pytest.approx(expected, rel=1e-9)

    q, queue = torch.randn(1, 4, 6, dtype=torch.float64), torch.randn(1, 10, 6, dtype=torch.float64)
    queue_t = torch.rand(1, 4, 10, dtype=torch.float64) + 0.2
    mean_moco = amcl_moco_loss(q, z2, queue, 0.5, queue_t, beta=beta, topk=k)
    sum_moco = amcl_moco_loss(q, z2, queue, 0.5, queue_t, beta=beta, topk=k, negative_regularizer="sum_log_inverse")
    queue_sim = normalize(q[0], dim=-1) @ normalize(queue[0], dim=-1).T
    expected = sum(change([float(queue_t[0, i, j]) for j in queue_sim[i].topk(k).indices]) for i in range(4)) / 4
    assert (sum_moco - mean_moco).item() == pytest.approx(expected, rel=1e-9)
