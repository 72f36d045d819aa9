"""The latent cache on the tiny CogVideoX model and real videos: contents, reuse, rebuilds, resume, bad data."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch
from diffusers import CogVideoXPipeline
from safetensors.torch import load_file, save_file

import blueberry_video.data.cache as cache_module
from blueberry_video.data.cache import CacheSettings, EmptyCacheError, precompute_latent_cache
from blueberry_video.data.decode import FrameSampling, decode_video
from blueberry_video.data.formats import DatasetFormatError
from blueberry_video.data.latent_dataset import DummyLatentDataset, LatentCacheDataset
from blueberry_video.errors import ConfigError
from blueberry_video.models.cogvideox import CogVideoXFamily
from tests.conftest import REPO_ROOT
from tests.data.conftest import H264, encode

SAMPLING = FrameSampling(num_frames=9, height=96, width=160)
SETTINGS = CacheSettings(sampling=SAMPLING)


@pytest.fixture(scope="module")
def family(tiny_cogvideox_dir):
    return CogVideoXFamily(tiny_cogvideox_dir)


@pytest.fixture(scope="module")
def sample_cache(family, sample_dataset_dir, tmp_path_factory):
    """The four sample videos cached once, uninterrupted: the reference the other tests compare with."""
    return precompute_latent_cache(family, sample_dataset_dir, tmp_path_factory.mktemp("cache"), SETTINGS)


def metadata(root: Path) -> list[dict]:
    return json.loads((root / "metadata.json").read_text())


def copy_dataset(source: Path, dest: Path, count: int | None = None) -> Path:
    records = metadata(source)[:count]
    (dest / "videos").mkdir(parents=True)
    for record in records:
        shutil.copy(source / record["file"], dest / record["file"])
    (dest / "metadata.json").write_text(json.dumps(records))
    return dest


def cached_table(report) -> datasets.Dataset:
    return datasets.load_from_disk(str(report.path / "dataset"))


def test_cache_holds_what_the_pipeline_computes(sample_cache, sample_dataset_dir, tiny_cogvideox_dir):
    pipe = CogVideoXPipeline.from_pretrained(tiny_cogvideox_dir, dtype=torch.float32)
    max_length = pipe.transformer.config.max_text_seq_length
    records = metadata(sample_dataset_dir)
    dataset = LatentCacheDataset(sample_cache.path)
    assert sample_cache.num_cached == len(dataset) == len(records) == 4
    assert cached_table(sample_cache)["caption"] == [r["caption"] for r in records]
    for i, record in enumerate(records):
        video = decode_video(sample_dataset_dir / record["file"], SAMPLING)
        with torch.no_grad():
            posterior = pipe.vae.encode(video.unsqueeze(0).permute(0, 2, 1, 3, 4)).latent_dist
            prompt_embeds, _ = pipe.encode_prompt(record["caption"], do_classifier_free_guidance=False,
                                                  max_sequence_length=max_length)
        item = dataset[i]
        torch.testing.assert_close(item["latent_mean"], posterior.mean[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(item["latent_std"], posterior.std[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(item["prompt_embeds"], prompt_embeds[0], rtol=0, atol=1e-5)


def test_a_small_cache_read_into_memory_gives_the_rows_a_read_from_disk_does(sample_cache):
    in_memory = LatentCacheDataset(sample_cache.path, repeats=2)
    from_disk = LatentCacheDataset(sample_cache.path, repeats=2, in_memory_limit=0)
    assert in_memory.columns is not None and from_disk.columns is None
    for dataset in (in_memory, from_disk):
        loader = torch.utils.data.DataLoader(dataset, batch_size=3, sampler=[6, 1, 4])  # 6 wraps to item 2
        batch = next(iter(loader))
        assert batch["sample_index"].tolist() == [6, 1, 4]
        for row, index in enumerate([6, 1, 4]):
            item = from_disk[index]
            for name in dataset.tensor_columns:
                assert torch.equal(batch[name][row], item[name])
    assert torch.equal(from_disk[6]["latent_mean"], from_disk[2]["latent_mean"])


def test_second_call_reuses_the_cache_without_decoding(sample_cache, family, sample_dataset_dir, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("a reused cache must not decode any video")

    monkeypatch.setattr(cache_module, "decode_clip", no_decoding)
    monkeypatch.setattr(family, "load_encoders", no_decoding)
    again = precompute_latent_cache(family, sample_dataset_dir, sample_cache.path.parent, SETTINGS)
    assert again.reused and not sample_cache.reused
    assert again.path == sample_cache.path
    assert again.num_cached == 4 and again.skipped == []


@pytest.fixture(scope="module")
def one_video(one_video_dataset_dir, family, tmp_path_factory):
    """A one-video dataset cached with SETTINGS; the settings variants below are compared against it."""
    cache_root = tmp_path_factory.mktemp("variants")
    return one_video_dataset_dir, cache_root, precompute_latent_cache(family, one_video_dataset_dir, cache_root, SETTINGS)


@pytest.mark.parametrize(
    "change",
    [
        dict(sampling=dataclasses.replace(SAMPLING, height=64)),
        dict(sampling=dataclasses.replace(SAMPLING, width=128)),
        dict(sampling=dataclasses.replace(SAMPLING, num_frames=5)),
        dict(sampling=dataclasses.replace(SAMPLING, fps=4.0)),
        dict(sampling=dataclasses.replace(SAMPLING, crop="random")),
        dict(sampling=dataclasses.replace(SAMPLING, spread=True)),
        dict(cache_dtype="float16"),
        dict(id_token="sks"),
    ],
    ids=["height", "width", "num_frames", "fps", "crop", "spread", "cache_dtype", "id_token"],
)
def test_a_changed_setting_builds_a_new_cache(one_video, family, change):
    data, cache_root, base = one_video
    changed = precompute_latent_cache(family, data, cache_root, dataclasses.replace(SETTINGS, **change))
    assert changed.path != base.path
    assert not changed.reused and changed.num_cached == 1
    unchanged = precompute_latent_cache(family, data, cache_root, SETTINGS)
    assert unchanged.path == base.path and unchanged.reused


def test_a_setting_added_since_caches_were_built_leaves_their_fingerprint_while_it_has_its_default():
    # The keys every cache built before spread_frames hashed: the same record finds (and reuses) those caches.
    assert list(SETTINGS.record()["sampling"]) == ["num_frames", "height", "width", "fps", "skip_frames_start",
                                                   "skip_frames_end", "crop", "short_video"]
    assert dataclasses.replace(SETTINGS, sampling=dataclasses.replace(SAMPLING, spread=True)).record()["sampling"][
        "spread"] is True


def test_a_new_cache_beside_others_says_which_settings_differ(one_video_dataset_dir, family, tmp_path, caplog):
    # e.g. `blueberry-video precompute` run ahead with other flags than the training's: the re-encode is explained
    precompute_latent_cache(family, one_video_dataset_dir, tmp_path, SETTINGS)
    with caplog.at_level(logging.WARNING, logger="blueberry_video.data.cache"):
        precompute_latent_cache(family, one_video_dataset_dir, tmp_path,
                                dataclasses.replace(SETTINGS, encode_dtype="bfloat16", cache_dtype="float16"))
    assert "building a new latent cache" in caplog.text
    assert ("differs in --cache_dtype: float32 there, float16 here; the encoders' dtype (--mixed_precision; "
            "precompute's --dtype): float32 there, bfloat16 here") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="blueberry_video.data.cache"):
        precompute_latent_cache(family, one_video_dataset_dir, tmp_path / "empty", SETTINGS)
    assert "building a new latent cache" not in caplog.text  # nothing else there: nothing to explain


def test_a_changed_setting_is_not_told_again_as_a_listing_difference(sample_dataset_dir, family, tmp_path, caplog):
    from blueberry_video.data.sample_videos import create_sample_videos

    data = copy_dataset(sample_dataset_dir, tmp_path / "data", count=2)
    short = create_sample_videos(tmp_path / "short", num=1, num_frames=9).parent / "videos/0000.mp4"
    shutil.copy(short, data / "videos" / "short.mp4")
    (data / "metadata.json").write_text(json.dumps([*metadata(data), {"file": "videos/short.mp4", "caption": "a"}]))
    longer = CacheSettings(dataclasses.replace(SAMPLING, num_frames=17))
    assert len(precompute_latent_cache(family, data, tmp_path / "cache", longer).skipped) == 1  # 9 of 17 frames
    with caplog.at_level(logging.WARNING, logger="blueberry_video.data.cache"):
        precompute_latent_cache(family, data, tmp_path / "cache", SETTINGS)
    # The short video was skipped for the other frame count, not left out of the listing
    assert "differs in --max_num_frames: 17 there, 9 here\n" in caplog.text and "skipped as unusable" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="blueberry_video.data.cache"):
        precompute_latent_cache(family, data, tmp_path / "cache", dataclasses.replace(SETTINGS, id_token="sks"))
    assert "differs in --id_token: unset there, sks here\n" in caplog.text  # not also as 3 captions changed


def test_a_new_cache_beside_others_says_how_the_listing_differs_and_lists_every_folder_it_leaves(
        sample_dataset_dir, family, tmp_path, caplog):
    data = copy_dataset(sample_dataset_dir, tmp_path / "data")
    cache_root = tmp_path / "cache"
    first = precompute_latent_cache(family, data, cache_root, SETTINGS)
    stopped = cache_root / f"{family.name}-0123456789abcdef"  # a build that was stopped: chunks, no manifest
    (stopped / "chunks").mkdir(parents=True)
    (stopped / "chunks" / "part").write_bytes(bytes(3 * 2**20))
    # A copy that did not keep the modification times (cp -r, a tar that cuts them to seconds), an edited caption
    for video in (data / "videos").iterdir():
        os.utime(video)
    records = metadata(data)
    records[1]["caption"] += " at dusk"
    (data / "metadata.json").write_text(json.dumps(records))
    with caplog.at_level(logging.WARNING, logger="blueberry_video.data.cache"):
        precompute_latent_cache(family, data, cache_root, SETTINGS)
    assert (f"its cache {first.path.name} has these settings but was built from another listing of the dataset: 4 "
            "video(s) with other modification times (a copy that did not keep them? cp -a, rsync -a and mv do; "
            "their latents are taken where their content digest matches), 1 caption(s) changed") in caplog.text
    assert (f"{cache_root} holds 1 complete cache(s) of other settings or data and 1 incomplete one(s) (a build "
            "that was stopped, or is running now; a run of its settings and listing continues it)\n") in caplog.text
    assert (f"\n  this run takes from {first.path.name} the video latents of up to 4 of these 4 videos, copied "
            "without their modification times, where their content matches; the others go through the VAE\n"
            ) in caplog.text
    assert re.search(rf"\n  once built, this cache is the one read: delete those no run needs \(2 folder\(s\), "
                     rf"3\.\d MiB in all\): {stopped} \(3.0 MiB, incomplete\), {first.path} \(", caplog.text)
    # The same dataset's cache in a --cache_dir another dataset shares is not taken for a stale listing of it
    other = copy_dataset(sample_dataset_dir, tmp_path / "other", count=1)
    (other / "videos" / "0000.mp4").rename(other / "videos" / "only.mp4")
    (other / "metadata.json").write_text(json.dumps([{**metadata(other)[0], "file": "videos/only.mp4"}]))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="blueberry_video.data.cache"):
        precompute_latent_cache(family, other, cache_root, SETTINGS)
    assert "another dataset (none of its videos is in this one: a --cache_dir shared by several datasets?)" in \
        caplog.text
    # Another dataset with the same file names (videos/0000.mp4, ...): not taken for this one with videos changed
    from blueberry_video.data.sample_videos import create_sample_videos

    named_alike = create_sample_videos(tmp_path / "alike", num=4, num_frames=9, seed=7).parent
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="blueberry_video.data.cache"):
        precompute_latent_cache(family, named_alike, cache_root, SETTINGS)
    assert "another dataset with the same file names, or every video and caption of this one changed" in caplog.text


def test_a_copy_that_did_not_keep_modification_times_takes_the_latents_of_the_files_that_match(
        sample_dataset_dir, family, tmp_path, monkeypatch):
    data = copy_dataset(sample_dataset_dir, tmp_path / "data")
    first = precompute_latent_cache(family, data, data / ".latent_cache", SETTINGS)
    copied = Path(shutil.copytree(data, tmp_path / "copy", copy_function=shutil.copyfile))  # as cp -r: new times
    files = [copied / record["file"] for record in metadata(copied)]
    # One file of the copy changed in place, its size kept: its sampled digest tells it from the original.
    changed = bytearray(files[2].read_bytes())
    changed[len(changed) // 2] ^= 0xFF
    files[2].write_bytes(bytes(changed))
    assert [f.stat().st_mtime_ns for f in files] != [(data / f.relative_to(copied)).stat().st_mtime_ns for f in files]
    videos = _count_calls(monkeypatch, family, "encode_videos")
    again = precompute_latent_cache(family, copied, copied / ".latent_cache", SETTINGS)
    assert again.path.name != first.path.name and again.num_reused_videos == 3 and len(videos) == 1
    for name in ("latent_mean", "latent_std"):
        kept = [0, 1, 3]
        assert _arrays(again)[name][kept].tobytes() == _arrays(first)[name][kept].tobytes()


def test_digests_tell_files_of_one_size_apart_and_a_content_digest_gives_none_for_a_file_it_cannot_read(tmp_path):
    from blueberry_video.file_digests import SAMPLED_PIECE_BYTES, SAMPLED_PIECES, content_digest, sampled_digest

    large = bytes(range(256)) * (SAMPLED_PIECES * SAMPLED_PIECE_BYTES // 64)  # 4 MiB: sampled in pieces
    (tmp_path / "a").write_bytes(large)
    (tmp_path / "copy").write_bytes(large)
    at_the_end, between_pieces = bytearray(large), bytearray(large)
    at_the_end[-1] ^= 0xFF  # the last piece ends at the file's end
    between_pieces[SAMPLED_PIECE_BYTES + 10] ^= 0xFF  # the second piece starts 256 KiB in
    (tmp_path / "b").write_bytes(bytes(at_the_end))
    (tmp_path / "c").write_bytes(bytes(between_pieces))
    assert sampled_digest(tmp_path / "a") == sampled_digest(tmp_path / "copy") != sampled_digest(tmp_path / "b")
    assert sampled_digest(tmp_path / "c") == sampled_digest(tmp_path / "a")  # why videos get the whole-file one
    assert len({content_digest(tmp_path / name) for name in ("a", "copy", "b", "c")}) == 3
    assert content_digest(tmp_path / "absent") is None


def test_the_nearest_cache_is_the_one_holding_most_of_this_listing_and_how_its_listing_differs_is_told(
        sample_dataset_dir, family, tmp_path, caplog):
    data = copy_dataset(sample_dataset_dir, tmp_path / "data")
    records = metadata(data)

    def captions_edited(*which):
        (data / "metadata.json").write_text(json.dumps(
            [{**record, "caption": record["caption"] + " at dusk" * (i in which)} for i, record in enumerate(records)]))

    captions_edited(0)
    precompute_latent_cache(family, data, tmp_path / "cache", SETTINGS)
    captions_edited()
    current = precompute_latent_cache(family, data, tmp_path / "cache", SETTINGS)
    captions_edited(1)  # the second cache holds 3 of these rows as they are, the first 2
    with caplog.at_level(logging.WARNING, logger="blueberry_video.data.cache"):
        precompute_latent_cache(family, data, tmp_path / "cache", dataclasses.replace(SETTINGS, cache_dtype="float16"))
    assert (f"its nearest cache {current.path.name} differs in --cache_dtype: float32 there, float16 here, and was "
            "built from another listing of the dataset: 1 caption(s) changed\n") in caplog.text
    # Its cache_dtype differs, a video setting: no latents are taken from it
    assert ("none holds video latents of these videos with this model's encoder files and these video settings: "
            "every video goes through the VAE") in caplog.text


def test_the_same_model_files_at_another_path_give_the_same_cache(one_video_dataset_dir, tiny_cogvideox_dir, tmp_path,
                                                                    caplog):
    data = copy_dataset(one_video_dataset_dir, tmp_path / "data")
    first = precompute_latent_cache(CogVideoXFamily(tiny_cogvideox_dir), data, tmp_path / "cache", SETTINGS)
    moved = Path(shutil.copytree(tiny_cogvideox_dir, tmp_path / "elsewhere" / "model"))  # keeps the times, as cp -a
    again = precompute_latent_cache(CogVideoXFamily(moved), data, tmp_path / "cache", SETTINGS)
    assert again.reused and again.path == first.path
    # Other weights of the same size whose modification time was set back (archives and images normalise them)
    other = Path(shutil.copytree(moved, tmp_path / "other" / "model"))
    weights = other / "vae" / "diffusion_pytorch_model.safetensors"
    save_file({name: value * 1.01 for name, value in load_file(weights).items()}, weights, metadata={"format": "pt"})
    original = moved / "vae" / "diffusion_pytorch_model.safetensors"
    os.utime(weights, ns=(original.stat().st_atime_ns, original.stat().st_mtime_ns))
    assert weights.stat().st_size == original.stat().st_size
    assert precompute_latent_cache(CogVideoXFamily(other), data, tmp_path / "cache", SETTINGS).path != first.path
    # A cache an earlier release built (its key held the model folder's path and the scheduler, and no digests,
    # so its folder has another name) is the same model's: the first run after the upgrade takes its latents.
    settings_file = first.path / "settings.json"
    record = json.loads(settings_file.read_text())
    model = {name: [entry[:3] for entry in value] if isinstance(value, list) else value
             for name, value in record["model"].items()}
    model.update(model_dir=str(tmp_path / "old"), scheduler=[["scheduler_config.json", 400, 1]])
    settings_file.write_text(json.dumps({**record, "model": model}))
    earlier = first.path.rename(first.path.with_name(f"{family_name(first)}-0000000000000000"))
    with caplog.at_level(logging.WARNING, logger="blueberry_video.data.cache"):
        upgraded = precompute_latent_cache(CogVideoXFamily(moved), data, tmp_path / "cache", SETTINGS)
    assert upgraded.num_reused_videos == 1 and upgraded.reused_videos_from == [str(earlier)]
    assert (f"its cache {earlier.name} has these settings but was built from the same listing, by an earlier "
            "release whose cache key differed") in caplog.text


def family_name(report) -> str:
    return report.path.name.rsplit("-", 1)[0]


def test_changed_settings_reach_the_cached_tensors(one_video, family):
    data, cache_root, _ = one_video
    sampling = dataclasses.replace(SAMPLING, num_frames=5, height=64)
    report = precompute_latent_cache(family, data, cache_root, CacheSettings(sampling, cache_dtype="float16"))
    features = cached_table(report).features
    assert features["latent_mean"].dtype == features["prompt_embeds"].dtype == "float16"
    item = LatentCacheDataset(report.path)[0]
    assert item["latent_mean"].shape == family.latent_shape(5, 64, 160)
    assert torch.equal(item["latent_mean"].half().float(), item["latent_mean"])  # float16 values


def _edit_caption(data: Path, model: Path):
    records = metadata(data)
    records[0]["caption"] += " at dusk"
    (data / "metadata.json").write_text(json.dumps(records))


def _replace_video(data: Path, model: Path):
    from blueberry_video.data.sample_videos import create_sample_videos

    other = create_sample_videos(data.parent / "other", num=1, num_frames=9, seed=1).parent
    shutil.copy(other / "videos/0000.mp4", data / metadata(data)[0]["file"])


def _touch_vae_weights(data: Path, model: Path):
    weights = model / "vae" / "diffusion_pytorch_model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))


def _rewrite_vae_weights(data: Path, model: Path):
    weights = model / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    save_file({name: value * 1.01 for name, value in state.items()}, weights, metadata={"format": "pt"})


@pytest.mark.parametrize("change", [_edit_caption, _replace_video, _rewrite_vae_weights],
                         ids=["caption", "video_file", "vae_rewritten"])
def test_a_changed_file_builds_a_new_cache(change, one_video_dataset_dir, tiny_cogvideox_dir, tmp_path):
    data = copy_dataset(one_video_dataset_dir, tmp_path / "data")
    model = Path(shutil.copytree(tiny_cogvideox_dir, tmp_path / "model"))
    cache_root = tmp_path / "cache"
    before = precompute_latent_cache(CogVideoXFamily(model), data, cache_root, SETTINGS)
    assert precompute_latent_cache(CogVideoXFamily(model), data, cache_root, SETTINGS).path == before.path
    change(data, model)
    after = precompute_latent_cache(CogVideoXFamily(model), data, cache_root, SETTINGS)
    assert after.path != before.path and not after.reused


def test_a_copy_of_the_model_that_did_not_keep_the_times_reads_the_cache_its_original_built(
        sample_dataset_dir, tiny_cogvideox_dir, tmp_path, monkeypatch, caplog):
    data = copy_dataset(sample_dataset_dir, tmp_path / "data")
    model = Path(shutil.copytree(tiny_cogvideox_dir, tmp_path / "model"))
    first = precompute_latent_cache(CogVideoXFamily(model), data, tmp_path / "cache", SETTINGS)
    # As cp -r to a node's local disk before each job: the same files, new modification times
    copied = Path(shutil.copytree(model, tmp_path / "node" / "model", copy_function=shutil.copyfile))
    weights = Path("vae") / "diffusion_pytorch_model.safetensors"
    assert (copied / weights).stat().st_mtime_ns != (model / weights).stat().st_mtime_ns
    family = CogVideoXFamily(copied)
    videos, prompts = _count_calls(monkeypatch, family, "encode_videos"), _count_calls(monkeypatch, family,
                                                                                      "encode_prompts")
    again = precompute_latent_cache(family, data, tmp_path / "cache", SETTINGS)
    assert again.reused and again.path == first.path and not videos and not prompts
    assert "note: built with the encoder files at other modification times (this model is a copy" in again.summary()
    # Touched in place (same content): the same
    _touch_vae_weights(data, model)
    assert precompute_latent_cache(CogVideoXFamily(model), data, tmp_path / "cache", SETTINGS).path == first.path
    # The copy and an edited caption: the video latents are taken from the original's cache
    _edit_one_caption(data)
    with caplog.at_level(logging.WARNING, logger="blueberry_video.data.cache"):
        edited = precompute_latent_cache(family, data, tmp_path / "cache", SETTINGS)
    assert edited.path != first.path and edited.num_reused_videos == 4 and not videos
    assert "its cache " + first.path.name + " has these settings but was built from another listing" in caplog.text
    assert "of 4 of these 4 videos (unchanged since)\n" in caplog.text  # no "others" to go through the VAE
    # Whole-file digests decide where the sampled ones agree: files recorded with other content are another model's
    shutil.rmtree(edited.path)
    settings_file = first.path / "settings.json"
    record = json.loads(settings_file.read_text())
    assert set(record["encoder_digests"]) >= {str(weights), "text_encoder/config.json", "tokenizer/tokenizer.json"}
    settings_file.write_text(json.dumps({**record, "encoder_digests": {**record["encoder_digests"],
                                                                        str(weights): "0" * 64}}))
    rebuilt = precompute_latent_cache(family, data, tmp_path / "cache", SETTINGS)
    assert rebuilt.num_reused_videos == 0 and len(videos) == 4


def _count_calls(monkeypatch, family, method: str) -> list:
    """What the family's `method` (encode_videos, encode_prompts) is called with, the real method still running."""
    real, calls = getattr(family, method), []

    def counted(encoders, batch):
        calls.append(batch)
        return real(encoders, batch)

    monkeypatch.setattr(family, method, counted)
    return calls


