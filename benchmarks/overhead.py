"""Our training loop against a bare PyTorch loop on the same model and tensors, alternating in one process.

    python benchmarks/overhead.py [--preset tiny-cogvideox] [--frames 9 --height 96 --width 160] [--rounds 5]

"ours": batches from the dataloader over a latent dataset (accelerate-prepared, as in the trainer), keyed
per-sample randomness, the family's loss, `training_step` (autocast, backward, clip, step), loss reduction.
"bare": the same transformer forward/backward/AdamW step on tensors prepared once, nothing else.
Prints the median step time of each, their ratio, and the fraction of our step spent waiting on the loader.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

import torch
from accelerate import Accelerator

from benchmarks.common import (
    benchmark_config,
    build_family_and_transformer,
    print_result,
    synthetic_batch,
    temporary_workdir,
)
from blueberry_video.data.latent_dataset import DummyLatentDataset
from blueberry_video.training.lora import make_trainable
from blueberry_video.training.optim import build_lr_scheduler, build_optimizer
from blueberry_video.training.sampling import sample_generators
from blueberry_video.training.step import training_step


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-cogvideox")
    parser.add_argument("--mode", choices=["lora", "full"], default="lora")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="steps per round and loop")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    accelerator = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")
    device = accelerator.device
    workdir = temporary_workdir()
    try:
        family, transformer = build_family_and_transformer(args.preset, torch.float32, device, workdir)
        config = benchmark_config(family, args.mode, 16, False, False)
        params = make_trainable(transformer, config, family)
        optimizer = build_optimizer(params, config)
        lr_scheduler = build_lr_scheduler(optimizer, config, 10**6)
        dataset = DummyLatentDataset(family, 64, args.frames, args.height, args.width)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True,
                                             pin_memory=torch.cuda.is_available())
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

        def ours(n):
            times, waits, iterator, step = [], [], iter(loader), 0
            for _ in range(n):
                _sync()
                start = time.perf_counter()
                try:
                    batch = next(iterator)
                except StopIteration:
                    iterator = iter(loader)
                    batch = next(iterator)
                waited = time.perf_counter() - start
                generators = sample_generators(0, step, batch["sample_index"].tolist(), device)
                outcome = training_step(accelerator, family, transformer, noise_scheduler, batch, generators,
                                        params, optimizer, lr_scheduler, 1.0)
                accelerator.reduce(outcome.loss, reduction="mean").item()
                _sync()
                times.append(time.perf_counter() - start)
                waits.append(waited)
                step += 1
            return times, waits

        def bare(n):
            model = accelerator.unwrap_model(transformer)
            times = []
            for _ in range(n):
                _sync()
                start = time.perf_counter()
                with accelerator.autocast():
                    out = model(**bare_inputs)[0]
                loss = torch.nn.functional.mse_loss(out.float(), target.float())
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
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
            "preset": args.preset, "ours_step_s": statistics.median(ours_times),
            "bare_step_s": statistics.median(bare_times),
            "loader_wait_fraction": sum(wait_times) / sum(ours_times),
        }
        result["overhead_ratio"] = result["ours_step_s"] / result["bare_step_s"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return print_result(result, args.json)


if __name__ == "__main__":
    main()
