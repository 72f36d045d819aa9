"""List the (video, caption) pairs of a dataset folder, whatever metadata format it uses.

Accepted layouts (exactly one per folder):
  metadata.json   a list of objects, e.g. [{"file": "videos/0.mp4", "caption": "..."}]
  metadata.jsonl  one such object per line
  metadata.csv    a header row, then one row per video
  prompts.txt + videos.txt   diffusers' CogVideoX layout: line i of each file belong together
  clip.mp4 + clip.txt        no metadata file: each video's caption in a .txt of the same name beside it

Problems with the metadata itself raise DatasetFormatError. Problems with single rows (no caption,
missing video file, a video listed twice) only skip that row and are reported in
`DatasetListing.skipped`, because one bad row in a large scraped dataset should not stop training.
Video files in the folder that the metadata does not name are listed in `DatasetListing.unlisted_videos`.
"""

from __future__ import annotations

import csv
import glob
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
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".mts",
                    ".m2ts", ".3gp")
SIDECAR_LAYOUT = "captions .txt beside the videos"
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
    # Where the captions came from (e.g. "metadata.csv"), and the video files under the folder it does not name.
    metadata: str = ""
    unlisted_videos: list[Path] = field(default_factory=list)

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
    ignore: Path | None = None,
) -> DatasetListing:
    """Read the dataset folder `root` and return its usable entries plus the skipped rows.

    caption_column / video_column pick columns of json/jsonl/csv metadata; for the diffusers
    layout they may instead name the two .txt files (e.g. "prompts.txt" / "videos.txt").
    `id_token` (a DreamBooth-style trigger word) is prefixed to every caption. `ignore` is a folder
    not searched for unlisted videos (the latent cache).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"dataset folder {root} does not exist or is not a folder; check the data path")
    metadata, rows = _read_rows(root, caption_column, video_column)
    listing = _select_entries(root, rows, id_token)
    listing.metadata = metadata
    listing.unlisted_videos = _unlisted_videos(root, rows, ignore)
    if not listing.entries:
        reasons = "; ".join(f"{item.source}: {item.reason}" for item in listing.skipped[:SHOWN_SKIPS])
        raise DatasetFormatError(
            f"dataset {root} has no usable videos ({len(listing.skipped)} rows skipped"
            + (f", e.g. {reasons}" if reasons else "; the metadata lists no videos")
            + "); fix the captions and video paths in the metadata"
        )
    return listing


def _read_rows(root: Path, caption_column: str | None, video_column: str | None) -> tuple[str, list[_Row]]:
    """The name of the metadata the rows come from, and the rows."""
    if _names_text_file(caption_column) or _names_text_file(video_column):
        prompts = caption_column if _names_text_file(caption_column) else TEXT_PAIR_FILES[0]
        videos = video_column if _names_text_file(video_column) else TEXT_PAIR_FILES[1]
        return videos, _read_text_pair(root, prompts, videos)

    found = [name for name in METADATA_FILES if (root / name).is_file()]
    text_files = [name for name in TEXT_PAIR_FILES if (root / name).is_file()]
    if len(text_files) == 1 and _has_video_beside(root / text_files[0]):
        text_files = []  # the caption of a videos.mp4 (or prompts.mp4) beside it, not half of a pair
    if text_files:
        found.append(" + ".join(text_files))
    if not found:
        return SIDECAR_LAYOUT, _read_sidecar_captions(root, caption_column, video_column)
    if len(found) > 1:
        raise DatasetFormatError(f"ambiguous metadata in {root}: found {' and '.join(found)}; keep exactly one of them")
    if text_files:
        if caption_column is not None or video_column is not None:
            raise DatasetFormatError(
                f"{root} uses prompts.txt + videos.txt, which have no columns; drop caption_column/"
                "video_column or set them to the .txt file names"
            )
        return TEXT_PAIR_FILES[1], _read_text_pair(root, *TEXT_PAIR_FILES)

    name = found[0]
    if name == "metadata.json":
        records = _read_json(root / name)
    elif name == "metadata.jsonl":
        records = _read_jsonl(root / name)
    else:
        records = _read_csv(root / name)
    return name, _pick_columns(root / name, records, caption_column, video_column)


def _has_video_beside(text_file: Path) -> bool:
    return any(other.stem == text_file.stem and other.name.lower().endswith(VIDEO_EXTENSIONS)
               for other in text_file.parent.iterdir())


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


def _read_sidecar_captions(root: Path, caption_column: str | None, video_column: str | None) -> list[_Row]:
    """One row per video file, its caption read from the .txt of the same name beside it (None where absent)."""
    root = lexical_absolute(root)
    videos = _video_files(root, ignore=None)
    captions = [_caption_beside(video) for video in videos]
    if not any(caption.is_file() for caption in captions):
        raise DatasetFormatError(
            f"no metadata found in {root}; add one of {', '.join(METADATA_FILES)}, "
            f"the pair {' + '.join(TEXT_PAIR_FILES)}, or a caption clip.txt beside each video clip.mp4"
        )
    if caption_column is not None or video_column is not None:
        raise DatasetFormatError(
            f"{root} has its captions in .txt files beside the videos, which have no columns; drop "
            "caption_column/video_column"
        )
    return [
        _Row(str(caption.relative_to(root)), str(video.relative_to(root)),
             _read_text(caption) if caption.is_file() else None)
        for video, caption in zip(videos, captions)
    ]


def _caption_beside(video: Path) -> Path:
    """clip.txt beside clip.mp4, or clip.TXT: upper-case names are as common for captions as for videos (CLIP.MP4,
    from cameras and Windows tools)."""
    caption = video.with_suffix(".txt")
    if caption.is_file():
        return caption
    return next((other for other in sorted(video.parent.glob(f"{glob.escape(video.stem)}.*"))
                 if other.suffix.lower() == ".txt" and other.is_file()), caption)


def _same_name_but_case(root: Path, relative: str) -> Path | None:
    """The file under `root` that `relative` names but for the case of its letters (VIDEOS/0002.mp4 for
    videos/0002.mp4), or None."""
    found = root
    for part in Path(relative).parts:
        try:
            found = next(child for child in found.iterdir() if child.name.lower() == part.lower())
        except (StopIteration, OSError):
            return None
    return found if found.is_file() else None


def _split_lines(text: str) -> list[str]:
    """Lines ended by \\n or \\r\\n only. str.splitlines also splits at the Unicode separators a caption may hold
    (U+2028, U+0085, form feed), which would break a JSON line, or shift every later caption of prompts.txt
    onto the next video."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _lines(text: str) -> list[str]:
    lines = _split_lines(text)
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
    for number, line in enumerate(_split_lines(_read_text(path)), start=1):
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
    records, overlong_rows = [], []
    try:
        if reader.fieldnames is None:
            raise DatasetFormatError(f"{path} is empty; it needs a header row such as: file,caption")
        for record in reader:
            # Row numbers match a spreadsheet's: the header is row 1.
            records.append((f"{path.name} row {reader.line_num}", record))
            # DictReader files the fields past the header's under the key None: a caption cut at a comma.
            if None in record:
                overlong_rows.append(reader.line_num)
    except csv.Error as error:
        # DictReader.line_num is only updated after a successful row; the inner reader's is current.
        row = reader.reader.line_num
        raise DatasetFormatError(f"{path} row {row} is not valid CSV ({error}); fix the quoting") from error
    if overlong_rows:
        rows = f"{'rows' if len(overlong_rows) > 1 else 'row'} {first_few(overlong_rows)}"
        raise DatasetFormatError(
            f"{path}: {len(overlong_rows)} row(s) have more fields than the header's {len(reader.fieldnames)} "
            f"({rows}), so a caption was split at an unquoted comma; quote captions that contain commas: "
            '"a cat, a dog"'
        )
    return records


