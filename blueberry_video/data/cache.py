"""The latent cache: each video is encoded once by the VAE and each caption once by the text encoder(s).

Results are stored with `datasets` (Arrow on disk) under a folder named by a fingerprint of everything that
changes them: the model's VAE/text-encoder configs, frame sampling, dtypes and the dataset listing. Change
any of them and a new cache is built; change nothing and the videos are not touched. A new cache takes the
video latents of an older one of the same model and video settings for the videos whose files did not change, so
a caption edit or an added video sends only what changed through the VAE. Work is written in chunks, each
renamed into place when complete, so an interrupted precompute resumes where it stopped (and a run whose captions
changed meanwhile takes the finished chunks' video latents as an older cache's), and each process of a
multi-process launch encodes its own share of the chunks. Two jobs that build the same cache at once (a sweep
started together) take turns: the second waits for the first and reuses its cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from blueberry_video.data.cache_lock import building, move_into_place, unique_tmp, write_file
from blueberry_video.data.cache_reuse import (
    OlderCache,
    SameModel,
    older_cache,
    settings_record,
    why_not_reused,
)
from blueberry_video.data.decode import (
    CutShort,
    FrameSampling,
    VideoDecodeError,
    decode_clip,
    probe_video,
    repeats_frames,
)
from blueberry_video.data.formats import (
    DatasetFormatError,
    DatasetListing,
    first_few,
    lexical_absolute,
    load_dataset_entries,
)
from blueberry_video.data.latent_dataset import NON_TENSOR_COLUMNS
from blueberry_video.errors import ConfigError
from blueberry_video.file_digests import content_digest
from blueberry_video.stop_signals import stop_with_message

logger = logging.getLogger(__name__)

# 2: sampled at an fps, a video of variable frame rate, or in a container other than MP4/MOV, takes its frames by
# timestamp (version 1: by count at the header's rate).
CACHE_FORMAT_VERSION = 2
CHUNK_SIZE = 8
STRICT_LISTS_AT_MOST = 50  # unusable videos a strict_data refusal names; the manifest holds them all
# The kinds of the report's notes: those on videos are kept per video, so a cache that takes a video's latents from
# an older one takes its notes too.
VIDEO_NOTE_KINDS = ("low_frame_rate", "variable_frame_rate", "cut_short", "filled", "decode_errors")
NOTE_KINDS = (*VIDEO_NOTE_KINDS, "long_captions")


@dataclass(frozen=True)
class CacheSettings:
    """Everything besides the model and the data that changes what the cache holds."""

    sampling: FrameSampling
    encode_dtype: str = "float32"
    cache_dtype: str = "float32"
    caption_column: str | None = None
    video_column: str | None = None
    id_token: str | None = None
    vae_tiling: bool = False

    @classmethod
    def from_config(cls, config, encode_dtype: torch.dtype) -> "CacheSettings":
        """The settings a training config builds its cache with (training and `precompute` both ask here)."""
        sampling = FrameSampling(
            num_frames=config.max_num_frames, height=config.height, width=config.width, fps=config.fps,
            skip_frames_start=config.skip_frames_start, skip_frames_end=config.skip_frames_end,
            crop=config.crop, short_video=config.short_video, spread=config.spread_frames,
        )
        return cls(sampling=sampling, encode_dtype=str(encode_dtype).removeprefix("torch."),
                   cache_dtype=config.cache_dtype, caption_column=config.caption_column,
                   video_column=config.video_column, id_token=config.id_token, vae_tiling=config.vae_tiling)

    def record(self) -> dict:
        """The settings as the cache's fingerprint and settings.json hold them. A setting added after caches were
        first built is left out while it has its default, so the caches built before it keep their fingerprint."""
        fields = asdict(self)
        if not self.sampling.spread:
            del fields["sampling"]["spread"]
        return fields


@dataclass
class CacheReport:
    path: Path
    num_cached: int
    skipped: list[dict] = field(default_factory=list)
    reused: bool = False
    # What was cached but may not be what the user meant: repeated frames, cut captions, unlisted videos.
    notes: list[str] = field(default_factory=list)
    # Built in this call: how many videos' latents were taken from older caches (which) instead of the VAE.
    num_reused_videos: int = 0
    reused_videos_from: list[str] = field(default_factory=list)
    # Cached though damaged (cut short, or damage ffmpeg concealed as it decoded): what strict_data refuses too.
    damaged: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"latent cache {self.path}: {self.num_cached} cached, {len(self.skipped)} skipped"
                 + (" (reused)" if self.reused else "")]
        if self.num_reused_videos:
            lines.append(f"  reused the video latents of {self.num_reused_videos} of {self.num_cached} videos from "
                         + ", ".join(self.reused_videos_from))
        lines += [f"  skipped {item['source']}: {item['reason']}" for item in self.skipped]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


class EmptyCacheError(DatasetFormatError):
    """No item of the dataset could be encoded."""


@dataclass
class _FoundNow:
    """What every run finds anew in the dataset folder, beside what its cache recorded: where the folder is now, the
    rows its metadata leaves out, the notes on the folder (unlisted videos)."""

    root: Path
    skipped: list[dict]
    notes: list[str]


def _listing_key(root: Path, entries) -> list:
    key = []
    for entry in entries:
        stat = entry.video_path.stat()
        key.append([str(entry.video_path.relative_to(root)), stat.st_size, stat.st_mtime_ns, entry.caption])
    return key


def cache_fingerprint(model_key: dict, listing_key: list, settings: CacheSettings) -> str:
    payload = {
        "version": CACHE_FORMAT_VERSION,
        "model": model_key,
        "settings": settings.record(),
        "entries": listing_key,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@contextmanager
def _quiet_datasets():
    """No "Saving the dataset" bar per chunk: the precompute's own bar already shows progress."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _features(example: dict[str, np.ndarray]) -> datasets.Features:
    spec = {"index": datasets.Value("int64"), "video": datasets.Value("string"), "caption": datasets.Value("string")}
    array_types = {2: datasets.Array2D, 3: datasets.Array3D, 4: datasets.Array4D, 5: datasets.Array5D}
    for name, value in example.items():
        if value.ndim == 1:
            spec[name] = datasets.Sequence(datasets.Value(str(value.dtype)), length=value.shape[0])
        else:
            spec[name] = array_types[value.ndim](shape=value.shape, dtype=str(value.dtype))
    return datasets.Features(spec)


