"""Older caches beside a new one: the video latents a new cache takes from one of the same model and video
settings, complete or a build stopped part way (so a caption edit or an added video sends only what changed
through the VAE), and what the user is told about the others (how the nearest differs, which folders the run no
longer needs, and their size)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np

from blueberry_video.data.formats import first_few
from blueberry_video.file_digests import content_digest
from blueberry_video.data.latent_dataset import NON_TENSOR_COLUMNS

if TYPE_CHECKING:
    from blueberry_video.data.cache import CacheSettings

# The settings the video latents depend on: an older cache that shares them (and the model) has the latents of
# every video file it holds that did not change since. The caption settings only change the text embeddings.
VIDEO_SETTINGS = ("sampling", "encode_dtype", "cache_dtype", "vae_tiling")
# Files whose header tells a variable frame rate (ffmpeg's mov demuxer reads them all).
MP4_SUFFIXES = {".mp4", ".m4v", ".mov", ".3gp"}


@dataclass
class OlderRow:
    """A video's row in an older cache: its video latents, and its text embeddings with the caption they encode."""

    video: dict[str, np.ndarray]
    text: dict[str, np.ndarray]
    caption: str
    notes: dict[str, list[dict]]
    digest: str | None = None  # the file's content digest, where the older cache recorded it


@dataclass
class CacheHoldings:
    """What a cache folder holds that a new cache can take: each row's listing key (relative path, size,
    modification time, caption), the Arrow tables holding those rows in that order, and the notes on its videos.
    A complete cache holds its whole listing; a build that was stopped (or is running now) the chunks it
    finished."""

    folder: Path
    rows: list[list]
    tables: list[Path]
    video_columns: list[str]
    digests: dict[str, str]  # content digests by relative path (absent from caches of earlier releases)
    note_items: dict[str, list[dict]]
    format_version: int
    complete: bool


def read_holdings(folder: Path) -> CacheHoldings | None:
    """The holdings of a cache folder, or None where it records nothing a new cache can match to files (built
    before listing.json was kept, or a stopped build whose chunks an earlier release wrote)."""
    if (folder / "manifest.json").exists():
        if not (folder / "listing.json").exists():
            return None
        listing = json.loads((folder / "listing.json").read_text())
        manifest = json.loads((folder / "manifest.json").read_text())
        return CacheHoldings(folder, listing["rows"], [folder / "dataset"], listing["video_columns"],
                             listing.get("digests", {}), manifest["note_items"], manifest.get("format_version", 1),
                             complete=True)
    rows, tables, video_columns, digests, note_items, version = [], [], [], {}, {}, None
    for chunk in sorted((folder / "chunks").glob("[0-9]*-[0-9]*")):
        try:
            process = json.loads((chunk / "process.json").read_text())
            notes = json.loads((chunk / "notes.json").read_text())
        except FileNotFoundError:  # not finished (a .tmp), or removed by the build's merge meanwhile
            continue
        if "keys" not in process:
            continue
        rows += process["keys"]
        if process["keys"]:
            tables.append(chunk / "data")
        video_columns = video_columns or process["video_columns"]
        digests.update(process["digests"])
        version = process["format_version"]
        for kind, items in notes.items():
            note_items.setdefault(kind, []).extend(items)
    if not rows:
        return None
    return CacheHoldings(folder, rows, tables, video_columns, digests, note_items, version, complete=False)


