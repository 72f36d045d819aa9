"""Saved weights readable as the umask allows: safetensors creates its files 0600 whatever the umask, so on a
shared cluster teammates could not read a run's exported weights or checkpoints."""

from __future__ import annotations

import os
from pathlib import Path


def umask() -> int:
    # The umask can only be read by setting it. The value set for that instant is the most private one, so a
    # file another thread creates in between is at worst too private, never readable by more people.
    current = os.umask(0o077)
    os.umask(current)
    return current


def apply_umask(path: Path) -> None:
    """Give `path`, or every file under it, the mode a file newly created now gets (0o666 less the umask)."""
    mode = 0o666 & ~umask()
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    for file in files:
        if not file.is_symlink():
            os.chmod(file, mode)