def write_latent_table(path: Path, records: list[dict]) -> None:
    """Rows of {index, video, caption, <tensor name>: np.ndarray} saved as the Arrow table the cache holds
    (benchmarks write stand-in rows with it to time the real loader)."""
    tensors = {name: value for name, value in records[0].items() if name not in NON_TENSOR_COLUMNS}
    with _quiet_datasets():
        datasets.Dataset.from_list(records, features=_features(tensors)).save_to_disk(str(path))


def _to_numpy(tensor: torch.Tensor, cache_dtype: str) -> np.ndarray:
    if tensor.is_floating_point():
        return tensor.detach().to("cpu", getattr(torch, cache_dtype)).numpy()
    return tensor.detach().to("cpu", torch.int64).numpy()


@dataclass
class _EncodedChunk:
    rows: list[tuple]  # (entry, {tensor name: array}) in item order
    skipped: list[dict]
    notes: dict[str, list[dict]]  # what `_note_lines` turns into the report's notes
    video_columns: list[str]
    num_encoded: int = 0  # videos the VAE encoded
    num_reused: int = 0  # videos whose latents came from `reused_from`
    reused_from: str | None = None
    # Each kept video's content digest, by its path in the dataset: a later cache takes its latents for a copy of
    # the file whose modification time differs.
    digests: dict[str, str] = field(default_factory=dict)
    # The listing keys of the rows, in order: a build stopped part way gives its finished chunks' latents to a run
    # whose listing changed meanwhile (a caption edited after Ctrl-C) by them.
    keys: list[list] = field(default_factory=list)


