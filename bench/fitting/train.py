"""Fit a trainable upsampler with the multi-view loss once, cache it, reuse it.

Any trainable Upsampler is trained the same way (REFERENCE §4): NAdam over its
parameters, the downsampler's and the uncertainty net's; ``train_views`` jittered
views per batch (see MultiViewLoss), one step per batch; gradient norm clipped
to 1e-4 for the first 10 steps. Weights live in

    <cache_dir>/weights/<method>-v<version>-<backbone>-<train data label>-<profile>-seed<seed>/
        weights.pt        the upsampler's state dict
        provenance.json   what made them; written last, so it marks a finished run
        resume.pt         periodic training state while a run is in progress

A cached file that is unreadable or was made by another recipe is an error that
names the folder to delete: trained weights are never silently overwritten.
"""
from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from bench.backbones import Backbone, cache_key
from bench.running.context import RunContext
from bench.data import load_dataset
from bench.data.identity import dataset_identity, slug
from bench.fitting.multiview import PROJ_DIM, Jitter, MultiViewLoss, random_projection
from bench.running.provenance import git_commit
from bench.running.store import atomic_write, atomic_write_json
from methods.base import Upsampler

LR = 1e-3
CLIP_STEPS, CLIP_NORM = 10, 1e-4
DOWNSAMPLER = "simple"
"""FeatUp's JBU recipe pools with the attention downsampler; the simple one acts per
channel, which lets the loss run on 30 projected channels (REFERENCE §4), ~10x cheaper."""
CHECKPOINTS = 10
"""Resume checkpoints per run."""


class CheckpointError(RuntimeError):
    """A cached checkpoint that cannot be used; the message says which file and what to delete."""


def checkpoint(upsampler: Upsampler, backbone: Backbone, context: RunContext) -> tuple[Path, dict[str, Any]]:
    """The weights' folder and the recipe a cached checkpoint must match exactly.

    One folder per (method, version, backbone, training data, profile, seed), the backbone being its
    ``key`` (name with any @stage, and its input normalisation where not the model's own); the training data's
    identity (a folder's fingerprint walks every file) is taken once for both.
    """
    p = context.profile
    data = dataset_identity(p.train_data, context.data_paths.get(p.train_data))
    folder = (Path(context.cache_dir) / "weights"
              / f"{upsampler.name}-v{upsampler.version}-{slug(cache_key(backbone))}-{slug(data['label'])}-{p.name}-seed{p.seed}")
    recipe = {
        "method": upsampler.name, "version": upsampler.version, "backbone": cache_key(backbone), "dim": backbone.dim,
        "stride": backbone.stride, "dataset": p.train_data, "data": data, "profile": p.name,
        "image_size": list(p.image_size),
        "steps": p.train_steps, "batch": p.train_batch, "views": p.train_views, "seed": p.seed,
        "optimizer": "NAdam", "lr": LR, "clip": [CLIP_STEPS, CLIP_NORM], "downsampler": DOWNSAMPLER,
        "proj_dim": PROJ_DIM,
    }
    return folder, recipe


def ensure_trained(upsampler: Upsampler, backbone: Backbone, context: RunContext) -> None:
    """Load the cached weights for this recipe into ``upsampler``, training them first if absent."""
    folder, recipe = checkpoint(upsampler, backbone, context)
    if not (folder / "provenance.json").is_file():
        train_method(upsampler, backbone, context)
    load_trained(upsampler, folder, recipe, context.device)
    upsampler.eval()


def load_trained(upsampler: Upsampler, folder: Path, recipe: dict[str, Any], device: torch.device) -> None:
    provenance = _read_json(folder / "provenance.json", folder)
    _check_recipe(provenance, recipe, folder / "provenance.json", folder)
    state = _read_torch(folder / "weights.pt", folder, device)
    try:
        upsampler.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{folder / 'weights.pt'} does not fit {upsampler.name!r}: {exc}. {_delete_hint(folder)}") from exc


