"""Validation videos: the family's pipeline around the training transformer, on every process.

The prompts are shared out over the processes, so N GPUs render N prompts at once. Where the engine shards
the weights (FSDP, DeepSpeed ZeRO-3), each forward gathers them with a collective that every process must
join, so every process runs the same number of pipeline calls — the ones short of a prompt render one and
discard it. Each process writes its own videos (output_dir must be shared, as checkpoints already require)
and the main process logs all of them to the trackers.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object

from blueberry_video.data.video_writer import write_mp4
from blueberry_video.generate import encode_prompts_then_free_encoders
from blueberry_video.models.base import unwrap_model
from blueberry_video.training.decode import decode_without_autocast

logger = logging.getLogger(__name__)


def _unique(path: Path) -> Path:
    """Never overwrite a video an earlier (killed, then resumed) run wrote for the same step."""
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def generate_videos(pipe, family, prompt_kwargs: dict, config, generator) -> np.ndarray:
    """[num_videos, F, H, W, 3] floats in [0, 1]; `prompt_kwargs` from `encode_prompts_then_free_encoders`,
    which already holds the conditioning once per video."""
    return pipe(
        **prompt_kwargs,
        num_videos_per_prompt=1,
        height=config.height,
        width=config.width,
        num_frames=config.max_num_frames,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        generator=generator,
        output_type="np",
        **family.generation_kwargs(config.max_num_frames, config.height, config.width),
    ).frames


def weights_are_sharded(model: torch.nn.Module) -> bool:
    """True when this process holds only part of the weights: FSDP (1 or 2) or DeepSpeed ZeRO-3."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.tensor import DTensor

    if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        return True
    # ZeRO-3 partitions parameters in place (they carry a ds_id); FSDP2 turns them into DTensors.
    return any(hasattr(p, "ds_id") or isinstance(p, DTensor) for p in model.parameters())


def prompts_for_process(num_prompts: int, process_index: int, num_processes: int, lockstep: bool) -> list[int | None]:
    """The prompt indices this process renders, round robin; in lockstep every process gets the same count,
    padded with None (render a prompt, keep nothing) so that no process skips a collective the others join."""
    mine: list[int | None] = list(range(process_index, num_prompts, num_processes))
    if lockstep:
        mine += [None] * (math.ceil(num_prompts / num_processes) - len(mine))
    return mine


def _pipeline_transformer(transformer):
    """The module to hand the pipeline, and a context to call it in.

    FSDP1 keeps the top-level weights (patch embedding, norms) in the root unit, gathered only by the
    wrapper's own forward; the pipeline calls the inner module, so those are gathered for the duration
    (the blocks are FSDP units of their own and gather themselves). FSDP2 and ZeRO-3 hook the module itself.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(transformer, FullyShardedDataParallel):  # accelerate's FSDP1 model is the root unit itself
        return transformer.module, FullyShardedDataParallel.summon_full_params(transformer, recurse=False,
                                                                                writeback=False)
    return unwrap_model(transformer), contextlib.nullcontext()


@contextlib.contextmanager
def _forward_as_at_inference(model):
    """Under mixed precision accelerate makes the prepared model's forward return float32 (where it wrapped the
    model itself: one process); a diffusers pipeline at inference gets the model's own dtype, and HunyuanVideo's
    steps its scheduler in it. Validation renders as inference does, so that `generate` and the model card's code
    render its videos again."""
    inference_forward = getattr(model, "_original_forward", None)
    if inference_forward is None:
        yield
        return
    training_forward = model.forward
    model.forward = inference_forward
    try:
        yield
    finally:
        model.forward = training_forward


def _to_device_except(pipe, module, device) -> None:
    """Move the pipeline's other parts; the training transformer stays where the engine placed its shards."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module) and component is not module:
            component.to(device)


def _log_to_trackers(accelerator, videos: list[Path], picks: list[np.ndarray], step: int) -> None:
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            for path, frames in zip(videos, picks):
                tracker.writer.add_images(f"validation/{path.stem.split('-', 2)[-1]}", frames, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Video(str(p), format="mp4") for p in videos]}, step=step)


def run_validation(accelerator, family, transformer, config, step: int, dtype: torch.dtype) -> list[Path]:
    """Write one .mp4 per prompt and video under output_dir/validation, named by step; returns every
    process's videos, in prompt order, on every process."""
    if not config.validation_prompt:
        return []
    model, gathered = _pipeline_transformer(transformer)
    lockstep = accelerator.num_processes > 1 and weights_are_sharded(transformer)
    mine = prompts_for_process(len(config.validation_prompt), accelerator.process_index, accelerator.num_processes,
                               lockstep)
    out_dir = Path(config.output_dir) / "validation"
    out_dir.mkdir(parents=True, exist_ok=True)
    rendered: list[tuple[int, int, str, np.ndarray]] = []  # (prompt, video, path, first/middle/last frames)
    was_training = model.training
    model.eval()
    with gathered, _forward_as_at_inference(model):
        pipe = family.build_pipeline(model, dtype=dtype)
        prompts = {0 if i is None else i: config.validation_prompt[0 if i is None else i] for i in mine}
        encoded = encode_prompts_then_free_encoders(pipe, family, prompts, 1, config.guidance_scale,
                                                    accelerator.device)
        _to_device_except(pipe, model, accelerator.device)
        if config.vae_tiling:
            pipe.vae.enable_tiling()
        decode_without_autocast(pipe.vae)
        pipe.set_progress_bar_config(disable=True)
        for i, j in itertools.product(mine, range(config.num_validation_videos)):
            # Video j of every prompt from seed + j, at every validation and on every process: a prompt's videos
            # differ only by training, and `generate --seed <seed + j>` renders video j again. One video per
            # call, so a batch's numerics cannot differ from generate's, and the peak is one video's.
            generator = torch.Generator(device=accelerator.device).manual_seed(config.seed + j)
            with torch.no_grad(), accelerator.autocast():
                clip = generate_videos(pipe, family, encoded[0 if i is None else i], config, generator)[0]
            if i is None:
                continue
            frames = (np.clip(clip, 0, 1) * 255).round().astype(np.uint8)
            path = _unique(out_dir / f"step-{step:06d}-prompt{i}-{j}.mp4")
            write_mp4(frames, path, fps=config.resolved_validation_fps(family))
            rendered.append((i, j, str(path), frames[[0, len(frames) // 2, -1]]))
        del pipe
    model.train(was_training)
    if accelerator.num_processes > 1:
        rendered = gather_object(rendered)
    rendered.sort(key=lambda video: video[:2])
    written = [Path(path) for _, _, path, _ in rendered]
    if accelerator.is_main_process:
        _log_to_trackers(accelerator, written, [picks for *_, picks in rendered], step)
        logger.info("validation videos: %s", ", ".join(str(p) for p in written))
    accelerator.wait_for_everyone()
    return written
