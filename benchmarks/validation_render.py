"""Peak memory and time of one validation render at a preset's size: the family's pipeline around the
transformer (random weights), without text encoders (validation frees them before denoising), the VAE decode
tiled or not.

    python benchmarks/validation_render.py --preset cogvideox-5b --frames 49 --height 480 --width 720 \
        [--vae-tiling] [--steps 2] [--estimate] [--json]
    python benchmarks/validation_render.py --preset tiny-cogvideox --frames 9 --height 96 --width 160   # CPU

Prints the render's time and, on a GPU, `max_memory_allocated` during it with the transformer and VAE weights
held (a training run also holds its optimizer state beside them), rendered as the trainer's validation renders:
denoised under autocast, decoded outside it. `--estimate` adds the memory estimate's
figure for the same render, to check it: its training state is subtracted, so the two compare directly. Frame
counts the pipeline would render as another are refused (CogVideoX: 8k+1 only; 13 frames come back as 16).
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
    FRAMES_PER_LATENT_FRAME,
    PRESETS,
    add_shape_arguments,
    build_family_and_transformer,
    memory_estimate,
    nearest_in_steps,
    positive_int,
    preset_family,
    report,
    temporary_workdir,
)
from blueberry_video.training.memory_estimate import (
    GIB,
    models_from_configs,
    render_without_text_encoders,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-cogvideox", choices=PRESETS)
    add_shape_arguments(parser, 9, 96, 160)
    parser.add_argument("--steps", type=positive_int, default=2,
                        help="denoising steps (memory does not grow with them)")
    parser.add_argument("--guidance-scale", type=float, default=6.0)
    parser.add_argument("--vae-tiling", action="store_true")
    parser.add_argument("--estimate", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    check_rendered_frames(parser, args.preset, args.frames)
    return args


def check_rendered_frames(parser, preset: str, frames: int) -> None:
    """Refuse a frame count the pipeline would render as another: CogVideoX's VAE (these presets have no
    patch_size_t) decodes latent frames in pairs, so an even number of them comes back as 4 frames each (13 frames
    are 4 latent frames, rendered as 16), as the family's check_generation_frames says."""
    latent_frames = (frames - 1) // FRAMES_PER_LATENT_FRAME + 1
    if preset_family(preset) == "cogvideox" and latent_frames % 2 == 0:
        parser.error(f"argument --frames: CogVideoX's pipeline would render {frames} frames as "
                     f"{FRAMES_PER_LATENT_FRAME * latent_frames} (its VAE decodes latent frames in pairs); use "
                     f"{nearest_in_steps(frames, 2 * FRAMES_PER_LATENT_FRAME, 1)}")


def estimated_render_gib(args, family) -> float:
    """The estimate's render peak less what training adds beside the weights this benchmark holds too: the
    estimate of a rank-1 LoRA run, whose frozen transformer weights are held in the run's precision as here,
    less its optimizer state, batch and adapter weights. (A full fine-tune's estimate would not compare: its
    transformer is float32 master weights, and autocast caches a bf16 copy of each during the render.)"""
    flags = ["--max_num_frames", str(args.frames), "--height", str(args.height), "--width", str(args.width),
             "--validation_prompt", "a prompt",
             "--guidance_scale", str(args.guidance_scale), "--mixed_precision", "bf16" if torch.cuda.is_available() else "no",
             "--training_mode", "lora", "--rank", "1", "--lora_alpha", "1",
             "--vae_tiling" if args.vae_tiling else "--no-vae_tiling"]
    estimate = memory_estimate(args.preset, family, flags)
    adapter_gib = estimate["trainable_params"] * 4 / GIB  # trained weights are kept in float32
    return estimate["validation_render_gib"] - estimate["optimizer_gib"] - estimate["batch_gib"] - adapter_gib


def run(args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    workdir = temporary_workdir()
    try:
        family, transformer = build_family_and_transformer(args.preset, dtype, device, workdir)
        family.check_video_shape(args.frames, args.height, args.width)
        vae = models_from_configs(family.model_dir, device, dtype)["vae"]
        if args.vae_tiling:
            vae.enable_tiling()
        scheduler = family.load_training_scheduler()
        text = family.dummy_text_conditioning(torch.Generator().manual_seed(0))
        transformer.eval()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        # Under autocast, as the trainer's validation denoises (on a GPU the transformer's norms then run in
        # float32); render_without_text_encoders decodes outside it, as the trainer does.
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            videos = render_without_text_encoders(family, transformer, vae, scheduler, text, args.guidance_scale,
                                                  args.frames, args.height, args.width,
                                                  args.steps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        result = {
            "preset": args.preset, "frames": args.frames, "height": args.height, "width": args.width,
            "steps": args.steps, "vae_tiling": args.vae_tiling,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "video_shape": list(videos.shape), "render_s": time.perf_counter() - start,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else None,
        }
        if args.estimate:
            result["estimated_peak_memory_gb"] = estimated_render_gib(args, family)
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    return report(run, parse_args(argv))


if __name__ == "__main__":
    main()
