"""List the (video, caption) pairs of a dataset folder, whatever metadata format it uses.

Accepted layouts (exactly one per folder):
  metadata.json   a list of objects, e.g. [{"file": "videos/0.mp4", "caption": "..."}]
  metadata.jsonl  one such object per line
  metadata.csv    a header row, then one row per video
  prompts.txt + videos.txt   diffusers' CogVideoX layout: line i of each file belong together

Problems with the metadata itself raise DatasetFormatError. Problems with single rows (no caption,
missing video file, a video listed twice) only skip that row and are reported in
`DatasetListing.skipped`, because one bad row in a large scraped dataset should not stop training.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from blueberry_video.errors import BlueberryError

METADATA_FILES = ("metadata.json", "metadata.jsonl", "metadata.csv")
TEXT_PAIR_FILES = ("prompts.txt", "videos.txt")
VIDEO_COLUMNS = ("file", "video", "video_path", "path", "file_name")
CAPTION_COLUMNS = ("caption", "prompt", "text")
SHOWN_SKIPS = 5


class DatasetFormatError(BlueberryError, ValueError):
    """The dataset folder or its metadata cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class VideoEntry:
    index: int
    video_path: Path
    caption: str


@dataclass(frozen=True)
class SkippedItem:
    source: str
    reason: str


