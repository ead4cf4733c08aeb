"""Batched Kabsch alignment over variable-size structures (flat layout).

The optimal proper rotation is computed without gradient (as in the paper's Kabsch baseline):
it is a constant for the loss that uses it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from energyloss_plugins import _checks
from energyloss_plugins.layouts import segment_mean, segment_sum, structure_index


@torch.no_grad()
def kabsch_rotation(mobile: Tensor, reference: Tensor, batch: Tensor, n_structures: int) -> Tensor:
    """Proper rotations ``R`` ``(B, d, d)`` minimising ``Σ |R (m_i - m̄) - (r_i - r̄)|²`` per structure.

    Args:
        mobile, reference: ``(N_total, d)`` positions.
        batch: ``(N_total,)`` structure index.
        n_structures: B.
    """
    m = mobile - segment_mean(mobile, batch, n_structures)[batch]
    r = reference - segment_mean(reference, batch, n_structures)[batch]
    # Covariance per structure in float64: SVD of near-degenerate (planar, linear) structures
    # is ill-conditioned in float32.
    outer = (m.double().unsqueeze(2) * r.double().unsqueeze(1)).reshape(m.shape[0], m.shape[1] * m.shape[1])
    d = mobile.shape[1]
    cov = segment_sum(outer, batch, n_structures).view(n_structures, d, d)
    u, _, vh = torch.linalg.svd(cov)
    # Flip the last singular direction where needed so that det(R) = +1 (no reflection).
    sign = torch.sign(torch.linalg.det(vh.transpose(1, 2) @ u.transpose(1, 2)))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    diag = torch.ones(n_structures, d, dtype=cov.dtype, device=cov.device)
    diag[:, -1] = sign
    rot = vh.transpose(1, 2) @ torch.diag_embed(diag) @ u.transpose(1, 2)
    return rot.to(mobile.dtype)


def kabsch_align(
    mobile: Tensor, reference: Tensor, batch: Tensor | None = None, n_structures: int | None = None
) -> Tensor:
    """Move ``mobile`` onto ``reference`` by the optimal rigid motion of each structure.

    Gradient flows through ``mobile`` (the rotation itself is a constant).

    Args:
        mobile, reference: ``(N_total, d)`` positions in Å.
        batch: ``(N_total,)`` structure id; None for a single structure.
        n_structures: B if ``batch`` holds ids in ``[0, B)``; None: the distinct ids of ``batch``.

    Returns:
        ``(N_total, d)`` aligned copy of ``mobile``.
    """
    if batch is None:
        batch, n_structures = torch.zeros(mobile.shape[0], dtype=torch.long, device=mobile.device), 1
    batch, n_structures = structure_index(batch, n_structures, validate_args=False)
    rot = kabsch_rotation(mobile, reference, batch, n_structures)
    m_c = segment_mean(mobile, batch, n_structures)
    r_c = segment_mean(reference, batch, n_structures).detach()
    return torch.einsum("nij,nj->ni", rot[batch], mobile - m_c[batch]) + r_c[batch]


def aligned_rmsd(pred: Tensor, target: Tensor, batch: Tensor | None = None, n_structures: int | None = None) -> Tensor:
    """``(B,)`` Kabsch-aligned RMSD in Å per structure (optimal proper rotation + translation, fixed atom order).

    Args:
        pred, target: ``(N_total, d)`` positions in Å (at least one atom).
        batch: ``(N_total,)`` structure id, None for one structure; ``n_structures`` as in
            :func:`kabsch_align`. A structure without atoms has RMSD NaN.

    For symmetry-aware RMSD (equivalent atoms may be permuted) use
    :func:`energyloss_plugins.metrics.symmetric_rmsd`.
    """
    _checks.check_positions("pred", pred, 2)
    _checks.check_positions("target", target, 2)
    _checks.check_same_shape(pred, target)
    if pred.shape[0] == 0:
        raise ValueError("pred and target hold no atoms; the RMSD needs at least one structure with atoms.")
    if batch is None:
        batch, n_structures = torch.zeros(pred.shape[0], dtype=torch.long, device=pred.device), 1
    else:
        _checks.check_batch(batch, pred.shape[0])
    batch, n_structures = structure_index(batch, n_structures)
    aligned = kabsch_align(pred, target, batch, n_structures)
    sq = ((aligned - target) ** 2).sum(-1)
    return segment_mean(sq, batch, n_structures, empty=float("nan")).sqrt()


def random_rotations(n: int, dim: int = 3, *, dtype: torch.dtype = torch.float32, device=None,
                     generator: torch.Generator | None = None) -> Tensor:
    """``(n, dim, dim)`` uniformly random proper rotations (QR of Gaussian matrices, sign-fixed)."""
    a = torch.randn(n, dim, dim, dtype=torch.float64, generator=generator)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)  # Haar measure on O(d)
    det = torch.linalg.det(q)
    q[:, :, 0] = q[:, :, 0] * det.unsqueeze(1)  # reflections → rotations
    return q.to(dtype=dtype, device=device)
