"""Losses against independent, written-out formulas (loops over anchors and pairs, on purpose)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from amcl.losses import (
    PairTemperatures,
    amcl_nt_xent_loss,
    amcl_nt_xent_terms,
    amcl_softmax_nt_xent_loss,
    hardest_negatives,
    nt_xent_loss,
    omega,
    pair_temperatures,
    process_anchors,
    view_similarities,
)
from amcl.losses.kernels import largest_entries, order_keys_
from amcl.losses.temperature import gathers_rows, selected_products, sparse_gradient
from amcl.nn import Shard, TemperatureNet
from builders import LargestTensor, cos, reference_omega


def reference_temperature(phi_a, phi_b, tau_min, tau_max):
    score = float(torch.dot(phi_a, phi_b))
    return tau_min + (tau_max - tau_min) / (1.0 + math.exp(score))


def reference_nt_xent(z1, z2, tau, decoupled=False):
    """SimCLR's loss, one head [B, d], written as in the paper with explicit sums."""
    views = list(z1) + list(z2)
    n, b = len(views), len(z1)
    total = 0.0
    for i in range(n):
        pos = (i + b) % n
        denominator = sum(
            math.exp(cos(views[i], views[j]) / tau) for j in range(n) if j != i and (j != pos or not decoupled)
        )
        total += -math.log(math.exp(cos(views[i], views[pos]) / tau) / denominator)
    return total / n


def reference_amcl(z1, z2, tau_of, beta, k, dim, include_positive=False, neg_tau_of=None):
    """Eq. 2.1 (2.4): loop over heads, anchors and sorted candidates; tau_of(c, i, j) gives temperatures."""
    neg_tau_of = neg_tau_of or tau_of
    heads, b = z1.shape[0], z1.shape[1]
    loss = 0.0
    for c in range(heads):
        views = list(z1[c]) + list(z2[c])
        n = 2 * b
        head_total = 0.0
        for i in range(n):
            pos = (i + b) % n
            candidates = [j for j in range(n) if j != i and (include_positive or j != pos)]
            candidates.sort(key=lambda j: -cos(views[i], views[j]))
            hardest = candidates[:k]
            t_pos = tau_of(c, i, pos)
            term = -cos(views[i], views[pos]) / t_pos + beta * reference_omega(t_pos, dim)
            for j in hardest:
                t_neg = neg_tau_of(c, i, j)
                term += (cos(views[i], views[j]) / t_neg - beta * reference_omega(t_neg, dim)) / k
            head_total += term
        loss += head_total / n
    return loss


@pytest.mark.parametrize("batch,dim,tau", [(2, 3, 0.5), (5, 8, 0.1), (7, 16, 1.0)])
@pytest.mark.parametrize("decoupled", [False, True])
def test_nt_xent_matches_written_formula(batch, dim, tau, decoupled):
    torch.manual_seed(batch * dim)
    z1, z2 = torch.randn(batch, dim, dtype=torch.float64), torch.randn(batch, dim, dtype=torch.float64)
    got = nt_xent_loss(z1, z2, temperature=tau, decoupled=decoupled)
    assert got.item() == pytest.approx(reference_nt_xent(z1, z2, tau, decoupled), rel=1e-9)


def test_nt_xent_sums_heads():
    torch.manual_seed(0)
    z1, z2 = torch.randn(3, 6, 8), torch.randn(3, 6, 8)
    per_head = sum(nt_xent_loss(z1[c], z2[c]) for c in range(3))
    assert nt_xent_loss(z1, z2).item() == pytest.approx(per_head.item(), rel=1e-6)


def test_nt_xent_hand_checked_case():
    # B = 2, orthogonal positive pairs sit at cos 1; the negatives are orthogonal (cos 0).
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = z1.clone()
    tau = 0.5
    expected = -math.log(math.exp(2) / (math.exp(2) + 2 * math.exp(0)))
    assert nt_xent_loss(z1, z2, tau).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("heads,batch,dim,k", [(1, 3, 4, 1), (3, 4, 8, 1), (2, 5, 6, 3), (3, 6, 16, 10)])
