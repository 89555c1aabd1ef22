"""LiFT (Suri et al., ECCV 2024): a light x2 feature upsampler conditioned on the image, applied repeatedly.

Follows the public code github.com/saksham-s/lift at commit fd6d929a7c2108905c89d76ebf80e16f03877139
(lift.py, lift_extractor.py, train_lift.py); equal to it in numbers (tests/test_lift.py, against a
fixture made by running that code).

One x2 step: a small strided conv net turns the guidance image (P x the feature grid, P the
"patch size") into 32-channel maps at 2x the grid (convs at /2 and /4, then a max-pool per
further halving) and at the grid (one more stride-2 conv); the features, concatenated with the
latter, go through a 2x2 stride-2 transposed conv, are concatenated with the former, pass two
3x3 conv-BN-ReLU layers and a 1x1 conv back to C channels.

Beyond x2 the authors' extractor (``extract_descriptors_iterative_lift``) applies the same weights
again, each time with the guidance image bilinearly doubled; we do the same, as many times as the
grid needs to cover the requested size (x16 for a stride-16 grid at image size), then resize
bilinearly to exactly that size. The public code handles patch 8 (no pool) and 16 (one pool);
any stride here gets P = 2**ceil(log2(stride)), at least 8 (one more pool per doubling), and an
image whose size is not P x the grid is resized to it first (antialiased bilinear).

Features are fed raw (``features`` does not standardise them): the public code trains and runs
LiFT on the ViT's own descriptors.

Training (``own_objective``), as train_lift.py: images resized to 448 (a multiple of 4 x stride
nearest to it), colour jitter 0.2/0.2/0.2/0.2; backbone features of the image, of it subsampled
[::2, ::2] and [::4, ::4]; LiFT lifts the half-size features (guided by the half-size image) to
the full-size ones and the quarter-size ones to the half-size ones, each scored by the cosine
embedding loss, summed; Adam, lr 1e-3.

Released weights: https://drive.google.com/drive/folders/12Q8n_vur3njOgAO1iu0P6tDIcszrnadd
(lift_dino_vits16.pth, lift_dino_vits8.pth: 384 channels; lift_dino_vitb16.pth, lift_dino_vitb8.pth:
768), our parameter layout; pass one with ``run --upsampler-weights lift=PATH``. They were trained
on DINO's last-layer *key* descriptors, which no backbone here returns (dino16 gives its tokens),
so on our backbones they are off their training distribution; without a file LiFT trains from scratch.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.registry import METHODS
from methods.base import Upsampler, check_batch, guidance_at
from methods.guidance import imagenet_normalised
from methods.stages import num_stages, resize_to
from methods.tiling import Region, Span, resize_region, source_span, widen

if TYPE_CHECKING:
    from bench.backbones import Backbone

GUIDE_DIM = 32
HALO = 2
"""Grid pixels a tile's crop reaches past its parents at each step: the first grid pixel of a crop
reads the zero padding of the guidance convs, and the two 3x3 convs on the 2x grid spread that
(and their own crop-edge padding) over 4 HR pixels, i.e. 2 grid pixels."""
RELEASES = "https://drive.google.com/drive/folders/12Q8n_vur3njOgAO1iu0P6tDIcszrnadd"
TRAIN_SIZE = 448


def conv_bn_relu(cin: int, cout: int, stride: int = 1, bias: bool = True) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def conv_layers(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run conv-BN-ReLU triples; in eval mode each BatchNorm is folded into its conv, which saves a pass
    over the largest maps (the first guidance conv's output: 32 x 896² at 224² x16) and their memory."""
    if layers.training:
        return layers(x)
    for conv, norm, _ in zip(*[iter(layers)] * 3):
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        bias = norm.bias - norm.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        x = F.conv2d(x, conv.weight * scale[:, None, None, None], bias, conv.stride, conv.padding).relu_()
    return x