def train_method(upsampler: Upsampler, backbone: Backbone, context: RunContext) -> Path:
    """Train ``upsampler`` with the multi-view loss and cache it; resumes a killed run. Returns the folder."""
    p, device = context.profile, context.device
    folder, recipe = checkpoint(upsampler, backbone, context)
    if (folder / "provenance.json").is_file():
        raise CheckpointError(f"{folder} already holds trained weights for this recipe. {_delete_hint(folder)}")
    data = load_dataset(p.train_data, "train", p.image_size, limit=p.train_steps * p.train_batch,
                        path=context.data_paths.get(p.train_data), seed=p.seed)
    if len(data) == 0:
        raise ValueError(f"training set {p.train_data!r} is empty")
    torch.manual_seed(p.seed)
    generator = torch.Generator().manual_seed(p.seed)
    upsampler.to(device).train()
    backbone.to(device)
    objective = MultiViewLoss(backbone.dim, backbone.stride, DOWNSAMPLER).to(device)
    params = [*upsampler.parameters(), *objective.parameters()]
    optimizer = torch.optim.NAdam(params, lr=LR)
    state = {"step": 0, "seconds": 0.0, "losses": []}
    if (folder / "resume.pt").is_file():
        state = _resume(folder, recipe, upsampler, objective, optimizer, generator, device)
    every = max(1, p.train_steps // CHECKPOINTS)
    bar = tqdm(range(state["step"], p.train_steps), initial=state["step"], total=p.train_steps,
               desc=f"train {upsampler.name}", disable=not context.progress)
    started = time.perf_counter() - state["seconds"]
    for step in bar:
        image = _batch(data, step, p.train_batch, p.seed).to(device)
        with torch.no_grad():
            lr_feats = upsampler.features(backbone, image)
        jitters = [Jitter.sample(tuple(image.shape[-2:]), generator) for _ in range(p.train_views)]
        with torch.no_grad():
            view_lrs = [upsampler.features(backbone, jitter(image)) for jitter in jitters]
        projs = [random_projection(image.shape[0], backbone.dim, generator).to(device) for _ in jitters]
        optimizer.zero_grad(set_to_none=True)
        loss = objective(upsampler, lr_feats, image, jitters, view_lrs, projs)
        loss.backward()
        if step < CLIP_STEPS:
            torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
        optimizer.step()
        state["losses"].append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % every == 0 and step + 1 < p.train_steps:
            state.update(step=step + 1, seconds=time.perf_counter() - started)
            _save_resume(folder, recipe, state, upsampler, objective, optimizer, generator)
    seconds = time.perf_counter() - started
    _atomic_torch_save(upsampler.state_dict(), folder / "weights.pt")
    tail = state["losses"][-max(1, len(state["losses"]) // 10):]
    atomic_write_json(folder / "provenance.json", {
        **recipe, "profile_recipe": context.profile.recipe(), "seconds": round(seconds, 1),
        "final_loss": sum(tail) / len(tail), "losses": state["losses"], "git_commit": git_commit(),
        "torch": torch.__version__, "device": str(device), "date": datetime.datetime.now().isoformat(timespec="seconds"),
    })
    (folder / "resume.pt").unlink(missing_ok=True)
    upsampler.eval()
    return folder


def _batch(data: Any, step: int, batch: int, seed: int) -> torch.Tensor:
    """Images of ``step``: epochs are seeded permutations, so a resumed run sees the same batches."""
    n, images = len(data), []
    for q in range(step * batch, (step + 1) * batch):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + q // n))
        images.append(data[int(order[q % n])]["image"])
    return torch.stack(images)


def _save_resume(folder: Path, recipe: dict, state: dict, upsampler: Upsampler, objective: MultiViewLoss,
                 optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    _atomic_torch_save({
        "recipe": recipe, **state, "upsampler": upsampler.state_dict(), "objective": objective.state_dict(),
        "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
    }, folder / "resume.pt")


def _resume(folder: Path, recipe: dict, upsampler: Upsampler, objective: MultiViewLoss,
            optimizer: torch.optim.Optimizer, generator: torch.Generator, device: torch.device) -> dict:
    saved = _read_torch(folder / "resume.pt", folder, device)
    _check_recipe(saved.get("recipe", {}), recipe, folder / "resume.pt", folder)
    upsampler.load_state_dict(saved["upsampler"])
    objective.load_state_dict(saved["objective"])
    optimizer.load_state_dict(saved["optimizer"])
    generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    return {k: saved[k] for k in ("step", "seconds", "losses")}


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _delete_hint(folder: Path) -> str:
    return f"Delete {folder} to retrain from scratch."


def _read_json(path: Path, folder: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or unreadable ({exc}). {_delete_hint(folder)}") from exc


def _read_torch(path: Path, folder: Path, device: torch.device) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing although {folder} holds a finished run. {_delete_hint(folder)}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch.load raises many types (pickle, zip, EOF) for a damaged file
        raise CheckpointError(f"{path} is corrupt or unreadable ({type(exc).__name__}: {exc}). {_delete_hint(folder)}") from exc


def _check_recipe(stored: dict, expected: dict, path: Path, folder: Path) -> None:
    diffs = [f"{k}={stored.get(k)!r} (this run: {v!r})" for k, v in expected.items() if stored.get(k) != v]
    if diffs:
        raise CheckpointError(f"{path} was made by a different recipe: {', '.join(diffs)}. {_delete_hint(folder)}")