@pytest.mark.parametrize("include_positive", [False, True])
def test_amcl_matches_written_formula_with_adaptive_temperatures(heads, batch, dim, k, include_positive):
    torch.manual_seed(heads * 100 + batch * 10 + dim + k)
    z1 = torch.randn(heads, batch, dim, dtype=torch.float64)
    z2 = torch.randn(heads, batch, dim, dtype=torch.float64)
    tau_min, tau_max, beta = 0.05, 2.0, 0.01
    phi = TemperatureNet(dim, hidden=7, tau_min=tau_min, tau_max=tau_max).double()
    views = torch.cat([z1, z2], dim=1)
    temps = phi.pair_temperatures(views)
    with torch.no_grad():
        embeddings = phi(views)

    def tau_of(c, i, j):
        return reference_temperature(embeddings[c, i], embeddings[c, j], tau_min, tau_max)

    got = amcl_nt_xent_loss(z1, z2, temps, beta=beta, topk=k, include_positive=include_positive)
    expected = reference_amcl(z1, z2, tau_of, beta, k, dim, include_positive)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_amcl_split_positive_and_negative_temperatures():
    torch.manual_seed(1)
    z1, z2 = torch.randn(2, 4, 5, dtype=torch.float64), torch.randn(2, 4, 5, dtype=torch.float64)
    pos_t = torch.rand(2, 8, 8, dtype=torch.float64) + 0.1
    neg_t = torch.rand(2, 8, 8, dtype=torch.float64) + 0.1
    got = amcl_nt_xent_loss(z1, z2, pos_t, beta=0.1, topk=2, negative_temperatures=neg_t)
    expected = reference_amcl(
        z1, z2, lambda c, i, j: float(pos_t[c, i, j]), 0.1, 2, 5, neg_tau_of=lambda c, i, j: float(neg_t[c, i, j])
    )
    assert got.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("batch,dim", [(3, 4), (8, 32)])
def test_identity_one_head_constant_temperature_no_regulariser(batch, dim):
    """C = 1, constant tau, beta = 0, k = 1: the baseline's positive/hardest-negative form."""
    torch.manual_seed(batch)
    z1, z2 = torch.randn(batch, dim), torch.randn(batch, dim)
    tau = 0.3
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    views = torch.cat([a, b])
    n = 2 * batch
    total = 0.0
    for i in range(n):
        pos = (i + batch) % n
        hardest = max(float(views[i] @ views[j]) for j in range(n) if j not in (i, pos))
        total += -(float(views[i] @ views[pos]) - hardest) / tau
    got = amcl_nt_xent_loss(z1, z2, tau, beta=0.0, topk=1)
    assert got.item() == pytest.approx(total / n, rel=1e-5)


def test_constant_temperature_tensor_and_float_agree():
    torch.manual_seed(2)
    z1, z2 = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    as_float = amcl_nt_xent_loss(z1, z2, 0.2, beta=1e-3, topk=2)
    as_tensor = amcl_nt_xent_loss(z1, z2, torch.full((3, 10, 10), 0.2), beta=1e-3, topk=2)
    assert as_float.item() == pytest.approx(as_tensor.item(), rel=1e-6)


def test_omega_formula_and_minimum():
    tau = torch.tensor([1e-3, 0.1, 1.0, 2.0], dtype=torch.float64)
    expected = [reference_omega(float(t), 128) for t in tau]
    assert omega(tau, 128).tolist() == pytest.approx(expected, rel=1e-12)
    grid = torch.linspace(1e-3, 1.0, 100001, dtype=torch.float64)
    assert grid[omega(grid, 128).argmin()].item() == pytest.approx(2 / 128, abs=1e-4)


