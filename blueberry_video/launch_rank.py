"""Which process of a launch this is, where accelerate's state may not be set up (a signal handler, a warning
shown before the Accelerator exists, a function a test calls alone): torchrun, `accelerate launch` and
DeepSpeed's launcher give each process its RANK."""

from __future__ import annotations

import os


def is_first_process() -> bool:
    """What every process of a launch would say alike is said by the first one only."""
    return int(os.environ.get("RANK", "0")) == 0
