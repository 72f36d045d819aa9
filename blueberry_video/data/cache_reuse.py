"""Older caches beside a new one: the video latents a new cache takes from one of the same model and video
settings (so a caption edit or an added video sends only what changed through the VAE), and what the user is
told about the others (how the nearest differs, which folders the run no longer needs, and their size)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np

from blueberry_video.data.formats import first_few
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


class OlderCache:
    """A complete older cache of the same model and video settings: the rows of the video files that did not
    change since (same relative path, size and modification time) hold the latents the VAE would compute again."""

    def __init__(self, path: Path, listing: dict, manifest: dict, fps_sampled: bool = False):
        self.path = path
        table = datasets.load_from_disk(str(path / "dataset"))
        self.table = table.with_format("numpy", columns=[c for c in table.column_names if c not in NON_TENSOR_COLUMNS])
        self.video_columns = listing["video_columns"]
        self.rows = {tuple(key[:3]): (row, key[3]) for row, key in enumerate(listing["rows"])}
        self.notes = manifest["note_items"]
        self.sampled_by_count = _sampled_by_count(manifest, listing, fps_sampled)

    def find(self, key: list) -> OlderRow | None:
        """The row of the video `key` (its listing key) names, if this cache holds that file unchanged."""
        if (found := self.rows.get(tuple(key[:3]))) is None or key[0] in self.sampled_by_count:
            return None
        row, caption = found
        tensors = self.table[row]
        notes = {kind: [item for item in items if item["video"] == key[0]] for kind, items in self.notes.items()}
        return OlderRow(video={name: tensors[name] for name in self.video_columns},
                         text={name: value for name, value in tensors.items() if name not in self.video_columns},
                         caption=caption, notes=notes)


def _sampled_by_count(manifest: dict, listing: dict, fps_sampled: bool) -> set[str]:
    """The videos whose latents format 1 took by count at the header's rate, where frames are now taken by
    timestamp: those it noted as of variable frame rate, and (their rate unknown to the header) those outside
    MP4/MOV files."""
    if manifest.get("format_version", 1) >= 2 or not fps_sampled:
        return set()
    other_containers = {key[0] for key in listing["rows"] if Path(key[0]).suffix.lower() not in MP4_SUFFIXES}
    return other_containers | {item["video"] for item in manifest["note_items"].get("variable_frame_rate", [])}


def older_cache(cache_root: Path, cache_path: Path, family, settings: CacheSettings,
                 listing_key: list) -> OlderCache | None:
    """The complete cache beside `cache_path` whose video latents serve the most of these videos, or None.

    Caches built before the listing was recorded (listing.json) cannot be matched to files and are not used, nor
    fps-sampled ones from before the variable-frame-rate note (their videos sampled by count cannot be told)."""
    ours = json.loads(settings_record(family, settings))
    wanted = {tuple(key[:3]) for key in listing_key}
    best, most = None, 0
    for listing_file in sorted(cache_root.glob(f"{family.name}-*/listing.json")):
        folder = listing_file.parent
        if folder == cache_path or not (folder / "manifest.json").exists():
            continue
        theirs = json.loads((folder / "settings.json").read_text())
        if theirs["model"] != ours["model"] or any(theirs["settings"].get(name) != ours["settings"][name]
                                                   for name in VIDEO_SETTINGS):
            continue
        manifest = json.loads((folder / "manifest.json").read_text())
        if settings.sampling.fps and "variable_frame_rate" not in manifest["note_items"]:
            continue
        listing = json.loads(listing_file.read_text())
        matches = sum(tuple(key[:3]) in wanted for key in listing["rows"])
        if matches > most:
            best, most = (folder, listing, manifest), matches
    return OlderCache(*best, fps_sampled=bool(settings.sampling.fps)) if best else None


def settings_record(family, settings: CacheSettings) -> str:
    """settings.json: what a cache was built with, for people and for `why_not_reused`."""
    return json.dumps({"model": family.cache_key(), "settings": settings.record()}, indent=1, default=str)


def _flat(settings: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _folder_size(folder: Path) -> str:
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def why_not_reused(cache_root: Path, family, settings: CacheSettings) -> str | None:
    """When `cache_root` holds complete caches of this family built with other settings (a `precompute` run
    with other flags than the training's, say): how the nearest differs, so a silent re-encode is not a surprise,
    and which folders this run will not read, with their size."""
    ours = _flat(json.loads(settings_record(family, settings)))
    differences, folders = [], []
    for other in sorted(cache_root.glob(f"{family.name}-*/settings.json")):
        if not (other.parent / "manifest.json").exists():
            continue
        theirs = _flat(json.loads(other.read_text()))
        differences.append(sorted(key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key)))
        folders.append(f"{other.parent} ({_folder_size(other.parent)})")
    if not differences:
        return None
    nearest = min(differences, key=len)
    if not nearest:
        why = (f"{cache_root} holds a cache with these settings for another listing of the dataset (videos or "
               "captions changed)")
    else:
        why = (f"{cache_root} holds {len(differences)} cache(s) for other settings; the nearest differs in "
               f"{', '.join(nearest)} (model.* is the VAE/text encoder config, settings.* the training flags "
               "mixed_precision, fps, cache_dtype, ...)")
    return (f"{why}. This run does not read those folders once its own cache is built (any video latents it "
            f"reuses from them are copied), but runs with their settings do: {first_few(folders)}")
