"""The CUDA caching allocator's settings for a training run.

With expandable segments the allocator grows a segment in place instead of leaving freed blocks of the wrong
size stranded, so less of the card goes to fragmentation. Measured on an 80 GB H100 (docs/performance.md,
2026-11-26): HunyuanVideo LoRA at 177x544x960 ran out of memory with the default allocator, 5.9 GiB reserved
but unused, and fit with expandable segments, 2.5 GiB over its 74.5 GiB allocated.
"""

from __future__ import annotations

import os

import torch

EXPANDABLE_SEGMENTS = "expandable_segments:True"
# torch reads either (the first is the older name, the second the newer); a user's own setting wins.
ALLOCATOR_VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


def allocator_setting() -> str | None:
    """`NAME=value` of the allocator variable in effect (the user's, or the one set here), if any."""
    for name in ALLOCATOR_VARIABLES:
        if os.environ.get(name):
            return f"{name}={os.environ[name]}"
    return None


def use_expandable_segments(wanted: bool) -> bool:
    """Turn on expandable segments unless the run says not to or the user configured the allocator; True
    where this call turned them on."""
    if not wanted or allocator_setting() is not None:
        return False
    # The variable reaches the processes this one starts; this process's allocator may have read its settings
    # already (an import that queries the GPU does), so it is told directly too.
    os.environ[ALLOCATOR_VARIABLES[0]] = EXPANDABLE_SEGMENTS
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)  # torch >= 2.9, every accelerator
    if setter is not None:
        setter(EXPANDABLE_SEGMENTS)
    elif torch.cuda.is_available():
        torch.cuda.memory._set_allocator_settings(EXPANDABLE_SEGMENTS)
    return True


def running_allocator_settings() -> str | None:
    """The settings this process's allocator holds, whatever set them; None where torch does not say (2.11 did not,
    on the lent GPUs; 2.13 does)."""
    getter = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
    return getter() if getter is not None else None
