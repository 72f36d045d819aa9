"""The latent cache: each video is encoded once by the VAE and each caption once by the text encoder(s).

Results are stored with `datasets` (Arrow on disk) under a folder named by a fingerprint of everything that
changes them: the model's VAE/text-encoder configs, frame sampling, dtypes and the dataset listing. Change
any of them and a new cache is built; change nothing and the videos are not touched. Work is written in
chunks, each renamed into place when complete, so an interrupted precompute resumes where it stopped, and
each process of a multi-process launch encodes its own share of the chunks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from blueberry_video.data.decode import FrameSampling, VideoDecodeError, decode_video, probe_video, repeats_frames
from blueberry_video.data.formats import DatasetFormatError, DatasetListing, first_few, load_dataset_entries

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
CHUNK_SIZE = 8


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
            crop=config.crop, short_video=config.short_video,
        )
        return cls(sampling=sampling, encode_dtype=str(encode_dtype).removeprefix("torch."),
                   cache_dtype=config.cache_dtype, caption_column=config.caption_column,
                   video_column=config.video_column, id_token=config.id_token, vae_tiling=config.vae_tiling)


@dataclass
class CacheReport:
    path: Path
    num_cached: int
    skipped: list[dict] = field(default_factory=list)
    reused: bool = False
    # What was cached but may not be what the user meant: repeated frames, cut captions, unlisted videos.
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"latent cache {self.path}: {self.num_cached} cached, {len(self.skipped)} skipped"
                 + (" (reused)" if self.reused else "")]
        lines += [f"  skipped {item['source']}: {item['reason']}" for item in self.skipped]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


class EmptyCacheError(DatasetFormatError):
    """No item of the dataset could be encoded."""


def _listing_key(root: Path, entries) -> list:
    key = []
    for entry in entries:
        stat = entry.video_path.stat()
        key.append([str(entry.video_path.relative_to(root)), stat.st_size, stat.st_mtime_ns, entry.caption])
    return key


def cache_fingerprint(family, root: Path, entries, settings: CacheSettings) -> str:
    payload = {
        "version": CACHE_FORMAT_VERSION,
        "model": family.cache_key(),
        "settings": asdict(settings),
        "entries": _listing_key(root, entries),
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
    tensors = {name: value for name, value in records[0].items() if name not in ("index", "video", "caption")}
    with _quiet_datasets():
        datasets.Dataset.from_list(records, features=_features(tensors)).save_to_disk(str(path))


def _to_numpy(tensor: torch.Tensor, cache_dtype: str) -> np.ndarray:
    if tensor.is_floating_point():
        return tensor.detach().to("cpu", getattr(torch, cache_dtype)).numpy()
    return tensor.detach().to("cpu", torch.int64).numpy()


def _encode_chunk(family, encoders, entries, root: Path, settings: CacheSettings):
    """The chunk's (entry, tensors) rows, its skipped videos and what to note about those encoded
    (`_note_lines` says what)."""
    rows, skipped, decoded = [], [], []
    notes = {"low_frame_rate": [], "long_captions": []}
    for entry in entries:
        try:
            info = probe_video(entry.video_path)
            decoded.append((entry, decode_video(entry.video_path, settings.sampling, info=info)))
        except VideoDecodeError as error:
            skipped.append({"source": str(entry.video_path), "reason": error.reason})
            continue
        if repeats_frames(info, settings.sampling):
            notes["low_frame_rate"].append({"video": _relative(entry, root), "fps": info.fps})
    if not decoded:
        return rows, skipped, notes
    captions = [entry.caption for entry, _ in decoded]
    notes["long_captions"] = _long_captions(family, encoders, [entry for entry, _ in decoded], root)
    text = family.encode_prompts(encoders, captions)
    for i, (entry, video) in enumerate(decoded):
        latents = family.encode_videos(encoders, video.unsqueeze(0))
        tensors = {name: _to_numpy(value[0], settings.cache_dtype) for name, value in latents.items()}
        tensors.update({name: _to_numpy(value[i], settings.cache_dtype) for name, value in text.items()})
        rows.append((entry, tensors))
    return rows, skipped, notes


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


def _note_lines(notes: dict, fps: float | None) -> list[str]:
    """The report's lines for the chunks' notes, merged: one line per kind (and per text encoder)."""
    lines = []
    if slow := notes["low_frame_rate"]:
        lines.append(f"{len(slow)} video(s) have a frame rate below fps={fps:g}: their frames are repeated ("
                     + first_few([f"{item['video']} {item['fps']:g} fps" for item in slow]) + ")")
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


def _write_chunk(chunk_dir: Path, rows, skipped, notes: dict, root: Path, process_index: int) -> None:
    tmp = chunk_dir.with_name(chunk_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if rows:
        write_latent_table(tmp / "data", [
            {"index": entry.index, "video": _relative(entry, root), "caption": entry.caption, **tensors}
            for entry, tensors in rows
        ])
    (tmp / "skipped.json").write_text(json.dumps(skipped, indent=1))
    (tmp / "notes.json").write_text(json.dumps(notes, indent=1))
    (tmp / "process.json").write_text(json.dumps({"process_index": process_index, "num_encoded": len(rows)}))
    os.replace(tmp, chunk_dir)


def _merge(cache_path: Path, chunk_dirs: list[Path], listing_skipped: list[dict], listing_notes: list[str],
           fps: float | None) -> CacheReport:
    parts, skipped = [], list(listing_skipped)
    notes = {"low_frame_rate": [], "long_captions": []}
    encoded_by_process: dict[str, int] = {}
    for chunk_dir in chunk_dirs:
        skipped += json.loads((chunk_dir / "skipped.json").read_text())
        for kind, items in json.loads((chunk_dir / "notes.json").read_text()).items():
            notes[kind] += items
        process = json.loads((chunk_dir / "process.json").read_text())
        key = str(process["process_index"])
        encoded_by_process[key] = encoded_by_process.get(key, 0) + process["num_encoded"]
        if (chunk_dir / "data").exists():
            parts.append(datasets.load_from_disk(str(chunk_dir / "data")))
    if not parts:
        reasons = "; ".join(f"{s['source']}: {s['reason']}" for s in skipped[:5])
        raise EmptyCacheError(f"no video could be encoded into {cache_path} ({reasons})")
    # Chunks hold consecutive items and are listed in item order: concatenating keeps the index order.
    merged = datasets.concatenate_datasets(parts)
    tmp = cache_path / "dataset.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with _quiet_datasets():
        merged.save_to_disk(str(tmp))
    os.replace(tmp, cache_path / "dataset")
    encoding_notes = _note_lines(notes, fps)
    report = CacheReport(path=cache_path, num_cached=len(merged), skipped=skipped,
                         notes=listing_notes + encoding_notes)
    # Which process encoded how many videos: shows that a multi-process precompute shared the work. The notes
    # on the folder (unlisted videos) are not kept: they are looked up again on every use.
    manifest = {"num_cached": report.num_cached, "skipped": skipped, "notes": encoding_notes,
                "encoded_by_process": encoded_by_process, "complete": True}
    (cache_path / "manifest.tmp").write_text(json.dumps(manifest, indent=1))
    os.replace(cache_path / "manifest.tmp", cache_path / "manifest.json")
    shutil.rmtree(cache_path / "chunks", ignore_errors=True)
    return report


def _read_report(cache_path: Path, reused: bool, listing_notes: list[str]) -> CacheReport:
    manifest = json.loads((cache_path / "manifest.json").read_text())
    # Caches built before notes were recorded have none.
    return CacheReport(cache_path, manifest["num_cached"], manifest["skipped"], reused=reused,
                       notes=listing_notes + manifest.get("notes", []))


def _settings_record(family, settings: CacheSettings) -> str:
    """settings.json: what a cache was built with, for people and for `why_not_reused`."""
    return json.dumps({"model": family.cache_key(), "settings": asdict(settings)}, indent=1, default=str)


def _flat(settings: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def why_not_reused(cache_root: Path, family, settings: CacheSettings) -> str | None:
    """When `cache_root` holds complete caches of this family built with other settings (a `precompute` run
    with other flags than the training's, say): how the nearest differs, so a silent re-encode is not a surprise."""
    ours = _flat(json.loads(_settings_record(family, settings)))
    differences = []
    for other in sorted(cache_root.glob(f"{family.name}-*/settings.json")):
        if not (other.parent / "manifest.json").exists():
            continue
        theirs = _flat(json.loads(other.read_text()))
        differences.append(sorted(key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key)))
    if not differences:
        return None
    nearest = min(differences, key=len)
    if not nearest:
        return (f"{cache_root} holds a cache with these settings for another listing of the dataset (videos or "
                "captions changed)")
    return (f"{cache_root} holds {len(differences)} cache(s) for other settings; the nearest differs in "
            f"{', '.join(nearest)} (model.* is the VAE/text encoder config, settings.* the training flags "
            "mixed_precision, fps, cache_dtype, ...)")