class TwoConvs(nn.Module):
    """Two bias-free 3x3 conv-BN-ReLU layers (attribute name as in the released state dicts)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(*conv_bn_relu(cin, cout, bias=False), *conv_bn_relu(cout, cout, bias=False))


class Fuse(nn.Module):
    """Transposed conv x2 of [features, coarse guide], then TwoConvs on [that, fine guide]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        wide = dim + GUIDE_DIM
        self.up = nn.ConvTranspose2d(wide, wide // 2, kernel_size=2, stride=2)
        self.conv_1 = TwoConvs(wide // 2 + GUIDE_DIM, dim // 2)

    def forward(self, feats: torch.Tensor, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        x = self.up(torch.cat([feats, coarse], dim=1))
        return conv_layers(self.conv_1.double_conv, torch.cat([x, fine], dim=1))


@METHODS.register
class Lift(Upsampler):
    name = "lift"
    version = "1"
    fit = "dataset"
    own_objective = {"optimizer": "Adam", "lr": 1e-3, "loss": "cosine embedding, half->full + quarter->half",
                     "image_size": TRAIN_SIZE, "color_jitter": 0.2}
    # Not in the CPU default run: one forward at 224² is 20 GFLOP, three quarters of it the last step, whose
    # guidance convs run on the image doubled three times; its cells' share of the run is in docs/methods.md.
    # Its shipped weights serve ``-m lift``.
    in_default_run = False

    def __init__(self, dim: int, patch: int = 16) -> None:
        super().__init__()
        if patch < 8 or patch & (patch - 1):
            raise ValueError(f"LiFT's guidance net needs a power-of-two patch size of at least 8, got {patch}")
        self.dim, self.patch = dim, patch
        self.up1 = Fuse(dim)
        self.outc = nn.Conv2d(dim // 2, dim, kernel_size=1)
        self.image_convs_1 = nn.Sequential(*conv_bn_relu(3, GUIDE_DIM, 2), *conv_bn_relu(GUIDE_DIM, GUIDE_DIM, 2))
        pools = int(math.log2(patch)) - 3  # the public code: patch 8 none, patch 16 one
        self.scale_adapter = nn.Sequential(*(nn.MaxPool2d(2, 2) for _ in range(pools))) if pools else nn.Identity()
        self.image_convs_2 = nn.Sequential(*conv_bn_relu(GUIDE_DIM, GUIDE_DIM, 2))

    @classmethod
    def create(cls, backbone: "Backbone") -> "Lift":
        return cls(backbone.dim, max(8, 2 ** num_stages(backbone.stride)))

    def features(self, backbone: "Backbone", image: torch.Tensor) -> torch.Tensor:
        """The backbone's raw features: LiFT is trained and run on the ViT's own descriptors."""
        return backbone.features(image)

    def state_from_file(self, loaded: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The authors' files as saved (``module.`` prefixes of DataParallel dropped, as their extractor does)."""
        state = {k.removeprefix("module."): v for k, v in loaded.items()}
        out = state.get("outc.weight")
        if out is not None and out.shape[0] != self.dim:
            raise ValueError(f"the file holds LiFT weights for {out.shape[0]}-channel features, this LiFT is built "
                               f"for {self.dim} channels (released files, {RELEASES}: lift_dino_vits*.pth 384, "
                               f"lift_dino_vitb*.pth 768)")
        return state

    # -- one x2 step ---------------------------------------------------------------------------------

    def step(self, feats: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w) features and the normalised guidance image at (P*h, P*w) -> (B,C,2h,2w)."""
        fine = self.scale_adapter(conv_layers(self.image_convs_1, guide))
        coarse = conv_layers(self.image_convs_2, fine)
        if coarse.shape[-2:] != feats.shape[-2:]:
            raise ValueError(f"guidance of size {tuple(guide.shape[-2:])} does not fit a {tuple(feats.shape[-2:])} "
                             f"grid: LiFT with patch {self.patch} needs it at {self.patch}x the grid")
        return self.outc(self.up1(feats, coarse, fine))

    def first_guide(self, image: torch.Tensor, grid: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """The ImageNet-normalised image at P x ``grid`` (LiFT's input image, as the ViT saw it)."""
        return guidance_at(imagenet_normalised(image), (self.patch * grid[0], self.patch * grid[1]), dtype)

    def lift_once(self, feats: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """One x2 step guided by the [0,1] ``image`` (training)."""
        return self.step(feats, self.first_guide(image, tuple(feats.shape[-2:]), feats.dtype))

    # -- the whole upsampler -------------------------------------------------------------------------

    def check(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> int:
        """Raise on inputs that do not fit; return the number of x2 steps."""
        check_batch(self.name, self.dim, lr_feats, image)
        if len(output_size) != 2 or min(output_size) < 1:
            raise ValueError(f"output size must be two positive integers, got {tuple(output_size)}")
        return steps_to_cover(tuple(lr_feats.shape[-2:]), tuple(output_size))

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        steps = self.check(lr_feats, image, output_size)
        x, guide = lr_feats, self.first_guide(image, tuple(lr_feats.shape[-2:]), lr_feats.dtype)
        for k in range(steps):
            if k:  # the extractor's iteration: the (normalised) image doubled, bilinear
                guide = F.interpolate(guide, size=(2 * guide.shape[-2], 2 * guide.shape[-1]), mode="bilinear",
                                      align_corners=False)
            x = self.step(x, guide)
        return resize_to(x, tuple(output_size))

    def forward_region(self, lr_feats, image, output_size, rows, cols, out):
        return self.regions(lr_feats, image, output_size)(rows, cols, out)

    def regions(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> Region:
        """Tiles computed from crops: each step's crop is widened by HALO grid pixels and the guidance images
        (the first one, shared by all tiles, doubled step by step) are computed on the rows the crops read."""
        steps = self.check(lr_feats, image, output_size)
        grid = tuple(lr_feats.shape[-2:])
        first = self.first_guide(image, grid, lr_feats.dtype)

        def region(rows: Span, cols: Span, out: torch.Tensor) -> torch.Tensor:
            plans = [plan_axis(span, n, size, steps, self.patch)
                     for span, n, size in zip((rows, cols), grid, output_size)]
            (feat_r, guide_r), (feat_c, guide_c) = plans
            x = lr_feats[..., slice(*feat_r[0]), slice(*feat_c[0])]
            for k in range(steps):
                if k == 0:
                    guide = first[..., slice(*guide_r[0]), slice(*guide_c[0])]
                else:
                    guide = resize_region(guide, (guide_r[k - 1][0], guide_c[k - 1][0]),
                                          tuple(self.patch * n << (k - 1) for n in grid),
                                          tuple(self.patch * n << k for n in grid), guide_r[k], guide_c[k])
                (r0, r1), (c0, c1) = feat_r[k], feat_c[k]
                own = guide[..., self.patch * r0 - guide_r[k][0]:self.patch * r1 - guide_r[k][0],
                            self.patch * c0 - guide_c[k][0]:self.patch * c1 - guide_c[k][0]]
                y = self.step(x, own)  # rows 2*r0 .. 2*r1 of step k's output; exact on feat_*[k + 1]
                (a0, a1), (b0, b1) = feat_r[k + 1], feat_c[k + 1]
                x = y[..., a0 - 2 * r0:a1 - 2 * r0, b0 - 2 * c0:b1 - 2 * c0]
            final = tuple(n << steps for n in grid)
            if final == tuple(output_size):
                return out.copy_(x[..., rows[0] - feat_r[steps][0]:rows[1] - feat_r[steps][0],
                                   cols[0] - feat_c[steps][0]:cols[1] - feat_c[steps][0]])
            return resize_region(x, (feat_r[steps][0], feat_c[steps][0]), final, tuple(output_size), rows, cols,
                                 out=out)

        return region

    # -- training: train_lift.py ---------------------------------------------------------------------

    def training_loss(self, backbone: "Backbone", image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        multiple = 4 * backbone.stride
        size = max(1, math.floor(TRAIN_SIZE / multiple + 0.5)) * multiple
        image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        image = torch.stack([color_jitter(one, generator) for one in image.clamp(0, 1)])
        halves = [image, image[..., ::2, ::2], image[..., ::4, ::4]]
        with torch.no_grad():
            full, half, quarter = (self.features(backbone, x) for x in halves)
        if full.shape[-2:] != tuple(2 * n for n in half.shape[-2:]) or half.shape[-2:] != tuple(
                2 * n for n in quarter.shape[-2:]):
            raise ValueError(f"backbone grids {[tuple(f.shape[-2:]) for f in (full, half, quarter)]} at "
                             f"{size}, {size // 2}, {size // 4} px are not successive halves")
        return (cosine_loss(self.lift_once(half, halves[1]), full)
                + cosine_loss(self.lift_once(quarter, halves[2]), half))


def steps_to_cover(grid: tuple[int, int], output_size: tuple[int, int]) -> int:
    """The fewest x2 steps after which the grid is at least ``output_size`` on both axes."""
    return max(0, *(math.ceil(math.log2(o / n)) if o > n else 0 for n, o in zip(grid, output_size)))


def plan_axis(span: Span, n: int, size: int, steps: int, patch: int) -> tuple[list[Span], list[Span]]:
    """One axis of a tile: the grid rows computed at each step's input (and the last step's output), and the
    guidance rows each step's image is computed on (its own crop and what the next doubling reads)."""
    grids = [n << k for k in range(steps + 1)]
    need = span if grids[-1] == size else source_span(span, grids[-1], size, "bilinear")
    feats = [need]
    for k in reversed(range(steps)):
        a, b = feats[0]
        feats.insert(0, widen((a // 2, -(-b // 2)), HALO, grids[k]))
    guides = [(patch * a, patch * b) for a, b in feats[:steps]]
    for k in reversed(range(1, steps)):
        read = source_span(guides[k], patch * grids[k - 1], patch * grids[k], "bilinear")
        guides[k - 1] = (min(guides[k - 1][0], read[0]), max(guides[k - 1][1], read[1]))
    return feats, guides


def cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """torch's CosineEmbeddingLoss with target 1 over every pixel: mean of 1 - cos."""
    flat = [x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) for x in (pred, target)]
    return F.cosine_embedding_loss(*flat, flat[0].new_ones(flat[0].shape[0]))


def grey(img: torch.Tensor) -> torch.Tensor:
    return (0.2989 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]


def shift_hue(img: torch.Tensor, shift: float) -> torch.Tensor:
    """(3,H,W) in [0,1] with its HSV hue turned by ``shift`` turns (closed-form HSV -> RGB)."""
    top, which = img.max(0)
    delta = top - img.min(0).values
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    r, g, b = img
    hue = torch.where(which == 0, (g - b) / safe, torch.where(which == 1, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue)) + 6 * shift  # in sixths of a turn
    k = (img.new_tensor([5.0, 3.0, 1.0]).view(3, 1, 1) + hue) % 6
    return top - delta * torch.minimum(k, 4 - k).clamp(0, 1)


def color_jitter(img: torch.Tensor, generator: torch.Generator, amount: float = 0.2) -> torch.Tensor:
    """torchvision's ColorJitter(amount, amount, amount, amount) on one (3,H,W) image: brightness, contrast,
    saturation and hue, each by a random factor, in a random order."""
    order = torch.randperm(4, generator=generator).tolist()
    factors = (1 - amount + 2 * amount * torch.rand(3, generator=generator)).tolist()
    hue = (amount * (2 * torch.rand(1, generator=generator) - 1)).item()
    for op in order:
        if op == 0:
            img = (img * factors[0]).clamp(0, 1)
        elif op == 1:
            img = (factors[1] * img + (1 - factors[1]) * grey(img).mean()).clamp(0, 1)
        elif op == 2:
            img = (factors[2] * img + (1 - factors[2]) * grey(img)).clamp(0, 1)
        else:
            img = shift_hue(img, hue)
    return img
