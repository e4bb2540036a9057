"""Temperature maths shared by every AMCL loss: the pair temperatures and the regulariser Omega.

All of it runs in float32, also under autocast: tau_min is 1e-5, so 1/tau reaches 1e5.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Union

import torch
from torch import Tensor

from amcl.losses.checks import check_count, check_temperature_bounds
from amcl.losses.kernels import at_least_float32

__all__ = [
    "NEGATIVE_REGULARIZERS",
    "PairTemperatures",
    "Temperatures",
    "at_least_float32",
    "negative_regularization",
    "omega",
    "pair_temperatures",
    "paired_temperatures",
    "temperature_from_scores",
]

#: The negative side of the regulariser over an anchor's negatives tau_n, n = 1..k:
#: ``mean_omega`` is mean_n Omega(tau_n) (Eq. 2.1 for k = 1, averaged for k > 1), ``sum_log_inverse``
#: is sum_n (log tau_n + 1/tau_n), what the authors' later code computes (no d'/2, summed over k).
NEGATIVE_REGULARIZERS = ("mean_omega", "sum_log_inverse")


def gathers_rows(k: int, width: int, candidates: int) -> bool:
    """Whether k selected entries per row are cheaper as products of gathered rows (``k * width`` values per
    row) than read from the whole ``[..., N, M]`` product (M per row, and its gradient is dense)."""
    return k * width <= candidates


def selected_products(left: Tensor, right: Tensor, index: Tensor, values: Tensor | None = None) -> Tensor:
    """``<left_i, right_index[c, i, j]>``: ``[C, N, k]`` for ``[C, N, h]``, ``[C, M, h]`` and an index
    ``[C, N, k]`` into the M rows of ``right`` (C may be 1 in either factor). For small k the chosen rows are
    gathered (``[C, N, k, h]``, no ``[C, N, M]`` tensor), else the entries are read from the one matrix
    product, whose backward goes through the k selected gradients only (:class:`_SelectedProducts`).
    ``values``, when the caller has already read these entries from that product (without a gradient),
    saves making it again."""
    heads = max(left.shape[0], right.shape[0], index.shape[0])
    index = index.expand(heads, *index.shape[1:])
    if not gathers_rows(index.shape[-1], left.shape[-1], right.shape[-2]):
        return _SelectedProducts.apply(left, right, index, values)
    chosen = right.expand(heads, *right.shape[1:])[torch.arange(heads, device=index.device)[:, None, None], index]
    # a sum of products, not a batch of C*N tiny matrix products
    return (chosen * left.expand(heads, *left.shape[1:]).unsqueeze(-2)).sum(-1)


def _sum_to_heads(grad: Tensor, like: Tensor) -> Tensor:
    """A ``[C, ..]`` gradient of a factor that one head broadcast to C heads, summed back to its one head."""
    return grad.sum(0, keepdim=True) if like.shape[0] != grad.shape[0] else grad


def sparse_gradient(k: int, candidates: int, device: torch.device) -> bool:
    """Whether the gradient of k selected entries per row of an ``[..., N, M]`` product multiplies the factors
    as a sparse matrix rather than scattered into a dense one: on the CPU when at most 1 in 16 entries is
    selected (measured on the 2-core CI CPU, C = 3, h = 128: 2.2x faster at 5%, even at 10%, 2x slower at
    20%). GPUs keep the dense products, whose speed there no measurement has yet weighed against cuSPARSE's."""
    return device.type == "cpu" and 16 * k <= candidates


def _selected_sparse(grad: Tensor, index: Tensor, candidates: int) -> Tensor:
    """The ``[C*N, C*M]`` block-diagonal sparse matrix of the selected entries' gradients (head c's block holds
    ``grad[c]`` at ``index[c]``; repeated entries add up when multiplied), so one sparse product serves
    every head."""
    heads, n, k = index.shape
    rows = torch.arange(heads * n, device=index.device).repeat_interleave(k)
    columns = index + candidates * torch.arange(heads, device=index.device)[:, None, None]
    return torch.sparse_coo_tensor(torch.stack([rows, columns.reshape(-1)]), grad.reshape(-1),
                                   (heads * n, heads * candidates), check_invariants=False)