def test_pair_temperatures_one_matrix_product_matches_pairs():
    torch.manual_seed(3)
    pa, pb = torch.randn(5, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    got = pair_temperatures(pa, pb, 1e-5, 2.0)
    for i in range(5):
        for j in range(4):
            assert got[i, j].item() == pytest.approx(reference_temperature(pa[i], pb[j], 1e-5, 2.0), rel=1e-12)


@pytest.mark.parametrize("tau_min,tau_max", [(1e-5, 2.0), (0.1, 0.5)])
def test_temperatures_stay_within_bounds(tau_min, tau_max):
    torch.manual_seed(4)
    phi = TemperatureNet(16, hidden=32, tau_min=tau_min, tau_max=tau_max)
    with torch.no_grad():
        for p in phi.parameters():
            p.mul_(50)  # push scores far into both tails of the sigmoid
        temps = phi.pair_temperatures(torch.randn(2, 64, 16))
    low, high = torch.tensor([tau_min, tau_max]).tolist()  # the bounds as float32 holds them
    assert temps.min().item() >= low and temps.max().item() <= high
    assert temps.max() - temps.min() > 0.5 * (tau_max - tau_min)


def test_temperature_net_is_symmetric_and_scale_invariant():
    torch.manual_seed(5)
    phi = TemperatureNet(8, hidden=16)
    z = torch.randn(10, 8)
    t = phi.pair_temperatures(z)
    assert torch.allclose(t, t.T)
    assert torch.allclose(phi.pair_temperatures(3 * z), t, atol=1e-6)
    assert torch.allclose(phi.paired_temperatures(z, z.flip(0)), t.diagonal(offset=0).new_tensor(
        [t[i, 9 - i].item() for i in range(10)]), atol=1e-6)


def test_hardest_negatives_excludes_self_and_positive():
    sim = torch.tensor([[[1.0, 0.9, 0.8, 0.1], [0.9, 1.0, 0.2, 0.95], [0.8, 0.2, 1.0, 0.3], [0.1, 0.95, 0.3, 1.0]]])
    # B = 2: view 0's positive is view 2, view 1's is view 3.
    values, index = hardest_negatives(sim, 1)
    assert index[0, :, 0].tolist() == [1, 0, 3, 2]
    values, index = hardest_negatives(sim, 1, include_positive=True)
    assert index[0, :, 0].tolist() == [1, 3, 0, 1]


def test_topk_larger_than_negatives_is_rejected():
    z = torch.randn(4, 8)
    with pytest.raises(ValueError, match="number of negatives \\(6\\)"):
        amcl_nt_xent_loss(z, z, 0.5, topk=7)


def test_terms_add_up_and_report_temperatures():
    torch.manual_seed(6)
    z1, z2 = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    temps = torch.rand(3, 8, 8) + 0.5
    terms = amcl_nt_xent_terms(z1, z2, temps, beta=0.01, topk=2)
    assert terms.positive.shape == (3,) and terms.negative_temperatures.shape == (3, 8, 2)
    assert terms.loss().item() == pytest.approx(amcl_nt_xent_loss(z1, z2, temps, beta=0.01, topk=2).item())
    assert (terms.positive_temperatures >= 0.5).all() and (terms.positive_temperatures <= 1.5).all()


def test_gradcheck_amcl_loss_in_float64():
    torch.manual_seed(7)
    z1 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    phi = TemperatureNet(4, hidden=5, tau_min=0.05, tau_max=2.0).double()

    def loss(a, b):
        return amcl_nt_xent_loss(a, b, phi.pair_temperatures(torch.cat([a, b], dim=1)), beta=0.05, topk=2)

    assert torch.autograd.gradcheck(loss, (z1, z2))

    def factored_loss(a, b):  # phi's factors of the whole Gram matrix are one tensor: the symmetric backward
        return amcl_nt_xent_loss(a, b, phi.pair_factors(torch.cat([a, b], dim=1)), beta=0.05, topk=2)

    assert torch.autograd.gradcheck(factored_loss, (z1, z2))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_largest_entries_are_the_top_k_of_the_floats(dtype):
    """The selection on integer order keys chooses what torch's top-k of the floats chooses, with their
    exact values, never an excluded entry, and signed zeros, infinities and tiny numbers in their place."""
    torch.manual_seed(21)
    x = torch.randn(2, 6, 40, dtype=torch.float64)
    x[0, 0, :6] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 1e-30, -1e-30])
    x = x.to(dtype)
    excluded = torch.rand(6, 40) < 0.2
    excluded[0, 2] = False  # keep the +inf of row 0 a candidate
    values, index = largest_entries(x.clone(), 7, excluded)
    expected = x.masked_fill(excluded, float("-inf")).topk(7, dim=-1).values
    assert torch.equal(values.sort(dim=-1, descending=True).values, expected)
    assert torch.equal(x.gather(-1, index), values)
    assert not excluded.expand_as(x).gather(-1, index).any()
    assert values[0, 0].max() == float("inf")


def test_order_keys_sort_like_the_floats_and_give_them_back():
    floats = torch.tensor([float("-inf"), -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, float("inf")])
    keys = order_keys_(floats.clone().view(torch.int32))
    assert torch.equal(keys.argsort(), torch.arange(8))  # strictly increasing (-0.0 just below 0.0)
    assert torch.equal(order_keys_(keys.clone()).view(torch.float32), floats)


