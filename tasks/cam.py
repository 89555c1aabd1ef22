"""CAM faithfulness (docs/reference.md §2): A.D. ↓, A.I. ↑ and ADCC ↑ of class activation maps from upsampled features.

The model explained is the frozen backbone with a linear classifier on its pooled,
channel-standardised features, as in the paper ("a linear classifier on frozen pooled
features"). One classifier serves every method: fitted methods output standardised features,
so the others' outputs are standardised per pixel too before the classifier sees them. The
classifier is trained once per (backbone, data, settings) on the classify data's train split
and cached in ``<cache_dir>/classifiers``.

For each validation image the class c is its label where labels are ground truth (ImageNet: only
the images the model classifies correctly count) and the model's own top-1 where they are not
(the embedded photos). CAM = ReLU(w_c · f + b_c) at every upsampled pixel, min-max normalised,
resized to the image. Y = softmax score of c on the image, O = on the image masked by its CAM
(standard: multiplied by it; relevance: its top 50% pixels kept). Coherency needs the CAM of the
masked image, so per-image methods fit the masked images too.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from bench.backbones import Backbone, cache_key
from bench.data.identity import dataset_identity
from bench.core.cells import slug
from bench.core.failures import NotApplicable
from bench.core.features import standardise
from bench.registry import TASKS
from bench.core.context import RunContext
from bench.core.store import atomic_write
from methods.base import Upsampler
from tasks.base import MetricRow, Task, TaskSettings, Workload
from tasks.metrics import ADCC, AverageDrop, AverageIncrease, check_protocol, pearson


@dataclass(frozen=True)
class CamSettings(TaskSettings):
    n_train: int | None = None
    """Images the linear classifier is trained on (None: the whole train split)."""
    n_val: int | None = 2000
    """Images scored (the paper: 2000 ImageNet validation images)."""
    protocol: str = "standard"
    batch_size: int = 16
    head_steps: int = 500
    head_lr: float = 1e-2


@dataclass
class LinearHead:
    """A linear classifier over the classes seen in training: ``classes[k]`` is output k's ImageNet index."""

    weight: torch.Tensor
    bias: torch.Tensor
    classes: torch.Tensor

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w) standardised features -> (B,K) image logits (pooled, then linear)."""
        return F.linear(feats.mean((2, 3)), self.weight, self.bias)

    def class_map(self, feats: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) standardised features, (B,) output indices -> (B,H,W) per-pixel logits of those outputs."""
        return torch.einsum("bchw,bc->bhw", feats, self.weight[k]) + self.bias[k].view(-1, 1, 1)

    def to(self, device: torch.device) -> "LinearHead":
        return LinearHead(self.weight.to(device), self.bias.to(device), self.classes.to(device))


