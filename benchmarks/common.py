"""Shared pieces of the training benchmarks: a model directory for a preset, synthetic batches, the memory estimate."""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from blueberry_video.config import TrainConfig
from blueberry_video.data.cache import write_latent_table
from blueberry_video.data.latent_dataset import DummyLatentDataset, LatentCacheDataset
from blueberry_video.models import get_family_class
from blueberry_video.models.presets import REAL_SIZE_TRANSFORMERS, build_real_size_transformer, save_real_size_configs

TINY_PRESETS = {"tiny-cogvideox": "cogvideox", "tiny-hunyuan-video": "hunyuan_video"}
PRESETS = [*REAL_SIZE_TRANSFORMERS, *TINY_PRESETS]
# Every preset's VAE makes one latent frame of 4 after the first and one latent pixel of 8x8, which the transformer
# patches 2x2 (and HunyuanVideoPipeline wants multiples of 16 anyway): the shapes each family's check_video_shape
# accepts, checked while the arguments are parsed so that a bad one costs no model build.
FRAMES_PER_LATENT_FRAME = 4
PIXEL_MULTIPLE = 16
# Dense bf16 peak of the cards people train on (TFLOP/s, without sparsity).
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}


def device_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def int_at_least(minimum: int):
    """An argparse type: an integer of at least `minimum`."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: must be at least {minimum}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value: 'x'"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be more than 0")
    return value


def nearest_in_steps(value: int, step: int, first: int) -> str:
    """'13 or 17': the counts first + k·step just below and above `value` (only the first one below it)."""
    below = first + (value - first) // step * step
    return f"{below} or {below + step}" if below >= first else str(first)


def frame_count(text: str) -> int:
    """An argparse type: a clip length the presets' VAEs take, 4k+1 frames."""
    frames = int(text)
    if frames < 1 or (frames - 1) % FRAMES_PER_LATENT_FRAME:
        raise argparse.ArgumentTypeError(
            f"{frames} frames: the VAE makes one latent frame of every {FRAMES_PER_LATENT_FRAME} after the first, so "
            f"it takes {FRAMES_PER_LATENT_FRAME}k+1 frames; use {nearest_in_steps(frames, FRAMES_PER_LATENT_FRAME, 1)}")
    return frames


frame_count.__name__ = "int"


def pixel_size(text: str) -> int:
    """An argparse type: a height or width the presets take, a multiple of 16."""
    pixels = int(text)
    if pixels < PIXEL_MULTIPLE or pixels % PIXEL_MULTIPLE:
        raise argparse.ArgumentTypeError(
            f"{pixels}: must be a positive multiple of {PIXEL_MULTIPLE} (VAE downsampling x patch size); "
            f"use {nearest_in_steps(pixels, PIXEL_MULTIPLE, PIXEL_MULTIPLE)}")
    return pixels


pixel_size.__name__ = "int"


def add_shape_arguments(parser, frames: int, height: int, width: int) -> None:
    parser.add_argument("--frames", type=frame_count, default=frames, help="4k+1")
    parser.add_argument("--height", type=pixel_size, default=height, help="a multiple of 16")
    parser.add_argument("--width", type=pixel_size, default=width, help="a multiple of 16")


def add_step_arguments(parser) -> None:
    """The training step a benchmark measures: model, mode and the clip's shape."""
    parser.add_argument("--preset", required=True, choices=PRESETS)
    parser.add_argument("--mode", choices=["lora", "full"], default="lora")
    parser.add_argument("--rank", type=positive_int, default=128)
    add_shape_arguments(parser, 49, 480, 720)
    parser.add_argument("--batch", type=positive_int, default=1)


def preset_family(preset: str) -> str:
    return TINY_PRESETS[preset] if preset in TINY_PRESETS else REAL_SIZE_TRANSFORMERS[preset][0]


def build_family_and_transformer(preset: str, dtype: torch.dtype, device: torch.device, workdir: Path):
    """Tiny presets: the real tiny pipeline saved and loaded. Real sizes: configs only on disk, the
    transformer built in memory with random weights (nothing downloaded)."""
    cls = get_family_class(preset_family(preset))
    if preset in TINY_PRESETS:
        cls.save_tiny_pipeline(workdir / preset)
        family = cls(workdir / preset)
        return family, family.load_transformer(dtype=dtype).to(device)
    model_dir = save_real_size_configs(preset, workdir / preset)
    return cls(model_dir), build_real_size_transformer(preset, dtype=dtype, device=device)