def _encode_chunk(family, encoders, entries, keys: list, root: Path, settings: CacheSettings,
                  older: OlderCache | None = None) -> _EncodedChunk:
    """Encode a chunk's videos and captions. `encoders()` loads the encoders on first use: a chunk that `older`
    holds entirely (e.g. a video removed from the listing) loads none. Of a video `older` holds, the latents are
    taken as they are, and so are the text embeddings where the caption is the same; an edited caption alone is
    encoded again (text encoding costs little beside the VAE)."""
    skipped, decoded, kept, kept_keys = [], [], [], []
    notes = {kind: [] for kind in NOTE_KINDS}
    videos: dict[int, dict] = {}
    text: dict[int, dict] = {}
    digests: dict[str, str] = {}
    for entry, key in zip(entries, keys, strict=True):
        if older and (old := older.find(key, entry.video_path)):
            kept.append(entry)
            kept_keys.append(key)
            videos[entry.index] = old.video
            if digest := old.digest or content_digest(entry.video_path):
                digests[key[0]] = digest
            for kind in VIDEO_NOTE_KINDS:
                notes[kind] += old.notes.get(kind, [])  # a kind added since is absent in older caches
            if old.caption == entry.caption:
                text[entry.index] = old.text
                notes["long_captions"] += old.notes["long_captions"]
            continue
        try:
            info = probe_video(entry.video_path)
            clip = decode_clip(entry.video_path, settings.sampling, info=info)
            decoded.append((entry, clip.frames))
            kept.append(entry)
            kept_keys.append(key)
            if digest := content_digest(entry.video_path):
                digests[key[0]] = digest
        except VideoDecodeError as error:
            skipped.append({"source": str(entry.video_path), "video": _relative(entry, root), "reason": error.reason})
            continue
        if clip.cut_short:
            notes["cut_short"].append({"video": _relative(entry, root), "reached_s": clip.cut_short.reached_s,
                                       "header_s": clip.cut_short.header_s})
        if clip.decode_errors:
            notes["decode_errors"].append({"video": _relative(entry, root), "errors": len(clip.decode_errors),
                                           "first": clip.decode_errors[0]})
        if clip.frames_given is not None and not clip.cut_short:  # a cut-short one's note says it was filled
            notes["filled"].append({"video": _relative(entry, root), "frames": clip.frames_given})
        if repeats_frames(info, settings.sampling):
            notes["low_frame_rate"].append({"video": _relative(entry, root), "fps": info.fps})
        if info.rate_varies and settings.sampling.fps:
            notes["variable_frame_rate"].append({"video": _relative(entry, root), "fps": info.fps})
    num_reused = len(videos)
    if captioned := [entry for entry in kept if entry.index not in text]:
        notes["long_captions"] += _long_captions(family, encoders(), captioned, root)
        embeddings = family.encode_prompts(encoders(), [entry.caption for entry in captioned])
        for i, entry in enumerate(captioned):
            text[entry.index] = {name: _to_numpy(value[i], settings.cache_dtype) for name, value in embeddings.items()}
    for entry, video in decoded:
        latents = family.encode_videos(encoders(), video.unsqueeze(0))
        videos[entry.index] = {name: _to_numpy(value[0], settings.cache_dtype) for name, value in latents.items()}
    return _EncodedChunk(rows=[(entry, {**videos[entry.index], **text[entry.index]}) for entry in kept],
                         skipped=skipped, notes=notes,
                         video_columns=sorted(next(iter(videos.values()), {})),  # the names encode_videos gives
                         num_encoded=len(decoded), num_reused=num_reused,
                         reused_from=str(older.path) if older and num_reused else None, digests=digests,
                         keys=kept_keys)


def _relative(entry, root: Path) -> str:
    return str(entry.video_path.relative_to(root))


def _long_captions(family, encoders, entries, root: Path) -> list[dict]:
    """The captions a text encoder cuts to its token limit (the pipeline only logs a warning per batch)."""
    found = []
    for lengths in family.prompt_lengths(encoders, [entry.caption for entry in entries]):
        found += [{"video": _relative(entry, root), "encoder": lengths.encoder, "limit": lengths.limit,
                   "tokens": tokens}
                  for entry, tokens in zip(entries, lengths.counts, strict=True) if tokens > lengths.limit]
    return found