@dataclass
class DatasetListing:
    entries: list[VideoEntry] = field(default_factory=list)
    skipped: list[SkippedItem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[VideoEntry]:
        return iter(self.entries)


@dataclass(frozen=True)
class _Row:
    source: str
    video: object
    caption: object


def load_dataset_entries(
    root,
    caption_column: str | None = None,
    video_column: str | None = None,
    id_token: str | None = None,
) -> DatasetListing:
    """Read the dataset folder `root` and return its usable entries plus the skipped rows.

    caption_column / video_column pick columns of json/jsonl/csv metadata; for the diffusers
    layout they may instead name the two .txt files (e.g. "prompts.txt" / "videos.txt").
    `id_token` (a DreamBooth-style trigger word) is prefixed to every caption.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"dataset folder {root} does not exist or is not a folder; check the data path")
    rows = _read_rows(root, caption_column, video_column)
    listing = _select_entries(root, rows, id_token)
    if not listing.entries:
        reasons = "; ".join(f"{item.source}: {item.reason}" for item in listing.skipped[:SHOWN_SKIPS])
        raise DatasetFormatError(
            f"dataset {root} has no usable videos ({len(listing.skipped)} rows skipped"
            + (f", e.g. {reasons}" if reasons else "; the metadata lists no videos")
            + "); fix the captions and video paths in the metadata"
        )
    return listing


def _read_rows(root: Path, caption_column: str | None, video_column: str | None) -> list[_Row]:
    if _names_text_file(caption_column) or _names_text_file(video_column):
        prompts = caption_column if _names_text_file(caption_column) else TEXT_PAIR_FILES[0]
        videos = video_column if _names_text_file(video_column) else TEXT_PAIR_FILES[1]
        return _read_text_pair(root, prompts, videos)

    found = [name for name in METADATA_FILES if (root / name).is_file()]
    text_files = [name for name in TEXT_PAIR_FILES if (root / name).is_file()]
    if text_files:
        found.append(" + ".join(text_files))
    if not found:
        raise DatasetFormatError(
            f"no metadata found in {root}; add one of {', '.join(METADATA_FILES)} "
            f"or the pair {' + '.join(TEXT_PAIR_FILES)}"
        )
    if len(found) > 1:
        raise DatasetFormatError(f"ambiguous metadata in {root}: found {' and '.join(found)}; keep exactly one of them")
    if text_files:
        if caption_column is not None or video_column is not None:
            raise DatasetFormatError(
                f"{root} uses prompts.txt + videos.txt, which have no columns; drop caption_column/"
                "video_column or set them to the .txt file names"
            )
        return _read_text_pair(root, *TEXT_PAIR_FILES)

    name = found[0]
    if name == "metadata.json":
        records = _read_json(root / name)
    elif name == "metadata.jsonl":
        records = _read_jsonl(root / name)
    else:
        records = _read_csv(root / name)
    return _pick_columns(root / name, records, caption_column, video_column)


def _names_text_file(column: str | None) -> bool:
    return column is not None and column.endswith(".txt")


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DatasetFormatError(f"cannot read {path}: {error.strerror}; check the file permissions") from error
    try:
        # utf-8-sig also accepts the byte-order mark that spreadsheet programs add.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DatasetFormatError(
            f"{path} line {line} is not valid UTF-8 ({error.reason}); re-save the file as UTF-8"
        ) from error


def _read_text_pair(root: Path, prompts_name: str, videos_name: str) -> list[_Row]:
    for name in (prompts_name, videos_name):
        if not (root / name).is_file():
            raise DatasetFormatError(
                f"{root / name} not found; prompts and videos .txt files come as a pair "
                f"(one caption / one video path per line), both relative to {root}"
            )
    prompts = _lines(_read_text(root / prompts_name))
    videos = _lines(_read_text(root / videos_name))
    if len(prompts) != len(videos):
        raise DatasetFormatError(
            f"{root / prompts_name} has {len(prompts)} lines but {root / videos_name} has {len(videos)}; "
            "line i of each file must describe the same video, so make the counts equal"
        )
    return [
        _Row(f"{prompts_name}/{videos_name} line {number}", video, caption)
        for number, (caption, video) in enumerate(zip(prompts, videos, strict=True), start=1)
    ]


def _lines(text: str) -> list[str]:
    lines = text.splitlines()
    # A trailing newline (or several) is not a row; blank lines in the middle are.
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _read_json(path: Path) -> list[tuple[str, object]]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise DatasetFormatError(
            f"{path} line {error.lineno} column {error.colno} is not valid JSON ({error.msg}); fix the syntax"
        ) from error
    if not isinstance(data, list):
        raise DatasetFormatError(
            f"{path} must hold a JSON list of objects like "
            '[{"file": "videos/0.mp4", "caption": "..."}], got a ' + type(data).__name__
        )
    return [(f"{path.name}[{position}]", record) for position, record in enumerate(data)]


def _read_jsonl(path: Path) -> list[tuple[str, object]]:
    records = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"{path.name} line {number}", json.loads(line)))
        except json.JSONDecodeError as error:
            raise DatasetFormatError(
                f"{path} line {number} is not valid JSON ({error.msg} at column {error.colno}); "
                "each line must be one complete JSON object"
            ) from error
    return records


def _read_csv(path: Path) -> list[tuple[str, object]]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""), strict=True)
    records = []
    try:
        if reader.fieldnames is None:
            raise DatasetFormatError(f"{path} is empty; it needs a header row such as: file,caption")
        for record in reader:
            # Row numbers match a spreadsheet's: the header is row 1.
            records.append((f"{path.name} row {reader.line_num}", record))
    except csv.Error as error:
        # DictReader.line_num is only updated after a successful row; the inner reader's is current.
        row = reader.reader.line_num
        raise DatasetFormatError(f"{path} row {row} is not valid CSV ({error}); fix the quoting") from error
    return records


def _pick_columns(
    path: Path,
    records: list[tuple[str, object]],
    caption_column: str | None,
    video_column: str | None,
) -> list[_Row]:
    for source, record in records:
        if not isinstance(record, dict):
            raise DatasetFormatError(
                f"{path}: {source} is a {type(record).__name__}, not an object with video and caption fields"
            )
    if not records:
        return []
    available = list(dict.fromkeys(key for _, record in records for key in record if isinstance(key, str)))
    video_key = _resolve_column(path, available, video_column, VIDEO_COLUMNS, "video_column")
    caption_key = _resolve_column(path, available, caption_column, CAPTION_COLUMNS, "caption_column")
    return [_Row(source, record.get(video_key), record.get(caption_key)) for source, record in records]


def _resolve_column(
    path: Path, available: list[str], chosen: str | None, defaults: tuple[str, ...], setting: str
) -> str:
    if chosen is not None:
        if chosen not in available:
            raise DatasetFormatError(
                f"{path} has no column {chosen!r} (available: {', '.join(available) or 'none'}); fix {setting}"
            )
        return chosen
    for name in defaults:
        if name in available:
            return name
    raise DatasetFormatError(
        f"{path} has none of the columns {', '.join(defaults)} (available: {', '.join(available) or 'none'}); "
        f"set {setting} to the right column"
    )


def _select_entries(root: Path, rows: list[_Row], id_token: str | None) -> DatasetListing:
    listing = DatasetListing()
    # Lexical normalisation instead of resolve(): a symlinked videos/ folder is a normal setup.
    root_abs = Path(os.path.normpath(root.absolute()))
    first_source: dict[Path, str] = {}
    for row in rows:
        video = row.video.strip() if isinstance(row.video, str) else ""
        if not video:
            listing.skipped.append(SkippedItem(row.source, "no video path (missing, empty or not text)"))
            continue
        video_path = _inside_root(root_abs, video, row.source)
        caption = row.caption.strip() if isinstance(row.caption, str) else ""
        if not caption:
            listing.skipped.append(SkippedItem(row.source, f"no caption for {video} (missing, empty or not text)"))
            continue
        if not video_path.is_file():
            listing.skipped.append(SkippedItem(row.source, f"video file not found: {video_path}"))
            continue
        if video_path in first_source:
            listing.skipped.append(SkippedItem(row.source, f"duplicate of {first_source[video_path]} ({video})"))
            continue
        first_source[video_path] = row.source
        if id_token:
            caption = f"{id_token} {caption}"
        listing.entries.append(VideoEntry(len(listing.entries), video_path, caption))
    return listing


def _inside_root(root_abs: Path, video: str, source: str) -> Path:
    candidate = Path(os.path.normpath(root_abs / video))
    if not candidate.is_relative_to(root_abs):
        raise DatasetFormatError(
            f"{source}: video path {video!r} points outside the dataset folder {root_abs}; "
            "move the video into the folder and list it relative to it"
        )
    return candidate