@pytest.mark.parametrize("case", ["gram", "two-factors", "one-head-left", "one-head-right"])
@pytest.mark.parametrize("n, m, k, h", [(6, 7, 5, 4), (9, 40, 2, 24)], ids=["dense-gradient", "sparse-gradient"])
def test_selected_products_of_the_product_matrix_and_their_gradients(case, n, m, k, h):
    """k * h above M: the entries are read from the product, and the backward multiplies only their gradients,
    scattered into a dense matrix (symmetrically for a Gram matrix: one product) or, for at most 1 in 16
    entries, kept as a sparse one; repeated indices add up; one-head factors broadcast."""
    torch.manual_seed(22)
    heads = {"one-head-left": (1, 3), "one-head-right": (3, 1)}.get(case, (3, 3))
    assert sparse_gradient(k, m, torch.device("cpu")) == (16 * k <= m)
    left = torch.randn(heads[0], m if case == "gram" else n, h, dtype=torch.float64, requires_grad=True)
    right = left if case == "gram" else torch.randn(heads[1], m, h, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, m, (3, left.shape[1], k))  # k * h > m candidates, with repeats
    expected = (left @ right.transpose(-1, -2)).expand(3, -1, -1).gather(-1, index)
    got = selected_products(left, right, index)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(selected_products(left, right, index, expected.detach()), expected)
    weights = torch.randn_like(got)
    inputs = [left] if case == "gram" else [left, right]
    for want, have in zip(torch.autograd.grad((expected * weights).sum(), inputs),
                          torch.autograd.grad((got * weights).sum(), inputs)):
        torch.testing.assert_close(have, want)
    if case == "gram":
        assert torch.autograd.gradcheck(lambda a: selected_products(a, a, index), (left,))
    else:
        assert torch.autograd.gradcheck(lambda a, b: selected_products(a, b, index), (left, right))


def test_gradcheck_amcl_loss_with_sparse_gradients_of_the_chosen_negatives():
    """2B = 32 candidates, k = 2 (k * d = 48 above 2B, 1 in 16 chosen): the chosen similarities and temperature
    scores are read from their Gram matrices, and their gradients multiply the features as sparse matrices."""
    torch.manual_seed(23)
    z1, z2 = (torch.randn(2, 16, 24, dtype=torch.float64, requires_grad=True) for _ in range(2))
    phi = TemperatureNet(24, hidden=24, tau_min=0.05, tau_max=2.0).double()
    assert sparse_gradient(2, 32, z1.device) and not gathers_rows(2, 24, 32)

    def loss(a, b):
        return amcl_nt_xent_loss(a, b, phi.pair_factors(torch.cat([a, b], dim=1)), beta=0.05, topk=2)

    expected = reference_amcl(z1.detach(), z2.detach(), _tau_of(phi, z1, z2), 0.05, 2, 24)
    assert loss(z1, z2).item() == pytest.approx(expected, rel=1e-9)
    assert torch.autograd.gradcheck(loss, (z1, z2))


def _tau_of(phi, z1, z2):
    """tau(c, i, j) of the stacked views from phi's full temperature matrix, for the written-out formulas."""
    matrix = phi.pair_temperatures(torch.cat([z1, z2], dim=1)).detach()
    return lambda c, i, j: float(matrix[c, i, j])


def test_gradcheck_temperature_network_parameters():
    torch.manual_seed(8)
    z1, z2 = torch.randn(1, 3, 4, dtype=torch.float64), torch.randn(1, 3, 4, dtype=torch.float64)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)

    def loss(weight):
        def phi(z):
            return torch.relu(F.normalize(z, dim=-1) @ weight.T) @ weight

        views = torch.cat([z1, z2], dim=1)
        temps = pair_temperatures(phi(views), phi(views), 0.05, 2.0)
        return amcl_nt_xent_loss(z1, z2, temps, beta=0.1)

    assert torch.autograd.gradcheck(loss, (w,))


def test_gradcheck_nt_xent():
    z1 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent_loss(a, b, 0.5), (z1, z2))


