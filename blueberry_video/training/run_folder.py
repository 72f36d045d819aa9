"""Keeping a run's output_dir one run's: a lock that a second run on the same folder (a double submit, a requeued
job while the first still runs) is refused by; what killed attempts left half-written, removed; and, when a run
resumes from an earlier checkpoint than the folder's newest, the later checkpoints moved aside, so that `latest`
and `checkpoints_total_limit` follow the branch being trained and the abandoned one is kept, not deleted."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from pathlib import Path

from blueberry_video.errors import ConfigError
from blueberry_video.file_lock import holder, try_lock
from blueberry_video.training.checkpoints import checkpoint_folders

logger = logging.getLogger(__name__)

LOCK_FILE = ".blueberry-run.lock"
# Half-written by a killed attempt: a checkpoint's folder before its rename (checkpoints.py), the folder the
# weights are exported in (export.py), a validation video before its rename (video_writer.py).
LEFTOVER_FOLDERS = re.compile(r"checkpoint-\d+\.tmp|tmp[a-z0-9_]{8}")
LEFTOVER_VIDEOS = "validation/.*.tmp.mp4"
SET_ASIDE = "set-aside-after-step-{step}-{stamp}"
SET_ASIDE_FOLDERS = re.compile(r"set-aside-after-step-\d+-[\d-]+")
VALIDATION_STEP = re.compile(r"step-(\d+)-")


@contextlib.contextmanager
def hold_output_dir(accelerator, output_dir):
    """On the main process, hold an exclusive lock on output_dir for the run (released when it ends, or when the
    process dies: no stale lock survives a crash). Filesystems without locks get a warning, not a refusal."""
    if not accelerator.is_main_process:
        yield
        return
    folder = Path(output_dir)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_FILE, "a+")
    except OSError as error:  # before any encoding or training: the run could save nothing
        raise ConfigError(f"cannot write output_dir={folder} ({error.strerror or error}): pick an --output_dir you "
                          "can write, or fix its permissions") from error
    try:
        if not try_lock(handle, f"output_dir={folder}"):
            raise ConfigError(f"output_dir={folder} is in use by another training run ({holder(handle)}): two runs "
                              f"would overwrite each other's checkpoints and records. Wait for it to end (or stop "
                              f"it), or pick another --output_dir")
        yield
    finally:
        if created and _holds_only_the_lock(folder):
            # A run refused before it wrote anything (a setting checked once the model is read) leaves no folder
            # to be taken for a run's.
            (folder / LOCK_FILE).unlink()
            folder.rmdir()
        handle.close()


def _holds_only_the_lock(folder: Path) -> bool:
    try:
        return [path.name for path in folder.iterdir()] == [LOCK_FILE]
    except OSError:
        return False


def remove_leftovers(output_dir) -> list[str]:
    """Delete what killed attempts left half-written in output_dir; returns their names (main process, under the
    lock: no other run can be writing them)."""
    folder = Path(output_dir)
    removed = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_dir() and LEFTOVER_FOLDERS.fullmatch(path.name):
            shutil.rmtree(path)
            removed.append(path.name)
    for path in sorted(folder.glob(LEFTOVER_VIDEOS)):
        path.unlink()
        removed.append(str(path.relative_to(folder)))
    if removed:
        logger.warning("removed what an interrupted attempt left half-written in %s: %s", folder, ", ".join(removed))
    return removed


def set_aside_later_checkpoints(output_dir, resumed: Path, step: int) -> Path | None:
    """A resume from checkpoint `step` of output_dir when it holds later ones: those (and the validation videos of
    their steps) move into a set-aside folder, so `latest` cannot go back to them and the total limit cannot
    delete the new branch's checkpoints in their favour. Returns that folder, or None when there was nothing."""
    folder = Path(output_dir)
    if resumed.resolve().parent != folder.resolve():
        return None
    # Damaged and incomplete ones too: left in place, this run would write over them as it passes their step.
    later = [path for found_step, path in checkpoint_folders(folder) if found_step > step]
    videos = [video for video in sorted((folder / "validation").glob("step-*.mp4"))
              if int(VALIDATION_STEP.match(video.name)[1]) > step]
    if not later:
        return None
    aside = folder / SET_ASIDE.format(step=step, stamp=time.strftime("%Y%m%d-%H%M%S"))
    (aside / "validation").mkdir(parents=True)
    for path in later:
        os.replace(path, aside / path.name)
    for video in videos:
        os.replace(video, aside / "validation" / video.name)
    logger.warning("resuming from step %d of %s, which holds later checkpoints (%s): moved them and their "
                   "validation videos to %s, so this run's own checkpoints are the ones `latest` finds",
                   step, folder, ", ".join(path.name for path in later), aside)
    return aside
