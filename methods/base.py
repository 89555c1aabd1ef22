"""The one interface every upsampler implements.

A method gets the backbone's low-resolution features, the image they came from
and the size wanted, and returns features at that size. Methods that change what
the backbone sees (strided, large image) override ``features``; methods with
weights declare how they are fitted (``fit``) and the runner fits them before
scoring (bench.fitting), so no method imports the trainer. Tasks only ever call
``upsample``, so they never special-case a method by name.
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.features import standardise
from bench.core.features import from_pca
from methods.tiling import PixelMap, Region, Span, assemble

if TYPE_CHECKING:
    from bench.backbones import Backbone
    from methods.batched import Generators


def guidance_at(image: torch.Tensor, size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """The guidance image of image-guided methods at ``size``: itself at that size, else resized (antialiased)."""
    if tuple(image.shape[-2:]) != tuple(size):
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
    return image.to(dtype)


def _finish(out: torch.Tensor, pixelwise: PixelMap | None, dtype: torch.dtype | None) -> torch.Tensor:
    """A whole output mapped by ``pixelwise`` and stored in ``dtype`` (each when given)."""
    out = out if pixelwise is None else pixelwise(out)
    return out if dtype is None else out.to(dtype)


def check_batch(name: str, dim: int, lr_feats: torch.Tensor, image: torch.Tensor) -> None:
    """Raise a clear error unless ``lr_feats`` is (B, dim, h, w) and ``image`` a (B, 3, H, W) batch of the same B:
    what a method built for ``dim`` channels can take."""
    if lr_feats.dim() != 4 or lr_feats.shape[1] != dim:
        raise ValueError(f"{name!r} was built for {dim}-channel features (B,{dim},h,w), "
                         f"got shape {tuple(lr_feats.shape)}")
    if image.dim() != 4 or image.shape[1] != 3 or image.shape[0] != lr_feats.shape[0]:
        raise ValueError(f"{name!r} needs an image batch (B,3,H,W) matching the features' batch "
                         f"{lr_feats.shape[0]}, got shape {tuple(image.shape)}")


class ContractError(ValueError):
    """An upsampler returned something other than the interface promises."""


class Upsampler(nn.Module, ABC):
    """Base class: subclass it, set the class variables, implement ``forward``."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    fit: ClassVar[str] = "none"
    """How the runner fits the method before scoring: "none"; "dataset" (weights trained once
    with the multi-view loss, cached); "image" (a network fitted to each image: subclass
    PerImageUpsampler). See bench.fitting.FIT_KINDS."""
    keeps_grid: ClassVar[bool] = False
    """True for methods that return the backbone's own grid (low_res): tasks then
    resize labels to the features, as the paper's low-res row does."""
    untiled_reason: ClassVar[str] = "it has no forward_region yet"
    """Why ``upsample(..., tile=N)`` computes this method untiled; methods that override
    ``forward_region`` tile instead. The reason is warned and stored with profiles."""
    in_default_run: ClassVar[bool] = True
    """Whether ``run`` without ``-m`` scores this method; methods too slow for the CPU default run say False
    (they stay available with ``-m`` and in the GPU profiles)."""
    slow_forward: ClassVar[str | None] = None
    """Why ``forward`` itself takes seconds per image where it does (upsample_anything fits a kernel to each image in
    it); ``profile methods`` then times the method only when it is named with -m, and says this."""
    uses_backbone: ClassVar[bool] = True
    """False for features computed from the image alone (colour_only): a model's parameters then leave the backbone out."""
    reference: ClassVar[bool] = False
    """True for a reference row that is not an upsampler (colour_only: the image's colour alone): tables mark it,
    and leave it out of rank statistics and of the better/worse-than-bilinear marks."""

    @classmethod
    def create(cls, backbone: "Backbone") -> "Upsampler":
        """Build the method for a backbone; methods with weights read ``backbone.dim`` here."""
        return cls()

    def output_dim(self, backbone_dim: int) -> int:
        """Channels of the features this method returns for a backbone of ``backbone_dim`` channels (heads are
        built for it); an upsampler keeps the backbone's, a reference row of other features says its own."""
        return backbone_dim

    own_objective: ClassVar[dict[str, Any] | None] = None
    """For fit="dataset": None trains with the suite's shared multi-view loss (FeatUp's); a method whose
    paper trains it from images alone with its own loss sets the recipe here, e.g.
    ``{"optimizer": "AdamW", "lr": 2e-4}`` (a torch.optim class and its keyword arguments, plus any loss
    weights), implements ``training_loss``, and the trainer stores this dict in the training recipe."""

    def training_loss(self, backbone: "Backbone", image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The method's own training loss on a (B,3,H,W) batch in [0,1] (only with ``own_objective``);
        random draws come from ``generator`` so a resumed training repeats them."""
        raise NotImplementedError(f"method {self.name!r} sets no own_objective: it trains with the multi-view loss")

    def state_from_file(self, loaded: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The state dict in a weights file given for this method (``--upsampler-weights NAME=PATH``): the file's
        contents as they are; methods whose authors' released files wrap or rename it unwrap it here, and raise
        ValueError (saying which file to use) for a file that is not theirs."""
        return loaded

    def features(self, backbone: "Backbone", image: torch.Tensor) -> torch.Tensor:
        """The low-resolution features this method starts from.

        Fitted methods get them channel-standardised (LayerNorm over channels, no
        affine), as FeatUp trains and runs its upsamplers; the trainer reads them here
        too, so training and inference see the same features.
        """
        feats = backbone.features(image)
        return feats if self.fit == "none" else standardise(feats)

    @abstractmethod
    def forward(
        self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]
    ) -> torch.Tensor:
        """(B,C,h,w) features, (B,3,H,W) image in [0,1], (H',W') -> (B,C,H',W') features."""

    def forward_region(
        self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int], rows: Span, cols: Span,
        out: torch.Tensor,
    ) -> torch.Tensor:
        """Write rows x cols of ``forward``'s output into ``out`` (B,C,rows,cols) and return it,
        computed from the part of the input those pixels depend on."""
        raise NotImplementedError(f"method {self.name!r} cannot tile: {self.untiled_reason}")

    def tiling_fallback(self) -> str | None:
        """Why this method, in the current autograd mode, computes whole maps when asked to tile; None if it tiles."""
        if type(self).forward_region is Upsampler.forward_region:
            return self.untiled_reason
        if torch.is_grad_enabled():
            return "tiling is inference-only (under autograd the whole map is computed, so gradients are unchanged)"
        return None

    def regions(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> Region:
        """What ``assemble`` calls per tile; a method overrides it to share work between its tiles."""
        return lambda rows, cols, out: self.forward_region(lr_feats, image, output_size, rows, cols, out)

    def forward_tiled(
        self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int], tile: int,
        pixelwise: PixelMap | None = None, dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """``forward``'s output assembled from tile x tile regions, or computed whole (with a warning
        saying why); ``pixelwise`` and ``dtype`` as in ``upsample``."""
        if reason := self.tiling_fallback():
            warnings.warn(f"method {self.name!r} computed untiled: {reason}", stacklevel=2)
            return _finish(self(lr_feats, image, output_size), pixelwise, dtype)
        return assemble(self.regions(lr_feats, image, output_size), lr_feats.shape[0], lr_feats.shape[1],
                        output_size, tile, lr_feats, pixelwise, dtype)

    def upsample(
        self, backbone: "Backbone", image: torch.Tensor, output_size: tuple[int, int], tile: int | None = None,
        pixelwise: PixelMap | None = None, dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Backbone features of ``image`` upsampled to ``output_size``, with the contract checked.

        ``tile``: compute the output in tile x tile regions (None: whole maps), so peak
        memory beyond the output is bounded by the tile; the result equals the untiled one.
        ``pixelwise``: return ``pixelwise(features)`` for a map that acts on each pixel alone (a
        probe, a classifier); tiled, each tile is mapped as it comes, so the whole feature map is
        never held. ``dtype``: the precision the result is stored in (float16 halves it), for
        consumers that tolerate it; the features are computed in their own precision.
        """
        lr_feats = self.features(backbone, image)
        output_size = tuple(output_size)
        if pixelwise is not None and tile is not None:  # mapped tile by tile: the features are never whole
            return self.forward_tiled(lr_feats, image, output_size, tile, pixelwise, dtype)
        out = self(lr_feats, image, output_size) if tile is None else self.forward_tiled(
            lr_feats, image, output_size, tile, dtype=dtype)
        self.check_output(out, lr_feats, output_size)
        return _finish(out, pixelwise, dtype)

    def check_output(
        self, out: object, lr_feats: torch.Tensor, output_size: tuple[int, int]
    ) -> None:
        """Raise ContractError naming the method when ``out`` breaks the interface."""
        expected = (lr_feats.shape[0], lr_feats.shape[1])
        if not isinstance(out, torch.Tensor):
            raise ContractError(f"method {self.name!r} returned {type(out).__name__}, expected a torch.Tensor")
        if out.dim() != 4 or tuple(out.shape[:2]) != expected:
            raise ContractError(
                f"method {self.name!r} returned shape {tuple(out.shape)}, expected "
                f"(batch, channels, H, W) = {expected + ('H', 'W')}"
            )
        spatial = tuple(out.shape[-2:])
        if not self.keeps_grid and spatial != output_size:
            raise ContractError(
                f"method {self.name!r} returned spatial size {spatial}, expected the requested {output_size}"
            )
        # one float64 sum: NaN or inf anywhere makes it non-finite, finite float32 values cannot overflow it, and it
        # allocates nothing (a bool map of a 2048², 384-channel output would be 1.6 GB; measured 2.2x faster at 224²)
        if not torch.isfinite(out.detach().sum(dtype=torch.float64)):
            raise ContractError(f"method {self.name!r} returned non-finite values (NaN or inf)")


class PerImageUpsampler(Upsampler):
    """A method that fits a network to each image at inference (FeatUp implicit, DIP).

    Implement ``network`` (a batched network for a group of images, built from
    methods.batched layers) and ``render`` (one image's fitted network at any
    output size). The runner's fitting stage fits every image with the multi-view
    loss (bench.fitting.per_image) and hands them over with ``attach_fits``; ``forward``
    renders each image's features from its fit and maps them back from the fit's
    PCA space. Priors on the HR output are weighted by the class variables.
    """

    fit = "image"
    untiled_reason = "it renders from a network fitted per image; rendering in tiles is not written yet"
    mag_weight: ClassVar[float] = 0.0
    """Downsampled HR magnitude vs the target's (FeatUp implicit: 0.001)."""
    tv_weight: ClassVar[float] = 0.0
    """Total variation of the HR magnitude (FeatUp implicit: 0.05)."""
    blur_weight: ClassVar[float] = 0.0
    """MSE between the HR features and their 5x5 Gaussian blur (FeatUp implicit: 0.1)."""
    fits: Callable[[torch.Tensor], list[dict[str, Any]]] | None = None
    """Image batch -> each image's fit (set by ``attach_fits``)."""

    def attach_fits(self, fits: Callable[[torch.Tensor], list[dict[str, Any]]]) -> None:
        """Where ``forward`` gets each image's fit from: the fitting stage's per-image cache (fitting on demand)."""
        self.fits = fits

    @abstractmethod
    def network(self, generators: "Generators", fit_size: tuple[int, int], out_dim: int) -> nn.Module:
        """A network for len(generators) images whose forward maps their (G,3,h,w) images at ``fit_size``
        to (G, out_dim, h, w) features; image g's initial weights come from generator g."""

    @abstractmethod
    def render(self, network: nn.Module, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        """One image's fitted network (G = 1, eval mode) -> (1, out_dim, H', W') features for its (1,3,H,W) image."""

    def fit_config(self) -> dict[str, Any]:
        """What besides the class's name and version changes a fit: stored in the fit cache's key."""
        return {"mag_weight": self.mag_weight, "tv_weight": self.tv_weight, "blur_weight": self.blur_weight}

    def forward(
        self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]
    ) -> torch.Tensor:
        if self.fits is None:
            raise RuntimeError(f"method {self.name!r} is fitted per image and has no fits: let the runner fit it, "
                               f"or call bench.fitting.fit_method(method, backbone, context) first")
        outs = []
        for fit, one in zip(self.fits(image), image):
            pca = self.render(self.fitted_network(fit).to(image.device), one[None], output_size)
            outs.append(from_pca(pca, fit["mean"].to(pca), fit["basis"].to(pca)))
        return torch.cat(outs)

    def fitted_network(self, fit: dict[str, Any]) -> nn.Module:
        """One image's network (G = 1, eval mode) from its fit (bench.fitting.per_image.FitResult)."""
        net = self.network([torch.Generator()], tuple(fit["fit_size"].tolist()), fit["basis"].shape[1])
        net.load_state_dict(fit["net"])
        return net.eval()
