"""How fast the shapes recipe's input pipeline delivers batches, from its data cache and without it.

    .venv/bin/python benchmarks/loader_speed.py [--workers 0 2] [--batches 300] [--cache-dir DIR]

The loader is built as ``noisecraft train shapes32 --set data.cache=shared data.workers=W`` builds
it: the recipe's dataset (20,000 scenes at 32×32), micro-batch and seed, the cache rendered once
under --cache-dir (as $NOISECRAFT_CACHE; reused by later runs) and checked on opening. Timed is
``take(k)`` for consecutive k, the loader alone: no model, nothing sent to a device. Each variant is
warmed up first (workers started, a few batches made), then the variants run interleaved, order
flipped every round, and the median round gives images/s. For scale, the recipe's loader without
the cache (each scene drawn when asked, in the training process) runs on a twentieth of the batches.
Target: ≥ 20,000 images/s from the cache on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

from common import add_common_arguments, append_results, markdown_table, setup, time_interleaved

from noisecraft.training import TrainConfig, load_config, resolve_recipe
from noisecraft.training.data import IndexedBatches, make_batches, open_training_dataset

TARGET = 20_000  # images/s from the cache


def loader(config: TrainConfig, workers: int, prefetch: int, cache: str) -> IndexedBatches:
    """The recipe's batch source, as the trainer builds it (one process, CPU)."""
    dataset = open_training_dataset(dataclasses.replace(config.data, cache=cache), Path("."), is_main=True)
    return make_batches(dataset, config.optim.batch_size, config.seed, 0, 1, workers, prefetch)


def reader(batches: IndexedBatches, count: int) -> Callable[[], None]:
    """A call that takes the next ``count`` batches."""
    position = [0]

    def read() -> None:
        for _ in range(count):
            batches.take(position[0])
            position[0] += 1

    return read


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="shapes32")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="data.workers values to time")
    parser.add_argument("--prefetch", type=int, default=4, help="data.prefetch")
    parser.add_argument("--batches", type=int, default=300, help="batches per timed call (cached variants)")
    parser.add_argument("--cache-dir", default="outputs/bench/cache", help="used as $NOISECRAFT_CACHE")
    add_common_arguments(parser)
    args = parser.parse_args()
    setup(args)
    os.environ["NOISECRAFT_CACHE"] = args.cache_dir
    config = load_config(resolve_recipe(args.recipe))
    start = time.perf_counter()
    loader(config, max(args.workers), args.prefetch, "shared")  # renders the cache with the workers
    ready = time.perf_counter() - start  # rendering (first run only) or opening with its checksum
    size = config.optim.batch_size
    counts = {}
    for w in args.workers:
        counts[f"cache, {w} workers"] = (loader(config, w, args.prefetch, "shared"), args.batches)
    counts["no cache, in process"] = (loader(config, 0, args.prefetch, "off"), max(args.batches // 20, 5))
    variants = {name: reader(batches, n) for name, (batches, n) in counts.items()}
    timings = time_interleaved(variants, args.repeats, args.warmup)
    rows = []
    for name, timing in timings.items():
        rate = counts[name][1] * size / timing.median
        rows.append([name, counts[name][1] * size, f"{timing.median:.3f}", timing.spread, f"{rate:,.0f}"])
    for batches, _ in counts.values():
        batches.close()
    table = markdown_table(["loader", "images per call", "median s", "spread s", "images/s"], rows)
    best = max(counts[name][1] * size / t.median for name, t in timings.items() if name.startswith("cache"))
    met = "met" if best >= TARGET else "NOT met"
    verdict = f"best from the cache: {best:,.0f} images/s; target ≥ {TARGET:,} ({met})"
    body = f"{table}\n\nCache ready in {ready:.1f} s (rendered now, or opened and checksummed). {verdict}."
    print(body)
    if not args.no_append:
        append_results(f"Input pipeline speed: the {args.recipe} recipe's loader", body, args.note)


if __name__ == "__main__":
    main()