def test_losses_stay_float32_under_bfloat16_autocast():
    torch.manual_seed(9)
    z1, z2 = torch.randn(2, 8, 16), torch.randn(2, 8, 16)
    phi = TemperatureNet(16)
    expected = amcl_nt_xent_loss(z1, z2, phi.pair_temperatures(torch.cat([z1, z2], 1)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        temps = phi.pair_temperatures(torch.cat([z1, z2], 1))
        got = amcl_nt_xent_loss(z1, z2, temps)
        plain = nt_xent_loss(z1, z2)
    assert temps.dtype == torch.float32 and got.dtype == torch.float32 and plain.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_amcl_loss_never_builds_a_batch_by_batch_by_dim_tensor():
    heads, batch, dim = 3, 64, 128
    z1 = torch.randn(heads, batch, dim, requires_grad=True)
    z2 = torch.randn(heads, batch, dim, requires_grad=True)
    phi = TemperatureNet(dim)
    with LargestTensor() as largest:
        taus = phi.pair_temperatures(torch.cat([z1, z2], dim=1))
        amcl_nt_xent_loss(z1, z2, taus, topk=5).backward()
    assert largest.numel <= heads * (2 * batch) ** 2  # the [C, 2B, 2B] matrices are the largest
    assert largest.numel < batch * batch * dim


@pytest.mark.parametrize("dim,hidden", [(4, 8), (40, 6)])  # explicit embeddings / folded last layer
def test_temperature_net_methods_equal_explicit_embedding_products(dim, hidden):
    """pair_temperatures / paired_temperatures equal tau from <phi(a), phi(b)> of the explicit
    embeddings, also when the last layer is folded into a Gram matrix (d > h + 1), values and gradients."""
    torch.manual_seed(0)
    phi = TemperatureNet(dim, hidden, tau_min=0.01, tau_max=2.0).double()
    a, b = torch.randn(2, 5, dim, dtype=torch.float64), torch.randn(2, 7, dim, dtype=torch.float64)
    explicit = pair_temperatures(phi(a), phi(b), 0.01, 2.0)
    assert torch.allclose(phi.pair_temperatures(a, b), explicit, atol=1e-12)
    assert torch.allclose(phi.pair_temperatures(a), pair_temperatures(phi(a), phi(a), 0.01, 2.0), atol=1e-12)
    paired = phi.paired_temperatures(a, b[:, :5])
    assert torch.allclose(paired, torch.diagonal(explicit[:, :, :5], dim1=1, dim2=2), atol=1e-12)
    grads = torch.autograd.grad(phi.pair_temperatures(a, b).sum() + paired.sum(), list(phi.parameters()))
    explicit_grads = torch.autograd.grad(
        explicit.sum() + torch.diagonal(pair_temperatures(phi(a), phi(b[:, :5]), 0.01, 2.0), dim1=1, dim2=2).sum(),
        list(phi.parameters()),
    )
    assert all(torch.allclose(g, e, atol=1e-10) for g, e in zip(grads, explicit_grads))


@pytest.mark.parametrize("dim,hidden", [(4, 8), (40, 6)])  # explicit embeddings / folded last layer
def test_sharded_factors_of_one_whole_shard_equal_the_factors(dim, hidden):
    """A Shard holding every entry (one process: offset 0, the sum over processes is the tensor itself) gives
    pair_factors' matrix, values and gradients; 2 real processes, each with half of the entries, are pinned
    against one process in test_distributed.py (AMCL Barlow Twins)."""
    torch.manual_seed(16)
    phi = TemperatureNet(dim, hidden, tau_min=0.01, tau_max=2.0).double()
    a = torch.randn(2, 5, dim, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 7, dim, dtype=torch.float64, requires_grad=True)
    sharded = phi.pair_factors(a, b, shard=Shard(0, lambda x: x)).matrix()
    whole = phi.pair_factors(a, b).matrix()
    torch.testing.assert_close(sharded, whole)
    weights = torch.randn_like(whole)
    inputs = [a, b, *phi.parameters()]
    for got, want in zip(torch.autograd.grad((sharded * weights).sum(), inputs),
                         torch.autograd.grad((whole * weights).sum(), inputs)):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match=f"a shard of {dim} entries at 1 does not fit phi's input of {dim}"):
        phi.pair_factors(a, b, shard=Shard(1, lambda x: x))


# ---------------------------------------------------------------- anchors (local rows) and factored temperatures


def _five_losses(z1, z2, taus, anchors=None):
    """Every SimCLR loss of the library on the views of one (possibly gathered) batch."""
    return {
        "nt_xent": nt_xent_loss(z1, z2, 0.3, anchors=anchors),
        "nt_xent_decoupled": nt_xent_loss(z1, z2, 0.3, decoupled=True, anchors=anchors),
        "hardest": amcl_nt_xent_loss(z1, z2, taus, beta=0.1, topk=3, anchors=anchors),
        "infonce": amcl_nt_xent_loss(z1, z2, taus, beta=0.1, include_positive=True, anchors=anchors),
        "softmax": amcl_softmax_nt_xent_loss(z1, z2, taus, beta=0.1, anchors=anchors),
    }


@pytest.mark.parametrize("world", [2, 4])
def test_the_rows_of_every_simulated_process_add_up_to_the_whole_loss(world):
    """What W processes compute with ``anchors=process_anchors(B, r, W)``: the mean over r of their losses is
    the loss of the whole global batch, and so are the gradients of the features and of phi (float64)."""
    torch.manual_seed(11)
    local = 3
    z = torch.randn(2, 2 * local * world, 6, dtype=torch.float64, requires_grad=True)  # [view 1; view 2]
    phi = TemperatureNet(6, hidden=5, tau_min=0.05, tau_max=1.5).double()

    def losses(anchors):
        e = phi(z)  # the right factor; the left one is the anchors' rows of it
        taus = PairTemperatures(e if anchors is None else e[:, anchors], e, phi.tau_min, phi.tau_max)
        return _five_losses(*z.chunk(2, dim=1), taus, anchors)

    def grads(loss):
        inputs = [z, *phi.parameters()]
        return [torch.zeros_like(x) if g is None else g
                for x, g in zip(inputs, torch.autograd.grad(loss, inputs, allow_unused=True))]  # NT-Xent: no phi

    for name in losses(None):
        loss = losses(None)[name]  # each loss on its own graph: they share phi(z)
        expected = grads(loss)
        shares = [losses(process_anchors(local, r, world))[name] for r in range(world)]
        total = sum(shares) / world
        torch.testing.assert_close(total, loss, rtol=1e-12, atol=1e-12, msg=name)
        for got, want in zip(grads(total), expected):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)
        assert float(expected[0].abs().max()) > 0