def _note_lines(notes: dict, sampling: FrameSampling) -> list[str]:
    """The report's lines for the chunks' notes, merged: one line per kind (and per text encoder)."""
    fps = sampling.fps
    lines = []
    if slow := notes["low_frame_rate"]:
        lines.append(f"{len(slow)} video(s) have a frame rate below fps={fps:g}: their frames are repeated ("
                     + first_few([f"{item['video']} {item['fps']:g} fps" for item in slow]) + ")")
    if uneven := notes.get("variable_frame_rate"):
        lines.append(f"{len(uneven)} video(s) have a variable frame rate: fps={fps:g} took their frames by timestamp, "
                     f"the one nearest each 1/{fps:g} s (" + first_few([f"{item['video']} {item['fps']:g} fps on "
                                                                        "average" for item in uneven]) + ")")
    if filled := notes.get("filled"):
        how = "repeating them" if sampling.short_video == "loop" else "repeating the last"
        lines.append(f"{len(filled)} video(s) gave fewer than the {sampling.num_frames} frames a clip takes, which "
                     f"short_video={sampling.short_video} filled by {how} (" + first_few(
                         [f"{item['video']} {item['frames']} frames" for item in filled]) + ")")
    if damaged := notes.get("decode_errors"):
        lines.append(f"{len(damaged)} video(s) hold damaged data that ffmpeg concealed as it decoded them up to "
                     "their clips' last frames: the clips may show garbled frames (unless all errors lay in frames "
                     "skipped before them); re-encode or re-download them (" + first_few(
                         [f"{item['video']}: {item['errors']} error(s), {item['first']}" for item in damaged]) + ")")
    if cut := notes.get("cut_short"):
        lines.append(f"{len(cut)} video(s) look truncated or damaged: their streams end before the duration their "
                     f"header gives, and their clips are {CutShort.taken(sampling)} the part that decodes; re-encode "
                     "or re-download them (" + first_few([f"{item['video']} {item['reached_s']:.2f} of "
                                                          f"{item['header_s']:.2f} s" for item in cut]) + ")")
    by_encoder: dict[tuple[str, int], list[dict]] = {}
    for item in notes["long_captions"]:
        by_encoder.setdefault((item["encoder"], item["limit"]), []).append(item)
    for (encoder, limit), items in by_encoder.items():
        lines.append(f"{len(items)} caption(s) are longer than the {encoder}'s {limit} tokens and were cut: "
                     + first_few([f"{item['video']} ({item['tokens']} tokens)" for item in items]))
    return lines


def _listing_notes(root: Path, listing: DatasetListing) -> list[str]:
    if not listing.unlisted_videos:
        return []
    names = [str(path.relative_to(root)) for path in listing.unlisted_videos]
    return [f"{len(names)} video file(s) under the dataset folder are not listed in {listing.metadata}: "
            f"{first_few(names)}; add them to it to train on them"]


def _chunk_dir(cache_path: Path, start: int, stop: int) -> Path:
    # Named by the items it holds, not its number: a resume with another chunk size then cannot take a
    # finished chunk for one that holds different items.
    return cache_path / "chunks" / f"{start:06d}-{stop:06d}"


def _write_chunk(chunk_dir: Path, chunk: _EncodedChunk, root: Path, process_index: int) -> None:
    tmp = unique_tmp(chunk_dir)
    tmp.mkdir(parents=True)
    try:
        if chunk.rows:
            write_latent_table(tmp / "data", [
                {"index": entry.index, "video": _relative(entry, root), "caption": entry.caption, **tensors}
                for entry, tensors in chunk.rows
            ])
        (tmp / "skipped.json").write_text(json.dumps(chunk.skipped, indent=1))
        (tmp / "notes.json").write_text(json.dumps(chunk.notes, indent=1))
        (tmp / "process.json").write_text(json.dumps({
            "process_index": process_index, "num_encoded": chunk.num_encoded, "num_reused": chunk.num_reused,
            "reused_from": chunk.reused_from, "video_columns": chunk.video_columns, "digests": chunk.digests,
            "keys": chunk.keys, "format_version": CACHE_FORMAT_VERSION}))
    except BaseException:  # Ctrl-C or a full disk mid-write: a stopped build leaves no half-written chunk behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    move_into_place(tmp, chunk_dir)