def _arrays(report) -> dict:
    """The cache's columns, each as one numpy array."""
    return cached_table(report).with_format("numpy")[:]


def _edit_one_caption(data: Path):
    records = metadata(data)
    records[1]["caption"] = "a red kite over a grey sea at dusk"
    (data / "metadata.json").write_text(json.dumps(records))
    return SETTINGS, [1]


def _add_id_token(data: Path):
    return dataclasses.replace(SETTINGS, id_token="sks"), [0, 1, 2, 3]


@pytest.mark.parametrize("change", [_edit_one_caption, _add_id_token], ids=["caption", "id_token"])
def test_a_caption_change_encodes_only_the_changed_text(change, family, sample_dataset_dir, tiny_cogvideox_dir,
                                                       tmp_path, monkeypatch, caplog):
    data = copy_dataset(sample_dataset_dir, tmp_path / "data")
    old = precompute_latent_cache(family, data, tmp_path / "cache", SETTINGS)
    settings, changed = change(data)
    videos = _count_calls(monkeypatch, family, "encode_videos")
    prompts = _count_calls(monkeypatch, family, "encode_prompts")
    with caplog.at_level(logging.WARNING, logger="blueberry_video.data.cache"):
        new = precompute_latent_cache(family, data, tmp_path / "cache", settings)
    assert new.path != old.path and not new.reused
    captions = cached_table(new)["caption"]
    assert videos == [] and prompts == [[captions[i] for i in changed]]
    assert new.num_reused_videos == 4 and new.reused_videos_from == [str(old.path)]
    assert f"reused the video latents of 4 of 4 videos from {old.path}" in new.summary()
    for name in ("latent_mean", "latent_std"):
        assert _arrays(new)[name].tobytes() == _arrays(old)[name].tobytes()

    # What training reads: the changed captions' embeddings as the pipeline computes them, the others as they were.
    pipe = CogVideoXPipeline.from_pretrained(tiny_cogvideox_dir, dtype=torch.float32)
    trained, before = LatentCacheDataset(new.path), LatentCacheDataset(old.path)
    for i in range(4):
        if i in changed:
            with torch.no_grad():
                expected, _ = pipe.encode_prompt(captions[i], do_classifier_free_guidance=False,
                                                 max_sequence_length=pipe.transformer.config.max_text_seq_length)
            torch.testing.assert_close(trained[i]["prompt_embeds"], expected[0], rtol=0, atol=1e-5)
            assert not torch.equal(trained[i]["prompt_embeds"], before[i]["prompt_embeds"])
        else:
            assert torch.equal(trained[i]["prompt_embeds"], before[i]["prompt_embeds"])
    # The old folder is not read any more: the warning says so, and how much space deleting it frees.
    assert re.search(rf"delete those no run needs \(1 folder\(s\), \d+\.\d MiB in all\): {re.escape(str(old.path))} "
                     rf"\(\d+\.\d MiB\)", caplog.text)


