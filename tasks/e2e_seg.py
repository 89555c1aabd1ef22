"""End-to-end segmentation (docs/reference.md §2): the upsampler is the decoder's upsampling, the model trained on labels.

Model: frozen backbone -> the method's upsampling to the image size -> channel standardisation ->
a pointwise MLP decoder (1x1 conv to 128, ReLU, 1x1 conv to the classes); logits still off the
image grid (low_res) are resized bilinearly, as SegFormer resizes its logits. The decoder trains
with cross-entropy (255 ignored); trainable upsamplers (fit = "dataset") train jointly with it,
starting from their multi-view weights; weight-free ones stay fixed; per-image methods do not
apply (their fit has no labels to learn from) and are recorded as "n/a". Reported: mIoU, mAcc,
aAcc on the validation split, and the whole model's GFLOPs (torch's FlopCounterMode, one image)
and parameters (millions: the backbone's feature extractor as used, the upsampler, the decoder).

The paper used SegFormer on ADE20k; on a CPU budget the backbone stays frozen and the decoder is
pointwise, so differences come from the upsampling alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from bench.backbones import Backbone
from bench.core.features import standardise
from bench.registry import TASKS
from bench.core.context import RunContext
from bench.core.failures import NotApplicable
from methods.base import Upsampler
from methods.flops import counted_gflops
from tasks.base import MetricRow, Task, TaskSettings, Workload
from tasks.metrics import SegmentationScores
from tasks.probe_seg import IGNORE

HIDDEN = 128


@dataclass(frozen=True)
class E2ESegSettings(TaskSettings):
    n_train: int | None = None
    n_val: int | None = None
    steps: int = 4000
    batch_size: int = 8
    lr: float = 1e-3
    upsampler_lr: float = 1e-4
    """Trainable upsamplers fine-tune at a tenth of the decoder's rate, from their multi-view weights."""


class Decoder(nn.Module):
    """Standardise, then a pointwise MLP to class logits."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(dim, HIDDEN, 1), nn.ReLU(), nn.Conv2d(HIDDEN, classes, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.mlp(standardise(feats))


def segment(upsampler: Upsampler, backbone: Backbone, decoder: Decoder, image: torch.Tensor,
            tile: int | None = None) -> torch.Tensor:
    """(B,3,H,W) -> (B,classes,H,W) logits; the features upsampled in tiles when ``tile`` is given (inference)."""
    logits = decoder(upsampler.upsample(backbone, image, tuple(image.shape[-2:]), tile))
    if tuple(logits.shape[-2:]) != tuple(image.shape[-2:]):
        logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def model_gflops(upsampler: Upsampler, backbone: Backbone, decoder: Decoder, image: torch.Tensor) -> float:
    """GFLOPs (multiply-add = 2) of one forward of the whole model on one image (methods.flops: what torch's
    FlopCounterMode counts plus the adaptive convolutions and window dot products, which it cannot see)."""
    return counted_gflops(upsampler, lambda: segment(upsampler, backbone, decoder, image[:1]))


def fit_decoder(upsampler: Upsampler, backbone: Backbone, train: Dataset, s: E2ESegSettings, seed: int,
                device: torch.device, progress: bool = False) -> tuple[Decoder, list[float]]:
    """Train the decoder (and a trainable upsampler) with AdamW on random batches; returns it and the losses."""
    torch.manual_seed(seed)
    decoder = Decoder(upsampler.output_dim(backbone.dim), train.num_classes).to(device)
    trainable = upsampler.fit == "dataset"
    groups = [{"params": decoder.parameters(), "lr": s.lr}]
    if trainable:
        groups.append({"params": upsampler.parameters(), "lr": s.upsampler_lr})
    optimizer = torch.optim.AdamW(groups)
    upsampler.requires_grad_(trainable)
    generator, losses = torch.Generator().manual_seed(seed), []
    for _ in tqdm(range(s.steps), desc="e2e_seg train", leave=False, disable=not progress):
        items = [train[i] for i in torch.randint(len(train), (min(s.batch_size, len(train)),), generator=generator).tolist()]
        image = torch.stack([it["image"] for it in items]).to(device)
        label = torch.stack([it["label"] for it in items]).to(device)
        loss = F.cross_entropy(segment(upsampler, backbone, decoder, image), label, ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return decoder.eval(), losses


@TASKS.register
class E2ESeg(Task):
    name = "e2e_seg"
    version = "3"  # v1 counted the backbone's unused classifier and skipped stages as model parameters; v2 left
    # the adaptive convolutions and window dot products (JBU, SAPA) out of gflops
    metrics = {"miou": True, "macc": True, "aacc": True, "gflops": False, "params": False}
    data_kind = "seg"
    Settings = E2ESegSettings

    def recipe(self, profile) -> dict[str, Any]:
        return {**super().recipe(profile), "decoder": f"standardise, 1x1 conv {HIDDEN}, ReLU, 1x1 conv",
                "backbone": "frozen", "optimizer": "AdamW", "loss": "cross-entropy, 255 ignored"}

    def workload(self, context: RunContext) -> Workload:
        """Training steps count three passes (forward and backward), validation images one."""
        s = self.settings(context.profile)
        train, val = (len(self.load_split(split, context)) for split in ("train", "val"))
        return Workload(train + val, 3 * s.steps * s.batch_size + val)

    def run(self, upsampler: Upsampler, backbone: Backbone, context: RunContext) -> list[MetricRow]:
        if upsampler.fit == "image":
            raise NotApplicable(f"{upsampler.name} is fitted per image without labels; end-to-end training "
                                f"does not apply")
        s = self.settings(context.profile)
        decoder, _ = fit_decoder(upsampler, backbone, self.load_split("train", context), s, context.profile.seed,
                                 context.device, context.progress)
        return self.evaluate(upsampler, backbone, decoder, self.load_split("val", context), context)

    def evaluate(self, upsampler: Upsampler, backbone: Backbone, decoder: Decoder, val: Dataset,
                 context: RunContext) -> list[MetricRow]:
        scores = SegmentationScores(val.num_classes, {"miou": "miou", "macc": "macc", "aacc": "aacc"})
        loader = torch.utils.data.DataLoader(val, batch_size=self.settings(context.profile).batch_size)
        with torch.no_grad():
            for batch in tqdm(loader, desc="e2e_seg val", leave=False, disable=not context.progress):
                image, label = batch["image"].to(context.device), batch["label"]
                scores.update(segment(upsampler, backbone, decoder, image, context.tile).argmax(1).cpu(), label,
                              label != IGNORE)
            gflops = model_gflops(upsampler, backbone, decoder, batch["image"].to(context.device))
        used = [*(backbone.feature_parameters() if upsampler.uses_backbone else []), *upsampler.parameters(),
                *decoder.parameters()]
        params = sum(p.numel() for p in used) / 1e6
        values, per_image = scores.result()
        return self.rows({**values, "gflops": gflops, "params": params}, per_image)
