"""SIGTERM — what SLURM and Kubernetes send before they kill a job — becomes "checkpoint, then stop"."""

from __future__ import annotations

import signal
import threading

import torch


class PreemptionWatch:
    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame):
        self.requested = True

    def should_stop(self, accelerator) -> bool:
        """True on every process once any of them was signalled, so all stop at the same step."""
        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([int(self.requested)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item())

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