def _merge(cache_path: Path, chunk_dirs: list[Path], listing_key: dict[int, list], found: _FoundNow,
           sampling: FrameSampling) -> CacheReport:
    """Join the chunks into the cache; `listing_key` maps item index to its listing key, kept per row in
    listing.json so that a later cache can tell which videos it shares."""
    parts, skipped = [], list(found.skipped)
    notes = {kind: [] for kind in NOTE_KINDS}
    encoded_by_process: dict[str, int] = {}
    num_reused, reused_from, video_columns, digests = 0, [], [], {}
    for chunk_dir in chunk_dirs:
        skipped += json.loads((chunk_dir / "skipped.json").read_text())
        for kind, items in json.loads((chunk_dir / "notes.json").read_text()).items():
            notes[kind] += items
        process = json.loads((chunk_dir / "process.json").read_text())
        key = str(process["process_index"])
        encoded_by_process[key] = encoded_by_process.get(key, 0) + process["num_encoded"]
        num_reused += process["num_reused"]
        if process["reused_from"] and process["reused_from"] not in reused_from:
            reused_from.append(process["reused_from"])
        video_columns = video_columns or process["video_columns"]
        digests.update(process.get("digests", {}))  # absent from chunks an earlier release wrote
        if (chunk_dir / "data").exists():
            parts.append(datasets.load_from_disk(str(chunk_dir / "data")))
    if not parts:
        # Grouped: videos of one length asked for too many frames share one reason, told once.
        by_reason: dict[str, list[str]] = {}
        for item in skipped:
            by_reason.setdefault(item["reason"], []).append(item["source"])
        reasons = "; ".join(f"{first_few(sources)}: {reason}" for reason, sources in list(by_reason.items())[:5])
        raise EmptyCacheError(f"no video could be encoded into {cache_path} ({reasons})")
    # Chunks hold consecutive items and are listed in item order: concatenating keeps the index order.
    merged = datasets.concatenate_datasets(parts)
    tmp = unique_tmp(cache_path / "dataset")
    with _quiet_datasets():
        merged.save_to_disk(str(tmp))
    move_into_place(tmp, cache_path / "dataset")
    encoding_notes = _note_lines(notes, sampling)
    report = CacheReport(path=cache_path, num_cached=len(merged), skipped=skipped,
                         notes=found.notes + encoding_notes, num_reused_videos=num_reused,
                         reused_videos_from=reused_from, damaged=_damaged(found.root, notes))
    write_file(cache_path / "listing.json", json.dumps({
        "video_columns": video_columns, "rows": [listing_key[index] for index in merged["index"]],
        "digests": digests}))
    # Which process encoded how many videos: shows that a multi-process precompute shared the work. The notes
    # on the folder (unlisted videos) are not kept: they are looked up again on every use. The notes' items, per
    # video, go to the caches that take this one's latents.
    manifest = {"num_cached": report.num_cached, "skipped": skipped, "skipped_in_listing": len(found.skipped),
                "notes": encoding_notes, "note_items": notes,
                "format_version": CACHE_FORMAT_VERSION, "encoded_by_process": encoded_by_process,
                "reused_videos": {"count": num_reused, "from": reused_from}, "complete": True}
    write_file(cache_path / "manifest.json", json.dumps(manifest, indent=1))
    _remove_work_files(cache_path)
    return report


