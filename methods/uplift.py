"""UPLiFT (Walmer, Suri, Aggarwal, Shrivastava; CVPR 2026): LiFT's successor, x2 steps ending in a LocalAttender.

Written after github:mwalmer-umd/UPLiFT at commit 85f09ee4512aacdb7ff194b5137fb65049e0dbe9 (uplift/uplift.py,
uplift/configs/uplift_dinov2-s14.yaml and uplift_dinov3-splus16.yaml, whose ``uplift:`` sections are identical,
uplift/train_uplift.py, uplift/uplift_extractor.py, uplift/hub_loader.py), with that config's settings. Equal in
numbers to their ``UPLiFT.forward`` (tests/test_uplift.py, against a fixture made by running their code in float64).

Architecture (their config: encoder widths 16/32/64/128/128, decoder 64/64, attender 17, ``enc_share``,
``enc_resample: nearest``, ``up_factor`` 2). Every conv block is theirs: a 3x3 conv (no bias, zero padding),
BatchNorm, ReLU (twice in the decoder's DoubleConv), a 1x1 conv with bias, plus the block's input as a residual whose
channels are cut to, or zero-padded up to, the block's width (their ``residual_auto``).
- Encoder: five such single-conv blocks, all at the image's resolution (the config's down-steps are ``none``), run
  once on the normalised image (for patch 14 first resized, antialiased bilinear, to (H*16)//14 x (W*16)//14). Its
  last two maps (128 channels each) are shared by every x2 step (``enc_share``).
- One x2 step, features x at a (h, w) grid: decoder block_0 on [x, last encoder map nearest-resampled to (h, w)]; a
  2x2 stride-2 transposed conv plus that map's align_corners bilinear x2 as residual; block_1 on [that, the
  second-last encoder map nearest-resampled to (2h, 2w)]: the 64-channel *guide* at (2h, 2w).
- LocalAttender: logits = 1x1 conv of the guide (17 outputs) plus the guide's first 17 channels; softmax over the 17;
  output pixel (Y, X) = sum_d weight_d(Y, X) * x[Y//2 + dy_d, X//2 + dx_d], indices clamped to the grid (their
  replication padding), over 17 offsets (dy, dx): the 5x5 window's centre 3x3, its corners and its edge midpoints. The
  output is a convex combination of the input features: it stays in the backbone's feature space.
- Steps: the fewest x2 steps after which the grid covers the requested size (their extractor's ``iters`` is the
  user's; their README runs 4 at 448-512 px, which this rule gives there), then one resize to exactly that size,
  bilinear antialiased (their ``outsize``: torchvision's resize, antialias on). No step when the grid already covers
  it: their code needs ``iters`` >= 1 (an assert).

Their model takes any image size (the encoder's maps are nearest-resampled to each step's grid), so the image is fed
as the backbone saw it, normalised with the backbone's mean/std (their loaders: ImageNet's for DINO models, 0.5/0.5
otherwise, which is what timm's configs give); non-square images and output sizes that are no whole multiple of the
grid run their code path unchanged.

Features are fed raw (``features`` does not standardise them): their code trains and runs UPLiFT on the ViT's own
output tokens (timm, after the final norm: what our ViT backbones give).

Training (``own_objective``, their train_uplift.py with the config's ``train:`` section): images resized to 448 px
square, and that image halved L times (antialiased bilinear), L = 3 (DINOv2-S/14 config) or fewer where 448 does not
halve into whole grids that often (DINOv3-S+/16 config: 2 at stride 16); backbone features of every size. For each
level i = 1..L, UPLiFT runs i steps from the features of the image halved i times, guided by that image, and every
step's output is scored against the features of the image of its size by the MSE: L(L+1)/2 terms, summed. Adam, lr
1e-3 (their batch 32, one epoch of ImageNet: here the profile's batch and steps). Only images are needed. Our images
are the profile's, resized with torch's antialiased bilinear (theirs: ImageNet photos squashed to 448 by PIL) and
normalised after resizing (theirs before: the same up to rounding).

Differences, none of which changes a number: the attender's 17 products are summed one tap at a time on the parents'
grid (their ``low_mem`` mode loops too; their default multiplies all 17 at once, 17x the output's memory);
``forward_region`` computes exact tiles (every stage on the rows and columns its outputs read, zero padding only at
the map's own borders, the resamplings as torch's own interpolation weights; each tile recomputes the encoder on its
footprint). Not implemented: their "fast mode" (Triton kernels, outputs "nearly identical", not equal) and the config
options their DINO configs do not use (LayerNorm blocks, strided or pooled encoder steps, the refiner and noise
channels of their SD 1.5 VAE model); only the widths and the attender's size are parameters here.

Parameters: 789,521 at 384 channels (their ``UPLiFT(384, 14, cfg)``), of which the decoder's first conv reads 384 +
128 channels. Released weights (Hugging Face, flat state dicts in this layout): ``UPLiFT-upsampler/uplift_dinov2-s14``
(uplift_dinov2-s14.safetensors, DINOv2 ViT-S/14) and ``UPLiFT-upsampler/uplift_dinov3-splus16``
(uplift_dinov3-splus16.safetensors, DINOv3 ViT-S+/16), both 384 channels. Pass one with
``--upsampler-weights uplift=FILE``: the trainer's ``torch.load`` reads a path ending in .safetensors with the
safetensors package (torch 2.14), so the released files load as they are, as do their training script's
``uplift.pth`` / ``uplift_N.pth`` (``module.`` prefixes of DataParallel dropped). Without a file UPLiFT trains from
scratch on any backbone with their objective.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from bench.registry import METHODS
from methods.base import Upsampler, check_batch
from methods.tiling import Region, Span, widen

if TYPE_CHECKING:
    from bench.backbones import Backbone

ENCODER = (16, 32, 64, 128, 128)
DECODER = (64, 64)
ATTENDER = 17
TRAIN_SIZE, TRAIN_LEVELS = 448, 3
RELEASES = ("https://huggingface.co/UPLiFT-upsampler/uplift_dinov2-s14 (uplift_dinov2-s14.safetensors, "
            "DINOv2 ViT-S/14) "
            "and https://huggingface.co/UPLiFT-upsampler/uplift_dinov3-splus16 (uplift_dinov3-splus16.safetensors, "
            "DINOv3 ViT-S+/16), both 384 channels")

OFFSETS: dict[int, tuple[tuple[int, int], ...]] = {
    5: ((-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)),
    9: tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)),
    13: ((-2, 0), (-1, -1), (-1, 0), (-1, 1), (0, -2), (0, -1), (0, 0), (0, 1), (0, 2), (1, -1), (1, 0), (1, 1),
         (2, 0)),
    17: ((-2, -2), (-2, 0), (-2, 2), (-1, -1), (-1, 0), (-1, 1), (0, -2), (0, -1), (0, 0), (0, 1), (0, 2), (1, -1),
         (1, 0), (1, 1), (2, -2), (2, 0), (2, 2)),
    25: tuple((dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)),
}
"""The LocalAttender's neighbourhoods (offsets from an output pixel's parent on the grid, in their order: the order
of the softmax's channels), by size."""


