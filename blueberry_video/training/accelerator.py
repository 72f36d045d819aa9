"""Building the Accelerator from the config, and refusing launches that would silently train wrongly."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

from blueberry_video.errors import ConfigError, LaunchError


def build_accelerator(config) -> Accelerator:
    trackers = None if config.report_to == "none" else config.report_to
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=trackers,
        project_config=ProjectConfiguration(
            project_dir=config.output_dir, logging_dir=str(Path(config.output_dir) / "logs")
        ),
        # Data order depends only on (seed, epoch), whatever the number of processes: resume and
        # DDP-vs-single-process runs then see the same samples in the same steps.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
    )
    check_launch(accelerator)
    set_seed(config.seed)
    if config.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    return accelerator


def check_launch(accelerator: Accelerator) -> None:
    """A launcher that says N processes while the Accelerator sees one means N copies training alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and accelerator.num_processes == 1:
        raise LaunchError(
            f"WORLD_SIZE={world_size} but this process trains alone (accelerate found no distributed backend): "
            f"every process would train on all the data and write the same outputs. On a machine without GPUs, "
            f"launch with `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {world_size} ...` "
            f"(or `ACCELERATE_USE_CPU=1 torchrun ...`); `accelerate launch --cpu --num_processes N` starts one process."
        )


def weight_dtype(accelerator: Accelerator) -> torch.dtype:
    """The dtype frozen weights are stored in: the autocast precision."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def check_output_dir(config, resuming: bool) -> None:
    """Refuse to mix a new run's files into an earlier run's, before anything is written."""
    out = Path(config.output_dir)
    if out.exists() and any(out.iterdir()) and not resuming and not config.overwrite_output_dir:
        raise ConfigError(
            f"output_dir={out} is not empty: a new run would mix its checkpoints and videos with an earlier run's. "
            f"Resume it with --resume_from_checkpoint latest, pick another --output_dir, or pass --overwrite_output_dir."
        )
