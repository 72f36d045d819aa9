"""The latent cache on the tiny CogVideoX model and real videos: contents, reuse, rebuilds, resume, bad data."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from diffusers import CogVideoXPipeline
from safetensors.torch import load_file, save_file

import blueberry_video.data.cache as cache_module
from blueberry_video.data.cache import CacheSettings, EmptyCacheError, precompute_latent_cache
from blueberry_video.data.decode import FrameSampling, VideoDecodeError, decode_video
from blueberry_video.data.formats import DatasetFormatError
from blueberry_video.data.latent_dataset import DummyLatentDataset, LatentCacheDataset
from blueberry_video.models.cogvideox import CogVideoXFamily
from tests.conftest import REPO_ROOT

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

    monkeypatch.setattr(cache_module, "decode_video", no_decoding)
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
        dict(cache_dtype="float16"),
        dict(id_token="sks"),
    ],
    ids=["height", "width", "num_frames", "fps", "crop", "cache_dtype", "id_token"],
)
def test_a_changed_setting_builds_a_new_cache(one_video, family, change):
    data, cache_root, base = one_video
    changed = precompute_latent_cache(family, data, cache_root, dataclasses.replace(SETTINGS, **change))
    assert changed.path != base.path
    assert not changed.reused and changed.num_cached == 1
    unchanged = precompute_latent_cache(family, data, cache_root, SETTINGS)
    assert unchanged.path == base.path and unchanged.reused


def test_a_new_cache_beside_others_says_which_settings_differ(one_video_dataset_dir, family, tmp_path, caplog):
    # e.g. `blueberry-video precompute` run ahead with other flags than the training's: the re-encode is explained
    precompute_latent_cache(family, one_video_dataset_dir, tmp_path, SETTINGS)
    with caplog.at_level(logging.WARNING, logger="blueberry_video.data.cache"):
        precompute_latent_cache(family, one_video_dataset_dir, tmp_path,
                                dataclasses.replace(SETTINGS, encode_dtype="bfloat16", cache_dtype="float16"))
    assert "building a new latent cache" in caplog.text
    assert "differs in settings.cache_dtype, settings.encode_dtype" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="blueberry_video.data.cache"):
        precompute_latent_cache(family, one_video_dataset_dir, tmp_path / "empty", SETTINGS)
    assert "building a new latent cache" not in caplog.text  # nothing else there: nothing to explain


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


@pytest.mark.parametrize("change", [_edit_caption, _replace_video, _touch_vae_weights, _rewrite_vae_weights],
                         ids=["caption", "video_file", "vae_touched", "vae_rewritten"])
def test_a_changed_file_builds_a_new_cache(change, one_video_dataset_dir, tiny_cogvideox_dir, tmp_path):
    data = copy_dataset(one_video_dataset_dir, tmp_path / "data")
    model = Path(shutil.copytree(tiny_cogvideox_dir, tmp_path / "model"))
    cache_root = tmp_path / "cache"
    before = precompute_latent_cache(CogVideoXFamily(model), data, cache_root, SETTINGS)
    assert precompute_latent_cache(CogVideoXFamily(model), data, cache_root, SETTINGS).path == before.path
    change(data, model)
    after = precompute_latent_cache(CogVideoXFamily(model), data, cache_root, SETTINGS)
    assert after.path != before.path and not after.reused


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
    real_decode = cache_module.decode_video

    def recording_decode(path, sampling, *args, **kwargs):
        decoded.append(Path(path).name)
        return real_decode(path, sampling, *args, **kwargs)

    monkeypatch.setattr(family, "encode_videos", flaky_encode)
    monkeypatch.setattr(cache_module, "decode_video", recording_decode)
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


def test_strict_refuses_unusable_rows(family, mixed_dataset, tmp_path):
    root, _ = mixed_dataset
    with pytest.raises(DatasetFormatError, match="no caption"):
        precompute_latent_cache(family, root, tmp_path / "cache", SETTINGS, strict=True)


def test_strict_refuses_an_undecodable_video(family, mixed_dataset, tmp_path):
    root, good = mixed_dataset
    records = [r for r in metadata(root) if r["caption"] and "missing" not in r["file"]]
    (root / "metadata.json").write_text(json.dumps(records))
    with pytest.raises(VideoDecodeError, match="garbage.mp4.*strict_data"):
        precompute_latent_cache(family, root, tmp_path / "cache", SETTINGS, strict=True)
    assert not list((tmp_path / "cache").glob("*/manifest.json"))


def test_strict_refuses_what_a_reused_cache_skipped(family, mixed_dataset, tmp_path):
    # A cache built without strict_data (e.g. by `blueberry-video precompute`) recorded the undecodable video as
    # skipped; a strict run that reuses it must refuse as if it had found the video itself.
    root, good = mixed_dataset
    records = [r for r in metadata(root) if r["caption"] and "missing" not in r["file"]]
    (root / "metadata.json").write_text(json.dumps(records))
    built = precompute_latent_cache(family, root, tmp_path / "cache", SETTINGS)
    assert built.skipped
    with pytest.raises(VideoDecodeError, match="garbage.mp4.*strict_data"):
        precompute_latent_cache(family, root, tmp_path / "cache", SETTINGS, strict=True)


def test_a_dataset_with_no_usable_video_raises_with_the_reasons(family, mixed_dataset, tmp_path):
    root, good = mixed_dataset
    records = [r for r in metadata(root) if r not in good]
    (root / "metadata.json").write_text(json.dumps(records))
    with pytest.raises(EmptyCacheError) as raised:
        precompute_latent_cache(family, root, tmp_path / "cache", SETTINGS)
    message = str(raised.value)
    assert "no video could be encoded" in message
    for name in ("garbage.mp4", "zero.mp4", "truncated.mp4"):
        assert name in message and EXPECTED_REASONS[name] in message


@pytest.fixture(scope="module")
def noted_cache(family, sample_dataset_dir, tmp_path_factory):
    """A cache with a note of each kind: a 4 fps video sampled at fps=8, a caption longer than the tiny T5's 32
    tokens, and a video file the metadata does not list (and one in the cache folder, which is not the dataset's)."""
    from blueberry_video.data.sample_videos import create_sample_videos

    root = tmp_path_factory.mktemp("noted")
    slow = create_sample_videos(root.parent / "slow", num=1, num_frames=9, fps=4).parent / "videos/0000.mp4"
    first = metadata(sample_dataset_dir)[0]
    (root / "videos").mkdir()
    (root / "cache").mkdir()
    for source, name in ((sample_dataset_dir / first["file"], "videos/0000.mp4"), (slow, "videos/slow4.mp4"),
                         (sample_dataset_dir / first["file"], "videos/unlisted.mp4"), (slow, "cache/preview.mp4")):
        shutil.copy(source, root / name)
    long_caption = " then ".join([first["caption"]] * 4)
    records = [{"file": "videos/0000.mp4", "caption": first["caption"]},
               {"file": "videos/slow4.mp4", "caption": long_caption}]
    (root / "metadata.json").write_text(json.dumps(records))
    settings = CacheSettings(dataclasses.replace(SAMPLING, fps=8))
    return root, settings, precompute_latent_cache(family, root, root / "cache", settings)


def test_a_video_slower_than_fps_is_noted_not_skipped(noted_cache):
    root, _, report = noted_cache
    assert report.num_cached == 2 and report.skipped == []
    note = "1 video(s) have a frame rate below fps=8: their frames are repeated (videos/slow4.mp4 4 fps)"
    assert note in report.notes and note in report.summary()
    assert note in json.loads((report.path / "manifest.json").read_text())["notes"]


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


def _launch_precompute(model: Path, data: Path, out: Path, use_cpu: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "WORLD_SIZE", "RANK")}
    env["OMP_NUM_THREADS"] = "1"
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--main_process_port", str(_free_port()), "-m", "blueberry_video.cli", "precompute",
               "--model", str(model), "--data", str(data), "--out", str(out),
               "--height", "96", "--width", "160", "--num-frames", "9", "--dtype", "float32", "--chunk-size", "1"]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_process_precompute_shares_the_chunks(tiny_cogvideox_dir, sample_dataset_dir, sample_cache, tmp_path):
    result = _launch_precompute(tiny_cogvideox_dir, sample_dataset_dir, tmp_path, use_cpu=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cache_path = tmp_path / sample_cache.path.name  # these flags key the cache as SETTINGS does
    manifest = json.loads((cache_path / "manifest.json").read_text())
    assert manifest["num_cached"] == 4 and manifest["skipped"] == []
    # chunk_size 1: chunks 0 and 2 are process 0's, 1 and 3 process 1's
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
