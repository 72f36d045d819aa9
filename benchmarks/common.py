"""Shared pieces of the training benchmarks: a model directory for a preset, synthetic batches, the memory estimate."""

from __future__ import annotations

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
# Dense bf16 peak of the cards people train on (TFLOP/s, without sparsity).
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}


def device_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def add_step_arguments(parser) -> None:
    """The training step a benchmark measures: model, mode and the clip's shape."""
    parser.add_argument("--preset", required=True, choices=[*REAL_SIZE_TRANSFORMERS, *TINY_PRESETS])
    parser.add_argument("--mode", choices=["lora", "full"], default="lora")
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--batch", type=int, default=1)


def build_family_and_transformer(preset: str, dtype: torch.dtype, device: torch.device, workdir: Path):
    """Tiny presets: the real tiny pipeline saved and loaded. Real sizes: configs only on disk, the
    transformer built in memory with random weights (nothing downloaded)."""
    if preset in TINY_PRESETS:
        cls = get_family_class(TINY_PRESETS[preset])
        cls.save_tiny_pipeline(workdir / preset)
        family = cls(workdir / preset)
        return family, family.load_transformer(dtype=dtype).to(device)
    family_name, _ = REAL_SIZE_TRANSFORMERS[preset]
    model_dir = save_real_size_configs(preset, workdir / preset)
    transformer = build_real_size_transformer(preset, dtype=dtype, device=device)
    return get_family_class(family_name)(model_dir), transformer


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


def print_result(result: dict, as_json: bool) -> dict:
    """One JSON line, or an aligned `key: value` table."""
    if as_json:
        print(json.dumps(result))
        return result
    width = max(len(key) for key in result)
    for key, value in result.items():
        print(f"{key:>{width}}: {value:.4g}" if isinstance(value, float) else f"{key:>{width}}: {value}")
    return result