def first_few(items: list) -> str:
    """The first items of a list a message names, and "..." where there are more."""
    return ", ".join(str(item) for item in items[:SHOWN_SKIPS]) + (", ..." if len(items) > SHOWN_SKIPS else "")


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
    for key, defaults, chosen in ((video_key, VIDEO_COLUMNS, video_column), (caption_key, CAPTION_COLUMNS,
                                                                             caption_column)):
        if chosen is None:
            _check_one_name_per_column(path, records, key, defaults)
    return [_Row(source, record.get(video_key), record.get(caption_key)) for source, record in records]


def _check_one_name_per_column(path: Path, records: list[tuple[str, object]], key: str, names: tuple[str, ...]):
    """JSON rows name their fields one by one: rows that say "video" where the others say "file" would be
    skipped as having no video (and their files called unlisted), so they are refused with both names."""
    for source, record in records:
        if key not in record and (other := next((name for name in names if name in record), None)):
            raise DatasetFormatError(f"{path}: {source} names its field {other!r} where other rows say {key!r}; "
                                     "use one name in every row")


def _resolve_column(
    path: Path, available: list[str], chosen: str | None, defaults: tuple[str, ...], setting: str
) -> str:
    if chosen is not None:
        column = _find_column(path, available, chosen, setting)
        if column is None:
            raise DatasetFormatError(
                f"{path} has no column {chosen!r} (available: {', '.join(available) or 'none'}); fix {setting}"
            )
        return column
    for name in defaults:
        if (column := _find_column(path, available, name, setting)) is not None:
            return column
    delimiter = next((name for char, name in ((";", "semicolons"), ("\t", "tabs")) if len(available) == 1
                      and char in available[0]), None)
    hint = f" (its header looks separated by {delimiter}: save it with commas)" if delimiter else ""
    raise DatasetFormatError(
        f"{path} has none of the columns {', '.join(defaults)} (available: {', '.join(available) or 'none'}); "
        f"set {setting} to the right column{hint}"
    )