class OlderCache:
    """An older cache of the same model and video settings, complete or stopped part way: the rows of the video
    files that did not change since (same relative path, size and modification time) hold the latents the VAE
    would compute again. So do those of the same path and size whose modification time alone differs (a copy that
    did not keep it: cp -r, a tar archive) where their content digest is the one this cache recorded."""

    def __init__(self, holdings: CacheHoldings, fps_sampled: bool = False, num_unchanged: int = 0,
                 num_copies: int = 0):
        self.path = holdings.folder
        self.complete = holdings.complete
        # What older_cache counted among the new listing's videos: held unchanged, held as a copy to check.
        self.num_unchanged, self.num_copies = num_unchanged, num_copies
        parts = [datasets.load_from_disk(str(table)) for table in holdings.tables]
        table = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        self.table = table.with_format("numpy", columns=[c for c in table.column_names if c not in NON_TENSOR_COLUMNS])
        self.video_columns = holdings.video_columns
        self.rows = {tuple(key[:3]): (row, key[3]) for row, key in enumerate(holdings.rows)}
        # Caches built before the digests were recorded match by modification time only.
        self.digests = holdings.digests
        self.by_path_and_size = {tuple(key[:2]): (row, key[3]) for row, key in enumerate(holdings.rows)
                                 if key[0] in self.digests}
        self.notes = holdings.note_items
        self.sampled_by_count = _sampled_by_count(holdings, fps_sampled)

    def find(self, key: list, video_path: Path) -> OlderRow | None:
        """The row of the video `key` (its listing key) names, if this cache holds that file unchanged."""
        if key[0] in self.sampled_by_count:
            return None
        if (found := self.rows.get(tuple(key[:3]))) is None:
            found = self.by_path_and_size.get(tuple(key[:2]))
            if found is None or content_digest(video_path) != self.digests[key[0]]:
                return None
        row, caption = found
        tensors = self.table[row]
        notes = {kind: [item for item in items if item["video"] == key[0]] for kind, items in self.notes.items()}
        return OlderRow(video={name: tensors[name] for name in self.video_columns},
                         text={name: value for name, value in tensors.items() if name not in self.video_columns},
                         caption=caption, notes=notes, digest=self.digests.get(key[0]))


def _sampled_by_count(holdings: CacheHoldings, fps_sampled: bool) -> set[str]:
    """The videos whose latents format 1 took by count at the header's rate, where frames are now taken by
    timestamp: those it noted as of variable frame rate, and (their rate unknown to the header) those outside
    MP4/MOV files."""
    if holdings.format_version >= 2 or not fps_sampled:
        return set()
    other_containers = {key[0] for key in holdings.rows if Path(key[0]).suffix.lower() not in MP4_SUFFIXES}
    return other_containers | {item["video"] for item in holdings.note_items.get("variable_frame_rate", [])}


class SameModel:
    """Tells whether a cache was built with this model's encoder files: by their recorded names, sizes,
    modification times and sampled digests; or, for a copy that did not keep the times (cp -r to a node's local
    disk before each job), by the same names, sizes and sampled digests and the whole-file digests the cache
    recorded, which are read here only then (once)."""

    def __init__(self, model_key: dict, encoder_digests):
        self.key = model_key
        self._as_recorded = json.loads(json.dumps(model_key, default=str))  # as settings.json holds it
        self._read_digests, self._digests = encoder_digests, None

    def digests(self) -> dict[str, str]:
        if self._digests is None:
            self._digests = self._read_digests()
        return self._digests

    def differs_in_times_at_most(self, recorded: dict) -> bool:
        """Whether a cache's settings.json names these files but for their modification times."""
        theirs, ours = _models_compared(recorded["model"], self._as_recorded)
        return _without_times(theirs) == _without_times(ours)

    def __call__(self, recorded: dict) -> bool:
        theirs, ours = _models_compared(recorded["model"], self._as_recorded)
        if theirs == ours:
            return True
        return ("encoder_digests" in recorded and self.differs_in_times_at_most(recorded)
                and recorded["encoder_digests"] == self.digests())


def _without_times(model: dict) -> dict:
    """A model key whose file entries (name, size, modification time, sampled digest) leave out the time; entries
    of earlier releases (no sampled digest) keep nothing that could tell their content."""
    return {name: [[entry[0], entry[1], *entry[3:]] if len(entry) > 3 else None for entry in value]
            if isinstance(value, list) else value for name, value in model.items()}


