"""Our training loop against a bare PyTorch loop on the same model and tensors, alternating in one process.

    python benchmarks/overhead.py [--preset tiny-cogvideox] [--frames 9 --height 96 --width 160] [--rounds 5]

"ours": the trainer's own per-batch code (`BatchLoop`: keyed per-sample randomness, the family's loss,
`training_step` with autocast/backward/clip/step/LR schedule, the all-reduced loss, the step record in
metrics.jsonl and the progress bar) fed by an accelerate-prepared DataLoader over a latent cache table read by
`LatentCacheDataset` (the rows are random stand-ins of the cached shapes, so no VAE is needed).
"bare": the same transformer forward/backward, gradient clipping at the same max norm, and step of the same
torch AdamW (not accelerate's wrapper of it) on tensors prepared once, nothing else. Prints the preset and clip
shape measured, the median step time of each, their ratio and difference, and the time (fraction and median ms)
our step spent waiting on the loader.
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
from accelerate import Accelerator
from tqdm.auto import tqdm

from benchmarks.common import (
    PRESETS,
    add_shape_arguments,
    benchmark_config,
    build_family_and_transformer,
    non_negative_int,
    positive_int,
    report,
    stand_in_cache,
    synthetic_batch,
    temporary_workdir,
)
from blueberry_video.training.loop import BatchLoop, timed_batches
from blueberry_video.training.lora import make_trainable
from blueberry_video.training.optim import build_lr_scheduler, build_optimizer
from blueberry_video.training.records import MetricsLog
from blueberry_video.training.sampling import sample_generators


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-cogvideox", choices=PRESETS)
    parser.add_argument("--mode", choices=["lora", "full"], default="lora")
    add_shape_arguments(parser, 9, 96, 160)
    parser.add_argument("--batch", type=positive_int, default=2)
    parser.add_argument("--num-workers", type=non_negative_int, default=0,
                        help="DataLoader worker processes (dataloader_num_workers)")
    parser.add_argument("--steps", type=positive_int, default=20, help="steps per round and loop")
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def run(args) -> dict:
    accelerator = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")
    device = accelerator.device
    workdir = temporary_workdir()
    try:
        family, transformer = build_family_and_transformer(args.preset, torch.float32, device, workdir)
        config = benchmark_config(family, args.mode, 16, False, False)
        config.output_dir = str(workdir / "run")
        (workdir / "run").mkdir()
        params = make_trainable(transformer, config, family)
        optimizer = build_optimizer(params, config, device=device)
        lr_scheduler = build_lr_scheduler(optimizer, config, 10**6)
        dataset = stand_in_cache(family, 16 * args.batch, args.frames, args.height, args.width, workdir)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True,
                                             num_workers=args.num_workers, pin_memory=torch.cuda.is_available(),
                                             persistent_workers=args.num_workers > 0)
        transformer, optimizer, loader, lr_scheduler = accelerator.prepare(transformer, optimizer, loader, lr_scheduler)
        noise_scheduler = family.load_training_scheduler()

        # The bare loop's inputs: one noisy batch and target, made once with the family's own code path.
        fixed = synthetic_batch(family, args.batch, args.frames, args.height, args.width, device)
        captured = {}

        def capture(module, args_, kwargs, output):
            captured.update(kwargs=dict(kwargs), output=output[0].detach())

        hook = accelerator.unwrap_model(transformer).register_forward_hook(capture, with_kwargs=True)
        family.training_loss(transformer, noise_scheduler, fixed, sample_generators(0, 0, range(args.batch), device))
        hook.remove()
        bare_inputs, target = captured["kwargs"], torch.randn_like(captured["output"])

        progress = tqdm(disable=True)  # the bar's bookkeeping runs; nothing is drawn
        metrics = MetricsLog(workdir / "run")
        loop = BatchLoop(accelerator, family, transformer, noise_scheduler, params, optimizer, lr_scheduler, config,
                         metrics=metrics, progress=progress)
        epochs = iter(range(10**9))

        def ours(n):
            times, waits = [], []
            while len(times) < n:
                epoch = next(epochs)
                loader.set_epoch(epoch)
                _sync()
                start = time.perf_counter()
                for batch, waited in timed_batches(loader):
                    loop.run(batch, epoch, waited)
                    _sync()
                    now = time.perf_counter()
                    times.append(now - start)
                    waits.append(waited)
                    if len(times) == n:
                        break
                    start = now
            return times, waits

        def bare(n):
            model = accelerator.unwrap_model(transformer)
            torch_optimizer = optimizer.optimizer  # the AdamW itself: accelerate's wrapper is part of "ours"
            times = []
            for _ in range(n):
                _sync()
                start = time.perf_counter()
                with accelerator.autocast():
                    out = model(**bare_inputs)[0]
                loss = torch.nn.functional.mse_loss(out.float(), target.float())
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                torch_optimizer.step()
                torch_optimizer.zero_grad(set_to_none=True)
                loss.item()
                _sync()
                times.append(time.perf_counter() - start)
            return times

        ours(3), bare(3)  # warm-up
        ours_times, bare_times, wait_times = [], [], []
        for _ in range(args.rounds):
            t, w = ours(args.steps)
            ours_times += t
            wait_times += w
            bare_times += bare(args.steps)
        result = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "preset": args.preset, "mode": args.mode, "frames": args.frames, "height": args.height,
            "width": args.width, "batch": args.batch, "num_workers": args.num_workers,
            "ours_step_s": statistics.median(ours_times),
            "bare_step_s": statistics.median(bare_times),
            "loader_wait_fraction": sum(wait_times) / sum(ours_times),
        }
        result["overhead_ratio"] = result["ours_step_s"] / result["bare_step_s"]
        # Absolute figures: the loop's own cost per step does not grow with the model, so a real-size step of
        # S ms on a GPU carries (overhead_ms - loader_wait_ms) / S of it (loader waits vanish with workers).
        result["overhead_ms"] = (result["ours_step_s"] - result["bare_step_s"]) * 1e3
        result["loader_wait_ms"] = statistics.median(wait_times) * 1e3
        metrics.close()
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    return report(run, parse_args(argv))


if __name__ == "__main__":
    main()
