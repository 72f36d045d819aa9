"""Training-step speed and memory of a transformer preset on synthetic latents, through the recipes' step code.

    python benchmarks/train_step.py --preset cogvideox-2b --mode lora --frames 49 --height 480 --width 720 \
        --batch 1 --gradient-checkpointing [--8bit-adam] [--layerwise-casting] [--compile] [--profile] \
        [--resident-encoders] [--estimate] [--memory-limit-gib G] [--json]
    python benchmarks/train_step.py --preset tiny-cogvideox --frames 9 --height 96 --width 160   # runs on CPU

Real-size presets (cogvideox-2b, cogvideox-5b, hunyuan-video) build the transformer with random weights from
the published config; tiny presets build the test models. Prints median step time, samples/s, latent
tokens/s, achieved TFLOP/s and MFU against the GPU's dense bf16 peak (model FLOPs counted as
benchmarks/model_flops.py says, and docs/performance.md), and peak GPU memory.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path

# `python benchmarks/<name>.py` puts benchmarks/ on sys.path, not the repo root the imports below need.
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from accelerate import Accelerator

from benchmarks.common import (
    add_step_arguments,
    benchmark_config,
    build_family_and_transformer,
    device_peak_tflops,
    memory_estimate,
    non_negative_int,
    positive_float,
    positive_int,
    report,
    synthetic_batch,
    temporary_workdir,
)
from benchmarks.model_flops import step_flops
from benchmarks.profiling import eager_if_compiled, profile_step
from blueberry_video.training.accelerator import autocast
from blueberry_video.training.attention import (
    apply_attention_backend,
    check_attention_backend,
)
from blueberry_video.training.cuda_allocator import (
    allocator_setting,
    running_allocator_settings,
    use_expandable_segments,
)
from blueberry_video.training.lora import make_trainable
from blueberry_video.training.memory_estimate import models_from_configs
from blueberry_video.training.optim import build_lr_scheduler, build_optimizer
from blueberry_video.training.sampling import sample_generators
from blueberry_video.training.step import compile_blocks, training_step


def share(text: str) -> float:
    """An argparse type: a share, from 0 to 1."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: must be from 0 to 1")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--gradient-checkpointing-ratio", type=share,
                        help="share of the blocks that recompute, from 0 to 1 (the recipes' "
                             "gradient_checkpointing_ratio; default 1)")
    parser.add_argument("--8bit-adam", dest="adam_8bit", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    parser.add_argument("--layerwise-casting", action="store_true", help="LoRA: frozen weights stored in float8")
    parser.add_argument("--attention-backend", default="native",
                        help="diffusers attention backend, as the recipes' attention_backend (HunyuanVideo): native, "
                             "_native_cudnn, _native_efficient, flash_varlen, ...")
    parser.add_argument("--steps", type=positive_int, default=10)
    parser.add_argument("--warmup", type=non_negative_int, default=3)
    parser.add_argument("--profile", action="store_true",
                        help="profile two more steps: which attention kernels ran (flash, cuDNN, efficient, math), "
                             "and the step's time and TFLOP/s by kind (attention, matrix products, optimizer, rest)")
    parser.add_argument("--resident-encoders", action="store_true",
                        help="also hold the text encoders and VAE on the device, as the diffusers example scripts do "
                             "(random weights; their per-step prompt encoding is not run)")
    parser.add_argument("--estimate", action="store_true",
                        help="also report `blueberry-video estimate-memory`'s peak for these settings, to check it")
    parser.add_argument("--memory-limit-gib", type=positive_float,
                        help="cap the caching allocator at this many GiB, as a smaller card would (CUDA only): an "
                             "H200 then answers whether a run fits an 80 GB H100, which leaves about 78.5 GiB to "
                             "tensors after the CUDA context")
    parser.add_argument("--allocator", choices=["expandable", "default"], default="expandable",
                        help="CUDA caching allocator: expandable segments, as the recipes run by default "
                             "(expandable_segments setting), or torch's default (a PYTORCH_CUDA_ALLOC_CONF set in "
                             "the environment wins over both)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.gradient_checkpointing_ratio is None:
        args.gradient_checkpointing_ratio = 1.0
    elif not args.gradient_checkpointing:
        # Without checkpointing no block recomputes: the ratio would be dropped unseen.
        parser.error("--gradient-checkpointing-ratio needs --gradient-checkpointing")
    return args


def limit_device_memory(limit_gib: float, device: torch.device) -> None:
    """Past the limit the allocator first frees its cached blocks and retries, then raises out-of-memory: what it
    does on a card of that size, fragmentation included, which the allocated peak alone does not show."""
    if device.type != "cuda":
        raise SystemExit("--memory-limit-gib needs a CUDA device")
    total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    # torch wants an index here, and accelerator.device is plain "cuda".
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit_gib / total_gib), index)


