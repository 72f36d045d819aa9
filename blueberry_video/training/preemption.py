"""SIGTERM — what SLURM and Kubernetes send before they kill a job — becomes "checkpoint, then stop"."""

from __future__ import annotations

import signal
import threading


class PreemptionWatch:
    """`requested` turns True on SIGTERM; the training loop shares it across processes with the step's loss."""

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame):
        self.requested = True

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