def test_an_added_video_alone_goes_through_the_vae(family, sample_dataset_dir, sample_cache, tmp_path, monkeypatch):
    data = copy_dataset(sample_dataset_dir, tmp_path / "data", count=3)
    old = precompute_latent_cache(family, data, tmp_path / "cache", SETTINGS)
    records = metadata(sample_dataset_dir)
    shutil.copy(sample_dataset_dir / records[3]["file"], data / records[3]["file"])
    (data / "metadata.json").write_text(json.dumps(records))
    videos = _count_calls(monkeypatch, family, "encode_videos")
    prompts = _count_calls(monkeypatch, family, "encode_prompts")
    new = precompute_latent_cache(family, data, tmp_path / "cache", SETTINGS)
    assert len(videos) == 1 and prompts == [[records[3]["caption"]]]
    assert f"reused the video latents of 3 of 4 videos from {old.path}" in new.summary()
    for name in ("latent_mean", "latent_std", "prompt_embeds"):
        assert _arrays(new)[name][:3].tobytes() == _arrays(old)[name].tobytes()
    built, reference = LatentCacheDataset(new.path), LatentCacheDataset(sample_cache.path)
    for name in ("latent_mean", "latent_std", "prompt_embeds"):
        torch.testing.assert_close(built[3][name], reference[3][name], rtol=0, atol=1e-6)