def older_cache(cache_root: Path, cache_path: Path, same_model: SameModel, settings: CacheSettings,
                listing_key: list, look_again: bool = True) -> OlderCache | None:
    """The cache beside `cache_path` whose video latents serve the most of these videos, or None: a complete one,
    or the finished chunks of a build that was stopped (Ctrl-C, then a caption edited) or is running now.

    Caches built before the listing was recorded (listing.json) cannot be matched to files and are not used, nor
    fps-sampled ones from before the variable-frame-rate note (their videos sampled by count cannot be told)."""
    ours = json.loads(settings_record(same_model.key, settings))
    wanted = {tuple(key[:3]) for key in listing_key}
    wanted_by_size = {tuple(key[:2]) for key in listing_key}  # a copy's: its digest is checked when used
    best, most = None, (0, 0)
    for settings_file in sorted(cache_root.glob(f"{same_model.key['family']}-*/settings.json")):
        folder = settings_file.parent
        if folder == cache_path:
            continue
        theirs = json.loads(settings_file.read_text())
        if any(theirs["settings"].get(name) != ours["settings"][name] for name in VIDEO_SETTINGS) or \
                not same_model(theirs):
            continue
        if (holdings := read_holdings(folder)) is None:
            continue
        if settings.sampling.fps and "variable_frame_rate" not in holdings.note_items:
            continue
        unchanged = sum(tuple(key[:3]) in wanted for key in holdings.rows)
        copies = sum(tuple(key[:3]) not in wanted and key[0] in holdings.digests and tuple(key[:2]) in wanted_by_size
                     for key in holdings.rows)
        if unchanged + copies > sum(most):
            best, most = holdings, (unchanged, copies)
    if best is None:
        return None
    try:
        return OlderCache(best, fps_sampled=bool(settings.sampling.fps), num_unchanged=most[0], num_copies=most[1])
    except FileNotFoundError:  # a build that finished meanwhile removed its chunks: look again, it is complete now
        if best.complete or not look_again:
            return None
        return older_cache(cache_root, cache_path, same_model, settings, listing_key, look_again=False)


def settings_record(model_key: dict, settings: CacheSettings, encoder_digests: dict | None = None) -> str:
    """settings.json: what a cache was built with, for people and for `why_not_reused`; and the encoder files'
    whole-content digests, by which a copy of the model that did not keep the modification times finds it."""
    record = {"model": model_key, "settings": settings.record()}
    if encoder_digests is not None:
        record["encoder_digests"] = encoder_digests
    return json.dumps(record, indent=1, default=str)


def _flat(settings: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _models_compared(theirs: dict, ours: dict) -> tuple[dict, dict]:
    """A recorded model key and ours in one shape. Caches recorded before the key left out the model folder's
    path (model_dir) and the scheduler, and before it held each file's digest, are of the same model where the
    rest agrees: their files compare by name, size and modification time."""
    theirs = {name: value for name, value in theirs.items() if name not in ("model_dir", "scheduler")}
    ours = {name: [list(entry[:len(theirs[name][0])]) for entry in value]
            if isinstance(value, list) and theirs.get(name) and isinstance(theirs[name], list) else value
            for name, value in ours.items()}
    return theirs, ours


# How the settings a cache records are set, for the message that tells why a cache was not reused.
SETTING_FLAGS = {
    "settings.encode_dtype": "the encoders' dtype (--mixed_precision; precompute's --dtype)",
    "settings.cache_dtype": "--cache_dtype", "settings.vae_tiling": "--vae_tiling",
    "settings.caption_column": "--caption_column", "settings.video_column": "--video_column",
    "settings.id_token": "--id_token", "settings.sampling.num_frames": "--max_num_frames",
    "settings.sampling.height": "--height", "settings.sampling.width": "--width", "settings.sampling.fps": "--fps",
    "settings.sampling.skip_frames_start": "--skip_frames_start",
    "settings.sampling.skip_frames_end": "--skip_frames_end", "settings.sampling.crop": "--crop",
    "settings.sampling.short_video": "--short_video", "settings.sampling.spread": "--spread_frames",
}


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.1f} MiB"


def _setting_difference(key: str, theirs, ours) -> str:
    """One differing setting, with both values and the flag that sets it."""
    return f"{SETTING_FLAGS.get(key, key)}: {_value(theirs)} there, {_value(ours)} here"


