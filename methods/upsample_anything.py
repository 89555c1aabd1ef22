"""Upsample Anything (Seo, Hamilton and Kim 2025, "Upsample Anything: A Simple and Hard to Beat Baseline for
Feature Upsampling", arXiv 2511.16301): a per-pixel anisotropic Gaussian joint-bilateral kernel, fitted to each
image at test time with the image itself as the training signal, then applied to the features.

Written after github:seominseok0429/Upsample-Anything_Pytorch at commit 6a02ae765fa1e2f59043f743c602483e2d7312f8
(src/upsample_anything.py, last changed in ce5b75a: ``UPA``, ``LearnablePixelwiseAnisoJBU_NoParent``,
``gs_jbu_aniso_noparent``). Equal in numbers to their code run on the CPU in float64
(tests/test_upsample_anything.py against tests/fixtures/upsample_anything/, made by running it: MAKE.md there).

What their ``UPA(image, features)`` does, for an image I (3, H, W) in [0, 1] and features f (C, h, w), s = H / h:

- The kernel: four maps on the feature grid, each (h, w): log sigma_x and log sigma_y (spatial standard
  deviations in HR pixels, initialised to log 16), theta (initialised to 0, used as pi tanh(theta)) and
  log sigma_r (the colour standard deviation, initialised to log 0.12): 4 h w numbers per image.
- Applied to a map g on the feature grid, HR pixel p (row Y, column X) takes the LR cell nearest to its
  continuous LR position ((Y + 0.5) / s - 0.5, rounded, clamped) and the 17 x 17 cells q at offsets -8..8
  from it, indices clamped into the grid (so a border cell is counted once per offset that clamps to it);
  of these it keeps the offsets within a disc of radius R(p) = clamp(ceil(2 max(sigma_x, sigma_y)
  bilinearly resized to H x W at p), 1, 8) cells. Each kept q weighs
      exp(-x'^2 / (2 sigma_x(q)^2 + 1e-8) - y'^2 / (2 sigma_y(q)^2 + 1e-8)
          - |I(p) - I_lr(q)|^2 / (2 sigma_r(q)^2 + 1e-8))
  with (x', y') = p - centre(q) in HR pixels rotated by theta(q), centre(q) = (q + 0.5) s - 0.5 and I_lr the
  image resized bilinearly (no antialiasing) to h x w; the output is the weights' normalised sum of g(q).
- The fit: the image resized bicubically (no antialiasing, not clamped) to h x w is upsampled by the kernel
  and compared with the image by the mean absolute error; Adam (lr 0.1, betas 0.9/0.999, eps 1e-8) with
  LambdaLR lr 0.1 gamma^k, gamma = (1e-9 / 1e-1)^(1 / 5100): the schedule of their ``max_steps = 5100``,
  but their loop breaks after step 50, so 51 Adam steps run, at lr 0.1 down to 0.0835. Nothing is random.
- The render: the fitted kernel applied to the features (their code chunks the 289 offsets in eval mode and
  merges the chunks by a running maximum; the result is the same normalised sum).
- Dead code in theirs: the weights are normalised after subtracting their maximum, so the denominator is
  at least 1 and neither its clamp at 1e-8 nor the bilinear fallback where it is under 1e-6 ever acts (ours
  has neither). Their clamps of the gathered sigmas at 1e-6 are kept.

Where ours differs, and why:
- Precision: their code runs in float32 with float16 autocast and a GradScaler on CUDA. No op of their kernel
  is on autocast's float16 list (no matmul or convolution; exp, pow, sum, l1_loss and the resizes are on its
  float32 list), and the GradScaler multiplies the loss and gradients by powers of two (exact), so their
  numbers are float32 numbers; ours are float32 too (float64 for float64 features, as the tests use).
- Output sizes that are not a whole multiple of the feature grid: their code takes s = int(H / h) for both
  axes (its docstring assumes H = s h and W = s w). Otherwise it runs only where int(H / s) = h and
  int(W / s) = w, placing the cells s pixels apart on both axes (so the grid spans s h x s w of the image), and
  fails or indexes maps of another shape elsewhere. Ours uses each axis's exact ratio H / h and W / w in every
  place theirs uses s, and resizes to exactly h x w; where H = s h and W = s w this is theirs
  (their bicubic resize with scale_factor 1 / s samples where ours does with the size, except at s = 49,
  where 1 / (1 / 49) != 49 moves it by one rounding). Outputs smaller than the feature grid are refused.
- The HR image is the image at the output size (resized, antialiased, when the two differ, as the suite's
  other guided methods do); their image is the output size by construction.
- A batch is fitted image by image (their UPA takes one image).
- Order of operations, which changes rounding only: ours evaluates the 197 offsets inside the largest disc
  (theirs all 289 of the square, whose corners always weigh exactly 0), multiplies by the reciprocals where
  theirs divides, takes a softmax where theirs subtracts a running maximum, applies the render as one matmul
  per feature cell, and fits in bands of HR rows whose gradients are summed (bounded memory: theirs holds
  the whole image's 289 taps for autograd).
- Exact tiles (``forward_region``): the kernel is fitted once per image on the whole image, then each tile
  applies it; a tile equals the same pixels of the whole output up to the matmul's rounding.

The fit amplifies rounding. At the start sigma_x = sigma_y, where theta does not change the kernel: its
gradient is 0 in exact arithmetic and rounding noise (1e-20 in float64) in code, which Adam's first step
normalises into a step of about 1e-13; the next 50 steps grow such a difference about 1e5-fold. So two
correct float64 implementations agree to about 1e-7 on outputs of size 2.5 (ours and theirs: 6e-8 and 1e-8 on
the fixture's two cases; theirs against itself with its training softmax chunked: 4e-8), and in float32 (the
suite's and their GPU's precision) individual output values of equally correct fits differ by tenths (their
float32 run against their float64 run: 0.17 and 0.31 at most on outputs of size 2.5): the two agree in what
they compute, not in float32 digits.

Features: the backbone's own (their callers feed DINOv2's output tokens, not standardised); the output is a
convex combination of them per pixel.

No released weights: nothing is trained across images (fit = "none"); the per-image fit runs in ``forward``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from bench.registry import METHODS
from methods.base import Upsampler, check_batch, guidance_at
from methods.tiling import CHUNK_BYTES, Region, Span, assemble, spans

R_MAX = 8
"""Largest neighbourhood radius, in feature cells (their R_max)."""
ALPHA = 2.0
"""R(p) = clamp(ceil(ALPHA sigma), 1, R_MAX) (their alpha_dyn)."""
INIT_SIGMA, INIT_SIGMA_R = 16.0, 0.12
"""Initial spatial sigma (HR pixels) and colour sigma (on [0, 1] RGB)."""
SIGMA_FLOOR, EPS = 1e-6, 1e-8
"""Their clamp of the gathered sigmas and the constant added to 2 sigma^2."""
LR, STEPS, SCHEDULE_STEPS, LR_END = 0.1, 51, 5100, 1e-9
"""Adam lr 0.1; 51 steps run (their loop breaks at step 50); the lr decays as if to 1e-9 over 5100 steps."""
FIT_TAPS = 1 << 21
"""Taps (HR pixels x 197) per band of the fit; its autograd keeps about 15 tensors of this size (120 MB in float32)."""
FIT_CACHE_BYTES = 256 * 2**20
"""The fit keeps each band's constants (tap indices, colour distances, the small image's taps) across its 51 steps
when all bands' together fit in this (a 224² image in float32 does); otherwise it recomputes them every step."""