def estimated_peak_gib(args, family, mixed_precision: str) -> float:
    """The memory estimate for the same settings."""
    flags = ["--training_mode", args.mode, "--rank", str(args.rank), "--lora_alpha", str(args.rank),
             "--max_num_frames", str(args.frames), "--height", str(args.height), "--width", str(args.width),
             "--train_batch_size", str(args.batch), "--mixed_precision", mixed_precision,
             "--gradient_checkpointing_ratio", str(args.gradient_checkpointing_ratio)]
    flags += [f"--{'' if on else 'no-'}{name}" for name, on in (("gradient_checkpointing", args.gradient_checkpointing),
                                                                 ("use_8bit_adam", args.adam_8bit),
                                                                 ("layerwise_casting", args.layerwise_casting))]
    if args.resident_encoders:
        flags.append("--count-encoders")
    return memory_estimate(args.preset, family, flags)["total_gib"]


def secondary(what: str, measure) -> dict:
    """A figure measured after the timed steps, or why it is missing: on a lent GPU its failure must not lose the
    step time and memory already measured."""
    try:
        return measure()
    except Exception as error:  # noqa: BLE001 -- reported in the result and the log, not raised
        traceback.print_exc()
        return {f"{what}_error": f"{type(error).__name__}: {error}"}


def run(args) -> dict:
    use_expandable_segments(args.allocator == "expandable")
    accelerator = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")
    device = accelerator.device
    if args.memory_limit_gib:
        limit_device_memory(args.memory_limit_gib, device)
    weight_dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    workdir = temporary_workdir()
    try:
        family, transformer = build_family_and_transformer(
            args.preset, weight_dtype if args.mode == "lora" else torch.float32, device, workdir)
        family.check_video_shape(args.frames, args.height, args.width)
        resident = models_from_configs(family.model_dir, device, weight_dtype) if args.resident_encoders else {}
        config = benchmark_config(family, args.mode, args.rank, args.gradient_checkpointing, args.adam_8bit,
                                  args.layerwise_casting, args.gradient_checkpointing_ratio)
        params = make_trainable(transformer, config, family)
        check_attention_backend(family, args.attention_backend, device, weight_dtype)
        apply_attention_backend(transformer, args.attention_backend)
        if args.compile:
            compile_blocks(transformer, family.block_class_names)
        optimizer = build_optimizer(params, config, device=device)
        lr_scheduler = build_lr_scheduler(optimizer, config, args.steps + args.warmup)
        transformer, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)
        noise_scheduler = family.load_training_scheduler()
        batch = synthetic_batch(family, args.batch, args.frames, args.height, args.width, device)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        times = []

        def one_step(step: int = 0):
            generators = sample_generators(0, step, range(args.batch), device)
            training_step(accelerator, family, transformer, noise_scheduler, batch, generators, params, optimizer,
                          lr_scheduler, 1.0)

        for step in range(args.warmup + args.steps):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            one_step(step)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if step >= args.warmup:
                times.append(time.perf_counter() - start)

        step_time = statistics.median(times)
        peak_allocated = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        peak_reserved = torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else None

        def loss_forward():
            with eager_if_compiled(args.compile), autocast(accelerator):
                family.training_loss(transformer, noise_scheduler, batch, sample_generators(0, 0, range(args.batch),
                                                                                            device))

        flops = secondary("flops", lambda: step_flops(family, accelerator.unwrap_model(transformer), loss_forward,
                                                      batch, args.frames, args.height, args.width))
        breakdown = secondary("profile", lambda: profile_step(one_step, device, compiled=args.compile)
                              ) if args.profile else None
        peak = device_peak_tflops(device)
        model_flops = flops.get("model_flops")
        result = {
            "preset": args.preset, "mode": args.mode, "frames": args.frames, "height": args.height,
            "width": args.width, "batch": args.batch, "gradient_checkpointing": args.gradient_checkpointing,
            "gradient_checkpointing_ratio": args.gradient_checkpointing_ratio if args.gradient_checkpointing else None,
            "8bit_adam": args.adam_8bit, "compile": args.compile, "layerwise_casting": args.layerwise_casting,
            "attention_backend": args.attention_backend,
            "resident_encoders": sorted(resident),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            **flops,
            "step_time_s": step_time, "samples_per_s": args.batch / step_time,
            "latent_tokens_per_s": args.batch * flops["video_tokens"] / step_time if model_flops else None,
            "achieved_tflops": model_flops / step_time / 1e12 if model_flops else None,
            "mfu": (model_flops / step_time / 1e12 / peak) if peak and model_flops else None,
            "peak_memory_gb": peak_allocated,
            # What the caching allocator held: the figure to set against a card's size.
            "peak_reserved_gb": peak_reserved,
            "memory_limit_gib": args.memory_limit_gib,
            "allocator_config": allocator_setting(),
            "allocator_settings": running_allocator_settings(),
        }
        if breakdown is not None:
            result.update(breakdown)
        if args.estimate:
            result.update(secondary("estimate", lambda: {
                "estimated_peak_memory_gb": estimated_peak_gib(args, family, accelerator.mixed_precision)}))
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    return report(run, parse_args(argv))


if __name__ == "__main__":
    main()