def _sparse_times(selected: Tensor, factor: Tensor, heads: int) -> Tensor:
    """``selected @ factor`` for a block-diagonal sparse matrix and a ``[C, R, h]`` factor (C may be 1)."""
    width = factor.shape[-1]
    return torch.sparse.mm(selected, factor.expand(heads, -1, -1).reshape(-1, width)).view(heads, -1, width)


class _SelectedProducts(torch.autograd.Function):
    """The entries ``(left @ right^T).gather(-1, index)``, differentiable in both factors, with a backward
    that goes through the k selected gradients of each row only.

    Autograd would scatter them into a dense ``[C, N, M]`` matrix G and multiply it with each factor: two
    matrix products. Here, when at most 1 in 16 entries is selected (:func:`sparse_gradient`), G stays a sparse
    matrix of C*N*k entries; otherwise, when ``left is right`` (the N x N Gram matrix of the stacked views, or
    of phi's embeddings of them), the dense G is made symmetric, ``G + G^T`` built by two scatters, and one
    product ``(G + G^T) left`` is the whole gradient. Repeated indices add up.
    """

    @staticmethod
    def forward(ctx: Any, left: Tensor, right: Tensor, index: Tensor, values: Tensor | None) -> Tensor:
        if values is None:
            values = (left @ right.transpose(-1, -2)).expand(index.shape[0], -1, -1).gather(-1, index)
        ctx.symmetric = left is right and left.shape[0] == index.shape[0]
        ctx.save_for_backward(left, right, index)
        return values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        left, right, index = ctx.saved_tensors
        heads, n, m = index.shape[0], left.shape[-2], right.shape[-2]
        wants_left, wants_right = ctx.needs_input_grad[:2]
        if sparse_gradient(index.shape[-1], m, grad.device):
            selected = _selected_sparse(grad, index, m)
            if ctx.symmetric:
                return _sparse_times(selected, left, heads) + _sparse_times(selected.t(), left, heads), None, None, None
            grad_left = _sum_to_heads(_sparse_times(selected, right, heads), left) if wants_left else None
            grad_right = _sum_to_heads(_sparse_times(selected.t(), left, heads), right) if wants_right else None
            return grad_left, grad_right, None, None
        if ctx.symmetric:
            rows = torch.arange(n, device=index.device).unsqueeze(-1)
            flat, values = grad.new_zeros(heads, n * m), grad.reshape(heads, -1)
            flat.scatter_add_(-1, (rows * m + index).reshape(heads, -1), values)  # G
            flat.scatter_add_(-1, (index * m + rows).reshape(heads, -1), values)  # + G^T
            return flat.view(heads, n, m) @ left, None, None, None
        scattered = grad.new_zeros(heads, n, m).scatter_add_(-1, index, grad)
        grad_left = _sum_to_heads(scattered @ right, left) if wants_left else None
        grad_right = _sum_to_heads(scattered.transpose(-1, -2) @ left, right) if wants_right else None
        return grad_left, grad_right, None, None


def temperature_from_scores(scores: Tensor, tau_min: float, tau_max: float) -> Tensor:
    """Map scores s = <phi(a), phi(b)> to tau = tau_min + (tau_max - tau_min) * sigmoid(-s).

    The bounded form of the paper's sigma(r) (Sec. 3): a large score (phi says "alike")
    gives a low temperature.
    """
    check_temperature_bounds(tau_min, tau_max)
    return tau_min + (tau_max - tau_min) * torch.sigmoid(-at_least_float32(scores))


