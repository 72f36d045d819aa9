"""Several jobs building the same latent cache at once (a sweep started together): the main process of a job
holds a lock on the cache folder while it builds, so a second job waits and then reuses the cache; and every
file and folder is written under a name of its own and renamed into place, so that where the filesystem does
not lock, neither job removes or renames the other's work."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from accelerate.utils import broadcast_object_list

from blueberry_video.file_lock import holder, try_lock

logger = logging.getLogger(__name__)

LOCK_FILE = "build.lock"
# How often the processes of a job check whether its main process got the lock another job holds.
LOCK_POLL_SECONDS = 2.0


def lock_state(handle, cache_path: Path) -> str:
    """"build" once this process holds the lock and the cache is still to build, "built" where another job
    completed it meanwhile, "wait" while another job holds the lock. Where the filesystem does not lock, the
    unique temporary names still keep two builders apart (both encode the same videos)."""
    if not try_lock(handle, str(cache_path)):
        return "wait"
    return "built" if (cache_path / "manifest.json").exists() else "build"


@contextmanager
def building(cache_path: Path, accelerator):
    """Held while this job builds `cache_path`; yields True where another job (a sweep started together) completed
    it while this one waited: then it is reused, not built again.

    Only the main process takes the lock (`fcntl.flock`, released when the process ends, crashed or not): the
    processes of one job share the build. While it waits, the others ask it every LOCK_POLL_SECONDS, each time a
    short broadcast, rather than wait in one barrier that another job's hours-long build would time out."""
    world = accelerator.num_processes if accelerator else 1
    handle = open(cache_path / LOCK_FILE, "a+") if accelerator is None or accelerator.is_main_process else None
    try:
        waited = False
        while True:
            state = lock_state(handle, cache_path) if handle else None
            if world > 1:
                state = broadcast_object_list([state])[0]
            if state != "wait":
                break
            if handle and not waited:
                logger.warning("another process is building this cache (%s); waiting (it is held by %s)",
                               cache_path, holder(handle))
            waited = True
            time.sleep(LOCK_POLL_SECONDS)
        yield state == "built"
    finally:
        if handle:
            handle.close()


def unique_tmp(path: Path) -> Path:
    # One per writer: two jobs building the same cache at once must not remove or rename each other's work.
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def move_into_place(tmp: Path, final: Path) -> bool:
    """Rename a finished folder to its final name; where that exists already (another job building the same cache
    finished it first), keep theirs, which holds the same, and drop ours."""
    try:
        os.replace(tmp, final)
        return True
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp)
        return False


def write_file(path: Path, text: str) -> None:
    tmp = unique_tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)