def _cache_dtype(data: Path, model: Path):
    return dataclasses.replace(SETTINGS, cache_dtype="float16")


@pytest.mark.parametrize("change", [_replace_video, _rewrite_vae_weights, _cache_dtype],
                         ids=["video_file", "vae_rewritten", "cache_dtype"])
def test_video_latents_are_not_taken_from_a_cache_of_another_file_model_or_setting(
        change, one_video_dataset_dir, tiny_cogvideox_dir, tmp_path, monkeypatch):
    data = copy_dataset(one_video_dataset_dir, tmp_path / "data")
    model = Path(shutil.copytree(tiny_cogvideox_dir, tmp_path / "model"))
    precompute_latent_cache(CogVideoXFamily(model), data, tmp_path / "cache", SETTINGS)
    settings = change(data, model) or SETTINGS
    family = CogVideoXFamily(model)
    videos = _count_calls(monkeypatch, family, "encode_videos")
    report = precompute_latent_cache(family, data, tmp_path / "cache", settings)
    assert len(videos) == 1 and report.num_reused_videos == 0 and "reused the video" not in report.summary()


@pytest.mark.parametrize("other_job_stops_at", [3, None],
                         ids=["other_job_finished_a_chunk_first", "other_job_finished_the_cache_first"])
def test_a_job_whose_work_another_job_did_meanwhile_keeps_theirs(other_job_stops_at, family, sample_dataset_dir,
                                                                sample_cache, tmp_path, monkeypatch, caplog):
    # Where the filesystem has no locks, two jobs started together both build: the one that finishes a chunk (or
    # the whole cache) second must not fail on the first one's folders. The other job runs in the middle of this
    # one's first chunk, and is stopped at its third video or runs to the end.
    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    encode_videos = family.encode_videos
    other = {"running": False, "ran": False, "calls": 0}

    def other_job():
        other.update(running=True, ran=True)
        try:
            return precompute_latent_cache(family, sample_dataset_dir, tmp_path, SETTINGS, chunk_size=2)
        finally:
            other["running"] = False

    def interleaved(encoders, videos):
        if other["running"]:
            other["calls"] += 1
            if other["calls"] == other_job_stops_at:
                raise RuntimeError("the other job was stopped")
        elif not other["ran"]:
            if other_job_stops_at:
                with pytest.raises(RuntimeError, match="the other job was stopped"):
                    other_job()
            else:
                assert other_job().num_cached == 4
        return encode_videos(encoders, videos)

    monkeypatch.setattr(family, "encode_videos", interleaved)
    with caplog.at_level(logging.WARNING, logger="blueberry_video.data.cache"):
        report = precompute_latent_cache(family, sample_dataset_dir, tmp_path, SETTINGS, chunk_size=2)
    assert "could not lock it" in caplog.text
    assert report.path == tmp_path / sample_cache.path.name and report.num_cached == 4
    assert report.reused == (other_job_stops_at is None)
    assert sorted(path.name for path in report.path.iterdir()) == [
        "build.lock", "dataset", "listing.json", "manifest.json", "settings.json"]
    assert cached_table(report)["index"] == [0, 1, 2, 3]
    built, reference = LatentCacheDataset(report.path), LatentCacheDataset(sample_cache.path)
    for i in range(4):
        for name in ("latent_mean", "latent_std", "prompt_embeds"):
            torch.testing.assert_close(built[i][name], reference[i][name], rtol=0, atol=1e-6)


def test_interrupted_precompute_resumes_without_redoing_chunks(family, sample_dataset_dir, sample_cache,
                                                               tmp_path, monkeypatch):
    encode_videos = family.encode_videos
    calls = []
    fail_at = [3]  # the first video of the second chunk of two

    def flaky_encode(encoders, videos):
        calls.append(videos)
        if len(calls) == fail_at[0]:
            raise RuntimeError("interrupted")
        return encode_videos(encoders, videos)

    decoded = []
    real_decode = cache_module.decode_clip

    def recording_decode(path, sampling, *args, **kwargs):
        decoded.append(Path(path).name)
        return real_decode(path, sampling, *args, **kwargs)

    monkeypatch.setattr(family, "encode_videos", flaky_encode)
    monkeypatch.setattr(cache_module, "decode_clip", recording_decode)
    with pytest.raises(RuntimeError, match="interrupted"):
        precompute_latent_cache(family, sample_dataset_dir, tmp_path, SETTINGS, chunk_size=2)
    cache_path = tmp_path / sample_cache.path.name
    assert not (cache_path / "manifest.json").exists()
    assert len(list((cache_path / "chunks").iterdir())) == 1  # only the finished chunk; no .tmp left behind

    calls.clear()
    decoded.clear()
    fail_at[0] = 0
    report = precompute_latent_cache(family, sample_dataset_dir, tmp_path, SETTINGS, chunk_size=2)
    assert len(calls) == 2
    assert decoded == ["0002.mp4", "0003.mp4"]
    assert report.path == cache_path and report.num_cached == 4 and not report.reused

    table = cached_table(report)
    assert table["index"] == [0, 1, 2, 3]
    assert table["video"] == [r["file"] for r in metadata(sample_dataset_dir)]
    resumed, reference = LatentCacheDataset(report.path), LatentCacheDataset(sample_cache.path)
    for i in range(4):
        for name in ("latent_mean", "latent_std", "prompt_embeds"):
            torch.testing.assert_close(resumed[i][name], reference[i][name], rtol=0, atol=1e-6)


