"""An advisory lock on a file that says who holds it: one job's claim on an output_dir or a cache being built.
`fcntl.flock` goes with the process, so a crashed holder leaves no stale lock."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time

logger = logging.getLogger(__name__)


def try_lock(handle, what: str) -> bool:
    """Take the lock on the open file `handle` without waiting and write the holder into it. False while another
    process holds it. On filesystems that do not lock (some network ones), a warning naming `what` and True."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        logger.warning("%s: could not lock it (%s); make sure no other job uses it at the same time", what, error)
        return True
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
    handle.flush()
    return True


def holder(handle) -> str:
    """Who holds the lock, as its holder wrote it."""
    handle.seek(0)
    return handle.read().strip() or "a process that is starting"