def pair_temperatures(phi_a: Tensor, phi_b: Tensor, tau_min: float, tau_max: float) -> Tensor:
    """Temperatures of all pairs (a_i, b_j) from one matrix product.

    Args:
        phi_a: ``[..., N, h]`` temperature embeddings phi(a) (see :class:`amcl.nn.TemperatureNet`).
        phi_b: ``[..., M, h]`` temperature embeddings phi(b).

    Returns:
        ``[..., N, M]`` with entry (i, j) = tau(a_i, b_j).

    Example:
        >>> p = torch.zeros(4, 8)
        >>> pair_temperatures(p, p, 0.0, 2.0)[0, 0].item()  # sigmoid(0) = 0.5
        1.0
    """
    _check_embeddings(phi_a, phi_b, same_rows=False)
    with torch.autocast(phi_a.device.type, enabled=False):
        scores = at_least_float32(phi_a) @ at_least_float32(phi_b).transpose(-1, -2)
        return temperature_from_scores(scores, tau_min, tau_max)


class PairTemperatures(NamedTuple):
    """A pair-temperature matrix kept as its two factors, ``tau(a_i, b_j) = tau_min + (tau_max - tau_min) *
    sigmoid(-<left_i, right_j>)`` (the bounded sigma of Sec. 3), so that a loss computes only the entries
    it uses: the positive and the k hardest negatives of every anchor (Eq. 2.1 / 2.4) are ``O(N k h)``
    work instead of the ``O(N M)`` matrix. :meth:`matrix` gives the whole ``[C, N, M]`` matrix (the
    softmax form reads every entry).

    ``left`` is ``[C, N, h]`` (the anchors' side), ``right`` is ``[C, M, h]`` (the candidates'); 2-D
    factors are one head. :meth:`amcl.nn.TemperatureNet.pair_factors` makes them; with several
    processes ``left`` holds this process's anchors and ``right`` the gathered candidates.

    Example:
        >>> e = torch.zeros(1, 4, 8)
        >>> taus = PairTemperatures(e, e, 0.0, 2.0)
        >>> taus.at(torch.tensor([[[1], [0], [3], [2]]])).flatten().tolist()  # sigmoid(0) = 0.5
        [1.0, 1.0, 1.0, 1.0]
    """

    left: Tensor
    right: Tensor
    tau_min: float
    tau_max: float

    @property
    def pair_shape(self) -> tuple[int, ...]:
        """The shape of the matrix: ``(C, N, M)``, or ``(N, M)`` for 2-D factors."""
        heads = torch.broadcast_shapes(self.left.shape[:-2], self.right.shape[:-2])
        return (*heads, self.left.shape[-2], self.right.shape[-2])

    def matrix(self) -> Tensor:
        """Every entry: ``[C, N, M]`` from one matrix product."""
        return pair_temperatures(self.left, self.right, self.tau_min, self.tau_max)

    def scores(self) -> Tensor:
        """Every entry's score ``<left_i, right_j>`` (float32 at least, under autocast too): ``[C, N, M]``."""
        _check_embeddings(self.left, self.right, same_rows=False)
        with torch.autocast(self.left.device.type, enabled=False):
            return at_least_float32(self.left) @ at_least_float32(self.right).transpose(-1, -2)

    def at(self, index: Tensor) -> Tensor:
        """The entries ``tau(a_i, b_index[c, i, j])``: ``[C, N, k]`` for an index ``[C, N, k]`` into the M
        candidates. For small k the candidates' factors are gathered (``[C, N, k, h]``, no ``[C, N, M]``
        tensor at all); when k*h exceeds M one matrix product of scores is cheaper, and only the k gathered
        scores pass through the sigmoid."""
        _check_embeddings(self.left, self.right, same_rows=False)
        with torch.autocast(self.left.device.type, enabled=False):
            left, right = at_least_float32(self.left), at_least_float32(self.right)
            squeeze = left.dim() == 2 and right.dim() == 2
            if squeeze:
                left, right, index = left.unsqueeze(0), right.unsqueeze(0), index.unsqueeze(0)
            if left.dim() != 3 or right.dim() != 3:
                raise ValueError(f"PairTemperatures.at needs [C, N, h] and [C, M, h] factors, got "
                                 f"{tuple(self.left.shape)} and {tuple(self.right.shape)}")
            taus = temperature_from_scores(selected_products(left, right, index), self.tau_min, self.tau_max)
            return taus.squeeze(0) if squeeze else taus