def precompute_latent_cache(
    family,
    data_root: str | Path,
    cache_root: str | Path,
    settings: CacheSettings,
    accelerator=None,
    strict: bool = False,
    device: str | torch.device | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> CacheReport:
    """Encode the dataset once (or find it already encoded) and return where it lies and what was skipped.

    With an `accelerator`, every process must call this: each encodes chunk i when i % num_processes equals
    its index, then the main process merges while the others wait. A chunk of `chunk_size` videos is the
    unit of work that an interrupted precompute does not redo.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    root = Path(data_root).resolve()
    listing = load_dataset_entries(root, settings.caption_column, settings.video_column, settings.id_token,
                                   ignore=Path(cache_root).resolve())
    listing_skipped = [{"source": item.source, "reason": item.reason} for item in listing.skipped]
    listing_notes = _listing_notes(root, listing)
    if strict and listing_skipped:
        raise DatasetFormatError(f"{root}: strict_data is set and {len(listing_skipped)} item(s) are unusable: "
                                 + "; ".join(f"{s['source']}: {s['reason']}" for s in listing_skipped[:5]))
    entries = list(listing.entries)
    fingerprint = cache_fingerprint(family, root, entries, settings)
    cache_path = Path(cache_root) / f"{family.name}-{fingerprint[:16]}"
    if (cache_path / "manifest.json").exists():
        report = _read_report(cache_path, reused=True, listing_notes=listing_notes)
        # The cache was built without strict_data: what it skipped then is unusable now.
        if strict and report.skipped:
            first = report.skipped[0]
            raise VideoDecodeError(Path(first["source"]), f"{first['reason']} (strict_data is set; the latent cache "
                                   f"{cache_path} skipped {len(report.skipped)} item(s) when it was built)")
        return report

    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    is_main = rank == 0
    if is_main and (why := why_not_reused(Path(cache_root), family, settings)):
        logger.warning("building a new latent cache in %s: %s", cache_path, why)
    starts = range(0, len(entries), chunk_size)
    chunks = [entries[start : start + chunk_size] for start in starts]
    chunk_dirs = [_chunk_dir(cache_path, start, start + len(chunk)) for start, chunk in zip(starts, chunks)]
    mine = [i for i in range(len(chunks)) if i % world == rank]
    todo = [i for i in mine if not chunk_dirs[i].exists()]
    if is_main:
        (cache_path / "chunks").mkdir(parents=True, exist_ok=True)
        (cache_path / "settings.json").write_text(_settings_record(family, settings))
    if accelerator:
        accelerator.wait_for_everyone()
    if todo:
        device = device or (accelerator.device if accelerator else "cpu")
        encoders = family.load_encoders(getattr(torch, settings.encode_dtype), device, vae_tiling=settings.vae_tiling)
        with tqdm(total=sum(len(chunks[i]) for i in todo), desc="encoding videos", unit="video",
                  disable=not is_main) as progress:
            for i in todo:
                rows, skipped, notes = _encode_chunk(family, encoders, chunks[i], root, settings)
                if strict and skipped:
                    raise VideoDecodeError(Path(skipped[0]["source"]), skipped[0]["reason"] + " (strict_data is set)")
                _write_chunk(chunk_dirs[i], rows, skipped, notes, root, rank)
                progress.update(len(chunks[i]))
        del encoders
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the encoders' blocks (HunyuanVideo's Llama: 15 GB) back, before the transformer
    if accelerator:
        accelerator.wait_for_everyone()
    if is_main:
        report = _merge(cache_path, chunk_dirs, listing_skipped, listing_notes, settings.sampling.fps)
        logger.info(report.summary())
    if accelerator:
        accelerator.wait_for_everyone()
    # The other processes read what the main one merged: built in this call, not reused.
    return report if is_main else _read_report(cache_path, reused=False, listing_notes=listing_notes)