def synthetic_batch(family, batch: int, frames: int, height: int, width: int, device) -> dict[str, torch.Tensor]:
    """Latent distributions and text conditioning of exactly the shapes the cache would hold."""
    dataset = DummyLatentDataset(family, batch, frames, height, width)
    items = [dataset[i] for i in range(batch)]
    return {k: torch.stack([item[k] for item in items]).to(device) for k in items[0]}


def stand_in_cache(family, num_samples: int, frames: int, height: int, width: int, workdir,
                   dtype: torch.dtype = torch.float32, **dataset_options) -> LatentCacheDataset:
    """A latent cache table of random rows with the shapes the precompute step writes, stored as `dtype`."""
    dummy = DummyLatentDataset(family, num_samples, frames, height, width)
    rows = []
    for i in range(num_samples):
        item = dummy[i]
        del item["sample_index"]
        rows.append({"index": i, "video": f"{i}.mp4", "caption": "",
                     **{name: (value.to(dtype) if value.is_floating_point() else value).numpy()
                        for name, value in item.items()}})
    write_latent_table(workdir / "cache" / "dataset", rows)
    return LatentCacheDataset(workdir / "cache", **dataset_options)


def benchmark_config(family, mode: str, rank: int, gradient_checkpointing: bool, use_8bit_adam: bool,
                     layerwise_casting: bool = False, gradient_checkpointing_ratio: float = 1.0) -> TrainConfig:
    return TrainConfig(pretrained_model_name_or_path=str(family.model_dir), training_mode=mode, rank=rank,
                       lora_alpha=rank, gradient_checkpointing=gradient_checkpointing, use_8bit_adam=use_8bit_adam,
                       layerwise_casting=layerwise_casting, gradient_checkpointing_ratio=gradient_checkpointing_ratio,
                       dummy_data=True)


def memory_estimate(preset: str, family, flags: list[str]) -> dict:
    """`blueberry-video estimate-memory --json` for a preset (a tiny one by its model directory) with training
    `flags`, in a process of its own, away from the benchmark's CUDA state."""
    source = (["--preset", preset] if preset not in TINY_PRESETS else
              ["--family", family.name, "--pretrained_model_name_or_path", str(family.model_dir)])
    if torch.cuda.is_available():
        # The estimate's own process needs a CUDA context; this one's cached blocks (after a profile that ran out
        # of memory, nearly the whole card) must not leave it none.
        torch.cuda.empty_cache()
    done = subprocess.run([sys.executable, "-m", "blueberry_video.cli", "estimate-memory", "--json", *source, *flags],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"estimate-memory failed: {(done.stderr.strip().splitlines() or [''])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def temporary_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="blueberry-bench-"))


def report(measure, args) -> dict:
    """Run `measure(args)` and print its result with the number of threads torch ran on (on a shared 2-core machine
    two ran 13x slower than one). Whatever is printed meanwhile goes to stderr, so that with --json stdout holds
    the one JSON document: DeepSpeed, which accelerate imports on first use, logs its warnings to stdout."""
    with contextlib.redirect_stdout(sys.stderr):
        result = measure(args)
    result["torch_threads"] = torch.get_num_threads()
    return print_result(result, args.json)


# The figures are binary multiples, whatever their keys (kept as results files and docs name them) say.
UNITS = {"_gb": "GiB", "_gib": "GiB", "_mb": "MiB", "mb_per_s": "MiB/s"}


def print_result(result: dict, as_json: bool) -> dict:
    """One JSON line, or an aligned `key: value` table."""
    if as_json:
        print(json.dumps(result))
        return result
    width = max(len(key) for key in result)
    for key, value in result.items():
        unit = next((f" {unit}" for suffix, unit in UNITS.items() if key.endswith(suffix) and value is not None), "")
        print(f"{key:>{width}}: {value:.4g}{unit}" if isinstance(value, float) else f"{key:>{width}}: {value}{unit}")
    return result
