"""SIGTERM (what SLURM and Kubernetes send before they kill a job) and Ctrl-C during long work outside the
training loop, such as encoding the latent cache: stop at once, as those signals do, but with a line saying
what was kept instead of a bare "Terminated" or a traceback. The training loop has its own handling (a
checkpoint first: training/preemption.py)."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

from blueberry_video.errors import StoppedBySignal

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# What gloo and NCCL say when a process of the launch is gone, and how long to wait for this one's signal then.
PEER_GONE = re.compile(r"Connection (closed|reset) by peer|Broken pipe|remote process exited")
PEER_STOP_GRACE_S = 5.0


@contextmanager
def stop_with_message(message: Callable[[], str]):
    """Within the block, SIGTERM and SIGINT raise StoppedBySignal with `message()`, asked when the signal comes
    so that it can count the work done by then."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def stop(signum, frame):
        raise StoppedBySignal(f"{signal.Signals(signum).name}: {message()}", signum)

    previous = {signum: signal.signal(signum, stop) for signum in SIGNALS}
    try:
        yield
    except Exception as error:
        if PEER_GONE.search(str(error)):
            # torchrun passes a Ctrl-C or SIGTERM on to its processes one after another: a process stopped first
            # breaks the collective a peer waits in before the peer's own signal comes. The peer waits for it, so
            # that it stops with the message (raised from the sleep) instead of the broken connection's traceback.
            time.sleep(PEER_STOP_GRACE_S)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