def _remove_work_files(cache_path: Path) -> None:
    """The chunks, and what killed writers left half-written. A job still writing one (another job building the
    same cache where the filesystem has no locks) finds the manifest written and takes this cache."""
    shutil.rmtree(cache_path / "chunks", ignore_errors=True)
    for leftover in cache_path.glob("*.tmp*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _read_report(cache_path: Path, found: _FoundNow, reused: bool) -> CacheReport:
    manifest = json.loads((cache_path / "manifest.json").read_text())
    # Skips are named where the dataset is now: it may have moved since the cache was built. The metadata's are
    # found again; a video's is kept by its path in the dataset (caches built before that was kept name it where
    # it was, and hold the metadata's too). Caches built before notes were recorded have none.
    skipped = manifest["skipped"]
    if "skipped_in_listing" in manifest:
        skipped = found.skipped + [{**item, "source": str(found.root / item["video"])}
                                   for item in skipped[manifest["skipped_in_listing"]:]]
    return CacheReport(cache_path, manifest["num_cached"], skipped, reused=reused,
                       notes=found.notes + manifest.get("notes", []),
                       damaged=_damaged(found.root, manifest.get("note_items", {})))


def _damaged(root: Path, note_items: dict) -> list[dict]:
    """The cut-short videos of a cache's notes and those ffmpeg met damaged data in, named where the dataset is
    now, with why."""
    return [{"source": str(root / item["video"]),
             "reason": f"truncated or damaged: its stream ends at {item['reached_s']:.2f} of the {item['header_s']:.2f} "
                       "s its header gives (cached from the part that decodes)"}
            for item in note_items.get("cut_short", [])] + [
        {"source": str(root / item["video"]),
         "reason": f"damaged: ffmpeg concealed {item['errors']} decoding error(s) on the way to its clip's last frame "
                   f"({item['first']})"}
        for item in note_items.get("decode_errors", [])]


def _reuse(cache_path: Path, found: _FoundNow, strict: bool) -> CacheReport:
    report = _read_report(cache_path, found, reused=True)
    if strict:
        _refuse_what_was_skipped(report)
    return report


def _refuse_what_was_skipped(report: CacheReport) -> None:
    """strict_data: the videos the cache skipped, all of them in one message. The cache is built whole first, so
    a run after the fixes encodes only the videos that changed."""
    if unusable := report.skipped + report.damaged:
        shown = STRICT_LISTS_AT_MOST
        more = f"\n  ... and {len(unusable) - shown} more" if len(unusable) > shown else ""
        held = (f"skipped {len(report.skipped)}" if report.skipped else "") + (" and " if report.skipped and
                                                                              report.damaged else "") + \
            (f"holds {len(report.damaged)} damaged or cut short" if report.damaged else "")
        raise DatasetFormatError(
            f"strict_data is set and {len(unusable)} video(s) are unusable (the latent cache {report.path} "
            f"{held}; all are listed in its manifest.json):\n"
            + "\n".join(f"  {item['source']}: {item['reason']}" for item in unusable[:shown]) + more
            + "\nFix or remove them (the next run encodes only what changed), or drop strict_data to train without "
            "the skipped ones (and with the damaged ones as they decode)")


def _encode_chunks(family, chunks: list, chunk_keys: list, chunk_dirs: list[Path], todo: list[int], root: Path,
                   cache_path: Path, settings: CacheSettings, device, rank: int, older: OlderCache | None) -> None:
    """This process's share of the chunks: each encoded (taking what `older` holds), written and renamed into
    place."""
    encoders = functools.cache(
        lambda: family.load_encoders(getattr(torch, settings.encode_dtype), device, vae_tiling=settings.vae_tiling))
    with tqdm(total=sum(len(chunks[i]) for i in todo), desc="encoding videos", unit="video",
              disable=rank != 0) as progress:
        for i in todo:
            # Done meanwhile by another job building the same cache where the filesystem does not lock.
            if chunk_dirs[i].exists() or (cache_path / "manifest.json").exists():
                continue
            chunk = _encode_chunk(family, encoders, chunks[i], chunk_keys[i], root, settings, older)
            _write_chunk(chunk_dirs[i], chunk, root, rank)
            progress.update(len(chunks[i]))
    encoders.cache_clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the encoders' blocks (HunyuanVideo's Llama: 15 GB) back, before the transformer


def _make_writable_folder(cache_path: Path) -> None:
    """Create the cache folder and check this process can write in it (a shared read-only dataset's default
    <dataset>/.latent_cache), with the fix, before any encoding."""
    try:
        cache_path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache_path):
            pass
    except OSError as error:
        raise ConfigError(f"cannot write the latent cache folder {cache_path} ({error.strerror or error}): pass "
                          "--cache_dir (precompute: --out) a folder you can write") from error


