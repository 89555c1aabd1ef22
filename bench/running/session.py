"""What a command needs before it runs cells: the run context, the device, the run folder's name, the default
methods. The CLI parses arguments into these calls and prints; the decisions live here."""
from __future__ import annotations

from pathlib import Path

import torch

from bench.core.cells import slug
from bench.core.context import RunContext
from bench.core.profiles import PROFILES, Profile
from bench.data.root import data_root as resolve_root, found
from bench.registry import DATASETS, METHODS, TASKS

RUNS_DIR = Path("results/runs")
CACHE_DIR = Path("results/cache")


def resolve_device(name: str) -> torch.device:
    """"auto" (CUDA when torch sees one, else the CPU), "cpu" or "cuda" (refused where there is none)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch on this machine")
    return torch.device(name)


def default_methods(profile: Profile | None = None) -> list[str]:
    """The methods ``run`` scores without ``-m``: every registered one that is in the default run, or every
    registered one where the profile asks for all (``Profile.methods``)."""
    every = profile is not None and profile.methods == "all"
    return [n for n in METHODS.names() if every or METHODS.get(n).in_default_run]


def default_tasks(profile: Profile) -> list[str]:
    """The tasks ``run`` scores without ``-t``: the profile's list (``Profile.tasks``), or every registered one."""
    return list(profile.tasks) if profile.tasks is not None else TASKS.names()


def build_context(profile_name: str, data: dict[str, str | None] | None = None, device: str = "auto",
                  cam_settings: dict[str, object] | None = None, normalisation: str | None = None,
                  tile: int | None = None, weights: dict[str, str] | None = None, retrain: bool = False,
                  progress: bool = True, data_root: str | None = None) -> RunContext:
    """The named profile with the given datasets (name -> folder, or None for embedded ones), CAM settings and
    normalisation overridden where given, on ``device``. A dataset the profile already names (as its data, an
    extra dataset or its training data) just gets its folder; any other takes the place of the profile's
    dataset of its kind, and two of one kind, or one of a kind no task reads, are refused. A folder dataset given
    no folder is read from ``<data root>/NAME`` where that exists (bench.data.root: ``data_root``, else
    $FEATUP_BENCH_DATA, else ./data)."""
    data = data or {}
    profile = PROFILES.get(profile_name)
    read = {TASKS.get(t).data_kind for t in TASKS.names()}
    named = {*profile.data.values(), *profile.extra_data, profile.train_data}
    swapped: dict[str, str] = {}
    for name in (n for n in data if n not in named):
        kind = DATASETS.get(name).kind
        if kind not in read:
            raise ValueError(f"--data {name}: no task reads {kind} data, and profile {profile.name!r} does not name "
                             f"{name!r}; the kinds the tasks read: {', '.join(sorted(read))}")
        if kind in swapped:
            raise ValueError(f"--data {swapped[kind]} and --data {name} both take the place of the profile's {kind} "
                             f"data ({profile.data.get(kind)!r}); give one (a profile's extra_data scores more)")
        swapped[kind] = name
    task_settings = None
    if cam_settings:
        task_settings = {**profile.task_settings, "cam": {**profile.task_settings.get("cam", {}), **cam_settings}}
    profile = profile.with_data(**swapped).with_overrides(task_settings=task_settings, normalisation=normalisation)
    paths = {n: p for n, p in data.items() if p}
    root = resolve_root(data_root)
    for name in {*profile.data.values(), *profile.extra_data, profile.train_data} - set(paths):
        if not DATASETS.get(name).embedded and (folder := found(name, root)):
            paths[name] = str(folder)
    return RunContext(profile=profile, device=resolve_device(device), cache_dir=CACHE_DIR,  # read at call time
                      data_paths=paths, progress=progress, tile=tile,
                      weights=dict(weights or {}), retrain=retrain)


def default_run_dir(profile_name: str, backbone_name: str, cells: list,
                    task_settings: dict[str, dict] | None = None, normalisation: str | None = None) -> Path:
    """results/runs/<profile>-<backbone>, plus the label of every dataset that is not the profile's own,
    every task setting changed from the profile's (e.g. ``cam-protocol-relevance``) and the backbone's
    input normalisation where it is not the profile's (``normalisation-imagenet``).

    Folder datasets always count as not the profile's own (their label names the folder), so
    runs on two folders never share a default run folder; nor do runs of two CAM protocols, whose
    newest cells would otherwise replace each other in one table.
    """
    profile = PROFILES.get(profile_name)
    defaults = {*profile.data.values(), *profile.extra_data}
    labels = sorted({r["data"]["label"] for _, r in cells if "path" in r["data"] or r["data"]["name"] not in defaults})
    changed = [f"{task}-{key}-{value}" for task, values in sorted((task_settings or {}).items())
               for key, value in sorted(values.items()) if profile.task_settings.get(task, {}).get(key) != value]
    if normalisation not in (None, profile.normalisation):
        changed.append(f"normalisation-{normalisation}")
    return RUNS_DIR / "-".join([profile_name, *map(slug, [backbone_name, *labels, *changed])])


def run_dir(text: str) -> Path:
    """A run folder as a command names it: a path, or a bare name under results/runs."""
    path = Path(text)
    return path if path.exists() or path.is_absolute() or len(path.parts) > 1 else RUNS_DIR / text