_OFFSETS = torch.arange(-R_MAX, R_MAX + 1)
_DY, _DX = (t.reshape(-1) for t in torch.meshgrid(_OFFSETS, _OFFSETS, indexing="ij"))
_DISC = _DY ** 2 + _DX ** 2 <= R_MAX ** 2
TAP_DY, TAP_DX = _DY[_DISC], _DX[_DISC]
"""The 197 offsets (row, column) in cells within the largest disc, row-major as theirs: the only ones any radius
keeps. Their code also evaluates the other 92 of the 17 x 17 square, which always weigh exactly 0."""
TAP_RAD2 = (TAP_DY ** 2 + TAP_DX ** 2).to(torch.int32)
N_TAPS = int(_DISC.sum())


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (the tests' precision); anything else is fitted and applied in float32 (theirs)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class AnisoKernel(nn.Module):
    """One image's kernel: raw log sigma_x, log sigma_y, theta and log sigma_r on the (h, w) feature grid
    (their ``LearnablePixelwiseAnisoJBU_NoParent``'s parameters, without its leading 1 x 1 dimensions)."""

    def __init__(self, grid: tuple[int, int], dtype: torch.dtype = torch.float32,
                 device: torch.device | None = None) -> None:
        super().__init__()
        full = lambda value: nn.Parameter(torch.full(grid, value, dtype=dtype, device=device))  # noqa: E731
        self.sx_raw = full(math.log(INIT_SIGMA))
        self.sy_raw = full(math.log(INIT_SIGMA))
        self.th_raw = full(0.0)
        self.sr_raw = full(math.log(INIT_SIGMA_R))

    def maps(self) -> "KernelMaps":
        """What the weights read per cell; the radius uses the unclamped sigmas, as theirs."""
        sx, sy, sr = self.sx_raw.exp(), self.sy_raw.exp(), self.sr_raw.exp()
        theta = math.pi * torch.tanh(self.th_raw)
        sxc, syc, src = (m.clamp_min(SIGMA_FLOOR) for m in (sx, sy, sr))
        per_cell = torch.stack([torch.cos(theta), torch.sin(theta), 1 / (2 * sxc ** 2 + EPS),
                                1 / (2 * syc ** 2 + EPS), 1 / (2.0 * src * src + EPS)])
        return KernelMaps(per_cell.reshape(5, -1), torch.maximum(sx, sy))


@dataclass
class KernelMaps:
    """Per-cell quantities of a kernel: ``per_cell`` (5, h w) holds cos theta, sin theta and the reciprocals of
    2 sigma_x^2 + 1e-8, 2 sigma_y^2 + 1e-8 and 2 sigma_r^2 + 1e-8 (one gather fetches all five per tap);
    ``sigma_max`` (h, w) is max(sigma_x, sigma_y) unclamped, for the radius."""
    per_cell: torch.Tensor
    sigma_max: torch.Tensor

    def detached(self) -> "KernelMaps":
        return KernelMaps(self.per_cell.detach(), self.sigma_max.detach())

    def radius(self, size: tuple[int, int]) -> torch.Tensor:
        """(H, W) neighbourhood radius of every HR pixel: ceil(ALPHA sigma resized bilinearly) in [1, R_MAX]."""
        with torch.no_grad():
            sigma = F.interpolate(self.sigma_max[None, None], size, mode="bilinear", align_corners=False)[0, 0]
            return torch.ceil(ALPHA * sigma).clamp_(1, R_MAX).to(torch.int32)


@dataclass
class Axis:
    """One axis's geometry: for each HR row (or column), the clamped cell index of each of the 197 taps and the
    pixel's signed distance to that cell's centre in HR pixels, (n, 197) each; ``centre``: the nearest cell."""
    index: torch.Tensor
    offset: torch.Tensor
    centre: torch.Tensor

    @classmethod
    def of(cls, n_out: int, n_lr: int, taps: torch.Tensor, dtype: torch.dtype, device: torch.device) -> "Axis":
        scale = n_out / n_lr  # theirs: int(H / h) on both axes, the same wherever H = s h and W = s w
        y = torch.arange(n_out, device=device, dtype=dtype)
        centre = torch.round((y + 0.5) / scale - 0.5).clamp(0, n_lr - 1).long()  # half to even, as theirs
        index = (centre[:, None] + taps.to(device)).clamp(0, n_lr - 1)
        return cls(index, y[:, None] - ((index.to(dtype) + 0.5) * scale - 0.5), centre)

    def __getitem__(self, span: Span) -> "Axis":
        return Axis(self.index[span[0]:span[1]], self.offset[span[0]:span[1]], self.centre[span[0]:span[1]])


@dataclass
class Block:
    """What a block of nr x nc HR pixels needs besides the kernel: its rows' and columns' geometry, the flat
    cell index of each tap (nr, nc, 197) and each tap's squared colour distance |I(p) - I_lr(q)|^2."""
    rows: Axis
    cols: Axis
    flat: torch.Tensor
    dist2: torch.Tensor

    @classmethod
    def of(cls, guide: torch.Tensor, guide_lr: torch.Tensor, rows: Axis, cols: Axis) -> "Block":
        """``guide`` (3, nr, nc): the HR image on the block; ``guide_lr`` (3, h, w): it resized to the grid."""
        flat = rows.index[:, None, :] * guide_lr.shape[-1] + cols.index[None, :, :]
        with torch.no_grad():
            at = guide_lr.reshape(3, -1).index_select(1, flat.reshape(-1)).view(3, *flat.shape)
            d = [guide[c][:, :, None] - at[c] for c in range(3)]
            dist2 = d[0] ** 2 + d[1] ** 2 + d[2] ** 2
        return cls(rows, cols, flat, dist2)

    def log_weights(self, maps: KernelMaps, radius: torch.Tensor) -> torch.Tensor:
        """(nr, nc, 197) log weights of the block's taps under the kernel ``maps``; -inf outside each pixel's
        disc (``radius``: (nr, nc))."""
        cos, sin, inv_x, inv_y, inv_r = maps.per_cell.index_select(1, self.flat.reshape(-1)).view(5, *self.flat.shape)
        dy, dx = self.rows.offset[:, None, :], self.cols.offset[None, :, :]
        x_p = torch.addcmul(dx * cos, dy, sin)   # dx cos + dy sin
        y_p = torch.addcmul(dy * cos, dx, sin, value=-1)  # -dx sin + dy cos
        # theirs: -x_p^2 / (2 sx^2 + 1e-8) - y_p^2 / (2 sy^2 + 1e-8) - d^2 / (2 sr^2 + 1e-8), divisions as products
        energy = torch.addcmul(torch.addcmul(x_p.square() * inv_x, y_p.square(), inv_y), self.dist2, inv_r)
        outside = TAP_RAD2.to(radius.device) > (radius * radius)[:, :, None]
        return (-energy).masked_fill(outside, float("-inf"))


def fit_kernel(guide: torch.Tensor, grid: tuple[int, int], losses: list[float] | None = None) -> AnisoKernel:
    """Their UPA's optimisation on one (3, H, W) HR image in [0, 1]: the kernel on the (h, w) = ``grid`` that
    best upsamples the image's bicubic h x w version back to it. ``losses``, if given, gets each step's loss."""
    height, width = guide.shape[-2:]
    with torch.inference_mode(False), torch.enable_grad():
        hr = guide.detach().clone()  # an ordinary tensor even when the caller runs in inference mode
        small = F.interpolate(hr[None], size=grid, mode="bicubic", align_corners=False)[0].reshape(3, -1)
        guide_lr = F.interpolate(hr[None], size=grid, mode="bilinear", align_corners=False)[0]
        rows = Axis.of(height, grid[0], TAP_DY, hr.dtype, hr.device)
        cols = Axis.of(width, grid[1], TAP_DX, hr.dtype, hr.device)
        bands = spans(height, max(1, FIT_TAPS // (width * N_TAPS)))
        per_tap = 8 + 4 * hr.element_size()  # flat index, colour distance, 3 taps of the small image
        cached = height * width * N_TAPS * per_tap <= FIT_CACHE_BYTES
        cache: dict[Span, tuple[Block, torch.Tensor]] = {}

        def band_constants(band: Span) -> tuple[Block, torch.Tensor]:
            if band in cache:
                return cache[band]
            block = Block.of(hr[:, band[0]:band[1]], guide_lr, rows[band], cols)
            taps = small.index_select(1, block.flat.reshape(-1)).view(3, *block.flat.shape)
            if cached:
                cache[band] = block, taps
            return block, taps

        kernel = AnisoKernel(grid, hr.dtype, hr.device)
        opt = torch.optim.Adam(kernel.parameters(), lr=LR)
        gamma = (LR_END / LR) ** (1.0 / SCHEDULE_STEPS)
        schedule = LambdaLR(opt, lr_lambda=lambda step: gamma ** step)  # lr 0.1 gamma^k at step k, as theirs
        count = 3 * height * width  # the mean absolute error over the whole image, summed band by band
        for _ in range(STEPS):
            opt.zero_grad(set_to_none=True)
            radius = kernel.maps().radius((height, width))
            total = hr.new_zeros(())
            for band in bands:
                block, taps = band_constants(band)
                weights = torch.softmax(block.log_weights(kernel.maps(), radius[band[0]:band[1]]), dim=-1)
                pred = (taps * weights).sum(-1)
                loss = (pred - hr[:, band[0]:band[1]]).abs().sum() / count
                loss.backward()
                total += loss.detach()
            if losses is not None:
                losses.append(float(total))  # one device sync per step
            opt.step()
            schedule.step()
    return kernel


@dataclass
class Fitted:
    """One image's fitted kernel with what every tile of its render shares: the detached per-cell maps, the HR
    radius map, the HR image and it resized to the grid, and the two axes."""
    maps: KernelMaps
    radius: torch.Tensor
    guide: torch.Tensor
    guide_lr: torch.Tensor
    rows: Axis
    cols: Axis

    @classmethod
    def of(cls, kernel: AnisoKernel, guide: torch.Tensor, grid: tuple[int, int]) -> "Fitted":
        with torch.no_grad():
            maps = kernel.maps().detached()
        size = tuple(guide.shape[-2:])
        guide_lr = F.interpolate(guide[None], size=grid, mode="bilinear", align_corners=False)[0]
        rows = Axis.of(size[0], grid[0], TAP_DY, guide.dtype, guide.device)
        cols = Axis.of(size[1], grid[1], TAP_DX, guide.dtype, guide.device)
        return cls(maps, maps.radius(size), guide, guide_lr, rows, cols)

    def render(self, feats: torch.Tensor, rows: Span, cols: Span, out: torch.Tensor) -> torch.Tensor:
        """Rows x cols of the kernel applied to (C, h, w) ``feats``, written into ``out`` (C, rows, cols).

        HR pixels of one feature cell share its 197 neighbours, so each cell's part of a block of HR rows is one
        (C, 197) x (197, pixels) matmul; a block's weights and their temporaries stay under CHUNK_BYTES."""
        c, h, w = feats.shape
        block_cols = self.cols[cols]
        col_runs = _runs(block_cols.centre.tolist())
        cells = torch.arange(w, device=feats.device)
        col_cells = (cells[:, None] + TAP_DX.to(feats.device)).clamp(0, w - 1)  # (w, 197)
        per_row = (cols[1] - cols[0]) * N_TAPS * feats.element_size() * 8
        y0 = rows[0]
        for a, n_a in _runs(self.rows.centre[rows[0]:rows[1]].tolist()):
            # the 197 neighbours of every cell of feature row a: (w, C, 197)
            row_cells = (a + TAP_DY.to(feats.device)).clamp(0, h - 1)
            near = feats.reshape(c, -1).index_select(1, (row_cells * w + col_cells).reshape(-1))
            near = near.view(c, w, N_TAPS).transpose(0, 1)
            for s0, s1 in spans(n_a, max(1, CHUNK_BYTES // max(1, per_row))):
                r0, r1 = y0 + s0, y0 + s1
                block = Block.of(self.guide[:, r0:r1, cols[0]:cols[1]], self.guide_lr, self.rows[(r0, r1)], block_cols)
                weights = torch.softmax(block.log_weights(self.maps, self.radius[r0:r1, cols[0]:cols[1]]), dim=-1)
                x0 = 0
                for b, n_b in col_runs:
                    cell = weights[:, x0:x0 + n_b].reshape(-1, N_TAPS)  # (pixels, 197)
                    out[:, r0 - rows[0]:r1 - rows[0], x0:x0 + n_b] = (near[b] @ cell.T).view(c, r1 - r0, n_b)
                    x0 += n_b
            y0 += n_a
        return out


def _runs(centres: list[int]) -> list[tuple[int, int]]:
    """(value, length) of each run of equal consecutive values (HR pixels sharing a nearest feature cell)."""
    runs: list[tuple[int, int]] = []
    for value in centres:
        if runs and runs[-1][0] == value:
            runs[-1] = (value, runs[-1][1] + 1)
        else:
            runs.append((value, 1))
    return runs


@METHODS.register
class UpsampleAnything(Upsampler):
    """Upsample Anything: a joint-bilateral kernel fitted to each image in ``forward`` (51 Adam steps), then
    applied to the features. Nothing is learned across images; nothing is random."""

    name = "upsample_anything"
    version = "1"
    fit = "none"
    # Not in the CPU default run: the fit is 51 forward/backward passes over H x W x 197 taps per image
    # (25-40 s per 224² image on one busy CPU core, docs/methods.md); -m upsample_anything or a GPU.
    in_default_run = False
    slow_forward = "it fits a kernel to each image inside forward (51 Adam steps: tens of seconds per 224² image)"

    def __init__(self) -> None:
        super().__init__()
        self.fit_losses: list[list[float]] = []
        """Each image's loss at each of the 51 steps of the last call's fits (diagnostics; the tests compare it)."""

    def regions(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> Region:
        """Fits each image's kernel once on the whole image; tiles then apply it."""
        output_size = self._check(lr_feats, image, output_size)
        dtype = compute_dtype(lr_feats.dtype)
        guide = guidance_at(image.detach(), output_size, dtype)
        grid = tuple(lr_feats.shape[-2:])
        self.fit_losses = [[] for _ in guide]
        fitted = [Fitted.of(fit_kernel(g, grid, losses), g, grid) for g, losses in zip(guide, self.fit_losses)]
        feats = lr_feats.to(dtype)

        def region(rows: Span, cols: Span, out: torch.Tensor) -> torch.Tensor:
            local = out if out.dtype == dtype else out.new_empty(out.shape, dtype=dtype)
            for i, image_kernel in enumerate(fitted):
                image_kernel.render(feats[i], rows, cols, local[i])
            return out if local is out else out.copy_(local)

        return region

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        output_size = tuple(int(s) for s in output_size)
        region = self.regions(lr_feats, image, output_size)
        return assemble(region, lr_feats.shape[0], lr_feats.shape[1], output_size, max(output_size), lr_feats)

    def forward_region(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int],
                       rows: Span, cols: Span, out: torch.Tensor) -> torch.Tensor:
        return self.regions(lr_feats, image, output_size)(rows, cols, out)

    def _check(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> tuple[int, int]:
        """The output size as ints, after raising a clear error for input this method cannot take."""
        if lr_feats.dim() != 4:
            raise ValueError(f"{self.name!r} needs (B,C,h,w) features, got shape {tuple(lr_feats.shape)}")
        check_batch(self.name, lr_feats.shape[1], lr_feats, image)
        if not lr_feats.is_floating_point():
            raise ValueError(f"{self.name!r} needs floating-point features, got {lr_feats.dtype}")
        size = tuple(int(s) for s in output_size)
        grid = tuple(lr_feats.shape[-2:])
        if len(size) != 2 or size[0] < grid[0] or size[1] < grid[1]:
            raise ValueError(f"{self.name!r} upsamples: the output size {tuple(output_size)} must be at least the "
                             f"feature grid {grid} on each axis")
        return size