def test_process_anchors_name_the_processes_views_in_the_global_stack():
    assert process_anchors(2, 0, 3).tolist() == [0, 1, 6, 7]
    assert process_anchors(2, 2, 3).tolist() == [4, 5, 10, 11]
    every = torch.cat([process_anchors(2, r, 3) for r in range(3)]).sort().values
    assert every.tolist() == list(range(12))
    with pytest.raises(ValueError, match="rank must be below world_size"):
        process_anchors(2, 3, 3)


def test_hardest_negatives_of_some_anchors_are_the_rows_of_the_whole_matrix():
    torch.manual_seed(12)
    z1, z2 = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    anchors = torch.tensor([7, 1, 4])
    full_values, full_index = hardest_negatives(view_similarities(z1, z2), 3)
    rows = view_similarities(z1, z2, anchors)
    assert rows.shape == (2, 3, 10)
    values, index = hardest_negatives(rows, 3, anchors=anchors)
    torch.testing.assert_close(values, full_values[:, anchors])
    assert torch.equal(index, full_index[:, anchors])
    with pytest.raises(ValueError, match="pass the anchors"):
        hardest_negatives(rows, 3)


@pytest.mark.parametrize("k", [1, 2, 9])  # 9 * h > 10 candidates: the scores' matrix product instead of a gather
@pytest.mark.parametrize("folded", [False, True])
def test_factored_temperatures_equal_the_matrix_at_every_index(k, folded):
    torch.manual_seed(13)
    phi = TemperatureNet(8, hidden=3 if folded else 8, tau_min=0.05, tau_max=1.5).double()
    assert phi._folds_last_layer() == folded
    z = torch.randn(2, 10, 8, dtype=torch.float64, requires_grad=True)
    factors = phi.pair_factors(z)
    matrix = phi.pair_temperatures(z)
    torch.testing.assert_close(factors.matrix(), matrix)
    index = torch.randint(0, 10, (2, 10, k))
    got = factors.at(index)
    torch.testing.assert_close(got, matrix.gather(-1, index))
    weights = torch.randn_like(got)
    torch.testing.assert_close(torch.autograd.grad((got * weights).sum(), z),
                               torch.autograd.grad((matrix.gather(-1, index) * weights).sum(), z))


