"""Gradient checkpointing of all or some of the transformer's blocks: the dial between memory and speed.

diffusers recomputes every block or none. With `gradient_checkpointing_ratio` below 1 the first blocks (in
forward order) recompute their activations in the backward pass and the last ones keep them: a card with
memory to spare spends it on less recomputation. The kept blocks are the last because the backward pass reaches
them first and frees their activations before any recomputation adds to the peak.
"""

from __future__ import annotations

import math

import torch

# Set on each block; read through engine wrappers (FSDP's forwards attribute lookups to the wrapped block).
KEEPS_ACTIVATIONS = "_blueberry_keeps_activations"


def transformer_blocks(transformer: torch.nn.Module, block_class_names) -> list[torch.nn.Module]:
    """The repeated blocks, in forward order (the order the model registers them)."""
    return [m for m in transformer.modules() if type(m).__name__ in block_class_names]


def recomputed_block_count(ratio: float, num_blocks: int) -> int:
    # The tolerance keeps a ratio written as k / num_blocks (0.4 of 30 is 12.000000000000002) at k blocks.
    return min(num_blocks, math.ceil(ratio * num_blocks - 1e-6))


def _checkpoint(block, *args):
    # What diffusers' own default does: non-reentrant checkpointing of the block's call.
    return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=False)


def enable_gradient_checkpointing(transformer, block_class_names, ratio: float = 1.0, checkpoint=_checkpoint) -> int:
    """Checkpoint the first `ratio` of the transformer's blocks through diffusers' own switch, with `checkpoint`
    (a function of the block and its arguments) doing the recomputing; returns how many blocks recompute. Other
    checkpointable modules (HunyuanVideo's small text refiner) recompute as with diffusers' default."""
    blocks = transformer_blocks(transformer, block_class_names)
    recomputed = recomputed_block_count(ratio, len(blocks))
    for index, block in enumerate(blocks):
        setattr(block, KEEPS_ACTIVATIONS, index >= recomputed)

    def checkpoint_unless_kept(block, *args):
        if getattr(block, KEEPS_ACTIVATIONS, False):
            return block(*args)
        return checkpoint(block, *args)

    transformer.enable_gradient_checkpointing(checkpoint_unless_kept)
    return recomputed


def ratio_label(recomputed: int, num_blocks: int) -> str:
    """`0.4` for 12 of 30 blocks: a value that `recomputed_block_count` maps back to `recomputed`."""
    return f"{math.floor(recomputed / num_blocks * 1e4) / 1e4:g}"