#: A temperature source: a constant, a tensor of per-pair temperatures, or their factors.
Temperatures = Union[float, Tensor, PairTemperatures]


def _check_embeddings(phi_a: Tensor, phi_b: Tensor, same_rows: bool) -> None:
    for name, phi in (("phi_a", phi_a), ("phi_b", phi_b)):
        if not torch.is_tensor(phi) or not phi.is_floating_point() or phi.dim() < 2:
            got = f"shape {tuple(phi.shape)}" if torch.is_tensor(phi) else type(phi).__name__
            raise (ValueError if torch.is_tensor(phi) else TypeError)(
                f"{name} must be a floating-point tensor [..., N, h] of temperature embeddings, got {got}")
    if phi_a.shape[-1] != phi_b.shape[-1] or (same_rows and phi_a.shape != phi_b.shape):
        need = "the same shape" if same_rows else "the same embedding size h (last dimension)"
        raise ValueError(f"phi_a and phi_b need {need}, got {tuple(phi_a.shape)} and {tuple(phi_b.shape)}")


def paired_temperatures(phi_a: Tensor, phi_b: Tensor, tau_min: float, tau_max: float) -> Tensor:
    """Temperatures of the row-wise pairs (a_i, b_i): ``[..., N, h] x [..., N, h] -> [..., N]``."""
    _check_embeddings(phi_a, phi_b, same_rows=True)
    with torch.autocast(phi_a.device.type, enabled=False):
        return temperature_from_scores((at_least_float32(phi_a) * at_least_float32(phi_b)).sum(-1), tau_min, tau_max)


def omega(tau: Tensor, dim: int) -> Tensor:
    """The temperature regulariser Omega(tau) = (d'/2) * log(tau) + 1/tau (Eq. 2.1-2.4).

    ``dim`` is d', the dimension of the projected features. Omega is minimal at tau = 2/d'.
    """
    check_count("dim", dim)
    tau = at_least_float32(tau)
    return 0.5 * dim * torch.log(tau) + torch.reciprocal(tau)


def negative_regularization(
    tau: Tensor, dim: int, kind: str = "mean_omega", exclude: Tensor | None = None
) -> Tensor:
    """The negative side of the regulariser per anchor, over the last axis of ``tau`` (see
    :data:`NEGATIVE_REGULARIZERS`): mean_n Omega(tau_n) or sum_n (log tau_n + 1/tau_n).

    ``exclude`` holds indices along the last axis that are not negatives (SimCLR's full ``[C, 2B, 2B]``
    matrix holds each view itself and its positive): they are left out of the sum and of the count,
    without a masked copy of ``tau``.

    Example:
        >>> tau = torch.tensor([[0.5, 1.0]])
        >>> negative_regularization(tau, 2, "sum_log_inverse")  # (log 0.5 + 2) + (log 1 + 1)
        tensor([2.3069])
    """
    if kind not in NEGATIVE_REGULARIZERS:
        raise ValueError(f"unknown negative regulariser {kind!r}; choose one of: {', '.join(NEGATIVE_REGULARIZERS)}")
    tau = at_least_float32(tau)
    values = omega(tau, dim) if kind == "mean_omega" else torch.log(tau) + torch.reciprocal(tau)
    total, count = values.sum(-1), values.shape[-1]
    if exclude is not None:
        total = total - values.gather(-1, exclude).sum(-1)
        count -= exclude.shape[-1]
    return total / count if kind == "mean_omega" else total
