"""MoCo: the InfoNCE-with-queue loss and its AMCL form against written-out formulas, and the
exact behaviour of the key queue (FIFO, wrap-around) and the momentum (EMA) update."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from amcl.losses import amcl_moco_loss, amcl_moco_terms, moco_infonce_loss, pair_temperatures, paired_temperatures
from amcl.nn import FeatureQueue, TemperatureNet, momentum_copy, momentum_update_
from builders import cos, reference_omega


def reference_infonce(q, k, queue, tau):
    """One head, by explicit sums: -log e^{s+/tau} / (e^{s+/tau} + sum_j e^{s_j/tau}), mean over queries."""
    total = 0.0
    for i in range(len(q)):
        positive = math.exp(cos(q[i], k[i]) / tau)
        negatives = sum(math.exp(cos(q[i], entry) / tau) for entry in queue)
        total += -math.log(positive / (positive + negatives))
    return total / len(q)


def reference_amcl_moco(q, k, queue, pos_tau, queue_tau, beta, topk, dim, include_positive=False):
    """Eq. 2.1 (2.4) with the queue as negatives: loops over heads, queries and sorted candidates.
    pos_tau(c, i) and queue_tau(c, i, j) give temperatures; candidate -1 stands for the positive."""
    loss = 0.0
    for c in range(q.shape[0]):
        head = 0.0
        for i in range(q.shape[1]):
            s_pos, t_pos = cos(q[c, i], k[c, i]), pos_tau(c, i)
            candidates = [(cos(q[c, i], queue[c, j]), queue_tau(c, i, j)) for j in range(queue.shape[1])]
            if include_positive:
                candidates.append((s_pos, t_pos))
            candidates.sort(key=lambda pair: -pair[0])
            term = -s_pos / t_pos + beta * reference_omega(t_pos, dim)
            for s, t in candidates[:topk]:
                term += (s / t - beta * reference_omega(t, dim)) / topk
            head += term
        loss += head / q.shape[1]
    return loss


@pytest.mark.parametrize("heads,n,size,dim,tau", [(1, 3, 5, 4, 0.1), (3, 4, 7, 6, 0.5)])
def test_infonce_matches_written_formula(heads, n, size, dim, tau):
    torch.manual_seed(0)
    q, k, queue = torch.randn(heads, n, dim), torch.randn(heads, n, dim), torch.randn(heads, size, dim)
    expected = sum(reference_infonce(q[c], k[c], queue[c], tau) for c in range(heads))
    assert float(moco_infonce_loss(q, k, queue, tau)) == pytest.approx(expected, rel=1e-5)


def test_infonce_hand_checked_case():
    # query = key, one orthogonal queue entry: -log e^{1/tau} / (e^{1/tau} + e^0)
    q = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 3.0]])
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 1.0))
    assert float(moco_infonce_loss(q, q.clone(), queue, 0.5)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("heads,n,size,dim,topk,include_positive",
                         [(1, 3, 5, 4, 1, False), (3, 4, 6, 5, 2, False), (2, 3, 4, 4, 5, True), (3, 2, 5, 3, 1, True)])
def test_amcl_moco_matches_written_formula_with_adaptive_temperatures(heads, n, size, dim, topk, include_positive):
    torch.manual_seed(1)
    q, k, queue = torch.randn(heads, n, dim), torch.randn(heads, n, dim), torch.randn(heads, size, dim)
    phi = TemperatureNet(dim, 8, tau_min=0.05, tau_max=2.0)
    pos = phi.paired_temperatures(q, k).detach()
    neg = phi.pair_temperatures(q, queue).detach()
    got = amcl_moco_loss(q, k, queue, pos, neg, beta=0.01, topk=topk, include_positive=include_positive)
    expected = reference_amcl_moco(
        q, k, queue, lambda c, i: float(pos[c, i]), lambda c, i, j: float(neg[c, i, j]), 0.01, topk, dim,
        include_positive,
    )
    assert float(got) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_adaptive_temperatures_come_from_phi_of_single_vectors():
    torch.manual_seed(2)
    q, queue = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    phi = TemperatureNet(4, 6, 0.01, 1.5)
    with torch.no_grad():
        taus = pair_temperatures(phi(q), phi(queue), 0.01, 1.5)
    for c, i, j in [(0, 0, 0), (1, 2, 4), (0, 1, 3)]:
        with torch.no_grad():
            score = float(torch.dot(phi(q[c, i]), phi(queue[c, j])))
        assert float(taus[c, i, j]) == pytest.approx(0.01 + 1.49 / (1 + math.exp(score)), rel=1e-5)


@pytest.mark.parametrize("include_positive", [False, True])
def test_identity_one_head_constant_temperature_no_regulariser(include_positive):
    """C = 1, constant tau, beta = 0: -s(q, k)/tau + max_j s(q, candidate_j)/tau, the baseline's
    positive / hardest-negative form."""
    torch.manual_seed(3)
    q, k, queue = torch.randn(6, 8), torch.randn(6, 8), torch.randn(10, 8)
    tau = 0.2
    qn, kn, queuen = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    positive = (qn * kn).sum(1)
    hardest = (qn @ queuen.T).max(1).values
    if include_positive:
        hardest = torch.maximum(hardest, positive)
    expected = ((hardest - positive) / tau).mean()
    got = amcl_moco_loss(q, k, queue, tau, tau, beta=0.0, include_positive=include_positive)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_split_positive_and_queue_temperatures_for_ablations():
    torch.manual_seed(4)
    q, k, queue = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    pos = torch.rand(2, 3) + 0.1
    expected = reference_amcl_moco(q, k, queue, lambda c, i: float(pos[c, i]), lambda c, i, j: 0.3, 1e-3, 1, 4)
    assert float(amcl_moco_loss(q, k, queue, pos, 0.3, beta=1e-3)) == pytest.approx(expected, rel=1e-5)
    terms = amcl_moco_terms(q, k, queue, pos, 0.3, beta=1e-3)
    assert torch.equal(terms.positive_temperatures, pos)
    assert torch.all(terms.negative_temperatures == 0.3)
    assert float(terms.loss()) == pytest.approx(float((terms.positive + terms.negative + terms.regularizer).sum()))


def test_topk_beyond_queue_is_rejected():
    q = torch.randn(2, 4)
    with pytest.raises(ValueError, match="top-k"):
        amcl_moco_loss(q, q, torch.randn(3, 4), 0.5, 0.5, topk=4)
    amcl_moco_loss(q, q, torch.randn(3, 4), 0.5, 0.5, topk=4, include_positive=True)  # 3 + 1 candidates


def test_no_gradient_reaches_keys_or_queue_but_phi_learns():
    torch.manual_seed(5)
    q = torch.randn(2, 4, 8, requires_grad=True)
    k = torch.randn(2, 4, 8, requires_grad=True)
    queue = torch.randn(2, 6, 8, requires_grad=True)
    phi = TemperatureNet(8, 8)
    phi_q = phi(q)
    pos = paired_temperatures(phi_q, phi(k), phi.tau_min, phi.tau_max)
    neg = pair_temperatures(phi_q, phi(queue), phi.tau_min, phi.tau_max)
    (amcl_moco_loss(q, k, queue, pos.detach(), neg.detach()) + moco_infonce_loss(q, k, queue)).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None
    amcl_moco_loss(q, k.detach(), queue.detach(), pos, neg).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in phi.parameters())


def test_gradcheck_moco_losses_in_float64():
    torch.manual_seed(6)
    q = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 3, 4, dtype=torch.float64)
    queue = torch.randn(2, 5, 4, dtype=torch.float64)
    pos = (torch.rand(2, 3, dtype=torch.float64) + 0.2).requires_grad_()
    neg = (torch.rand(2, 3, 5, dtype=torch.float64) + 0.2).requires_grad_()
    assert torch.autograd.gradcheck(lambda q: moco_infonce_loss(q, k, queue, 0.3), (q,))
    for topk in (1, 2):  # 1 * d <= K: the chosen queue entries' products gathered; 2 * d > K: read from q queue^T
        assert torch.autograd.gradcheck(
            lambda q, pos, neg, topk=topk: amcl_moco_loss(q, k, queue, pos, neg, beta=0.05, topk=topk), (q, pos, neg)
        )
    phi = TemperatureNet(4, hidden=3, tau_min=0.05, tau_max=2.0).double()
    wide = TemperatureNet(24, hidden=24, tau_min=0.05, tau_max=2.0).double()
    q24, k24, queue40 = (torch.randn(2, n, 24, dtype=torch.float64) for n in (3, 3, 40))
    q24.requires_grad_()
    # k * d = 48 > K = 40 and 1 in 20 chosen: the chosen products' gradients multiply as sparse matrices
    assert torch.autograd.gradcheck(
        lambda q: amcl_moco_loss(q, k24, queue40, wide.paired_temperatures(q, k24), wide.pair_factors(q, queue40),
                                 beta=0.05, topk=2), (q24,)
    )
    assert torch.autograd.gradcheck(  # the queue's temperatures as factors, as the MoCo method passes them
        lambda q: amcl_moco_loss(q, k, queue, phi.paired_temperatures(q, k), phi.pair_factors(q, queue), beta=0.05,
                                 topk=2), (q,)
    )


# ---- the queue --------------------------------------------------------------------------------

def test_queue_is_fifo_and_wraps_around():
    queue = FeatureQueue(heads=2, size=5, dim=2)
    start = queue.features.clone()
    assert torch.allclose(start.norm(dim=-1), torch.ones(2, 5))  # random unit vectors to start
    first = torch.tensor([[1.0, 0.0]]).expand(2, 3, 2)
    queue.push(first)
    assert int(queue.pointer) == 3
    assert torch.equal(queue.features[:, :3], first)
    assert torch.equal(queue.features[:, 3:], start[:, 3:])
    second = torch.tensor([[0.0, 2.0], [3.0, 0.0], [0.0, -4.0], [5.0, 0.0]]).expand(2, 4, 2)
    queue.push(second)  # fills slots 3, 4, then wraps to 0, 1
    assert int(queue.pointer) == 2
    expected = torch.tensor([[0.0, -1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert torch.equal(queue.features[0], expected) and torch.equal(queue.features[1], expected)


def test_queue_keeps_only_the_newest_when_pushed_more_than_its_size():
    queue = FeatureQueue(heads=1, size=3, dim=1)
    queue.push(torch.ones(1, 1, 1))  # pointer 1
    keys = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0]).view(1, 5, 1)  # the last three survive
    queue.push(keys)
    assert int(queue.pointer) == (1 + 5) % 3
    # the newest three (1, -1, -1) sit in FIFO order from the old pointer + 2 = slot 0
    assert queue.features.flatten().tolist() == [1.0, -1.0, -1.0]


def test_queue_is_saved_in_state_dict_and_never_requires_grad():
    queue = FeatureQueue(3, 8, 4)
    assert set(queue.state_dict()) == {"features", "pointer"}
    assert not queue.features.requires_grad and list(queue.parameters()) == []
    with pytest.raises(ValueError, match="keys must be"):
        queue.push(torch.randn(2, 4, 4))


# ---- the momentum encoder ------------------------------------------------------------------------

def test_momentum_update_is_exact_ema_of_parameters_only():
    torch.manual_seed(7)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    target = momentum_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
        target[1].running_mean.fill_(0.25)
    before = [p.clone() for p in target.parameters()]
    momentum_update_(target, online, 0.9)
    for old, new, live in zip(before, target.parameters(), online.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * live, atol=1e-7)
    assert torch.all(target[1].running_mean == 0.25)  # buffers are the target's own
    momentum_update_(target, online, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), online.parameters()))