# -- modules, named as their state dicts ----------------------------------------------------------------------------

class ConvBlock(nn.Module):
    """Their SingleConv (``convs`` 1) / DoubleConv (2), batch norm, residual, 1x1 conv: ``conv`` holds the layers."""

    def __init__(self, cin: int, cout: int, convs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
        self.convs = convs
        self.conv = nn.Sequential(*layers, nn.Conv2d(cout, cout, 1))


class Group(nn.Module):
    """Their BlockGroup with one block (``blocks.0``)."""

    def __init__(self, cin: int, cout: int, convs: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(ConvBlock(cin, cout, convs))

    @property
    def block(self) -> ConvBlock:
        return self.blocks[0]


class Encoder(nn.Module):
    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        cin = 3
        for i, w in enumerate(widths):
            setattr(self, f"block_{i}", Group(cin, w, 1))
            cin = w
        self.levels = len(widths)


class Up(nn.Module):
    """Their UpBlock (tconv x2, bilinear residual): only the transposed conv has weights."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)


class Decoder(nn.Module):
    def __init__(self, dim: int, encoder: tuple[int, ...], widths: tuple[int, int]) -> None:
        super().__init__()
        self.block_0 = Group(dim + encoder[-1], widths[0], 2)
        self.up_1 = Up(widths[0])
        self.block_1 = Group(widths[0] + encoder[-2], widths[1], 2)


class LocalAttender(nn.Module):
    def __init__(self, guide: int, taps: int) -> None:
        super().__init__()
        if taps not in OFFSETS:
            raise ValueError(f"the LocalAttender has neighbourhoods of {sorted(OFFSETS)} taps, got {taps}")
        self.conv1 = nn.Conv2d(guide, taps, kernel_size=1)
        self.offsets = OFFSETS[taps]


def add_residual(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + y`` with x's channels cut to y's, or zero-padded up to them (their residual_auto)."""
    cx, cy = x.shape[1], y.shape[1]
    if cx >= cy:
        return x[:, :cy] + y
    return F.pad(x, (0, 0, 0, 0, 0, cy - cx)) + y


# -- resampling weights, per axis (torch's own: F.interpolate of the identity) ---------------------------------------

@lru_cache(maxsize=256)
def axis_taps(n_in: int, n_out: int, mode: str, align_corners: bool | None = None,
              antialias: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, weight), each (n_out, taps): output i = sum_t weight[i, t] * input[index[i, t]] of the resize
    ``F.interpolate(..., mode, align_corners, antialias)`` along one axis."""
    # two columns, kept as they are: torch 2.14's antialiased path returns the first row everywhere for width 1
    eye = torch.eye(n_in, dtype=torch.float64).view(1, n_in, n_in, 1).expand(1, n_in, n_in, 2).contiguous()
    matrix = F.interpolate(eye, size=(n_out, 2), mode=mode, align_corners=align_corners,
                           antialias=antialias)[0, :, :, 0].T
    taps = max(1, int((matrix != 0).sum(1).max()))
    index = matrix.abs().topk(taps, dim=1).indices
    weight = matrix.gather(1, index)
    index = torch.where(weight != 0, index, index[:, :1])  # unused taps read a used pixel: inside any crop
    return index, weight


def nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """The input index torch's ``nearest`` resize n_in -> n_out reads for each output."""
    return axis_taps(n_in, n_out, "nearest")[0][:, 0]


def hull(index: torch.Tensor) -> Span:
    return int(index.min()), int(index.max()) + 1


def union(*spans: Span) -> Span:
    return min(s[0] for s in spans), max(s[1] for s in spans)


def take(x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``x.index_select(dim, index)``: a view where the index is a run, else advanced indexing (on the CPU many
    times faster than index_select here)."""
    n = index.numel()
    start = int(index[0]) if n else 0
    if n and int(index[-1]) - start == n - 1 and torch.equal(index, torch.arange(start, start + n)):
        return x.narrow(dim, start, n)
    return x[(slice(None),) * dim + (index.to(x.device),)]


def resample_axis(x: torch.Tensor, dim: int, origin: int, index: torch.Tensor,
                  weight: torch.Tensor | None) -> torch.Tensor:
    """Along ``dim`` of a crop starting at ``origin``: sum_t weight[:, t] * x[index[:, t]] (``weight`` None: one
    tap)."""
    index = index - origin
    if weight is None:
        return take(x, dim, index)
    shape = [1] * x.dim()
    shape[dim] = -1
    weight = weight.to(x)
    out = take(x, dim, index[:, 0]) * weight[:, 0].view(shape)
    for t in range(1, index.shape[1]):
        out = out + take(x, dim, index[:, t]) * weight[:, t].view(shape)
    return out


# -- exact computation on spans ---------------------------------------------------------------------------------------

Crop = tuple[torch.Tensor, tuple[int, int]]
"""A map's rows and columns from ``origin`` on."""


def conv3x3(conv: nn.Conv2d, crop: Crop, rows: Span, cols: Span, full: tuple[int, int]) -> torch.Tensor:
    """Rows x cols of ``conv`` (3x3, zero padding 1) on the whole map of size ``full``, from a crop that holds the
    rows and columns one pixel around them (where the map has them)."""
    x, (r, c) = crop
    a0, a1 = max(0, rows[0] - 1), min(full[0], rows[1] + 1)
    b0, b1 = max(0, cols[0] - 1), min(full[1], cols[1] + 1)
    x = x[..., a0 - r:a1 - r, b0 - c:b1 - c]
    pads = (b0 - cols[0] + 1, cols[1] + 1 - b1, a0 - rows[0] + 1, rows[1] + 1 - a1)
    if pads[0] == pads[1] and pads[2] == pads[3]:
        return F.conv2d(x, conv.weight, conv.bias, padding=(pads[2], pads[0]))
    return F.conv2d(F.pad(x, pads), conv.weight, conv.bias)


def run_block(block: ConvBlock, crop: Crop, rows: Span, cols: Span, full: tuple[int, int]) -> torch.Tensor:
    """Rows x cols of a conv block's output on the whole map of size ``full``, from a crop holding ``block.convs``
    pixels around them."""
    layers = list(block.conv)
    x, origin = crop
    for i in range(block.convs):
        conv, norm = layers[3 * i], layers[3 * i + 1]
        halo = block.convs - 1 - i
        r, c = widen(rows, halo, full[0]), widen(cols, halo, full[1])
        x = F.relu(norm(conv3x3(conv, (x, origin), r, c, full)))
        origin = (r[0], c[0])
    x = layers[-1](x)
    res, (r, c) = crop
    return add_residual(res[..., rows[0] - r:rows[1] - r, cols[0] - c:cols[1] - c], x)


class AxisStep:
    """One axis of one x2 step on a tile: the spans each stage computes (grid n in, 2n out)."""

    def __init__(self, out: Span, n: int, reach: int) -> None:
        self.n, self.out = n, out
        self.value = max(0, out[0] // 2 - reach), min(n, (out[1] - 1) // 2 + reach + 1)  # attender: parents +- reach
        self.up = widen(out, 2, 2 * n)  # block_1's input: two 3x3 convs
        taps = axis_taps(n, 2 * n, "bilinear", True)[0][self.up[0]:self.up[1]]
        self.z = union((self.up[0] // 2, (self.up[1] - 1) // 2 + 1), hull(taps))  # tconv parents, bilinear taps
        self.zin = widen(self.z, 2, n)  # block_0's input: two 3x3 convs
        self.x = union(self.zin, self.value)


def plan_axis(n: int, steps: int, need: Span, reach: int, enc: int) -> tuple[list[AxisStep], Span, Span]:
    """The steps' spans on one axis of a tile whose last grid rows ``need`` are wanted, and the spans of the last two
    encoder maps (at ``enc`` pixels) they read."""
    plans: list[AxisStep] = []
    for k in reversed(range(steps)):
        plans.insert(0, AxisStep(need, n << k, reach))
        need = plans[0].x
    last = union(*(hull(nearest_index(enc, p.n)[p.zin[0]:p.zin[1]]) for p in plans))
    second = union(*(hull(nearest_index(enc, 2 * p.n)[p.up[0]:p.up[1]]) for p in plans))
    return plans, last, second


def encoder_spans(second: tuple[Span, Span], last: tuple[Span, Span], size: tuple[int, int],
                  levels: int) -> list[tuple[Span, Span]]:
    """The (rows, cols) each encoder block computes so that its second-last and last maps hold ``second`` and
    ``last`` (one 3x3 conv per block: one pixel more per block before)."""
    need: list[tuple[Span, Span]] = [last] * levels
    need[-2] = tuple(union(widen(a, 1, n), b) for a, b, n in zip(last, second, size))
    for i in reversed(range(levels - 2)):
        need[i] = tuple(widen(a, 1, n) for a, n in zip(need[i + 1], size))
    return need


def final_resize(x: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """Their ``outsize``: torchvision's resize, bilinear with antialiasing (a no-op at the same size)."""
    if tuple(x.shape[-2:]) == tuple(output_size):
        return x
    return F.interpolate(x, size=output_size, mode="bilinear", align_corners=False, antialias=True)


def steps_to_cover(grid: tuple[int, int], output_size: tuple[int, int]) -> int:
    """The fewest x2 steps after which the grid is at least ``output_size`` on both axes."""
    return max(0, *(math.ceil(math.log2(o / n)) if o > n else 0 for n, o in zip(grid, output_size)))


def train_plan(stride: int) -> tuple[int, int]:
    """(image size, levels) of their training: 448 px halved TRAIN_LEVELS times (DINOv2-S/14 config), fewer where
    448 does not halve into whole grids that often (DINOv3-S+/16 config: 2); where it does not halve once, the
    multiple of 2**TRAIN_LEVELS x stride nearest 448 with TRAIN_LEVELS levels."""
    for levels in range(TRAIN_LEVELS, 0, -1):
        if TRAIN_SIZE % (stride << levels) == 0:
            return TRAIN_SIZE, levels
    multiple = stride << TRAIN_LEVELS
    return max(1, math.floor(TRAIN_SIZE / multiple + 0.5)) * multiple, TRAIN_LEVELS


@METHODS.register
class Uplift(Upsampler):
    name = "uplift"
    version = "1"
    fit = "dataset"
    # Not in the CPU default run yet: its encoder runs five conv blocks (up to 128 channels) at the image's full
    # resolution (16/14 of it for DINOv2), and its own objective runs 6 upsamplings per training step.
    in_default_run = False
    own_objective = {"optimizer": "Adam", "lr": 1e-3,
                     "loss": "MSE of every step's output against the features of the image of its size, summed over "
                             "1..L steps from the image halved 1..L times",
                     "image_size": TRAIN_SIZE, "levels": TRAIN_LEVELS}

    def __init__(self, dim: int, patch: int = 14, mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
                 std: tuple[float, ...] = IMAGENET_DEFAULT_STD, encoder: tuple[int, ...] = ENCODER,
                 decoder: tuple[int, int] = DECODER, attender: int = ATTENDER) -> None:
        super().__init__()
        if len(encoder) < 2 or len(decoder) != 2:
            raise ValueError(f"UPLiFT needs at least two encoder widths and two decoder widths, got {encoder}, "
                             f"{decoder}")
        self.dim, self.patch = dim, patch
        self.image_mean, self.image_std = tuple(mean), tuple(std)
        self.encoder = Encoder(tuple(encoder))
        self.decoder = Decoder(dim, tuple(encoder), tuple(decoder))
        self.attender = LocalAttender(decoder[1], attender)
        self.reach = max(max(abs(dy), abs(dx)) for dy, dx in self.attender.offsets)

    @classmethod
    def create(cls, backbone: "Backbone") -> "Uplift":
        mean, std = getattr(backbone, "mean", None), getattr(backbone, "std", None)
        if mean is None or std is None:
            return cls(backbone.dim, backbone.stride)
        return cls(backbone.dim, backbone.stride, tuple(mean.flatten().tolist()), tuple(std.flatten().tolist()))

    def features(self, backbone: "Backbone", image: torch.Tensor) -> torch.Tensor:
        """The backbone's raw features: UPLiFT is trained and run on the ViT's own output."""
        return backbone.features(image)

    def state_from_file(self, loaded: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Their released state dicts (flat, this layout) and their training script's files (``module.`` prefixes of
        DataParallel dropped, as their trainer does)."""
        state = {k.removeprefix("module."): v for k, v in loaded.items()}
        first = "decoder.block_0.blocks.0.conv.0.weight"
        last = f"encoder.block_{self.encoder.levels - 1}.blocks.0.conv.0.weight"
        if not isinstance(state.get(first), torch.Tensor) or not isinstance(state.get(last), torch.Tensor):
            raise ValueError(f"not an UPLiFT state dict (no {first!r} or {last!r}); released files: {RELEASES}")
        theirs = state[first].shape[1] - state[last].shape[0]
        if theirs != self.dim:
            raise ValueError(f"the file holds UPLiFT weights for {theirs}-channel features, this UPLiFT is built for "
                             f"{self.dim} channels; released files: {RELEASES}")
        return state

    # -- inputs -----------------------------------------------------------------------------------------------------

    def check(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> int:
        """Raise on inputs that do not fit; return the number of x2 steps."""
        check_batch(self.name, self.dim, lr_feats, image)
        if len(output_size) != 2 or min(output_size) < 1:
            raise ValueError(f"output size must be two positive integers, got {tuple(output_size)}")
        return steps_to_cover(tuple(lr_feats.shape[-2:]), tuple(output_size))

    def normalised(self, image: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        mean = image.new_tensor(self.image_mean).view(1, 3, 1, 1)
        std = image.new_tensor(self.image_std).view(1, 3, 1, 1)
        return ((image - mean) / std).to(dtype)

    def encoder_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Their pre-scaler: the encoder sees the image at 16/14 of its size for patch 14, else at its size."""
        return tuple(s * 16 // 14 for s in image_size) if self.patch == 14 else tuple(image_size)

    # -- the whole map ----------------------------------------------------------------------------------------------

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        steps = self.check(lr_feats, image, output_size)
        x = self.iterate(lr_feats, self.normalised(image, lr_feats.dtype), steps)[-1] if steps else lr_feats
        return final_resize(x, tuple(output_size))

    def iterate(self, lr_feats: torch.Tensor, image: torch.Tensor, steps: int) -> list[torch.Tensor]:
        """Every step's output (their ``return_steps``) from the normalised image: one encoder pass (``enc_share``),
        then ``steps`` x2 steps."""
        size = self.encoder_size(tuple(image.shape[-2:]))
        if self.patch == 14:
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
        full = ((0, size[0]), (0, size[1]))
        second, last = self.encode((image, (0, 0)), size, full, full)
        outs, x = [], (lr_feats, (0, 0))
        for _ in range(steps):
            n = tuple(x[0].shape[-2:])
            plan = [AxisStep((0, 2 * s), s, self.reach) for s in n]
            outs.append(self.step(x, second, last, size, *plan))
            x = (outs[-1], (0, 0))
        return outs

    # -- the stages, on spans (the whole map: full spans) -----------------------------------------------------------

    def encode(self, image: Crop, size: tuple[int, int], second: tuple[Span, Span],
               last: tuple[Span, Span]) -> tuple[Crop, Crop]:
        """The encoder's second-last and last maps on ``second`` and ``last`` (rows, cols), as crops, from a crop of the
        (pre-scaled, ``size``) image holding one pixel more around the first block's spans."""
        maps = []
        for i, (rows, cols) in enumerate(encoder_spans(second, last, size, self.encoder.levels)):
            image = (run_block(getattr(self.encoder, f"block_{i}").block, image, rows, cols, size), (rows[0], cols[0]))
            maps.append(image)
        return maps[-2], maps[-1]

    def step(self, x: Crop, second: Crop, last: Crop, size: tuple[int, int], pr: AxisStep,
             pc: AxisStep) -> torch.Tensor:
        """One x2 step on the output rows ``pr.out`` x cols ``pc.out``, from crops of the features (covering
        ``pr.x`` x ``pc.x``) and of the encoder's last two maps (whole map size ``size``)."""
        n = (pr.n, pc.n)
        feats, (r, c) = x
        zin = torch.cat([feats[..., pr.zin[0] - r:pr.zin[1] - r, pc.zin[0] - c:pc.zin[1] - c],
                         nearest(last, size, n, pr.zin, pc.zin)], 1)
        z = run_block(self.decoder.block_0.block, (zin, (pr.zin[0], pc.zin[0])), pr.z, pc.z, n)
        up = self.decoder.up_1.up(z)[..., pr.up[0] - 2 * pr.z[0]:pr.up[1] - 2 * pr.z[0],
                                     pc.up[0] - 2 * pc.z[0]:pc.up[1] - 2 * pc.z[0]]
        if pr.z == (0, n[0]) and pc.z == (0, n[1]) and pr.up == (0, 2 * n[0]) and pc.up == (0, 2 * n[1]):
            res = F.interpolate(z, size=(2 * n[0], 2 * n[1]), mode="bilinear", align_corners=True)
        else:  # their UpsamplingBilinear2d (align_corners) on the crop's rows, with torch's weights
            (ir, wr), (ic, wc) = (axis_taps(m, 2 * m, "bilinear", True) for m in n)
            res = resample_axis(z, 2, pr.z[0], ir[pr.up[0]:pr.up[1]], wr[pr.up[0]:pr.up[1]])
            res = resample_axis(res, 3, pc.z[0], ic[pc.up[0]:pc.up[1]], wc[pc.up[0]:pc.up[1]])
        guide_in = torch.cat([res + up, nearest(second, size, (2 * n[0], 2 * n[1]), pr.up, pc.up)], 1)
        guide = run_block(self.decoder.block_1.block, (guide_in, (pr.up[0], pc.up[0])), pr.out, pc.out,
                          (2 * n[0], 2 * n[1]))
        return self.attend(guide, x, pr, pc)

    def attention(self, guide: torch.Tensor) -> torch.Tensor:
        """The LocalAttender's weights (B, taps, H, W): softmax over the taps of its 1x1 conv plus the guide's first
        channels (zero-padded where the guide has fewer)."""
        return torch.softmax(add_residual(guide, self.attender.conv1(guide)), dim=1)

    def attend(self, guide: torch.Tensor, x: Crop, pr: AxisStep, pc: AxisStep) -> torch.Tensor:
        """Output pixel (Y, X) on ``pr.out`` x ``pc.out`` = sum over taps d of weight_d * x[Y//2 + dy_d, X//2 + dx_d],
        indices clamped to the grid (their replication padding). Computed per tap on the parents' grid, each parent's
        2x2 children at once (the weights zero-padded to whole children blocks, then cut)."""
        weights = self.attention(guide)
        feats, (r, c) = x
        (p0, p1), (q0, q1) = ((s.out[0] // 2, (s.out[1] - 1) // 2 + 1) for s in (pr, pc))
        k = self.reach
        window = take(take(feats, 2, torch.arange(p0 - k, p1 + k).clamp(0, pr.n - 1) - r), 3,
                      torch.arange(q0 - k, q1 + k).clamp(0, pc.n - 1) - c)
        top, left = pr.out[0] - 2 * p0, pc.out[0] - 2 * q0
        pads = (left, 2 * q1 - pc.out[1], top, 2 * p1 - pr.out[1])
        if any(pads):
            weights = F.pad(weights, pads)
        b, taps, h, w = weights.shape[0], weights.shape[1], p1 - p0, q1 - q0
        weights = weights.view(b, taps, h, 2, w, 2)
        out = None
        for d, (dy, dx) in enumerate(self.attender.offsets):
            value = window[..., k + dy:k + dy + h, None, k + dx:k + dx + w, None]
            weight = weights[:, d:d + 1]
            if out is None:
                out = value * weight
            elif torch.is_grad_enabled():
                out = out + value * weight
            else:
                out.addcmul_(value, weight)
        out = out.reshape(b, -1, 2 * h, 2 * w)
        return out[..., top:top + pr.out[1] - pr.out[0], left:left + pc.out[1] - pc.out[0]]

    # -- tiles --------------------------------------------------------------------------------------------------------

    def forward_region(self, lr_feats, image, output_size, rows, cols, out):
        return self.regions(lr_feats, image, output_size)(rows, cols, out)

    def regions(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> Region:
        """Tiles computed from crops: every stage on exactly the rows and columns its outputs read (zero padding only
        at a map's own borders, replication only at the grid's), back from the tile through the steps to the
        encoder's maps and the image."""
        steps = self.check(lr_feats, image, output_size)
        if self.training:
            raise RuntimeError("uplift computes tiles in eval mode only (its BatchNorms use batch statistics in "
                               "training)")
        grid, output_size = tuple(lr_feats.shape[-2:]), tuple(output_size)
        final = tuple(n << steps for n in grid)
        img_size = tuple(image.shape[-2:])
        size = self.encoder_size(img_size)
        normed = self.normalised(image, lr_feats.dtype)
        down = [None if f == o else axis_taps(f, o, "bilinear", False, True) for f, o in zip(final, output_size)]

        def region(rows: Span, cols: Span, out: torch.Tensor) -> torch.Tensor:
            need = [span if taps is None else hull(taps[0][span[0]:span[1]]) for span, taps in zip((rows, cols), down)]
            if steps:
                (pr, last_r, second_r), (pc, last_c, second_c) = (
                    plan_axis(n, steps, span, self.reach, e) for n, span, e in zip(grid, need, size))
                first = encoder_spans((second_r, second_c), (last_r, last_c), size, self.encoder.levels)[0]
                img = [widen(s, 1, e) for s, e in zip(first, size)]
                crop = self.image_crop(normed, img_size, size, *img)
                second, last = self.encode((crop, (img[0][0], img[1][0])), size, (second_r, second_c), (last_r, last_c))
                x = (lr_feats[..., slice(*pr[0].x), slice(*pc[0].x)], (pr[0].x[0], pc[0].x[0]))
                for sr, sc in zip(pr, pc):
                    x = (self.step(x, second, last, size, sr, sc), (sr.out[0], sc.out[0]))
                x, origin = x
            else:
                x, origin = lr_feats[..., slice(*need[0]), slice(*need[1])], (need[0][0], need[1][0])
            for dim, span, taps, o in zip((2, 3), (rows, cols), down, origin):
                if taps is None:
                    x = x.narrow(dim, span[0] - o, span[1] - span[0])
                else:
                    x = resample_axis(x, dim, o, taps[0][span[0]:span[1]], taps[1][span[0]:span[1]])
            return out.copy_(x)

        return region

    def image_crop(self, normed: torch.Tensor, img_size: tuple[int, int], size: tuple[int, int], rows: Span,
                   cols: Span) -> torch.Tensor:
        """Rows x cols of the encoder's input: the normalised image, pre-scaled (patch 14) with torch's weights."""
        if self.patch != 14:
            return normed[..., slice(*rows), slice(*cols)]
        (ir, wr), (ic, wc) = (axis_taps(i, s, "bilinear", False, True) for i, s in zip(img_size, size))
        sr, sc = hull(ir[rows[0]:rows[1]]), hull(ic[cols[0]:cols[1]])
        x = normed[..., slice(*sr), slice(*sc)]
        x = resample_axis(x, 2, sr[0], ir[rows[0]:rows[1]], wr[rows[0]:rows[1]])
        return resample_axis(x, 3, sc[0], ic[cols[0]:cols[1]], wc[cols[0]:cols[1]])

    # -- training: train_uplift.py ----------------------------------------------------------------------------------

    def training_loss(self, backbone: "Backbone", image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        size, levels = train_plan(backbone.stride)
        scales = [F.interpolate(image, size=(size >> j, size >> j), mode="bilinear", align_corners=False,
                                antialias=True) for j in range(levels + 1)]  # their Resize((448, 448)), then halves
        with torch.no_grad():
            feats = [self.features(backbone, x) for x in scales]
        grids = [tuple(f.shape[-2:]) for f in feats]
        if any(grids[j] != tuple(2 * n for n in grids[j + 1]) for j in range(levels)):
            raise ValueError(f"backbone grids {grids} at {[size >> j for j in range(levels + 1)]} px are not "
                             f"successive halves")
        loss = feats[0].new_zeros(())
        for i in range(1, levels + 1):
            outs = self.iterate(feats[i], self.normalised(scales[i], feats[i].dtype), i)
            for k, out in enumerate(outs, 1):
                loss = loss + F.mse_loss(out, feats[i - k])
        return loss


def nearest(crop: Crop, size: tuple[int, int], grid: tuple[int, int], rows: Span, cols: Span) -> torch.Tensor:
    """Rows x cols of an encoder map (whole size ``size``) nearest-resampled to ``grid`` (their enc_resample), from
    a crop of it."""
    x, (r, c) = crop
    x = resample_axis(x, 2, r, nearest_index(size[0], grid[0])[rows[0]:rows[1]], None)
    return resample_axis(x, 3, c, nearest_index(size[1], grid[1])[cols[0]:cols[1]], None)
