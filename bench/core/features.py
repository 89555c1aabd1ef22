"""Feature operations shared by methods, tasks and the fitting stage: per-pixel standardisation (what
FeatUp's upsamplers see and predict) and the PCA that per-image methods fit in."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def standardise(feats: torch.Tensor) -> torch.Tensor:
    """LayerNorm over channels without affine, per pixel: what FeatUp's upsamplers see and predict."""
    return F.layer_norm(feats.permute(0, 2, 3, 1), feats.shape[1:2]).permute(0, 3, 1, 2)


def pca_basis(feats: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(C,) mean and (C, q) orthonormal basis of the top q = min(dim, C) components of (N, C, h, w) features."""
    rows = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).double()
    mean = rows.mean(0)
    _, _, vh = torch.linalg.svd(rows - mean, full_matrices=False)
    return mean.float(), vh[: min(dim, feats.shape[1])].T.float().contiguous()


def to_pca(feats: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    return torch.einsum("nchw,cq->nqhw", feats - mean[:, None, None], basis)


def from_pca(feats: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    return torch.einsum("nqhw,cq->nchw", feats, basis) + mean[:, None, None]


def project(feats: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """(B,C,h,w) features through per-image (B, D, C) channel projections: (B,D,h,w)."""
    return torch.einsum("bchw,bdc->bdhw", feats, proj.to(feats))