def _model_files_differences(folders: list[str], theirs: dict, ours: dict) -> list[str]:
    """The model's folders whose files differ, grouped by how: the same contents with other modification times
    (a copy that did not keep them), other contents (rewritten weights), other files."""
    groups: dict[str, list[str]] = {}
    for key in folders:
        mine, recorded = sorted(ours.get(key) or []), sorted(theirs.get(key) or [])
        if [entry[:2] for entry in mine] != [entry[:2] for entry in recorded]:
            how = "other files (names or sizes)"
        elif recorded and len(recorded[0]) > 3 and [entry[3:] for entry in mine] == [entry[3:] for entry in recorded]:
            how = "the same contents, other modification times: copied without keeping them? cp -a and rsync -a do"
        elif recorded and len(recorded[0]) > 3:
            how = "other contents: other or rewritten weights"
        else:
            how = "the same names and sizes, other modification times: rewritten, or copied without keeping them"
        groups.setdefault(how, []).append(key.removeprefix("model.") + "/")
    return [f"the model's {', '.join(names)} files ({how})" for how, names in groups.items()]


def _value(value) -> str:
    return "unset" if value is None else str(value)


EARLIER_RELEASE = ("the same listing, by an earlier release whose cache key differed (its video latents are taken, "
                   "not encoded again)")


def _listing_difference(folder: Path, listing_key: list, id_tokens: tuple[str | None, str | None] = (None, None),
                        settings_differ: bool = False) -> tuple[str, tuple[int, int]]:
    """How a cache was built from another listing of the dataset (which videos were added, removed or changed,
    whether only their modification times differ: a copy that did not keep them), or "" for the same listing;
    and how close it is: how many of this listing's rows it holds as they are, how many of its video paths.
    `id_tokens` (theirs, ours) are left out of the captions compared (a changed --id_token is told as a setting),
    and where `settings_differ`, the videos it skipped are not a difference of the listing (its settings, such
    as more frames than a video has, skipped them)."""
    listing_file = folder / "listing.json"
    if not listing_file.exists():  # built before listing.json was kept
        return "another listing of the dataset (videos or captions changed)", (0, 0)
    theirs = {row[0]: row for row in json.loads(listing_file.read_text())["rows"]}
    ours = {row[0]: row for row in listing_key}
    common = ours.keys() & theirs.keys()
    closeness = sum(ours[path] == theirs[path] for path in common), len(common)
    if not common:
        return "another dataset (none of its videos is in this one: a --cache_dir shared by several datasets?)", (0, 0)
    skipped_there = {item["video"] for item in json.loads((folder / "manifest.json").read_text())["skipped"]
                     if "video" in item} & (ours.keys() - theirs.keys())

    def caption(row: list, id_token: str | None) -> str:
        return row[3].removeprefix(f"{id_token} ") if id_token else row[3]

    resized = sum(ours[path][1] != theirs[path][1] for path in common)
    recaptioned = sum(caption(ours[path], id_tokens[1]) != caption(theirs[path], id_tokens[0]) for path in common)
    retimed = sum(ours[path][1] == theirs[path][1] and ours[path][2] != theirs[path][2] for path in common)
    parts = [f"{count} {what}" for count, what in (
        (retimed, "video(s) with other modification times (a copy that did not keep them? cp -a, rsync -a and mv "
                  "do; their latents are taken where their content digest matches)"),
        (resized, "video(s) changed"), (recaptioned, "caption(s) changed"),
        (0 if settings_differ else len(skipped_there), "video(s) it skipped as unusable"),
        (len(ours.keys() - theirs.keys() - skipped_there), "video(s) added"),
        (len(theirs.keys() - ours.keys()), "video(s) removed")) if count]
    if not parts:
        return "", closeness
    if resized == recaptioned == len(common):
        return ("another dataset with the same file names, or every video and caption of this one changed: "
                + ", ".join(parts)), closeness
    return "another listing of the dataset: " + ", ".join(parts), closeness


