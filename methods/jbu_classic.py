"""Classic joint bilateral upsampling (Kopf et al., SIGGRAPH 2007): image-guided, nothing learned.

It shows how much of FeatUp's gain comes from the edge-aware form alone and how much from
learning. Each output pixel p is a normalised sum over LR pixels q in a (2r+1)^2 window
around p's position on the LR grid:

    out(p) = sum_q f(q) G_s(|p_lr - q|; sigma_s) G_r(|I(p) - I_lr(q)|; sigma_r) / sum_q (same weights)

with p_lr the continuous LR coordinate of p (align_corners=False, as bilinear), I the image
resized to the output size and I_lr the image average-pooled to the LR grid (the colour
each LR feature "saw"). Taps outside the LR grid are dropped, not padded.

Work and memory: HR pixels that fall in the same LR cell share their 25 LR neighbours, so
for each LR row the neighbourhoods (W', C, 25) are gathered once and one batched matmul
per chunk of HR rows applies the 25 weights: 2·C·25 flops per output value, and peak
memory is the output plus one LR row's neighbourhoods (W' x C x 25 values, 17 MB at W' = 448,
C = 384) and a matmul result bounded by ``chunk_elements``, whatever the size.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from bench.registry import METHODS
from methods.base import Upsampler, guidance_at


def lr_coords(n_out: int, n_lr: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuous LR coordinate of each output index (align_corners=False) and its nearest LR index."""
    u = (torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_lr / n_out) - 0.5
    centre = torch.floor(u + 0.5).clamp_(0, n_lr - 1).long()
    return u.to(dtype), centre


@METHODS.register
class JbuClassic(Upsampler):
    """Kopf et al.'s JBU per feature channel with fixed Gaussians (no weights to fit)."""

    name = "jbu_classic"
    version = "1"
    fit = "none"

    radius: ClassVar[int] = 2
    """Window half-width in LR pixels. Beside its own cell an HR pixel can reach a cell on the
    right side of an edge even when its own and next cells straddle it (the average-pooled colour
    of a straddling cell is a mix); a third ring is >= 2.5 LR pixels away (spatial weight < 0.05)."""
    sigma_spatial: ClassVar[float] = 1.0
    """In LR pixels: the feature grid is coarse, so the spatial term only orders the neighbours
    (own cell first, then the ring at distance 1) and the range term decides across edges."""
    sigma_range: ClassVar[float] = 0.1
    """On [0,1] RGB: distinct objects differ by > 0.2 in colour (weight < e^-2 at 0.2), while
    noise and mild shading (< 0.05) barely change weights; 0.1 is the usual bilateral choice.
    On clean flat-colour scenes 0.05 scores better, but it makes weights follow texture noise."""
    chunk_elements: ClassVar[int] = 1 << 22
    """Bound on the (W', C, rows) matmul result per step (16 MB in float32)."""

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        ho, wo = (int(s) for s in output_size)
        b, c, h, w = lr_feats.shape
        r, d = self.radius, 2 * self.radius + 1
        dtype, device = lr_feats.dtype, lr_feats.device

        # Centre channels: constant features come out exactly constant, and sums stay small.
        mean = lr_feats.mean(dim=(2, 3), keepdim=True)
        feats = F.pad(lr_feats - mean, [r] * 4)  # padded taps get weight 0 (masked below)
        guide_hr = guidance_at(image, (ho, wo), dtype)
        guide_lr = F.pad(F.adaptive_avg_pool2d(image.to(dtype), (h, w)), [r] * 4)

        # Spatial log-weights are separable: rows (Ho, d) + columns (Wo, d); -inf off the grid.
        uy, cy = lr_coords(ho, h, device, dtype)
        ux, cx = lr_coords(wo, w, device, dtype)
        offsets = torch.arange(-r, r + 1, device=device)
        log_sy = self._log_spatial(uy, cy, offsets, h)
        log_sx = self._log_spatial(ux, cx, offsets, w)
        inv_two_var_r = 1.0 / (2.0 * self.sigma_range**2)

        out = lr_feats.new_empty(b, c, ho, wo)
        rows_per_step = max(1, self.chunk_elements // max(1, wo * c))
        lr_rows, counts = torch.unique_consecutive(cy, return_counts=True)
        for i in range(b):
            y0 = 0
            for a, count in zip(lr_rows.tolist(), counts.tolist()):
                # LR neighbourhoods of every cell of LR row a, one per output column: (Wo, C|3, d*d)
                nb_f = self._neighbourhoods(feats[i, :, a : a + d], cx)
                nb_g = self._neighbourhoods(guide_lr[i, :, a : a + d], cx)
                for s in range(y0, y0 + count, rows_per_step):
                    e = min(s + rows_per_step, y0 + count)
                    g = guide_hr[i, :, s:e].permute(2, 0, 1)  # (Wo, 3, R)
                    dist2 = (g[..., None] - nb_g[:, :, None, :]).square_().sum(1)  # (Wo, R, d*d)
                    logits = (log_sy[None, s:e, :, None] + log_sx[:, None, None, :]).flatten(-2)  # (Wo, R, d*d)
                    weights = torch.softmax(logits - inv_two_var_r * dist2, dim=-1)
                    out[i, :, s:e] = torch.bmm(nb_f, weights.transpose(1, 2)).permute(1, 2, 0)
                y0 += count
        return out.add_(mean)

    def _log_spatial(self, u: torch.Tensor, centre: torch.Tensor, offsets: torch.Tensor, n_lr: int) -> torch.Tensor:
        """(n_out, 2r+1) log spatial weights of the taps centre+offset, -inf outside [0, n_lr)."""
        q = centre[:, None] + offsets[None, :]
        log_w = -((u[:, None] - q.to(u.dtype)) ** 2) / (2.0 * self.sigma_spatial**2)
        return log_w.masked_fill_((q < 0) | (q >= n_lr), float("-inf"))

    @staticmethod
    def _neighbourhoods(rows: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
        """(K, d, w+2r) padded LR rows -> (Wo, K, d*d): each output column's LR window, row-major taps."""
        k, d, _ = rows.shape
        windows = rows.unfold(2, d, 1)  # (K, d, w, d)
        windows = windows.permute(2, 0, 1, 3).reshape(-1, k, d * d)  # (w, K, d*d)
        return windows.index_select(0, cx)