def test_a_build_stopped_part_way_gives_its_finished_chunks_latents_to_a_run_whose_captions_changed_meanwhile(
        family, sample_dataset_dir, sample_cache, tmp_path, monkeypatch, caplog):
    data = copy_dataset(sample_dataset_dir, tmp_path / "data")
    encode_videos = family.encode_videos

    def stopped_at_the_third_video(encoders, videos):
        if stopped_at_the_third_video.calls == 2:
            raise KeyboardInterrupt
        stopped_at_the_third_video.calls += 1
        return encode_videos(encoders, videos)

    stopped_at_the_third_video.calls = 0
    monkeypatch.setattr(family, "encode_videos", stopped_at_the_third_video)
    with pytest.raises(KeyboardInterrupt):
        precompute_latent_cache(family, data, tmp_path / "cache", SETTINGS, chunk_size=2)
    stopped = next((tmp_path / "cache").iterdir())
    assert not (stopped / "manifest.json").exists() and len(list((stopped / "chunks").iterdir())) == 1
    monkeypatch.setattr(family, "encode_videos", encode_videos)
    _edit_one_caption(data)  # the second video's: its chunk is finished
    videos = _count_calls(monkeypatch, family, "encode_videos")
    with caplog.at_level(logging.WARNING, logger="blueberry_video.data.cache"):
        report = precompute_latent_cache(family, data, tmp_path / "cache", SETTINGS, chunk_size=2)
    assert report.path != stopped and len(videos) == 2
    assert report.num_reused_videos == 2 and report.reused_videos_from == [str(stopped)]
    assert (f"{tmp_path / 'cache'} holds 1 incomplete cache(s) (a build that was stopped, or is running now; a run "
            "of its settings and listing continues it)\n") in caplog.text
    assert (f"this run takes from {stopped.name} (incomplete: the videos it encoded before it stopped) the video "
            "latents of 2 of these 4 videos (unchanged since); the others go through the VAE") in caplog.text
    assert _arrays(report)["latent_mean"].tobytes() == _arrays(sample_cache)["latent_mean"].tobytes()
    # Chunks an earlier release wrote do not record their rows' files: they give nothing
    (tmp_path / "cache" / report.path.name).rename(tmp_path / "built")
    process_file = next((stopped / "chunks").iterdir()) / "process.json"
    process_file.write_text(json.dumps({k: v for k, v in json.loads(process_file.read_text()).items() if k != "keys"}))
    videos.clear()
    assert precompute_latent_cache(family, data, tmp_path / "cache", SETTINGS, chunk_size=2).num_reused_videos == 0
    assert len(videos) == 4


