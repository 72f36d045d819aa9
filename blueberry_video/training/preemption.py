"""SIGTERM — what SLURM and Kubernetes send before they kill a job — and a first Ctrl-C (SIGINT) become
"checkpoint, then stop"; a second Ctrl-C stops at once, as Ctrl-C usually does."""

from __future__ import annotations

import signal
import sys
import threading

from blueberry_video.launch_rank import is_first_process


class PreemptionWatch:
    """`requested` turns True on SIGTERM or a first SIGINT; the training loop shares it across processes with the
    step's loss, so every process stops after the same step."""

    def __init__(self):
        self.requested = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame):
        if signum == signal.SIGINT:
            if self.requested:
                raise KeyboardInterrupt
            if is_first_process():  # Ctrl-C reaches every process of the launch
                print("\ninterrupted: saving a checkpoint after this step, then stopping (Ctrl-C again to stop now, "
                      "losing the steps since the last checkpoint)", file=sys.stderr, flush=True)
        self.requested = True

    def close(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