def why_not_reused(cache_root: Path, cache_path: Path, same_model: SameModel, settings: CacheSettings,
                   listing_key: list, taken: OlderCache | None) -> str | None:
    """When `cache_root` holds other caches of this family (built by a `precompute` with other flags than the
    training's, say, or before the dataset changed), the lines of a warning: what the folder holds, how the nearest
    complete cache differs (so a re-encode is not a surprise), which one gives this run video latents (`taken`),
    and which folders no run will read again, with their size."""
    ours = json.loads(settings_record(same_model.key, settings))
    nearest, complete, incomplete = None, [], []
    for folder in sorted(path for path in cache_root.glob(f"{same_model.key['family']}-*") if path.is_dir()):
        if folder == cache_path:
            continue
        if not (folder / "manifest.json").exists() or not (folder / "settings.json").exists():
            incomplete.append(folder)
            continue
        theirs = json.loads((folder / "settings.json").read_text())
        # A copy of these encoder files (their digests recorded there) is the same model, whatever their times.
        their_model, our_model = _models_compared(theirs["model"], ours["model"]) if not same_model(theirs) else \
            (ours["model"], ours["model"])
        flat_theirs = _flat({"model": their_model, "settings": theirs["settings"]})
        flat_ours = _flat({"model": our_model, "settings": ours["settings"]})
        differences = sorted(key for key in flat_ours.keys() | flat_theirs.keys()
                             if flat_ours.get(key) != flat_theirs.get(key))
        listing, (same_rows, same_paths) = _listing_difference(
            folder, listing_key, (theirs["settings"].get("id_token"), ours["settings"]["id_token"]),
            settings_differ=any(key.startswith("settings.") for key in differences))
        complete.append(folder)
        # The nearest: the fewest settings apart, then the most rows of this listing held as they are, then the
        # most of its video paths.
        apart = (len(differences), -same_rows, -same_paths)
        if nearest is None or apart < nearest[-1]:
            nearest = differences, folder, flat_theirs, flat_ours, listing, apart
    if not complete and not incomplete:
        return None
    held = [f"{len(complete)} complete cache(s) of other settings or data"] if complete else []
    if incomplete:
        held.append(f"{len(incomplete)} incomplete {'one' if complete else 'cache'}(s) (a build that was stopped, or "
                    "is running now; a run of its settings and listing continues it)")
    lines = [f"{cache_root} holds {' and '.join(held)}"]
    if nearest is not None:
        differences, folder, flat_theirs, flat_ours, listing, _ = nearest
        if not differences:
            lines.append(f"its cache {folder.name} has these settings but was built from {listing or EARLIER_RELEASE}")
        else:
            model_folders = [key for key in differences if isinstance(flat_ours.get(key, flat_theirs.get(key)), list)]
            settings_apart = "; ".join([_setting_difference(key, flat_theirs.get(key), flat_ours.get(key))
                                        for key in differences if key not in model_folders]
                                       + _model_files_differences(model_folders, flat_theirs, flat_ours))
            lines.append(f"its nearest cache {folder.name} differs in {settings_apart}"
                         + (f", and was built from {listing}" if listing else ""))
    lines.append(_what_is_taken(taken, len(listing_key)))
    sizes = {folder: _folder_bytes(folder) for folder in complete + incomplete}
    lines.append(f"once built, this cache is the one read: delete those no run needs ({len(sizes)} folder(s), "
                 f"{_size(sum(sizes.values()))} in all): "
                 + first_few([f"{folder} ({_size(sizes[folder])}{', incomplete' if folder in incomplete else ''})"
                              for folder in sorted(sizes, key=sizes.get, reverse=True)]))
    return "\n  ".join(lines)


def _what_is_taken(taken: OlderCache | None, num_videos: int) -> str:
    if taken is None:
        return ("none holds video latents of these videos with this model's encoder files and these video settings: "
                "every video goes through the VAE")
    copied = "copied without their modification times, where their content matches"
    if taken.num_unchanged:
        held = f"{taken.num_unchanged} of these {num_videos} videos (unchanged since)" + (
            f" and of up to {taken.num_copies} more, {copied}" if taken.num_copies else "")
    else:
        held = f"up to {taken.num_copies} of these {num_videos} videos, {copied}"
    stopped = "" if taken.complete else " (incomplete: the videos it encoded before it stopped)"
    rest = "" if taken.num_unchanged == num_videos else "; the others go through the VAE"
    return f"this run takes from {taken.path.name}{stopped} the video latents of {held}{rest}"