def _find_column(path: Path, available: list[str], name: str, setting: str) -> str | None:
    """The column of `available` that `name` means: spreadsheets write headers like "File, Caption", so case
    and surrounding spaces do not count, unless one column matches exactly."""
    if name in available:
        return name
    matches = [column for column in available if column.strip().casefold() == name.strip().casefold()]
    if len(matches) > 1:
        raise DatasetFormatError(
            f"{path}: the columns {', '.join(repr(column) for column in matches)} differ only in case or spaces; "
            f"rename all but one, or set {setting} to one of them exactly"
        )
    return matches[0] if matches else None


def _select_entries(root: Path, rows: list[_Row], id_token: str | None) -> DatasetListing:
    listing = DatasetListing()
    root_abs = lexical_absolute(root)
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
            hint = " (write paths with / between folders, not \\)" if "\\" in video else ""
            if not hint and video_path.is_relative_to(root_abs) and (
                    other := _same_name_but_case(root_abs, str(video_path.relative_to(root_abs)))):
                hint = f" (did you mean {other.relative_to(root_abs)}? names are case-sensitive here)"
            listing.skipped.append(SkippedItem(row.source, f"video file not found: {video_path}{hint}"))
            continue
        same_file = Path(os.path.realpath(video_path))  # a link to a listed video is that video again
        if same_file in first_source:
            listing.skipped.append(SkippedItem(row.source, f"duplicate of {first_source[same_file]} ({video})"))
            continue
        first_source[same_file] = row.source
        if id_token:
            caption = f"{id_token} {caption}"
        listing.entries.append(VideoEntry(len(listing.entries), video_path, caption))
    return listing


def _unlisted_videos(root: Path, rows: list[_Row], ignore: Path | None) -> list[Path]:
    """Video files under `root` that no row names, skipped rows included (their reason is reported already)."""
    root_abs = lexical_absolute(root)
    # Compared as the files they are: a video reached through a linked folder is listed if its target is.
    listed = {os.path.realpath(root_abs / row.video.strip()) for row in rows if isinstance(row.video, str)}
    return [video for video in _video_files(root_abs, ignore) if os.path.realpath(video) not in listed]


def _video_files(root: Path, ignore: Path | None) -> list[Path]:
    """Files under `root` with a video extension, sorted, leaving out `ignore` and hidden names (the default
    .latent_cache, .git, and the ._clip.mp4 files macOS leaves on shared drives, which are not videos)."""
    root_abs = lexical_absolute(root)
    ignore_abs = lexical_absolute(ignore) if ignore is not None else None
    found, seen = [], set()
    # followlinks: a symlinked videos/ folder is a normal setup; `seen` stops a link that loops back.
    for folder, subfolders, files in os.walk(root_abs, followlinks=True):
        seen.add(os.path.realpath(folder))
        subfolders[:] = [
            name for name in subfolders
            if not name.startswith(".") and Path(folder, name) != ignore_abs
            and os.path.realpath(os.path.join(folder, name)) not in seen
        ]
        found += [Path(folder, name) for name in files
                  if not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS)]
    return sorted(found)


def lexical_absolute(path: Path) -> Path:
    # Lexical normalisation instead of resolve(): a symlinked videos/ folder is a normal setup.
    return Path(os.path.normpath(Path(path).absolute()))


def _inside_root(root_abs: Path, video: str, source: str) -> Path:
    candidate = Path(os.path.normpath(root_abs / video))
    if candidate.is_relative_to(root_abs):
        return candidate
    # An absolute path spelled through a symlink the folder is reached by another way (/data -> /mnt/nfs/data):
    # inside it all the same, and named from the folder as the user gave it.
    resolved, resolved_root = candidate.resolve(), root_abs.resolve()
    if resolved.is_relative_to(resolved_root):
        return root_abs / resolved.relative_to(resolved_root)
    raise DatasetFormatError(
        f"{source}: video path {video!r} points outside the dataset folder {root_abs}; "
        "move the video into the folder and list it relative to it (a path relative to the folder also stays "
        "right when the folder moves)"
    )
