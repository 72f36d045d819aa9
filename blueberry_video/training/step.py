"""One micro-batch of training: loss, backward, and — at an accumulation boundary — clip and update.

The trainer and the benchmarks both call this, so what is measured is what trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from blueberry_video.training.accelerator import autocast
from blueberry_video.training.checkpointing import transformer_blocks


@dataclass
class StepOutcome:
    loss: torch.Tensor  # detached
    grad_norm: float | None  # set at accumulation boundaries (None where the engine does not report it)
    applied: bool  # False when the gradients were not finite and the update was skipped


def training_step(accelerator, family, transformer, noise_scheduler, batch, generators, params, optimizer,
                  lr_scheduler, max_grad_norm: float) -> StepOutcome:
    with accelerator.accumulate(transformer):
        with autocast(accelerator):
            loss = family.training_loss(transformer, noise_scheduler, batch, generators)
        accelerator.backward(loss)
        grad_norm, applied = None, True
        if accelerator.sync_gradients:
            # An infinite max norm measures without clipping, so non-finite gradients are still caught.
            norm = accelerator.clip_grad_norm_(params, max_grad_norm or float("inf"))
            # A tensor, or under DeepSpeed (which clips inside `backward`) a float or None.
            grad_norm = None if norm is None else float(norm)
            applied = grad_norm is None or math.isfinite(grad_norm)
        # fp16 on GPUs: accelerate's GradScaler skips a non-finite update itself, and only its step lowers the
        # loss scale and readies it for the next unscale (without it the next step fails: "unscale_() has already
        # been called"). The schedule advances on applied updates only: accelerate's own skip check misses the
        # skips of fused optimizers, which the scaler always calls (huggingface/accelerate#4242).
        if applied or accelerator.scaler is not None:
            optimizer.step()
        if applied:
            lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return StepOutcome(loss.detach(), grad_norm, applied)


def compile_blocks(transformer, block_class_names) -> int:
    """torch.compile each transformer block in place (compiling blocks, not the whole model, keeps
    graph breaks and recompilation local); returns how many were compiled."""
    blocks = transformer_blocks(transformer, block_class_names)
    for block in blocks:
        block.compile()
    return len(blocks)
