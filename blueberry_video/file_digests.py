"""Digests of a file's content, for caches that must tell a copy of a file (any path, any modification time) from
another file."""

from __future__ import annotations

import hashlib
from pathlib import Path

# A sampled digest reads this many evenly spaced pieces of this size (the whole of a smaller file).
SAMPLED_PIECES, SAMPLED_PIECE_BYTES = 16, 64 * 1024


def content_digest(path: Path) -> str | None:
    """The SHA-256 of the whole file (about 1 s per GB). None where it cannot be read: the caller's own reading
    says why."""
    try:
        with open(path, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except OSError:
        return None


def sampled_digest(path: Path) -> str:
    """A digest of a file's size and of 16 pieces spread from its start to its end (1 MiB at most, so cheap to
    take on every run): different weights of one shape differ in every piece, where their names and sizes agree."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as file:
        if size <= SAMPLED_PIECES * SAMPLED_PIECE_BYTES:
            digest.update(file.read())
        else:
            for piece in range(SAMPLED_PIECES):
                file.seek((size - SAMPLED_PIECE_BYTES) * piece // (SAMPLED_PIECES - 1))
                digest.update(file.read(SAMPLED_PIECE_BYTES))
    return digest.hexdigest()
