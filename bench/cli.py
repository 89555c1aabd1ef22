"""The command line: parse arguments, call the framework, print what happened."""
from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from bench.core.profiles import NORMALISATIONS, PROFILES
from bench.plugins import load_all
from bench.reporting.references import REFERENCES
from bench.registry import BACKBONES, DATASETS, METHODS, TASKS, RegistryError

if TYPE_CHECKING:  # torch, timm and the framework load in the commands that use them: `--help` answers at once
    from bench.backbones import Backbone
    from bench.core.context import RunContext


class UsageError(ValueError):
    """Bad command-line input; printed without a traceback."""


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def number_list(cast: Callable[[str], float], minimum: float, what: str,
                example: str) -> Callable[[str], list]:
    """An argparse type: comma-separated numbers read by ``cast``, each at least ``minimum``."""

    def parse_numbers(text: str) -> list:
        try:
            values = [cast(t) for t in csv_list(text)]
        except ValueError:
            values = []
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, e.g. {example}; got {text!r}")
        return values

    return parse_numbers


def int_list(minimum: int, what: str, example: str) -> Callable[[str], list[int]]:
    """An argparse type: comma-separated integers, each at least ``minimum``."""
    return number_list(int, minimum, what, example)


def positive_int(text: str) -> int:
    """An argparse type: one positive integer."""
    values = int_list(1, "a positive integer", "8")(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one positive integer, e.g. 8; got {text!r}")
    return values[0]


def parse_data(entries: list[str]) -> dict[str, str | None]:
    """--data NAME[=PATH] entries -> {name: path or None}, names checked against the registry."""
    out: dict[str, str | None] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not name or (sep and not path):
            raise UsageError(f"--data {entry!r}: expected NAME or NAME=PATH, e.g. --data coco_stuff=/data/cocostuff")
        DATASETS.get(name)
        out[name] = path or None
    return out


def parse_upsampler_weights(entries: list[str]) -> dict[str, str]:
    """--upsampler-weights METHOD=PATH entries -> {method: path}, methods checked against the registry."""
    out = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--upsampler-weights {entry!r}: expected METHOD=PATH, e.g. featup_jbu=jbu.pt")
        if METHODS.get(name).fit != "dataset":
            raise UsageError(f"--upsampler-weights {entry!r}: method {name!r} has no trained weights "
                             f"(fit={METHODS.get(name).fit!r})")
        if not Path(path).is_file():
            raise UsageError(f"--upsampler-weights {entry!r}: no such file {path!r}")
        out[name] = path
    return out


def make_context(args: argparse.Namespace) -> RunContext:
    """bench.running.session.build_context from a command's arguments."""
    from bench.running.session import build_context

    cam = {k: v for k, v in (("protocol", getattr(args, "cam_protocol", None)),
                             ("n_val", getattr(args, "cam_images", None))) if v is not None}
    return build_context(args.profile, parse_data(args.data), args.device, cam, getattr(args, "normalisation", None),
                         getattr(args, "tile", None),
                         parse_upsampler_weights(getattr(args, "upsampler_weights", None) or []),
                         getattr(args, "retrain", False), not args.no_progress,
                         data_root=getattr(args, "data_root", None))


def context_backbone(args: argparse.Namespace, context: RunContext) -> Backbone:
    """The backbone a command names (default: the profile's) with its weights and the profile's normalisation."""
    from bench.backbones import load_backbone

    return load_backbone(args.backbone or context.profile.backbone, args.weights, context.device,
                         context.profile.normalisation)


def cmd_list(args: argparse.Namespace) -> int:
    from bench.backbones.names import describe, resolve_spec

    if args.backbones is not None:
        for name in args.backbones or BACKBONES.names():
            print(describe(resolve_spec(name)))
        return 0
    if args.weights:
        from bench.fitting.weights import weights_table
        from bench.running import session

        table = weights_table(session.CACHE_DIR / "weights")
        print(table.to_markdown(index=False) if len(table) else "no shipped or cached weights")
        return 0
    print("methods:")
    for name in METHODS.names():
        m = METHODS.get(name)
        role = "  reference row: the image's colour alone, no backbone" if m.reference else ""
        left_out = "" if m.in_default_run else "  (not in the default run: name it with -m)"
        print(f"  {name:18s} v{m.version}  fit={m.fit}{role}{left_out}")
    print("tasks:")
    for name in TASKS.names():
        t = TASKS.get(name)
        metrics = ", ".join(f"{k} {'↑' if up else '↓'}" for k, up in t.metrics.items())
        print(f"  {name:18s} {metrics}  (data: the profile's {t.data_kind} dataset)")
    print("backbones:")
    for name in BACKBONES.names():
        print(f"  {describe(BACKBONES.get(name))}")
    print("  timm:NAME[@stage]        any timm model (list --backbones timm:NAME shows what it resolves to)")
    print("datasets:")
    for name in DATASETS.names():
        d = DATASETS.get(name)
        print(f"  {name:18s} {d.kind:8s} {'embedded' if d.embedded else 'needs --data ' + name + '=PATH'}  {d.summary}")
    print("profiles:")
    for name in PROFILES.names():
        p = PROFILES.get(name)
        print(f"  {name:18s} backbone {p.backbone}, {p.image_size[0]}x{p.image_size[1]} px, "
              + ", ".join(f"{kind} {dataset}" for kind, dataset in p.data.items())
              + (f", also {', '.join(p.extra_data)}" if p.extra_data else ""))
    return 0


def md5_hex(text: str) -> str:
    """An argparse type: an md5 sum, 32 hexadecimal digits."""
    if len(text) != 32 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise argparse.ArgumentTypeError(f"expected an md5 sum (32 hexadecimal digits), got {text!r}")
    return text


def cmd_data(args: argparse.Namespace) -> int:
    """`data list`: the datasets the profiles name, where each comes from and whether it is here; `data fetch`."""
    from bench.data.root import data_root

    if args.data_command == "list":
        from bench.data.sources import catalogue

        root = data_root(args.data_root)
        print(f"data root: {root.resolve()} (--data-root, $FEATUP_BENCH_DATA or ./data); "
              f"`data fetch NAME` puts a dataset there")
        print(catalogue(root).to_markdown(index=False))
        return 0
    from bench.data.fetch import data_argument, fetch

    if len(args.names) > 1 and (args.url or args.md5):
        raise UsageError("--url and --md5 replace the files of one dataset: fetch one NAME at a time with them")
    root = data_root(args.to)
    found_alone = root.resolve() == data_root().resolve()
    for name in args.names:
        folder, fetched = fetch(name, root, args.url, args.md5, args.unverified, args.source == "hf",
                                args.keep_archives, not args.no_progress, lambda text: print(text, file=sys.stderr))
        print(f"{name} {'fetched into' if fetched else 'is already at'} {folder}: {data_argument(folder.name, folder)}"
              + (" (runs find it there without the flag)" if found_alone else
                 f" (or --data-root {root} for every dataset there)"))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bench.backbones.names import resolve_spec
    from bench.reporting.report import table_text
    from bench.core.failures import SETTLED
    from bench.running.ray_executor import ray_executor
    from bench.running.runner import plan, run_cells
    from bench.running.shards import parse_shard, shard_cells
    from bench.core.store import ResultStore
    from bench.running.session import default_methods, default_run_dir, default_tasks

    if args.ray_address and args.executor != "ray":
        raise UsageError("--ray-address is for --executor ray")
    shard = parse_shard(args.shard) if args.shard else None
    context = make_context(args)
    backbone_name = args.backbone or context.profile.backbone
    resolve_spec(backbone_name)  # an unknown name or stage fails before any data is read
    methods = csv_list(args.methods) if args.methods else default_methods(context.profile)
    tasks = csv_list(args.tasks) if args.tasks else default_tasks(context.profile)

    def out_for(cells: list) -> Path:
        return Path(args.out) if args.out else default_run_dir(args.profile, backbone_name, cells,
                                                               context.profile.task_settings,
                                                               context.profile.normalisation)

    if args.dry_run:
        from bench.running.dry_run import dry_run

        return dry_run(methods, tasks, backbone_name, args.weights, context, args.seeds, out_for)
    cells = plan(methods, tasks, backbone_name, context, args.seeds)
    out = out_for(cells)
    if args.verify:
        return verify_cells(args, cells, context, out)
    if shard:
        cells = shard_cells(cells, *shard)
        out = out if args.out else out.with_name(f"{out.name}-shard{shard[0]}of{shard[1]}")
        print(f"shard {args.shard}: {len(cells)} cells", file=sys.stderr)
    ResultStore(out)  # refuses an --out that names a file before the backbone loads
    if args.executor == "ray":
        executor = ray_executor(backbone_name, args.weights, args.plugin, args.ray_address)
        backbone = None
    else:
        executor, backbone = None, context_backbone(args, context)
    t0 = time.perf_counter()
    summary = run_cells(cells, backbone, context, out, args.rerun, executor, args.shard)
    print(f"{len(summary.done)} cells scored, {len(summary.skipped)} already done, {len(summary.failed)} failed "
          f"in {time.perf_counter() - t0:.0f} s; results in {out}")
    if summary.kept_failed:
        print(f"kept {len(summary.kept_failed)} failed cell(s) from an earlier run; "
              f"`--rerun failed` retries them")
    if not ResultStore(out).cells_dir.is_dir():
        return 0  # a shard with no cells
    print(table_text(out, "md"))
    return 1 if (~ResultStore(out).rows()["status"].isin(SETTLED)).any() else 0


def verify_cells(args: argparse.Namespace, cells: list, context: RunContext, out: Path) -> int:
    """run --verify K: rescore K of the folder's cells at random and print how far they are from the stored."""
    from bench.core.store import ResultStore
    from bench.running.verify import verify

    if args.shard or args.executor != "local" or args.dry_run:
        raise UsageError("--verify rescores here, one cell after another: drop --shard, --executor and --dry-run")
    table = verify(cells, args.verify, context_backbone(args, context), context, ResultStore(out))
    print(table.to_markdown(index=False, floatfmt=".6g"))
    worst = table.loc[table["abs_diff"].idxmax()]
    print(f"verified {len(table.groupby(['method', 'task', 'dataset', 'seed']))} cells of {out}: largest "
          f"difference {worst['abs_diff']:.3g} ({worst['method']} / {worst['task']} / seed {worst['seed']} "
          f"{worst['metric']}: stored {worst['stored']:.6g}, rescored {worst['rescored']:.6g})")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from bench.running.session import run_dir
    from bench.running.shards import merge_runs

    count = merge_runs([run_dir(d) for d in args.runs], Path(args.out))
    print(f"merged {count} cell files from {len(args.runs)} folders into {args.out}", file=sys.stderr)
    return 0


def chosen_run(args: argparse.Namespace) -> Path:
    """The run folder ``--run`` names (default: the default profile's run, whose cells ship with the suite),
    with the plugin files its run.json records loaded again, so their methods' rows are read like any other."""
    from bench.core.store import ResultStore
    from bench.plugins import load_plugin_file
    from bench.running.session import default_run_dir, run_dir

    run = run_dir(args.run) if args.run else default_run_dir("default", PROFILES.get("default").backbone, [])
    given = {str(Path(f).resolve()) for f in args.plugin}
    for file in set(ResultStore(run).manifest().get("plugins", [])) - given:
        if Path(file).is_file():
            load_plugin_file(file)
            print(f"loaded plugin {file} (recorded in {run / 'run.json'})", file=sys.stderr)
        else:
            print(f"warning: plugin {file}, recorded in {run / 'run.json'}, is gone: its methods' rows are "
                  f"shown without their class (pass --plugin FILE where it moved)", file=sys.stderr)
    return run


def todays_hashes(run: Path) -> dict[tuple, str]:
    """Cell key -> the config hash the default profile and today's code give each cell the folder holds: the
    shipped default run's cells that an older recipe or code scored are then not shown as current."""
    from bench.core.store import ResultStore, cell_key
    from bench.running.runner import plan
    from bench.running.session import build_context

    held = [r["cell"] for r in ResultStore(run).records()]
    methods = sorted({c["method"] for c in held if c["method"] in METHODS})
    if not methods:
        return {}
    context = build_context("default", progress=False)
    cells = plan(methods, sorted({c["task"] for c in held}), context.profile.backbone, context,
                 sorted({c["seed"] for c in held}), missing={})
    return {cell_key(vars(cell)): cell.config_hash(recipe) for cell, recipe in cells}


def cmd_table(args: argparse.Namespace) -> int:
    from bench.reporting.report import table_text

    run = chosen_run(args)
    print(table_text(run, args.format, "featup" if args.vs_paper else args.vs,
                     None if args.run else todays_hashes(run)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Markdown and self-contained HTML report of a run, with its figures."""
    from bench.reporting.document import write_report
    from bench.running.session import resolve_device

    run = chosen_run(args)
    out = Path(args.out) if args.out else run / "report"
    md, page = write_report(run, out, resolve_device(args.device), args.weights, tuple(args.sizes), args.photos,
                            progress=not args.no_progress)
    print(f"wrote {md} and {page} (figures in {out / 'figures'}, embedded in the HTML)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from bench.fitting.train import train_method
    from bench.running.runner import create_method

    context = make_context(args)
    if args.data:
        context.profile = context.profile.with_overrides(train_data=args.data[-1].partition("=")[0])
    context.profile = context.profile.with_overrides(train_steps=args.steps)
    backbone = context_backbone(args, context)
    method_cls = METHODS.get(args.method)
    if method_cls.fit != "dataset":
        raise UsageError(f"method {args.method!r} is not trained on a dataset (fit={method_cls.fit!r}); "
                         f"`train` fits methods with fit='dataset'")
    path = train_method(create_method(args.method, backbone, context.profile.seed).to(context.device), backbone, context)
    print(f"trained {args.method} on {backbone.name}: {path}")
    return 0


def cmd_ship(args: argparse.Namespace) -> int:
    """Copy trained weights into results/weights and write their manifest entry, so runs use them untrained."""
    from bench.fitting.train import checkpoint, load_trained
    from bench.fitting.weights import ship

    context = make_context(args)
    context.profile = context.profile.with_overrides(train_steps=args.steps)
    backbone = context_backbone(args, context)
    method_cls = METHODS.get(args.method)
    if args.study:
        from bench.running.budget import study_checkpoint

        weights, recipe, trained = study_checkpoint(Path(args.study), args.method, args.steps, backbone, context)
    else:
        folder, recipe = checkpoint(method_cls, backbone, context)
        if not (folder / "provenance.json").is_file():
            raise UsageError(f"no trained {args.method} for this recipe in {folder}: run "
                             f"`run_bench.py train {args.method} --profile {context.profile.name} --backbone "
                             f"{backbone.name}{f' --steps {args.steps}' if args.steps else ''}` first")
        load_trained(method_cls.create(backbone), folder, recipe, context.device)  # refuses a stale or damaged cache
        weights, trained = folder / "weights.pt", json.loads((folder / "provenance.json").read_text())
    entry = ship(weights, recipe, trained)
    print(f"shipped {entry['method']} for {entry['backbone']}: {entry['steps']} steps, {entry['view_images']} "
          f"view-images, recipe {entry['recipe_digest']} -> results/weights/{entry['file']}")
    # a cell knows its weights by their sha256: the study's cells of this checkpoint are the run's own
    if args.study and (scored := Path(args.study) / "scores" / f"{args.method}-{args.steps}").is_dir():
        from bench.running.session import default_run_dir

        run = default_run_dir(context.profile.name, backbone.name, [])
        print(f"the study scored these weights in {scored}; they are the run's cells of them, which "
              f"`run_bench.py merge {scored} {run} --out {run}` adds to its table")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """Kernel or whole-method timings: a table on stdout, CSV and PNG kept under the run folder."""
    import torch

    from bench.profiling.profile import plot_profile
    from bench.reporting.report import render
    from bench.running import session
    from bench.running.session import resolve_device

    device = str(resolve_device(args.device))
    if args.what == "kernels":
        from bench.profiling.profile import profile_kernels

        df = profile_kernels(args.sizes, args.channels, device, progress=not args.no_progress)
    else:
        from bench.backbones import load_backbone
        from bench.profiling.methods import FIT, STRIDE, profile_methods

        methods = csv_list(args.methods) if args.methods else None  # None: every method, the slowest left out
        for name in methods or ():
            METHODS.get(name.partition(":")[0])  # "featup_jbu:reference" picks a kernel impl
        backbone = load_backbone(args.backbone or PROFILES.get("default").backbone, device=device, random_weights=True)
        channels, stride = (backbone.dim, backbone.stride) if args.backbone else (args.channels[0], STRIDE)
        df = profile_methods(methods, args.sizes, channels, device, stride=stride, progress=not args.no_progress,
                             tile=args.tile, dtype=torch.float16 if args.half else torch.float32, backbone=backbone)
        df.attrs["note"] = (f"pipeline_ms: {backbone.name} (random weights, {backbone.dim} channels, stride "
                            f"{backbone.stride}) on an image of each output size, then the upsampling; per-image "
                            f"methods are fitted to the image first ({FIT.steps} steps, untimed)")
    out = Path(args.out) if args.out else session.RUNS_DIR / f"profile-{args.what}-{device}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "profile.csv", index=False)
    plot_profile(df, out / "profile.png")
    print(render(df.set_index(df.columns[0]), args.format))
    if "matmul_gflops" in df.attrs:
        print(f"practical peak: a 2048² float32 torch matmul reached {df.attrs['matmul_gflops']:.1f} GFLOP/s "
              f"(copy bandwidth {df.attrs['copy_gbps']:.1f} GB/s); peak_fraction = a row's GFLOP/s over it",
              file=sys.stderr)
    if "note" in df.attrs:
        print(df.attrs["note"], file=sys.stderr)
    print(f"saved {out / 'profile.csv'} and {out / 'profile.png'}", file=sys.stderr)
    return 0 if df["status"].isin(["ok", "oom", "skipped"]).all() else 1


def cmd_ablate(args: argparse.Namespace) -> int:
    """Ablations: the Fourier features of implicit FeatUp, the training budget of the trainable methods, or the
    segmentation data's colour."""
    return {"budget": ablate_budget, "colour": ablate_colour, "fourier": ablate_fourier_features}[args.what](args)


def ablate_colour(args: argparse.Namespace) -> int:
    """The colour sweep (bench.running.colour): probe_seg mIoU against the data's colour level, CSV and PNG."""
    from bench.reporting.colour import CSV, PNG
    from bench.running.budget import SEEDS
    from bench.running.colour import LEVELS, SWEPT_METHODS, sweep

    if args.steps:
        raise UsageError("ablate colour takes --levels, not --steps")
    levels = args.levels or list(LEVELS)
    if min(levels) < 0 or max(levels) > 1:
        raise UsageError(f"--levels are colour levels in [0, 1] (0 colour-coded, 1 colour-blind), got {levels}")
    context = make_context(args)
    methods = csv_list(args.methods) if args.methods else list(SWEPT_METHODS)
    table = sweep(methods, levels, context_backbone(args, context), context, Path(args.out), args.seeds or list(SEEDS))
    shown = table[table["metric"] == "probe_seg.miou"]
    print(shown.pivot_table(index="method", columns="level", values="mean", sort=False).round(2).to_string())
    print(f"wrote {Path(args.out) / CSV} and {Path(args.out) / PNG}", file=sys.stderr)
    return 0


def ablate_budget(args: argparse.Namespace) -> int:
    """The training-budget study (bench.running.budget): curves as CSV and PNG under --out."""
    from bench.reporting.budget import CSV, PNG
    from bench.running.budget import SEEDS, study
    from bench.running.session import default_methods

    context = make_context(args)
    methods = csv_list(args.methods) if args.methods else [n for n in default_methods(context.profile)
                                                           if METHODS.get(n).fit == "dataset"]
    backbone = context_backbone(args, context)
    curves = study(methods, sorted(set(args.steps)) if args.steps else None, backbone, context, Path(args.out),
                   args.seeds or list(SEEDS))
    for scored_on, part in curves.groupby("scored_on"):
        print(f"scored on the {scored_on} probe images:")
        print(part.pivot_table(index=["method", "steps"], columns="metric", values="mean").round(4).to_string())
    print(f"wrote {Path(args.out) / CSV} and {Path(args.out) / PNG}", file=sys.stderr)
    return 0


def ablate_fourier_features(args: argparse.Namespace) -> int:
    """The Fourier ablation of implicit FeatUp: curves and errors as CSV, the curves as PNG."""
    import dataclasses

    import torch

    from bench.data import load_dataset
    from bench.fitting.ablation import ablate_fourier, plot_curves, summary_line
    from bench.fitting.per_image import fit_settings

    if args.steps and len(args.steps) != 1:
        raise UsageError(f"ablate fourier --steps takes one count of fit steps, got {args.steps}")
    context = make_context(args)
    settings = fit_settings(context.profile)
    if args.steps:
        settings = dataclasses.replace(settings, steps=args.steps[0])
    backbone = context_backbone(args, context)
    data = load_dataset("photos", "val", context.profile.image_size, limit=args.images)
    images = torch.stack([data[i]["image"] for i in range(len(data))]).to(context.device)
    curves, finals = ablate_fourier(backbone, images, settings, context.profile.seed, context.progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves.to_csv(out / "loss_curves.csv", index=False)
    finals.to_csv(out / "final_errors.csv", index=False)
    plot_curves(curves, out / "loss_curves.png")
    (out / "recipe.json").write_text(json.dumps({
        "backbone": backbone.name, "profile": context.profile.name, "images": f"photos val, first {len(images)}",
        "image_size": list(context.profile.image_size), "seed": context.profile.seed,
        "settings": dataclasses.asdict(settings)}, indent=1))
    print(finals.groupby("variant")[["final_nll", "held_out_mse"]].agg(["mean", "std"]).round(4).to_string())
    print(f"wrote {out / 'loss_curves.csv'}, {out / 'final_errors.csv'}, {out / 'loss_curves.png'}", file=sys.stderr)
    print(summary_line(finals))
    return 0


def add_common_arguments(p: argparse.ArgumentParser, data_help: str | None) -> None:
    """--backbone, --weights, --profile, --device, and --data where the command reads datasets (``data_help``)."""
    p.add_argument("--backbone", help="backbone name, or timm:NAME[@stage] for any timm model (default: the profile's)")
    p.add_argument("--weights", help="local weights file for the backbone (.safetensors/.pth)")
    p.add_argument("--normalisation", choices=NORMALISATIONS,
                   help="backbone input mean/std: the model's own timm config, or ImageNet's as in FeatUp's code "
                        "(default: the profile's); stored with every number")
    p.add_argument("--profile", default="default", help=f"one of {', '.join(PROFILES.names())}")
    if data_help is None:
        p.set_defaults(data=[])
    else:
        p.add_argument("--data", action="append", default=[], metavar="NAME[=PATH]", help=data_help)
        p.add_argument("--data-root", metavar="DIR",
                       help="where `data fetch` put datasets: a dataset the profile names is read from DIR/NAME when "
                            "--data gives no folder (default: $FEATUP_BENCH_DATA, else ./data)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def add_tile_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=positive_int, metavar="N",
                   help="compute upsampled maps in N x N tiles (inference only; equal results, memory bounded by the "
                        "tile beyond the output itself); methods that cannot tile run whole and say why")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_bench.py", description="featup-bench: score feature upsamplers on one protocol.",
        epilog="With no command, run_bench.py runs `run` (the default profile's run). "
               "`run_bench.py COMMAND --help` shows a command's options.")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="a Python file that registers upsamplers, backbones or tasks (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    lister = sub.add_parser("list", help="registered methods, tasks, backbones, datasets, profiles")
    lister.add_argument("--backbones", nargs="*", metavar="NAME",
                        help="only backbones: what each name (default: every registered one) resolves to, "
                             "without loading weights, e.g. --backbones timm:resnet50@3")
    lister.add_argument("--weights", action="store_true",
                        help="only trained weights: those shipped in results/weights and those trained into "
                             "results/cache, with their steps, view-images and recipe digest")
    lister.set_defaults(fn=cmd_list)
    data = sub.add_parser("data", help="the datasets the profiles use: where each comes from, whether it is here, and "
                                       "fetching it")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="{list,fetch}")
    data_list = data_commands.add_parser("list", help="every dataset the profiles name: profiles, source, size, "
                                                      "whether it is under the data root, the --data that reads it")
    data_list.add_argument("--data-root", metavar="DIR", help="default: $FEATUP_BENCH_DATA, else ./data")
    data_fetch = data_commands.add_parser("fetch", help="download, check and unpack datasets into the data root, in "
                                                        "the layout their loaders read")
    data_fetch.add_argument("names", nargs="+", metavar="NAME", help="datasets (data list names them)")
    data_fetch.add_argument("--to", metavar="DIR", help="the data root to fetch into, each dataset to DIR/NAME "
                                                        "(default: $FEATUP_BENCH_DATA, else ./data)")
    data_fetch.add_argument("--url", action="append", default=[],
                            help="the file's URL instead of the official one (a mirror, or file:///PATH of a file "
                                 "downloaded by hand); once per file of the dataset, in the order of its source")
    data_fetch.add_argument("--md5", action="append", default=[], type=md5_hex, metavar="HEX",
                            help="the md5 sum to check instead of the published one; once per file downloaded whole "
                                 "(not for a zip only read in part), in the order of --url")
    data_fetch.add_argument("--unverified", action="store_true",
                            help="accept files for which no checksum is published, unchecked (their md5 is printed)")
    data_fetch.add_argument("--source", choices=("archive", "hf"), default="archive",
                            help="archive: the published files (default); hf: the Hugging Face hub through "
                                 "`datasets`, with your token (imagenet)")
    data_fetch.add_argument("--keep-archives", action="store_true",
                            help="keep the downloaded files in DIR/.downloads after unpacking them")
    data.set_defaults(fn=cmd_data)
    run = sub.add_parser("run", help="score methods on tasks; resumes where a run stopped")
    run.add_argument("-m", "--methods", help="comma-separated method names (default: the profile's: those in the "
                     "CPU default run, every registered one for jafar)")
    run.add_argument("-t", "--tasks", help="comma-separated task names (default: the profile's: every registered "
                     "one, and for jafar those of JAFAR's table, without e2e_seg)")
    run.add_argument("--out", help="run folder (default: results/runs/<profile>-<backbone>)")
    run.add_argument("--seeds", type=int_list(0, "non-negative integers", "0,1,2"),
                     help="score every cell once per seed (probe init, sampled pixels, training, crops); "
                          "tables show mean and sd over seeds (default: the profile's seed)")
    run.add_argument("--cam-protocol", choices=("standard", "relevance"),
                     help="CAM A.D./A.I. protocol (default: the profile's, standard); stored with every number")
    run.add_argument("--verify", type=positive_int, metavar="K",
                     help="rescore K of the run folder's finished cells, chosen at random, write nothing, and "
                          "report the largest difference from the stored numbers (check what ships)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the plan (recipe, cells, what is cached, images per stage, an estimate timed "
                          "on this device) and score nothing")
    run.add_argument("--cam-images", type=positive_int, help="CAM validation images (paper: 2000)")
    add_tile_argument(run)
    run.add_argument("--upsampler-weights", action="append", default=[], metavar="METHOD=PATH",
                     help="a state-dict file for a trainable method (e.g. the authors' released checkpoint), "
                          "used instead of shipped or trained weights; recorded with its sha256 (repeatable)")
    run.add_argument("--retrain", action="store_true",
                     help="train the trainable methods into results/cache even where shipped weights match "
                          "(one set per seed)")
    run.add_argument("--rerun", default="missing", choices=("missing", "failed", "all"),
                     help="which finished cells to score again (default: missing)")
    run.add_argument("--executor", default="local", choices=("local", "ray"),
                     help="local: cells one after another here; ray: cells as Ray tasks (one GPU per cell on "
                          "CUDA, else one CPU), on a local 2-CPU Ray instance or --ray-address")
    run.add_argument("--ray-address", help="an existing Ray cluster (e.g. auto, or ray://head:10001); "
                                           "default: start a local instance and shut it down after")
    run.add_argument("--shard", help="k/N: score only the k-th of N deterministic shares of the cells "
                                     "(Slurm job arrays); join the folders with `merge`")
    add_common_arguments(run, "a dataset (with its local folder where it is not embedded), e.g. "
                              "coco_stuff=/data/cocostuff; it replaces the profile's dataset of its kind")
    run.set_defaults(fn=cmd_run)
    merge = sub.add_parser("merge", help="join the run folders of shards (run --shard k/N) into one")
    merge.add_argument("runs", nargs="+", help="shard run folders")
    merge.add_argument("--out", required=True, help="the merged run folder")
    merge.set_defaults(fn=cmd_merge)
    table = sub.add_parser("table", help="print a run's results table")
    table.add_argument("--run", help="run folder, or a name under results/runs (default: the default profile's "
                                     "run, results/runs/default-efficientnet_lite0_s16, whose cells ship)")
    table.add_argument("--format", default="md", choices=("md", "csv", "latex"))
    versus = table.add_mutually_exclusive_group()
    versus.add_argument("--vs-paper", action="store_true", help="add the paper's numbers beside ours (--vs featup)")
    versus.add_argument("--vs", choices=REFERENCES,
                        help="a published table to set beside ours (results/references.md): featup (the paper's "
                             "Table 1), jafar (JAFAR's README table), uplift or upsample_anything (unconfirmed "
                             "figures, never ranked). Rank agreement (τ) only where the run's protocol is the "
                             "table's and 5 or more methods are in common")
    table.set_defaults(fn=cmd_table)
    report = sub.add_parser("report", help="a run's report: Markdown and one HTML page with the table, figures, "
                                           "failures, recipes and provenance")
    report.add_argument("--run", help="run folder, or a name under results/runs (default: the default profile's run)")
    report.add_argument("--out", help="report folder (default: <run>/report)")
    report.add_argument("--weights", help="local weights file for the run's backbone (.safetensors/.pth)")
    report.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    report.add_argument("--sizes", type=int_list(1, "positive integers", "56,112,224"), default=[56, 112, 224],
                        help="output sizes to profile the methods at when the run has no <run>/profile/profile.csv")
    report.add_argument("--photos", type=positive_int, default=3, help="photographs in the PCA figure (default 3)")
    report.set_defaults(fn=cmd_report)
    train = sub.add_parser("train", help="fit a trainable method's weights (run does this when they are missing)")
    train.add_argument("method")
    train.add_argument("--steps", type=positive_int, help="optimiser steps (default: the profile's train_steps)")
    add_common_arguments(train, "images to train on, e.g. photos or coco_stuff=/data/cocostuff "
                                "(default: the profile's train_data)")
    train.set_defaults(fn=cmd_train)
    shipper = sub.add_parser("ship", help="ship trained weights with the suite: copy them into results/weights and "
                                          "write their manifest entry (runs then use them without training)")
    shipper.add_argument("method")
    shipper.add_argument("--steps", type=positive_int,
                         help="the training's step count (default: the profile's train_steps)")
    shipper.add_argument("--study", metavar="DIR",
                         help="take the weights from a budget study's checkpoint at --steps instead of the cache")
    add_common_arguments(shipper, "the training data (default: the profile's train_data)")
    shipper.set_defaults(fn=cmd_ship)
    prof = sub.add_parser("profile", help="time and memory of kernels or whole upsamplers")
    prof.add_argument("what", choices=("kernels", "methods"))
    prof.add_argument("-m", "--methods", help="methods to profile (profile methods; default: all, those whose "
                                               "forward alone takes seconds per image listed as skipped)")
    prof.add_argument("--sizes", type=int_list(1, "positive integers", "112,224"), default=[56, 112, 224, 448],
                      help="output sizes, e.g. 112,224")
    prof.add_argument("--channels", type=int_list(1, "positive integers", "64,384"), default=[384],
                      help="channel counts, e.g. 64,384")
    prof.add_argument("--backbone", help="profile methods: take channels and stride from this backbone "
                                         "(e.g. timm:vit_base_patch14_dinov2; random weights, nothing downloads), and "
                                         "time the pipeline_ms column with it (default: the default profile's)")
    prof.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    add_tile_argument(prof)
    prof.add_argument("--half", action="store_true",
                      help="profile methods: store each output in float16 (computed in float32; with --tile the "
                           "float32 output never exists), half the output's memory")
    prof.add_argument("--format", default="md", choices=("md", "csv", "latex"))
    prof.add_argument("--out", help="folder for profile.csv and profile.png")
    prof.set_defaults(fn=cmd_profile)
    ablate = sub.add_parser("ablate", help="ablations of a method's design")
    ablate.add_argument("what", choices=("fourier", "budget", "colour"),
                        help="fourier: implicit FeatUp with and without Fourier features; budget: probe scores "
                             "against the training steps of the trainable methods (resumes where it stopped); "
                             "colour: probe_seg as the segmentation data goes from colour-coded to colour-blind")
    ablate.add_argument("-m", "--methods", help="budget: trainable methods (trained to each step count) and per-image methods (fitted with "
                             "each step count on a subset of the probe images); default: every trainable one. "
                             "colour: default colour_only,bilinear,jbu_classic,guided_filter,featup_jbu,resize_conv")
    ablate.add_argument("--levels", type=number_list(float, 0, "colour levels in [0, 1]", "0,0.5,1"),
                        help="colour: the data's colour levels, 0 (each class its own colour) to 1 (colour says "
                             "nothing of the class); default 0,0.333,0.667,1")
    ablate.add_argument("--images", type=positive_int, default=8,
                        help="fourier: how many of the embedded validation photographs to fit (default 8: all of them)")
    ablate.add_argument("--steps", type=int_list(1, "positive integers", "250,1000,4000"),
                        help="fourier: fit steps (default: the profile's per-image setting); budget: the step "
                             "counts to checkpoint and score (default 250,500,1000,2000,4000,8000; per-image methods' fit steps "
                             "20,80,320)")
    ablate.add_argument("--seeds", type=int_list(0, "non-negative integers", "0,1,2"),
                        help="budget, colour: probe seeds scored at every step count or level (default 0,1,2)")
    ablate.add_argument("--out", required=True, help="folder for the CSVs and the PNG")
    add_common_arguments(ablate, None)
    ablate.set_defaults(fn=cmd_ablate)
    parser.commands = frozenset(sub.choices)  # for parse(): which word starts a subcommand
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """Global flags may come before or after the subcommand; no subcommand means the default run."""
    parser = build_parser()
    globals_only = argparse.ArgumentParser(add_help=False)
    globals_only.add_argument("--plugin", action="append", default=[])
    globals_only.add_argument("--no-progress", action="store_true")
    known, rest = globals_only.parse_known_args(argv)
    if rest and not rest[0].startswith("-") and rest[0] not in parser.commands:
        close = difflib.get_close_matches(rest[0], sorted(parser.commands), n=1)
        parser.error(f"unknown command {rest[0]!r}{f'; did you mean {close[0]!r}?' if close else ''} "
                     f"Commands: {', '.join(sorted(parser.commands))}")
    if not any(a in parser.commands for a in rest):
        # no command: the default run, except that a bare --help describes every command, not `run` alone
        rest = rest if {"-h", "--help"} & set(rest) else ["run", *rest]
    args = parser.parse_args(rest)
    args.plugin, args.no_progress = known.plugin, known.no_progress
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        load_all(args.plugin)
        return args.fn(args)
    except (RegistryError, UsageError, ImportError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
