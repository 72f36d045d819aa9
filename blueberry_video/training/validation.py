"""Validation videos: the family's pipeline around the training transformer, run on the main process."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from blueberry_video.data.video_writer import write_mp4

logger = logging.getLogger(__name__)


def _unique(path: Path) -> Path:
    """Never overwrite a video an earlier (killed, then resumed) run wrote for the same step."""
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def generate_videos(pipe, family, prompt: str, config, generator, num_videos: int = 1) -> np.ndarray:
    """[num_videos, F, H, W, 3] floats in [0, 1]."""
    return pipe(
        prompt=prompt,
        num_videos_per_prompt=num_videos,
        height=config.height,
        width=config.width,
        num_frames=config.max_num_frames,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        generator=generator,
        output_type="np",
        **family.generation_kwargs(config.max_num_frames, config.height, config.width),
    ).frames


def _log_to_trackers(accelerator, videos: list[Path], frames: list[np.ndarray], step: int) -> None:
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            for path, clip in zip(videos, frames):
                picks = clip[[0, len(clip) // 2, -1]]  # first, middle, last frame: no moviepy needed
                tracker.writer.add_images(f"validation/{path.stem.split('-', 2)[-1]}", picks, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Video(str(p), format="mp4") for p in videos]}, step=step)


def run_validation(accelerator, family, transformer, config, step: int, dtype: torch.dtype) -> list[Path]:
    """Write one .mp4 per prompt and video under output_dir/validation, named by step; others wait."""
    written: list[Path] = []
    if accelerator.is_main_process and config.validation_prompt:
        model = accelerator.unwrap_model(transformer)
        was_training = model.training
        model.eval()
        pipe = family.build_pipeline(model, dtype=dtype).to(accelerator.device)
        pipe.set_progress_bar_config(disable=True)
        out_dir = Path(config.output_dir) / "validation"
        out_dir.mkdir(parents=True, exist_ok=True)
        all_frames = []
        for i, prompt in enumerate(config.validation_prompt):
            # The same seed at every validation, so successive videos differ only by training.
            generator = torch.Generator(device=accelerator.device).manual_seed(config.seed)
            with torch.no_grad(), accelerator.autocast():
                clips = generate_videos(pipe, family, prompt, config, generator, config.num_validation_videos)
            for j, clip in enumerate(clips):
                path = _unique(out_dir / f"step-{step:06d}-prompt{i}-{j}.mp4")
                write_mp4((np.clip(clip, 0, 1) * 255).round().astype(np.uint8), path, fps=config.validation_fps)
                written.append(path)
                all_frames.append(clip)
        _log_to_trackers(accelerator, written, all_frames, step)
        model.train(was_training)
        del pipe
        logger.info("validation videos: %s", ", ".join(str(p) for p in written))
    accelerator.wait_for_everyone()
    return written