def train_head(feats: torch.Tensor, labels: torch.Tensor, steps: int, lr: float, seed: int) -> LinearHead:
    """Softmax regression on (N,C) pooled features over the labels present; full-batch Adam."""
    classes, targets = torch.unique(labels, return_inverse=True)
    torch.manual_seed(seed)
    linear = torch.nn.Linear(feats.shape[1], len(classes))
    optimizer = torch.optim.Adam(linear.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        loss = F.cross_entropy(linear(feats), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return LinearHead(linear.weight.detach(), linear.bias.detach(), classes)


def cam_of(upsampler: Upsampler, backbone: Backbone, head: LinearHead, image: torch.Tensor,
           k: torch.Tensor, tile: int | None = None) -> torch.Tensor:
    """(B,H,W) CAMs in [0,1] at the image size for head outputs ``k``, upsampled in tiles when ``tile`` is given."""
    # the class map acts per pixel: under --tile each tile is mapped as it comes, the features are never whole
    cam = upsampler.upsample(backbone, image, tuple(image.shape[-2:]), tile,
                             pixelwise=lambda f: head.class_map(standardise(f.float()), k)[:, None])[:, 0].relu()
    lo, hi = cam.amin((1, 2), keepdim=True), cam.amax((1, 2), keepdim=True)
    cam = (cam - lo) / (hi - lo).clamp_min(1e-12)
    if tuple(cam.shape[-2:]) != tuple(image.shape[-2:]):
        cam = F.interpolate(cam[:, None], size=image.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cam


def class_probs(backbone: Backbone, head: LinearHead, image: torch.Tensor) -> torch.Tensor:
    """(B, K) softmax scores of the model explained: the backbone, pooled and standardised, then the head."""
    return head.logits(standardise(backbone.features(image))).softmax(1)


def cam_mask(cam: torch.Tensor, protocol: str) -> torch.Tensor:
    """(B,H,W) multiplicative mask: the CAM itself (standard) or its top half of pixels (relevance)."""
    if protocol == "standard":
        return cam
    threshold = cam.flatten(1).median(1).values.view(-1, 1, 1)
    return (cam > threshold).to(cam)


@TASKS.register
class Cam(Task):
    name = "cam"
    metrics = {"ad": False, "ai": True, "adcc": True}
    paper_columns = {"ad": "cam_ad", "ai": "cam_ai"}
    data_kind = "classify"
    Settings = CamSettings

    def recipe(self, profile) -> dict[str, Any]:
        check_protocol(self.settings(profile).protocol)
        return {**super().recipe(profile), "classifier": "linear on pooled channel-standardised features",
                "cam": "ReLU, min-max, bilinear to the image", "coherency": "(Pearson + 1) / 2"}

    def images(self, context: RunContext):
        data = self.load_split("val", context)
        return (data[i]["image"] for i in range(len(data)))

    def workload(self, context: RunContext) -> Workload:
        """Per validation image: its CAM, then the masked image's score and CAM (coherency)."""
        n = len(self.load_split("val", context))
        return Workload(2 * n, 3 * n)

    def head(self, backbone: Backbone, context: RunContext) -> LinearHead:
        """The cached linear classifier of this backbone and data, trained on first use."""
        s, p = self.settings(context.profile), context.profile
        name = self.dataset(p)
        data = dataset_identity(name, context.data_paths.get(name))  # a changed folder gets a new classifier
        key = {"backbone": cache_key(backbone), "data": data, "seed": p.seed, "image_size": list(p.image_size),
               "n_train": s.n_train, "steps": s.head_steps, "lr": s.head_lr}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(context.cache_dir) / "classifiers" / f"{slug(cache_key(backbone))}-{slug(data['label'])}-{digest}.pt"
        if path.is_file():
            try:
                return LinearHead(**torch.load(path, weights_only=True))
            except Exception as exc:  # a damaged file is retrained, never used
                tqdm.write(f"classifier cache {path} is unreadable ({type(exc).__name__}); retraining it")
        train = self.load_split("train", context)
        pooled, labels = [], []
        with torch.no_grad():
            for batch in DataLoader(train, batch_size=s.batch_size):
                pooled.append(standardise(backbone.features(batch["image"].to(context.device))).mean((2, 3)).cpu())
                labels.append(batch["label"])
        head = train_head(torch.cat(pooled), torch.cat(labels), s.head_steps, s.head_lr, p.seed)
        atomic_write(path, lambda tmp: torch.save(asdict(head), tmp))
        return head

    def prepare(self, backbone: Backbone, context: RunContext) -> None:
        self.head(backbone, context)

    def run(self, upsampler: Upsampler, backbone: Backbone, context: RunContext) -> list[MetricRow]:
        if upsampler.output_dim(backbone.dim) != backbone.dim:
            raise NotApplicable(f"{upsampler.name} returns {upsampler.output_dim(backbone.dim)} channels, not the "
                                f"backbone's {backbone.dim}: the classifier whose CAMs are scored cannot take them")
        s = self.settings(context.profile)
        head = self.head(backbone, context).to(context.device)
        val = self.load_split("val", context)
        truth = getattr(val, "labels_are_truth", False)
        ad, ai, adcc = AverageDrop(s.protocol), AverageIncrease(s.protocol), ADCC()
        scored = 0
        for batch in tqdm(DataLoader(val, batch_size=s.batch_size), desc="cam", leave=False, disable=not context.progress):
            image, label = batch["image"].to(context.device), batch["label"].to(context.device)
            with torch.no_grad():
                probs = class_probs(backbone, head, image)
                top = probs.argmax(1)
                if truth:  # ground truth: only the images the model classifies correctly
                    keep = head.classes[top] == label
                    image, probs, top = image[keep], probs[keep], top[keep]
                if len(image) == 0:
                    continue
                cam = cam_of(upsampler, backbone, head, image, top, context.tile)
                masked = image * cam_mask(cam, s.protocol)[:, None]
                y = probs.gather(1, top[:, None])[:, 0]
                o = class_probs(backbone, head, masked).gather(1, top[:, None])[:, 0]
                coherency = (pearson(cam, cam_of(upsampler, backbone, head, masked, top, context.tile)) + 1) / 2
            ad.update(y, o)
            ai.update(y, o)
            adcc.update(y.double(), o.double(), coherency, cam.flatten(1).mean(1).double())
            scored += len(image)
        if scored == 0:
            raise ValueError(f"cam: no validation image of {self.dataset(context.profile)!r} is classified correctly "
                             f"by the linear classifier on {backbone.name!r}; nothing to score")
        values = {"ad": ad.compute().item(), "ai": ai.compute().item(), "adcc": adcc.compute().item()}
        per_image = {name: (metric.per_image(), "percent_sums") for name, metric in
                     (("ad", ad), ("ai", ai), ("adcc", adcc))}
        return self.rows(values, per_image)