def precompute_latent_cache(
    family,
    data_root: str | Path,
    cache_root: str | Path,
    settings: CacheSettings,
    accelerator=None,
    strict: bool = False,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
) -> CacheReport:
    """Encode the dataset once (or find it already encoded) and return where it lies and what was skipped.

    With an `accelerator`, every process must call this: each encodes chunk i when i % num_processes equals
    its index, then the main process merges while the others wait. A chunk of `chunk_size` videos is the
    unit of work that an interrupted precompute does not redo; unset, CHUNK_SIZE, or fewer where that leaves a
    process of a multi-process launch without a chunk.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    # As the user wrote it, not resolved: metadata may name videos by absolute paths through a symlinked folder.
    root = lexical_absolute(data_root)
    listing = load_dataset_entries(root, settings.caption_column, settings.video_column, settings.id_token,
                                   ignore=lexical_absolute(cache_root))
    found = _FoundNow(root, [{"source": item.source, "reason": item.reason} for item in listing.skipped],
                      _listing_notes(root, listing))
    entries = list(listing.entries)
    listing_key = _listing_key(root, entries)
    # Read once: each encoder file's sampled digest is read to make it.
    model_key = family.cache_key()
    same_model = SameModel(model_key, family.encoder_digests)
    fingerprint = cache_fingerprint(model_key, listing_key, settings)
    cache_path = Path(cache_root) / f"{family.name}-{fingerprint[:16]}"
    if (cache_path / "manifest.json").exists():
        return _reuse(cache_path, found, strict)
    if (built := _cache_of_a_copy(Path(cache_root), same_model, listing_key, settings)) is not None:
        report = _reuse(built, found, strict)
        report.notes.insert(0, "built with the encoder files at other modification times (this model is a copy "
                               "that did not keep them); their contents match the digests the cache recorded")
        return report

    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    is_main = rank == 0
    _make_writable_folder(cache_path)
    with building(cache_path, accelerator) as built_meanwhile:
        if built_meanwhile:
            return _reuse(cache_path, found, strict)
        older = older_cache(Path(cache_root), cache_path, same_model, settings, listing_key)
        if is_main and (why := why_not_reused(Path(cache_root), cache_path, same_model, settings, listing_key, older)):
            logger.warning("building a new latent cache in %s:\n  %s", cache_path, why)
        chunk_size = chunk_size or min(CHUNK_SIZE, max(1, math.ceil(len(entries) / world)))
        starts = range(0, len(entries), chunk_size)
        chunks = [entries[start : start + chunk_size] for start in starts]
        chunk_keys = [listing_key[start : start + chunk_size] for start in starts]
        chunk_dirs = [_chunk_dir(cache_path, start, start + len(chunk)) for start, chunk in zip(starts, chunks)]
        todo = [i for i in range(len(chunks)) if i % world == rank and not chunk_dirs[i].exists()]
        if is_main:
            (cache_path / "chunks").mkdir(parents=True, exist_ok=True)
            write_file(cache_path / "settings.json", settings_record(model_key, settings, same_model.digests()))
        def kept() -> str:
            encoded = sum(len(chunk) for chunk, folder in zip(chunks, chunk_dirs) if folder.exists())
            return (f"stopped while encoding the latent cache {cache_path}: {encoded} of {len(entries)} videos are "
                    f"encoded and kept (whole chunks of {chunk_size}); run the same command again to continue from "
                    "them (one with captions edited or videos added takes them too)")

        # Every process, also one waiting for the others (Ctrl-C reaches all of a launch's): the message, not a
        # traceback of the wait its peer's exit broke.
        with stop_with_message(kept):
            if accelerator:
                accelerator.wait_for_everyone()
            if todo:
                _encode_chunks(family, chunks, chunk_keys, chunk_dirs, todo, root, cache_path, settings,
                               device or (accelerator.device if accelerator else "cpu"), rank, older)
            if accelerator:
                accelerator.wait_for_everyone()
            if is_main:
                report = _merge_or_take_theirs(cache_path, found, chunk_dirs,
                                               dict(zip((e.index for e in entries), listing_key)), settings.sampling)
                logger.info(report.summary())
            if accelerator:
                accelerator.wait_for_everyone()
    # The other processes read what the main one merged: built in this call, not reused.
    report = report if is_main else _read_report(cache_path, found, reused=False)
    if strict:
        _refuse_what_was_skipped(report)
    return report


def _cache_of_a_copy(cache_root: Path, same_model: SameModel, listing_key: list,
                     settings: CacheSettings) -> Path | None:
    """The complete cache of this listing and these settings built with these encoder files at other modification
    times (the model copied without keeping them: cp -r to a node's local disk), where the whole-file digests it
    recorded are these files'. Its folder is named by the other times, so it is found by its settings.json."""
    for settings_file in sorted(cache_root.glob(f"{same_model.key['family']}-*/settings.json")):
        folder = settings_file.parent
        if not (folder / "manifest.json").exists():
            continue
        recorded = json.loads(settings_file.read_text())
        if "encoder_digests" not in recorded or not same_model.differs_in_times_at_most(recorded):
            continue
        built_for = cache_fingerprint(recorded["model"], listing_key, settings)[:16]
        if folder.name == f"{same_model.key['family']}-{built_for}" and same_model(recorded):
            return folder
    return None


def _merge_or_take_theirs(cache_path: Path, found: _FoundNow, chunk_dirs: list[Path], listing_key: dict[int, list],
                          sampling: FrameSampling) -> CacheReport:
    """Merge the chunks, unless another job building the same cache without the lock (a filesystem that does not
    lock) completed it meanwhile: then take theirs, and drop the chunks this job wrote after it did."""
    try:
        if not (cache_path / "manifest.json").exists():
            return _merge(cache_path, chunk_dirs, listing_key, found, sampling)
    except FileNotFoundError:  # the other job's merge removed the chunks
        if not (cache_path / "manifest.json").exists():
            raise
    _remove_work_files(cache_path)
    return _read_report(cache_path, found, reused=True)