def test_factored_and_full_temperatures_give_the_same_amcl_losses_and_gradients():
    torch.manual_seed(14)
    z1, z2 = (torch.randn(3, 6, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    phi = TemperatureNet(8, hidden=6, tau_min=0.05, tau_max=1.5).double()
    views = torch.cat([z1, z2], dim=1)
    for name in _five_losses(z1, z2, 0.5):
        if name.startswith("nt_xent"):
            continue
        factored = _five_losses(z1, z2, phi.pair_factors(views))[name]
        full = _five_losses(z1, z2, phi.pair_temperatures(views))[name]
        torch.testing.assert_close(factored, full, msg=name)
        grads = [torch.autograd.grad(loss, [z1, z2, *phi.parameters()]) for loss in (factored, full)]
        for got, want in zip(*grads):
            torch.testing.assert_close(got, want, msg=name)


def test_gradcheck_local_anchor_losses_with_factored_temperatures():
    torch.manual_seed(15)
    z = torch.randn(1, 8, 4, dtype=torch.float64, requires_grad=True)
    phi = TemperatureNet(4, hidden=5, tau_min=0.05, tau_max=2.0).double()
    anchors = process_anchors(2, 1, 2)

    def losses(views):
        e = phi(views)
        return sum(_five_losses(*views.chunk(2, dim=1), PairTemperatures(e[:, anchors], e, 0.05, 2.0),
                                anchors).values())

    assert torch.autograd.gradcheck(losses, (z,))


def _anchor_factors(z1, z2, anchors):
    phi = TemperatureNet(z1.shape[-1], hidden=6)  # no weight or activation of the matrix's size
    e = phi(torch.cat([z1, z2], dim=1))
    return PairTemperatures(e[:, anchors], e, phi.tau_min, phi.tau_max)


class MatricesMade(TorchDispatchMode):
    """Counts the float tensors of ``numel`` elements that ops allocate: outputs that share no storage with
    an input (in-place ops and views do)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if (isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() == self.numel
                    and t.untyped_storage().data_ptr() not in inputs):
                self.count += 1
        return out


@pytest.mark.parametrize("loss, forward, backward", [
    (lambda z1, z2, anchors: nt_xent_loss(z1, z2, 0.5, anchors=anchors), 2, 1),
    (lambda z1, z2, anchors: amcl_nt_xent_loss(z1, z2, 0.5, topk=2, anchors=anchors), 1, 0),
    (lambda z1, z2, rows: amcl_nt_xent_loss(z1, z2, _anchor_factors(z1, z2, rows), topk=2, anchors=rows), 1, 0),
    # k * d = 64 > 2B = 32: the selected entries are read from the matrices, which then take gradients
    (lambda z1, z2, rows: amcl_nt_xent_loss(z1, z2, _anchor_factors(z1, z2, rows), topk=8, anchors=rows), 2, 2),
], ids=["nt_xent", "hardest-constant", "hardest-factored", "hardest-factored-large-k"])
@pytest.mark.parametrize("local", [False, True], ids=["all-anchors", "local-anchors"])
def test_few_similarity_sized_matrices_are_made(loss, forward, backward, local):
    """The [C, R, 2B] float matrices the forward and the backward pass make. NT-Xent: the logits from one
    product and the exponentials its log-sum-exp keeps, then one gradient. Eq. 2.1 with a small k: one
    similarity matrix without a gradient, which only chooses the negatives (their similarities and
    temperatures are gathered products), and nothing of that size in the backward; with a large k the
    similarities and temperature scores of the chosen entries come from two matrices made without a
    gradient, and the backward scatters the k selected gradients of each into one matrix. (Before, with all
    anchors: 3 and 8 for NT-Xent, 2 and 6 for Eq. 2.1 with a constant, 7 and 14 with the full temperature
    matrix; 2 and 4 for the large k.)"""
    z1, z2 = torch.randn(2, 16, 8, requires_grad=True), torch.randn(2, 16, 8, requires_grad=True)
    anchors = process_anchors(8, 1, 2) if local else torch.arange(32)
    with MatricesMade(2 * anchors.shape[0] * 32) as made:
        value = loss(z1, z2, anchors)
    assert made.count == forward
    with MatricesMade(2 * anchors.shape[0] * 32) as made:
        value.backward()
    assert made.count == backward
