"""How fast the training DataLoader delivers batches from a latent cache, at a preset's real shapes.

    python -m benchmarks.loader_throughput --preset cogvideox-2b --frames 49 --height 480 --width 720 \
        --batch 1 [--num-workers 2] [--cache-dtype float16] [--from-disk]

Writes a cache table of random rows with the shapes and dtype the precompute step would store for that
preset and video size (no weights, no VAE: the transformer is built on the meta device), then reads it
through `LatentCacheDataset` (held in memory when small, as in training, or read from disk with
`--from-disk`) and a DataLoader set up as the trainer's. Prints the sample's size on disk,
the median time per batch, samples/s and MB/s: a GPU step shorter than the time per batch would wait for
data unless `dataloader_num_workers` loads ahead.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

# `python benchmarks/<name>.py` puts benchmarks/ on sys.path, not the repo root the imports below need.
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import (
    PRESETS,
    add_shape_arguments,
    build_family_and_transformer,
    int_at_least,
    non_negative_int,
    positive_int,
    report,
    stand_in_cache,
    temporary_workdir,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-cogvideox", choices=PRESETS)
    add_shape_arguments(parser, 9, 96, 160)
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--num-samples", type=positive_int, default=16, help="rows in the stand-in cache")
    parser.add_argument("--num-workers", type=non_negative_int, default=0,
                        help="DataLoader worker processes (dataloader_num_workers)")
    parser.add_argument("--cache-dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--from-disk", action="store_true",
                        help="read rows from the Arrow files, as for a cache over the in-memory limit")
    parser.add_argument("--epochs", type=int_at_least(2), default=3, help="at least 2: the first is not timed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.batch > args.num_samples:
        # The loader drops the last incomplete batch, as the trainer's does: it would deliver none.
        parser.error(f"--batch {args.batch} is more than --num-samples {args.num_samples}: no whole batch to time")
    return args


def run(args) -> dict:
    workdir = temporary_workdir()
    try:
        family, _ = build_family_and_transformer(args.preset, torch.float32, torch.device("meta"), workdir)
        dataset = stand_in_cache(family, args.num_samples, args.frames, args.height, args.width, workdir,
                                 dtype=getattr(torch, args.cache_dtype),
                                 **({"in_memory_limit": 0} if args.from_disk else {}))
        sample_bytes = sum(value.numel() * value.element_size() for value in dataset[0].values())
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True,
                                             num_workers=args.num_workers, pin_memory=torch.cuda.is_available(),
                                             persistent_workers=args.num_workers > 0)
        times = []
        for epoch in range(args.epochs):
            iterator = iter(loader)
            start = time.perf_counter()
            for _ in iterator:
                now = time.perf_counter()
                if epoch:  # the first epoch starts the workers and warms the page cache
                    times.append(now - start)
                start = now
        per_batch = statistics.median(times)
        return {
            "preset": args.preset, "frames": args.frames, "height": args.height, "width": args.width,
            "batch": args.batch, "num_workers": args.num_workers, "cache_dtype": args.cache_dtype,
            "in_memory": dataset.columns is not None,
            "sample_mb": sample_bytes / 2**20, "batch_s": per_batch, "samples_per_s": args.batch / per_batch,
            "mb_per_s": args.batch * sample_bytes / 2**20 / per_batch,
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    return report(run, parse_args(argv))


if __name__ == "__main__":
    main()