def test_a_build_stopped_while_writing_a_chunk_leaves_no_half_written_chunk(family, sample_dataset_dir, tmp_path,
                                                                            monkeypatch):
    from blueberry_video.data import cache

    write_latent_table = cache.write_latent_table

    def stopped_at_the_second_chunk(path, records):
        if stopped_at_the_second_chunk.calls == 1:
            write_latent_table(path, records[:1])  # part of it is on disk when the stop comes
            raise KeyboardInterrupt
        stopped_at_the_second_chunk.calls += 1
        write_latent_table(path, records)

    stopped_at_the_second_chunk.calls = 0
    monkeypatch.setattr(cache, "write_latent_table", stopped_at_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        precompute_latent_cache(family, sample_dataset_dir, tmp_path, SETTINGS, chunk_size=2)
    chunks = next(tmp_path.iterdir()) / "chunks"
    assert [path.name for path in chunks.iterdir()] == ["000000-000002"]


def test_a_resume_with_another_chunk_size_keeps_every_item(family, sample_dataset_dir, tmp_path, monkeypatch):
    encode_videos = family.encode_videos
    calls = []

    def failing_second(encoders, videos):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return encode_videos(encoders, videos)

    monkeypatch.setattr(family, "encode_videos", failing_second)
    with pytest.raises(RuntimeError):
        precompute_latent_cache(family, sample_dataset_dir, tmp_path, SETTINGS, chunk_size=1)
    monkeypatch.setattr(family, "encode_videos", encode_videos)
    # The finished chunk held item 0 alone; a chunk of 3 starting at item 0 must not be taken for it.
    report = precompute_latent_cache(family, sample_dataset_dir, tmp_path, SETTINGS, chunk_size=3)
    assert cached_table(report)["index"] == [0, 1, 2, 3]


def test_a_dataset_folder_reached_through_a_symlink_may_list_its_videos_by_absolute_path(
        family, sample_dataset_dir, tmp_path):
    real = copy_dataset(sample_dataset_dir, tmp_path / "real", count=1)
    (tmp_path / "link").symlink_to(real)
    records = metadata(real)
    for record in records:
        record["file"] = str(tmp_path / "link" / record["file"])
    (real / "metadata.json").write_text(json.dumps(records))
    report = precompute_latent_cache(family, tmp_path / "link", tmp_path / "cache", SETTINGS)
    assert report.num_cached == 1 and not report.skipped


def test_a_cache_folder_that_cannot_be_written_is_refused_with_the_setting_that_moves_it(
        family, one_video_dataset_dir, tmp_path):
    (tmp_path / "not-a-folder").write_text("")  # as unwritable as a read-only share, for root too
    with pytest.raises(ConfigError, match=r"cannot write the latent cache folder .*not-a-folder.*--cache_dir"):
        precompute_latent_cache(family, one_video_dataset_dir, tmp_path / "not-a-folder" / "cache", SETTINGS)


def test_a_video_the_storage_does_not_serve_in_time_stops_the_build_and_is_not_kept_as_a_skip(
        family, one_video_dataset_dir, tmp_path, monkeypatch):
    from blueberry_video.data import decode

    with monkeypatch.context() as stalled:
        stalled.setattr(decode, "PROBE_TIMEOUT_S", 0.001)
        with pytest.raises(decode.VideoReadTimeoutError):
            precompute_latent_cache(family, one_video_dataset_dir, tmp_path / "cache", SETTINGS)
    assert not list((tmp_path / "cache").glob("*/manifest.json"))  # no complete cache remembers it as skipped
    assert precompute_latent_cache(family, one_video_dataset_dir, tmp_path / "cache", SETTINGS).skipped == []


@pytest.fixture
def mixed_dataset(tmp_path, sample_dataset_dir, garbage_video, zero_byte_video, truncated_video, audio_only_video):
    """Two good videos among every kind of bad one: undecodable files, a missing file, a missing caption."""
    root = tmp_path / "mixed"
    (root / "videos").mkdir(parents=True)
    good = metadata(sample_dataset_dir)[:2]
    for record in good:
        shutil.copy(sample_dataset_dir / record["file"], root / record["file"])
    undecodable = {"garbage.mp4": garbage_video, "zero.mp4": zero_byte_video, "truncated.mp4": truncated_video,
                   "audio_only.mp4": audio_only_video}
    for name, source in undecodable.items():
        shutil.copy(source, root / "videos" / name)
    shutil.copy(sample_dataset_dir / good[0]["file"], root / "videos" / "no_caption.mp4")
    records = [good[0], *({"file": f"videos/{name}", "caption": f"clip {name}"} for name in undecodable),
               {"file": "videos/no_caption.mp4", "caption": ""},
               {"file": "videos/missing.mp4", "caption": "a clip that was never copied"}, good[1]]
    (root / "metadata.json").write_text(json.dumps(records))
    return root, good


EXPECTED_REASONS = {
    "garbage.mp4": "moov atom not found",
    "zero.mp4": "empty (0 bytes)",
    "truncated.mp4": "moov atom not found",
    "audio_only.mp4": "no video stream",
    "no_caption.mp4": "no caption",
    "missing.mp4": "not found",
}


def test_bad_items_are_skipped_and_reported(family, mixed_dataset, tmp_path):
    root, good = mixed_dataset
    report = precompute_latent_cache(family, root, tmp_path / "cache", SETTINGS)
    assert report.num_cached == 2
    assert cached_table(report)["video"] == [good[0]["file"], good[1]["file"]]
    assert len(report.skipped) == len(EXPECTED_REASONS)
    for name, reason in EXPECTED_REASONS.items():
        matches = [s for s in report.skipped if name in s["source"] + " " + s["reason"]]
        assert len(matches) == 1, (name, report.skipped)
        assert reason in matches[0]["reason"], (name, matches[0])
        assert name in report.summary()
    manifest = json.loads((report.path / "manifest.json").read_text())
    assert manifest["skipped"] == report.skipped
    assert precompute_latent_cache(family, root, tmp_path / "cache", SETTINGS).skipped == report.skipped


def test_strict_refuses_unusable_rows_and_videos_together(family, mixed_dataset, tmp_path):
    # Rows the metadata gets wrong (no caption, a missing file) and videos that do not decode: one refusal
    root, _ = mixed_dataset
    with pytest.raises(DatasetFormatError, match="strict_data is set and 6 video") as refused:
        precompute_latent_cache(family, root, tmp_path / "cache", SETTINGS, strict=True)
    for name, reason in EXPECTED_REASONS.items():
        assert name in str(refused.value) and reason in str(refused.value), name


def test_strict_refuses_naming_every_undecodable_video_and_keeps_the_others_latents(family, mixed_dataset,
                                                                                   tmp_path, monkeypatch):
    root, good = mixed_dataset
    records = [r for r in metadata(root) if r["caption"] and "missing" not in r["file"]]
    (root / "metadata.json").write_text(json.dumps(records))
    with pytest.raises(DatasetFormatError, match="strict_data is set and 4 video") as refused:
        precompute_latent_cache(family, root, tmp_path / "cache", SETTINGS, strict=True)
    for name in ("garbage.mp4", "zero.mp4", "truncated.mp4", "audio_only.mp4"):  # one line each
        assert re.search(f"\n  {root / 'videos' / name}: [^\n]*{re.escape(EXPECTED_REASONS[name])}",
                         str(refused.value))
    # Without the bad videos, the good ones' latents come from the cache the refused run built.
    (root / "metadata.json").write_text(json.dumps(good))
    videos = _count_calls(monkeypatch, family, "encode_videos")
    fixed = precompute_latent_cache(family, root, tmp_path / "cache", SETTINGS, strict=True)
    assert fixed.num_cached == len(good) and fixed.num_reused_videos == len(good) and videos == []


def test_a_moved_dataset_names_the_videos_its_reused_cache_skipped_where_they_are_now(family, mixed_dataset,
                                                                                      tmp_path):
    root, _ = mixed_dataset
    built = precompute_latent_cache(family, root, root / ".latent_cache", SETTINGS)
    moved = Path(shutil.move(root, tmp_path / "moved"))  # keeps the modification times: the cache is reused
    again = precompute_latent_cache(family, moved, moved / ".latent_cache", SETTINGS)
    assert again.reused and len(again.skipped) == len(built.skipped)
    assert str(moved / "videos" / "garbage.mp4") in {item["source"] for item in again.skipped}
    assert str(root) not in again.summary()


def test_strict_refuses_what_a_reused_cache_skipped(family, mixed_dataset, tmp_path):
    # A cache built without strict_data (e.g. by `blueberry-video precompute`) recorded the undecodable video as
    # skipped; a strict run that reuses it must refuse as if it had found the video itself.
    root, good = mixed_dataset
    records = [r for r in metadata(root) if r["caption"] and "missing" not in r["file"]]
    (root / "metadata.json").write_text(json.dumps(records))
    built = precompute_latent_cache(family, root, tmp_path / "cache", SETTINGS)
    assert built.skipped
    with pytest.raises(DatasetFormatError, match=f"(?s)strict_data is set and 4 video.*{built.path}.*garbage.mp4"):
        precompute_latent_cache(family, root, tmp_path / "cache", SETTINGS, strict=True)


def test_a_dataset_with_no_usable_video_raises_with_the_reasons(family, mixed_dataset, sample_dataset_dir, tmp_path):
    root, good = mixed_dataset
    records = [r for r in metadata(root) if r not in good]
    (root / "metadata.json").write_text(json.dumps(records))
    with pytest.raises(EmptyCacheError) as raised:
        precompute_latent_cache(family, root, tmp_path / "cache", SETTINGS)
    message = str(raised.value)
    assert "no video could be encoded" in message
    for name in ("garbage.mp4", "zero.mp4", "truncated.mp4"):
        assert name in message and EXPECTED_REASONS[name] in message
    # Videos all too short for the clip share one reason: told once, naming them together
    with pytest.raises(EmptyCacheError) as raised:
        precompute_latent_cache(family, sample_dataset_dir, tmp_path / "cache",
                                dataclasses.replace(SETTINGS, sampling=dataclasses.replace(SAMPLING, num_frames=57)))
    message = str(raised.value)
    assert message.count("ask for fewer --max_num_frames") == 1 and message.count(".mp4") == 4, message


@pytest.fixture(scope="module")
def noted_cache(family, sample_dataset_dir, tmp_path_factory):
    """A cache with a note of each kind: a 4 fps video sampled at fps=8, a caption longer than the tiny T5's 32
    tokens, and a video file the metadata does not list (and one in the cache folder, which is not the dataset's)."""
    from blueberry_video.data.sample_videos import create_sample_videos

    root = tmp_path_factory.mktemp("noted")
    slow = create_sample_videos(root.parent / "slow", num=1, num_frames=9, fps=4).parent / "videos/0000.mp4"
    # 24 frames, the first 12 at 1/16 s, the rest at 1/8 s: about 11 fps on average, 16 as its base rate
    uneven = encode(root.parent / "uneven.mp4", "-f", "lavfi", "-i", "testsrc=size=160x96:rate=16", "-frames:v", "24",
                    "-vf", "setpts='if(lt(N,12),N/16/TB,(12/16+(N-12)/8)/TB)'", "-fps_mode", "vfr", *H264)
    first = metadata(sample_dataset_dir)[0]
    (root / "videos").mkdir()
    (root / "cache").mkdir()
    for source, name in ((sample_dataset_dir / first["file"], "videos/0000.mp4"), (slow, "videos/slow4.mp4"),
                         (sample_dataset_dir / first["file"], "videos/unlisted.mp4"), (slow, "cache/preview.mp4"),
                         (uneven, "videos/uneven.mp4")):
        shutil.copy(source, root / name)
    long_caption = " then ".join([first["caption"]] * 4)
    records = [{"file": "videos/0000.mp4", "caption": first["caption"]},
               {"file": "videos/slow4.mp4", "caption": long_caption},
               {"file": "videos/uneven.mp4", "caption": first["caption"]}]
    (root / "metadata.json").write_text(json.dumps(records))
    settings = CacheSettings(dataclasses.replace(SAMPLING, fps=8))
    return root, settings, precompute_latent_cache(family, root, root / "cache", settings)


def test_a_video_slower_than_fps_is_noted_not_skipped(noted_cache):
    root, _, report = noted_cache
    assert report.num_cached == 3 and report.skipped == []
    note = "1 video(s) have a frame rate below fps=8: their frames are repeated (videos/slow4.mp4 4 fps)"
    assert note in report.notes and note in report.summary()
    assert note in json.loads((report.path / "manifest.json").read_text())["notes"]


def test_a_video_of_variable_frame_rate_is_noted_as_sampled_by_timestamp(noted_cache):
    root, _, report = noted_cache
    [note] = [line for line in report.notes if "variable frame rate" in line]
    assert note == ("1 video(s) have a variable frame rate: fps=8 took their frames by timestamp, the one nearest "
                    "each 1/8 s (videos/uneven.mp4 10.97 fps on average)")


def test_a_cache_that_took_a_variable_frame_rate_video_by_count_gives_the_others_latents_not_its(
        noted_cache, family, tmp_path, monkeypatch):
    root, settings, _ = noted_cache
    data = shutil.copytree(root, tmp_path / "data", ignore=shutil.ignore_patterns("cache"))  # keeps the mtimes
    with monkeypatch.context() as version_1:
        version_1.setattr(cache_module, "CACHE_FORMAT_VERSION", 1)
        old = precompute_latent_cache(family, data, tmp_path / "cache", settings)
    assert json.loads((old.path / "manifest.json").read_text())["format_version"] == 1
    videos = _count_calls(monkeypatch, family, "encode_videos")
    new = precompute_latent_cache(family, data, tmp_path / "cache", settings)
    # Version 1 sampled uneven.mp4 by count: of the three videos, only it goes through the VAE again.
    assert new.path != old.path and new.num_reused_videos == 2 and new.reused_videos_from == [str(old.path)]
    assert len(videos) == 1 and videos[0].shape[0] == 1
    # Nor those of other containers, whose header states one rate whatever the spacing.
    from blueberry_video.data.cache_reuse import CacheHoldings, _sampled_by_count

    def holdings(format_version: int) -> CacheHoldings:
        rows = [["videos/a.mkv", 1, 1, ""], ["videos/b.MP4", 1, 1, ""], ["videos/c.webm", 1, 1, ""]]
        return CacheHoldings(old.path, rows, tables=[], video_columns=[], digests={},
                             note_items={"variable_frame_rate": []}, format_version=format_version, complete=True)

    assert _sampled_by_count(holdings(1), fps_sampled=True) == {"videos/a.mkv", "videos/c.webm"}
    assert _sampled_by_count(holdings(1), fps_sampled=False) == set()  # consecutive frames: no change
    assert _sampled_by_count(holdings(2), fps_sampled=True) == set()
    # One from before that note was kept cannot tell which video it took by count: it gives none.
    manifest = json.loads((old.path / "manifest.json").read_text())
    del manifest["note_items"]["variable_frame_rate"]
    (old.path / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(new.path)
    assert precompute_latent_cache(family, data, tmp_path / "cache", settings).num_reused_videos == 0


def test_a_video_cut_short_is_noted_and_its_note_goes_with_its_latents(family, sample_dataset_dir,
                                                                       truncated_mkv_video, tmp_path):
    # A partial download: spread over the 0.7 s that decode of the 2 s its header gives, its clip is sound but
    # shows a third of what the caption describes.
    root = tmp_path / "data"
    (root / "videos").mkdir(parents=True)
    first = metadata(sample_dataset_dir)[0]
    shutil.copy(sample_dataset_dir / first["file"], root / "videos/0000.mp4")
    shutil.copy(truncated_mkv_video, root / "videos/partial.mkv")
    records = [{"file": "videos/0000.mp4", "caption": first["caption"]},
               {"file": "videos/partial.mkv", "caption": first["caption"]}]
    (root / "metadata.json").write_text(json.dumps(records))
    settings = CacheSettings(dataclasses.replace(SAMPLING, spread=True))
    report = precompute_latent_cache(family, root, tmp_path / "cache", settings)
    assert report.num_cached == 2 and report.skipped == []
    [note] = [line for line in report.notes if "truncated" in line]
    assert re.fullmatch(r"1 video\(s\) look truncated or damaged: their streams end before the duration their header "
                        r"gives, and their clips are spread over the part that decodes; re-encode or re-download them "
                        r"\(videos/partial.mkv 0.\d\d of 2.00 s\)", note)
    assert note in report.summary() and note in json.loads((report.path / "manifest.json").read_text())["notes"]
    # An edited caption: the new cache takes the video's latents from this one, and its note with them.
    records[1]["caption"] = "a partial download"
    (root / "metadata.json").write_text(json.dumps(records))
    edited = precompute_latent_cache(family, root, tmp_path / "cache", settings)
    assert edited.path != report.path and edited.num_reused_videos == 2 and note in edited.notes
    # strict_data refuses it, built now or read again, naming it where the dataset is
    for _ in range(2):
        with pytest.raises(DatasetFormatError, match=r"strict_data is set and 1 video\(s\) are unusable \(the latent "
                                                     r"cache .* holds 1 damaged or cut short; .*\n  "
                                                     + re.escape(str(root / "videos/partial.mkv"))
                                                     + r": truncated or damaged: its stream ends at 0\.\d\d of the "
                                                       r"2\.00 s"):
            precompute_latent_cache(family, root, tmp_path / "strict", settings, strict=True)


@pytest.mark.parametrize("short_video", ["loop", "pad"])
def test_clips_that_short_video_filled_are_noted(short_video, family, sample_dataset_dir, tmp_path):
    data = copy_dataset(sample_dataset_dir, tmp_path / "data", count=2)  # 49 frames each: 5 after the skip
    settings = CacheSettings(dataclasses.replace(SAMPLING, skip_frames_start=44, short_video=short_video))
    report = precompute_latent_cache(family, data, tmp_path / "cache", settings)
    how = "repeating them" if short_video == "loop" else "repeating the last"
    names = [record["file"] for record in metadata(data)]
    note = (f"2 video(s) gave fewer than the 9 frames a clip takes, which short_video={short_video} filled by {how} "
            f"({names[0]} 5 frames, {names[1]} 5 frames)")
    assert report.num_cached == 2 and note in report.notes and note in report.summary()
    # A clip that fits is not noted
    whole = CacheSettings(dataclasses.replace(SAMPLING, short_video=short_video))
    assert not any("filled" in line for line in precompute_latent_cache(family, data, tmp_path / "cache", whole).notes)


def test_a_video_with_damage_ffmpeg_conceals_is_noted_and_refused_by_strict_data(family, sample_dataset_dir,
                                                                                 damaged_middle_video, tmp_path):
    data = copy_dataset(sample_dataset_dir, tmp_path / "data", count=1)
    shutil.copy(damaged_middle_video, data / "videos" / "damaged.mp4")
    (data / "metadata.json").write_text(json.dumps([*metadata(data), {"file": "videos/damaged.mp4",
                                                                       "caption": "a test card"}]))
    settings = CacheSettings(dataclasses.replace(SAMPLING, num_frames=17))
    report = precompute_latent_cache(family, data, tmp_path / "cache", settings)
    assert report.num_cached == 2  # cached, as ffmpeg decodes it: told, not skipped
    [note] = [line for line in report.notes if "damaged data" in line]
    assert re.fullmatch(r"1 video\(s\) hold damaged data that ffmpeg concealed as it decoded them up to their clips' "
                        r"last frames: the clips may show garbled frames \(unless all errors lay in frames skipped "
                        r"before them\); re-encode or re-download them \(videos/damaged\.mp4: \d+ error\(s\), "
                        r"\[.*h264.*\] .*\)", note), note
    with pytest.raises(DatasetFormatError, match=r"(?s)strict_data is set and 1 video.*damaged\.mp4: damaged: ffmpeg "
                                                 r"concealed \d+ decoding error"):
        precompute_latent_cache(family, data, tmp_path / "cache", settings, strict=True)


def test_a_caption_the_text_encoder_cuts_is_noted(noted_cache, tiny_cogvideox_dir):
    root, _, report = noted_cache
    tokenizer = CogVideoXPipeline.from_pretrained(tiny_cogvideox_dir, dtype=torch.float32).tokenizer
    tokens = len(tokenizer(metadata(root)[1]["caption"]).input_ids)
    note = (f"1 caption(s) are longer than the T5 text encoder's 32 tokens and were cut: "
            f"videos/slow4.mp4 ({tokens} tokens)")
    assert tokens > 32 and note in report.notes and note in report.summary()
    assert note in json.loads((report.path / "manifest.json").read_text())["notes"]


def test_video_files_the_metadata_does_not_list_are_noted_on_every_use(noted_cache, family, tmp_path):
    root, settings, report = noted_cache
    note = ("1 video file(s) under the dataset folder are not listed in metadata.json: videos/unlisted.mp4; "
            "add them to it to train on them")
    assert note in report.notes and "preview.mp4" not in report.summary()
    # The folder, not the cache, has them: a reused cache reports what the folder holds now.
    copy = Path(shutil.copytree(root, tmp_path / "copy"))
    (copy / "videos/unlisted.mp4").unlink()
    reused = precompute_latent_cache(family, copy, copy / "cache", settings)
    assert reused.reused and reused.path.name == report.path.name
    assert reused.notes == [line for line in report.notes if line != note]


def test_latent_cache_dataset_items_and_repeats(sample_cache, family):
    dataset = LatentCacheDataset(sample_cache.path)
    text_shapes = {k: v.shape for k, v in family.dummy_text_conditioning(torch.Generator().manual_seed(0)).items()}
    item = dataset[2]
    assert set(item) == {"latent_mean", "latent_std", "prompt_embeds", "sample_index"}
    assert item["latent_mean"].shape == item["latent_std"].shape == family.latent_shape(9, 96, 160)
    assert item["prompt_embeds"].shape == text_shapes["prompt_embeds"]
    assert item["latent_mean"].dtype == item["prompt_embeds"].dtype == torch.float32
    assert item["sample_index"].item() == 2

    repeated = LatentCacheDataset(sample_cache.path, repeats=3)
    assert len(repeated) == 12
    for sample_index in (1, 5, 9):
        again = repeated[sample_index]
        assert again["sample_index"].item() == sample_index
        for name in ("latent_mean", "latent_std", "prompt_embeds"):
            assert torch.equal(again[name], dataset[1][name])
    assert not torch.equal(dataset[0]["latent_mean"], dataset[1]["latent_mean"])


def test_dummy_dataset_is_deterministic_and_shaped_like_the_cache(family):
    dataset = DummyLatentDataset(family, num_samples=3, num_frames=9, height=96, width=160, seed=7)
    text = family.dummy_text_conditioning(torch.Generator().manual_seed(0))
    assert len(dataset) == 3
    item = dataset[1]
    assert item["latent_mean"].shape == item["latent_std"].shape == family.latent_shape(9, 96, 160)
    assert {k: item[k].shape for k in text} == {k: v.shape for k, v in text.items()}
    assert item["sample_index"].item() == 1

    same = DummyLatentDataset(family, num_samples=3, num_frames=9, height=96, width=160, seed=7)[1]
    for name in item:
        assert torch.equal(item[name], same[name])
    assert not torch.equal(dataset[0]["latent_mean"], item["latent_mean"])
    other_seed = DummyLatentDataset(family, num_samples=3, num_frames=9, height=96, width=160, seed=8)[1]
    assert not torch.equal(other_seed["latent_mean"], item["latent_mean"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _precompute_launch(model: Path, data: Path, out: Path, use_cpu: bool,
                       chunk_size: int | None = 1) -> tuple[list[str], dict]:
    """The command and environment of a two-process `precompute` with the flags that key the cache as SETTINGS."""
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "WORLD_SIZE", "RANK")}
    env["OMP_NUM_THREADS"] = "1"
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--main_process_port", str(_free_port()), "-m", "blueberry_video.cli", "precompute",
               "--model", str(model), "--data", str(data), "--out", str(out),
               "--height", "96", "--width", "160", "--num-frames", "9", "--dtype", "float32"]
    return command + ["--chunk-size", str(chunk_size)] * (chunk_size is not None), env


def _launch_precompute(model: Path, data: Path, out: Path, use_cpu: bool,
                       chunk_size: int | None = 1) -> subprocess.CompletedProcess:
    command, env = _precompute_launch(model, data, out, use_cpu, chunk_size)
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_process_precompute_shares_the_chunks(tiny_cogvideox_dir, sample_dataset_dir, sample_cache, tmp_path):
    # The default chunk size: 4 videos, fewer than a chunk of 8, still give each process its share (2 chunks of 2).
    result = _launch_precompute(tiny_cogvideox_dir, sample_dataset_dir, tmp_path, use_cpu=True, chunk_size=None)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cache_path = tmp_path / sample_cache.path.name  # these flags key the cache as SETTINGS does
    manifest = json.loads((cache_path / "manifest.json").read_text())
    assert manifest["num_cached"] == 4 and manifest["skipped"] == []
    assert manifest["encoded_by_process"] == {"0": 2, "1": 2}
    assert datasets.load_from_disk(str(cache_path / "dataset"))["index"] == [0, 1, 2, 3]
    launched, reference = LatentCacheDataset(cache_path), LatentCacheDataset(sample_cache.path)
    for i in range(4):
        for name in ("latent_mean", "latent_std", "prompt_embeds"):
            torch.testing.assert_close(launched[i][name], reference[i][name], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_two_processes_that_each_think_they_are_alone_are_refused(tiny_cogvideox_dir, sample_dataset_dir, tmp_path):
    result = _launch_precompute(tiny_cogvideox_dir, sample_dataset_dir, tmp_path, use_cpu=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "error: WORLD_SIZE=2" in output
    assert "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu" in output
    assert not list(tmp_path.glob("*/manifest.json"))


# A job of a sweep: builds the cache of the sample videos with SETTINGS; with a gate folder, it holds still in its
# first video until the test opens the gate, so that the other job surely starts while this one builds.
JOB = """
import json, sys, time
from pathlib import Path
from blueberry_video.data.cache import CacheSettings, precompute_latent_cache
from blueberry_video.data.decode import FrameSampling
from blueberry_video.models.cogvideox import CogVideoXFamily

model, data, cache, gate = sys.argv[1:]
family = CogVideoXFamily(model)
if gate:
    encode_videos = family.encode_videos
    def gated(encoders, videos):
        Path(gate, "encoding").touch()
        while not Path(gate, "open").exists():
            time.sleep(0.05)
        return encode_videos(encoders, videos)
    family.encode_videos = gated
report = precompute_latent_cache(family, data, cache, CacheSettings(FrameSampling(num_frames=9, height=96, width=160)))
print(json.dumps({"path": str(report.path), "reused": report.reused}))
"""


def _start_job(model: Path, data: Path, cache: Path, gate: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-c", JOB, str(model), str(data), str(cache), gate], cwd=REPO_ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=out, text=True)


def _wait_until(condition, job: subprocess.Popen, log: Path, what: str):
    deadline = time.monotonic() + 300  # against a hang only
    while not condition():
        assert job.poll() is None, f"the job ended before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after 300 s:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


@pytest.mark.slow
def test_two_jobs_building_the_same_cache_at_once_take_turns(tiny_cogvideox_dir, sample_dataset_dir, sample_cache,
                                                              tmp_path):
    gate, cache = tmp_path / "gate", tmp_path / "cache"
    gate.mkdir()
    first = _start_job(tiny_cogvideox_dir, sample_dataset_dir, cache, str(gate), tmp_path / "first.log")
    _wait_until((gate / "encoding").exists, first, tmp_path / "first.log", "encoding")
    second = _start_job(tiny_cogvideox_dir, sample_dataset_dir, cache, "", tmp_path / "second.log")
    waiting = f"another process is building this cache ({cache / sample_cache.path.name}); waiting"
    _wait_until(lambda: waiting in (tmp_path / "second.log").read_text(), second, tmp_path / "second.log",
                "message that it waits for the first job")
    (gate / "open").touch()
    results = []
    for job, log in ((first, "first.log"), (second, "second.log")):
        stdout, _ = job.communicate(timeout=300)
        assert job.returncode == 0, (tmp_path / log).read_text()[-3000:]
        results.append(json.loads(stdout.splitlines()[-1]))
    cache_path = cache / sample_cache.path.name
    assert [result["path"] for result in results] == [str(cache_path)] * 2
    assert [result["reused"] for result in results] == [False, True]  # the second waited and encoded nothing
    manifest = json.loads((cache_path / "manifest.json").read_text())
    assert manifest["num_cached"] == 4 and manifest["encoded_by_process"] == {"0": 4}
    built, reference = LatentCacheDataset(cache_path), LatentCacheDataset(sample_cache.path)
    for i in range(4):
        for name in ("latent_mean", "latent_std", "prompt_embeds"):
            torch.testing.assert_close(built[i][name], reference[i][name], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_two_process_job_waits_for_another_jobs_build_then_builds(tiny_cogvideox_dir, sample_dataset_dir,
                                                                     sample_cache, tmp_path):
    # Only the job's main process waits on the lock; the other must wait with it, not fail or hang on a barrier.
    cache_path = tmp_path / "cache" / sample_cache.path.name
    cache_path.mkdir(parents=True)
    other_job = open(cache_path / "build.lock", "a+")
    fcntl.flock(other_job, fcntl.LOCK_EX)
    command, env = _precompute_launch(tiny_cogvideox_dir, sample_dataset_dir, tmp_path / "cache", use_cpu=True)
    log = tmp_path / "job.log"
    with open(log, "w") as out:
        job = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until(lambda: f"another process is building this cache ({cache_path}); waiting" in log.read_text(),
                    job, log, "message that it waits")
    finally:
        other_job.close()  # the other job ends without a cache (it was stopped): this one builds it
    assert job.wait(timeout=300) == 0, log.read_text()[-3000:]
    manifest = json.loads((cache_path / "manifest.json").read_text())
    assert manifest["num_cached"] == 4 and manifest["encoded_by_process"] == {"0": 2, "1": 2}


@pytest.mark.slow
def test_sigterm_while_encoding_says_what_is_kept_and_the_next_run_encodes_only_the_rest(tiny_cogvideox_dir,
                                                                                          tmp_path):
    import signal

    from blueberry_video.data.sample_videos import create_sample_videos

    def finished_chunks():  # not the .tmp folders being written
        return [p for p in (tmp_path / "cache").glob("*/chunks/*") if re.fullmatch(r"\d{6}-\d{6}", p.name)]

    data = tmp_path / "videos"
    create_sample_videos(data, num=12)
    command = [sys.executable, "-m", "blueberry_video.cli", "precompute", "--model", str(tiny_cogvideox_dir),
               "--data", str(data), "--out", str(tmp_path / "cache"), "--height", "96", "--width", "160",
               "--num-frames", "9", "--chunk-size", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not finished_chunks():
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    kept = re.search(r"error: SIGTERM: stopped while encoding the latent cache .*: (\d+) of 12 videos are encoded "
                     r"and kept .*run the same command again", stderr)
    assert kept and "Traceback" not in stderr, stderr[-2000:]
    assert 1 <= int(kept.group(1)) < 12

    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    remaining = 12 - int(kept.group(1))
    assert f"| {remaining}/{remaining} " in again.stderr  # only the videos not kept went through the encoders
    assert "12 cached" in again.stdout


@pytest.mark.slow
def test_ctrl_c_to_a_two_process_build_prints_what_is_kept_once_and_no_process_traceback(tiny_cogvideox_dir,
                                                                                         tmp_path):
    import signal

    from blueberry_video.data.sample_videos import create_sample_videos

    def finished_chunks():
        return {p.name for p in (tmp_path / "cache").glob("*/chunks/*") if re.fullmatch(r"\d{6}-\d{6}", p.name)}

    # Chunks of 4: process 0 encodes videos 0-3, process 1 video 4 alone, then waits for process 0
    data = tmp_path / "videos"
    create_sample_videos(data, num=5, num_frames=17)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "-m",
               "blueberry_video.cli", "precompute", "--model", str(tiny_cogvideox_dir), "--data", str(data),
               "--out", str(tmp_path / "cache"), "--height", "96", "--width", "160", "--num-frames", "9",
               "--chunk-size", "4"]
    # A session of its own: Ctrl-C in a terminal signals the launcher and every process of the launch
    launch = subprocess.Popen(command, env={**os.environ, "ACCELERATE_USE_CPU": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while "000004-000005" not in finished_chunks():
        assert launch.poll() is None and time.time() < deadline, launch.communicate()
        time.sleep(0.01)
    assert "000000-000004" not in finished_chunks()  # process 0 is still encoding: process 1 waits
    os.killpg(launch.pid, signal.SIGINT)
    _, stderr = launch.communicate(timeout=120)
    assert stderr.count("error: SIGINT: stopped while encoding the latent cache") == 1, stderr[-3000:]
    assert "of 5 videos are encoded and kept" in stderr
    assert "[rank" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
