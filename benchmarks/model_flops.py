"""Model FLOPs of one training step: the figure MFU divides by.

    python benchmarks/model_flops.py --preset cogvideox-2b --mode full --frames 49 --height 480 --width 720
    (runs on CPU in seconds: the real-size transformer on the meta device, nothing computed)

The usual shorthand, 6·N·T for a full fine-tune (N parameters, T tokens), assumes every weight meets every token.
In these video transformers many do not: the adaptive-norm modulation layers (a fifth of CogVideoX-2b's
weights, more than a quarter of HunyuanVideo's) act once per sample on the timestep embedding, and HunyuanVideo's
text-stream weights see only its 256 text tokens. 6·N·T overstates the dense work by 28 % (CogVideoX-2b) to
almost double (HunyuanVideo), and the MFU with it. So the dense part is counted, not assumed: one
forward pass of the step's own loss runs under torch's FlopCounterMode, each matrix product charged to the
layer holding its weight, and the backward pass follows the standard rule:

    model FLOPs = 3·D_trained + 2·D_frozen + 3·A
    D: forward matrix-product FLOPs of layers with trained (frozen) weights; a trained weight's backward costs
       twice its forward (activation and weight gradients), a frozen one's once (activation gradient only)
    A: forward attention FLOPs, 4·L·T²·d per sample (QKᵀ and AV over T tokens, L layers, width d), backward 2·A

Recomputation under gradient checkpointing is not counted: it is work, not model FLOPs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (
    add_step_arguments,
    benchmark_config,
    build_family_and_transformer,
    report,
    synthetic_batch,
    temporary_workdir,
)
from blueberry_video.training.lora import make_trainable
from blueberry_video.training.sampling import sample_generators


def dense_forward_flops(model: torch.nn.Module, forward) -> tuple[float, float]:
    """(trained, frozen): FLOPs of the matrix products and convolutions one call of `forward()` runs in `model`'s
    weight-holding layers, split by whether the layer's weights train."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        forward()
    counts = counter.get_flop_counts()
    root = type(model).__name__  # FlopCounterMode names a layer by the root's class and its module path
    trained = frozen = 0.0
    for name, module in model.named_modules():
        weights = list(module.parameters(recurse=False))
        # Leaves only: a parent's count includes its children's.
        if not weights or next(module.children(), None) is not None:
            continue
        flops = float(sum(counts.get(f"{root}.{name}", {}).values()))
        if any(weight.requires_grad for weight in weights):
            trained += flops
        else:
            frozen += flops
    if trained + frozen == 0:
        raise RuntimeError(f"no matrix products were counted in {root}'s layers: was the forward run on another model?")
    return trained, frozen


def sequence_tokens(transformer_config, latent_shape, text_tokens: int) -> tuple[int, int]:
    """(video tokens, text tokens) the transformer attends over for one sample."""
    _, frames, height, width = latent_shape
    p = transformer_config.get("patch_size", 2)
    p_t = transformer_config.get("patch_size_t") or 1
    return (-(-frames // p_t)) * (height // p) * (width // p), text_tokens


def attention_forward_flops(batch: int, tokens: int, num_layers: int, hidden: int) -> float:
    return 4.0 * batch * num_layers * tokens * tokens * hidden


def training_flops(trained_dense: float, frozen_dense: float, attention_forward: float) -> float:
    """Model FLOPs of one training step from its forward pass's figures (the rule in the module docstring)."""
    return 3 * trained_dense + 2 * frozen_dense + 3 * attention_forward


def attention_shape(family, model, batch: dict, frames: int, height: int, width: int) -> dict:
    """Tokens one sample attends over (video patches + text), layers and width, from the model's config."""
    cfg = model.config
    video_tokens, text_tokens = sequence_tokens(dict(cfg), family.latent_shape(frames, height, width),
                                                batch["prompt_embeds"].shape[1])
    return {"video_tokens": video_tokens, "tokens_per_sample": video_tokens + text_tokens,
            "layers": cfg.get("num_layers", 0) + cfg.get("num_single_layers", 0),
            "hidden": cfg["num_attention_heads"] * cfg["attention_head_dim"]}


def step_flops(family, model, loss_forward, batch: dict, frames: int, height: int, width: int) -> dict:
    """Everything a benchmark reports about a step's model FLOPs; `loss_forward()` computes the step's loss."""
    shape = attention_shape(family, model, batch, frames, height, width)
    samples = batch["prompt_embeds"].shape[0]
    trained, frozen = dense_forward_flops(model, loss_forward)
    attention = attention_forward_flops(samples, shape["tokens_per_sample"], shape["layers"], shape["hidden"])
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # The shorthand, for comparison: every weight applied to every token.
    shorthand = samples * (6 * trainable + 4 * (params - trainable)) * shape["tokens_per_sample"] + 3 * attention
    return {**shape, "params": params, "trainable_params": trainable,
            "dense_forward_flops_trained": trained, "dense_forward_flops_frozen": frozen,
            "attention_forward_flops": attention, "model_flops": training_flops(trained, frozen, attention),
            "model_flops_6nt": shorthand}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def run(args) -> dict:
    meta = torch.device("meta")
    workdir = temporary_workdir()
    try:
        family, transformer = build_family_and_transformer(args.preset, torch.float32, meta, workdir)
        family.check_video_shape(args.frames, args.height, args.width)
        make_trainable(transformer, benchmark_config(family, args.mode, args.rank, False, False), family)
        batch = synthetic_batch(family, args.batch, args.frames, args.height, args.width, meta)
        scheduler = family.load_training_scheduler()
        # Drawn on the CPU and moved: meta tensors have no random generators.
        generators = sample_generators(0, 0, range(args.batch), "cpu")
        result = {"preset": args.preset, "mode": args.mode, "frames": args.frames, "height": args.height,
                  "width": args.width, "batch": args.batch,
                  **step_flops(family, transformer, lambda: family.training_loss(transformer, scheduler, batch,
                                                                                 generators),
                               batch, args.frames, args.height, args.width)}
        result["overstated_by_6nt"] = result["model_flops_6nt"] / result["model_flops"] - 1
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    return report(run, parse_args(argv))


if __name__ == "__main__":
    main()
