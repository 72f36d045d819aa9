"""Latent-cache precompute throughput (videos/s): decode + VAE + text encoding, end to end.

    python benchmarks/precompute_throughput.py [--family cogvideox] [--num 8] [--json]
    python benchmarks/precompute_throughput.py --model /models/CogVideoX-2b --height 480 --width 720 --frames 49

Without --model it builds the family's tiny model (CPU-sized: measures our pipeline's overhead, decoding and
storage, not a real VAE). Sample videos are generated at the clip size; each run uses a fresh cache folder.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

# `python benchmarks/<name>.py` puts benchmarks/ on sys.path, not the repo root the imports below need.
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import (
    add_shape_arguments,
    positive_int,
    report,
    temporary_workdir,
)
from blueberry_video.data.cache import CacheSettings, precompute_latent_cache
from blueberry_video.data.decode import FrameSampling
from blueberry_video.data.sample_videos import create_sample_videos
from blueberry_video.errors import ConfigError, ModelLayoutError
from blueberry_video.models import family_names, get_family_class


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=family_names(), default="cogvideox")
    parser.add_argument("--model", help="model directory (default: the tiny model)")
    parser.add_argument("--num", type=positive_int, default=8, help="videos")
    add_shape_arguments(parser, 9, 96, 160)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.model:
        # A given model may take fewer shapes than the tiny ones (CogVideoX 1.5: 8k+1 frames); its configs say.
        try:
            get_family_class(args.family)(args.model).check_video_shape(args.frames, args.height, args.width)
        except (ConfigError, ModelLayoutError) as error:
            parser.error(f"--model {args.model}: {error}")
    return args


def run(args) -> dict:
    workdir = temporary_workdir()
    try:
        cls = get_family_class(args.family)
        family = cls(args.model or cls.save_tiny_pipeline(workdir / "model"))
        create_sample_videos(workdir / "data", num=args.num, num_frames=max(49, args.frames), height=args.height,
                             width=args.width)
        dtype = "bfloat16" if torch.cuda.is_available() else "float32"
        settings = CacheSettings(FrameSampling(args.frames, args.height, args.width), encode_dtype=dtype)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        start = time.perf_counter()
        cached = precompute_latent_cache(family, workdir / "data", workdir / "cache", settings, device=device)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        precompute_latent_cache(family, workdir / "data", workdir / "cache", settings, device=device)
        reuse_seconds = time.perf_counter() - start
        return {"family": args.family, "model": "tiny" if not args.model else str(args.model), "device": device,
                "clip": f"{args.frames}x{args.height}x{args.width}", "videos": cached.num_cached,
                "seconds": seconds, "videos_per_s": cached.num_cached / seconds,
                "cache_hit_seconds": reuse_seconds}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    return report(run, parse_args(argv))


if __name__ == "__main__":
    main()
