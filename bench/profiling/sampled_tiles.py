"""Peak memory of a tiled call too slow to run whole: compute some of its tiles, zero-fill the rest.

Methods whose queries attend to every grid token (``jafar``, ``loftup``) cost about (pixels x tokens) a
call, so a 2048² call from a 128² grid takes over an hour on 2 CPU cores (440x their 448² call). Tiles
run one after another into one preallocated output, so a whole call's peak is the output, plus one
tile's work, plus what the method's setup (``regions``: e.g. whole-image GroupNorm statistics) keeps.
This runs the setup in full, computes the chosen tiles (default: the corner and the second tile on the
diagonal, interior when a side has three or more tiles: the full halo), and zero-fills the others, so
every page of the output is touched as in a whole call. It reports that call's peak and an estimate of the whole call's seconds (setup plus
every tile at the slowest computed tile's time). The peak call here has no warm-up, unlike
``profile methods``: first-call allocations count, so read it as an upper bound.

    python -m bench.profiling.sampled_tiles jafar --size 2048 --channels 112 --tile 256
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Iterable

import torch

from bench.plugins import load_all
from bench.profiling.memory import peak_memory
from bench.profiling.methods import STRIDE, build, random_input
from methods.base import Upsampler
from methods.tiling import Region, Span, spans

Tile = tuple[Span, Span]


def default_tiles(size: int, tile: int) -> set[Tile]:
    """The corner tile and the second tile on the diagonal: with three or more tiles a side, an interior one,
    whose crop has the halo on every side."""
    cuts = spans(size, tile)
    inner = cuts[min(1, len(cuts) - 1)]
    return {(cuts[0], cuts[0]), (inner, inner)}


def sampled_tiled_call(upsampler: Upsampler, lr_feats: torch.Tensor, image: torch.Tensor, size: int, tile: int,
                       keep: Iterable[Tile]) -> tuple[torch.Tensor, float, list[float]]:
    """``upsampler.forward_tiled`` computing only the tiles in ``keep`` (the others zero-filled): the output,
    the setup's seconds and each computed tile's seconds."""
    keep, setup, seconds = set(keep), [], []
    whole_regions = upsampler.regions

    def regions(lr: torch.Tensor, img: torch.Tensor, output_size: tuple[int, int]) -> Region:
        start = time.perf_counter()
        region = whole_regions(lr, img, output_size)
        setup.append(time.perf_counter() - start)

        def some(rows: Span, cols: Span, out: torch.Tensor) -> torch.Tensor:
            if (tuple(rows), tuple(cols)) not in keep:
                return out.zero_()
            start = time.perf_counter()
            result = region(rows, cols, out)
            seconds.append(time.perf_counter() - start)
            return result
        return some

    upsampler.regions = regions  # this instance only, for this call
    try:
        with torch.no_grad():
            if reason := upsampler.tiling_fallback():
                raise ValueError(f"method {upsampler.name!r} does not tile ({reason}): profile it whole")
            out = upsampler.forward_tiled(lr_feats, image, (size, size), tile)
    finally:
        del upsampler.regions
    return out, sum(setup), seconds


def profile_sampled(spec: str, size: int, channels: int, tile: int, stride: int = STRIDE) -> dict:
    """One sampled call on random input (as ``profile methods`` builds it), measured on the CPU."""
    upsampler = build(spec, channels, stride)
    lr_feats, image = random_input(size, channels, stride)
    keep = default_tiles(size, tile)
    with peak_memory("cpu") as peak:
        out, setup, seconds = sampled_tiled_call(upsampler, lr_feats, image, size, tile, keep)
        output_mb = out.numel() * out.element_size() / 2**20
        del out
    n_tiles = len(spans(size, tile)) ** 2
    return {"method": spec, "size": size, "channels": channels, "tile": tile, "tiles_computed": len(seconds),
            "tiles": n_tiles, "output_mb": round(output_mb, 1), "peak_mb": round(peak.mb, 1),
            "setup_s": round(setup, 1), "tile_s": [round(s, 2) for s in seconds],
            "est_whole_call_s": round(setup + n_tiles * max(seconds), 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--channels", type=int, default=112)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--stride", type=int, default=STRIDE)
    args = parser.parse_args(argv)
    load_all()
    print(json.dumps(profile_sampled(args.method, args.size, args.channels, args.tile, args.stride)))


if __name__ == "__main__":
    main()
