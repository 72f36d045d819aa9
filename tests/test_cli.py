"""The `blueberry-video` command on the tiny model and real videos: each verb's output is checked by loading it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import imageio_ffmpeg
import pytest
import torch
from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from blueberry_video.cli import main
from blueberry_video.data.decode import FrameSampling, VideoTooShortError, decode_video
from blueberry_video.data.latent_dataset import LatentCacheDataset
from blueberry_video.errors import ConfigError
from tests.conftest import REPO_ROOT

SHAPE = ["--height", "96", "--width", "160"]


def console_script() -> str:
    # The script installed beside this interpreter, so the test does not depend on PATH.
    script = Path(sys.executable).parent / "blueberry-video"
    return str(script) if script.exists() else shutil.which("blueberry-video")


def assert_same_weights(a, b):
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


def test_make_tiny_model_writes_a_loadable_pipeline(tmp_path, tiny_cogvideox_dir, capsys):
    main(["make-tiny-model", "--family", "cogvideox", str(tmp_path / "tiny")])
    assert str(tmp_path / "tiny") in capsys.readouterr().out
    pipe = CogVideoXPipeline.from_pretrained(tmp_path / "tiny")
    assert pipe.transformer.config.num_layers <= 2  # tiny, not a default-size model
    # The default seed is the one the session fixture was built with: same weights.
    assert_same_weights(pipe.transformer, CogVideoXPipeline.from_pretrained(tiny_cogvideox_dir).transformer)


def test_make_tiny_model_through_the_installed_command(tmp_path):
    result = subprocess.run([console_script(), "make-tiny-model", "--family", "cogvideox", "--seed", "1",
                             str(tmp_path / "tiny")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    pipe = CogVideoXPipeline.from_pretrained(tmp_path / "tiny")
    assert pipe.vae is not None and pipe.text_encoder is not None and pipe.tokenizer is not None


def test_create_sample_videos_writes_decodable_videos_and_captions(tmp_path, capsys):
    out = tmp_path / "samples"
    main(["create-sample-videos", str(out), "--num", "2", "--num-frames", "9"])
    assert "2 videos written" in capsys.readouterr().out
    records = json.loads((out / "metadata.json").read_text())
    assert len(records) == 2 and sorted(p.name for p in (out / "videos").iterdir()) == ["0000.mp4", "0001.mp4"]
    clips = []
    for record in records:
        assert record["caption"].strip()
        clips.append(decode_video(out / record["file"], FrameSampling(num_frames=9, height=96, width=160)))
        with pytest.raises(VideoTooShortError):  # exactly the 9 frames asked for
            decode_video(out / record["file"], FrameSampling(num_frames=10, height=96, width=160))
    assert clips[0].shape == (9, 3, 96, 160)
    assert not torch.equal(clips[0], clips[1])
    assert (clips[0][0] - clips[0][-1]).abs().max() > 0.1  # the shape moves


def test_precompute_writes_a_cache_whose_report_matches(tmp_path, tiny_cogvideox_dir, sample_dataset_dir,
                                                        capsys, fresh_accelerate_state, no_allocator_setting):
    data = tmp_path / "data"
    shutil.copytree(sample_dataset_dir, data)
    (data / "videos" / "broken.mp4").write_bytes(b"not a video" * 100)
    records = json.loads((data / "metadata.json").read_text())[:2]
    records.append({"file": "videos/broken.mp4", "caption": "a clip that will not decode"})
    (data / "metadata.json").write_text(json.dumps(records))

    main(["precompute", "--model", str(tiny_cogvideox_dir), "--data", str(data), "--out", str(tmp_path / "cache"),
          *SHAPE, "--num-frames", "9"])
    out = capsys.readouterr().out
    assert ": 2 cached, 1 skipped" in out and "broken.mp4" in out
    (cache_path,) = (tmp_path / "cache").iterdir()
    manifest = json.loads((cache_path / "manifest.json").read_text())
    assert manifest["num_cached"] == 2 and len(manifest["skipped"]) == 1
    assert len(LatentCacheDataset(cache_path)) == 2
    assert datasets.load_from_disk(str(cache_path / "dataset"))["video"] == [r["file"] for r in records[:2]]
    # The VAE encode ran the training run's allocator.
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"


def test_precompute_refuses_a_frame_count_the_vae_cannot_take(tmp_path, tiny_cogvideox_dir, sample_dataset_dir,
                                                              fresh_accelerate_state):
    with pytest.raises(ConfigError, match="max_num_frames=8.*use 9"):
        main(["precompute", "--model", str(tiny_cogvideox_dir), "--data", str(sample_dataset_dir),
              "--out", str(tmp_path / "cache"), *SHAPE, "--num-frames", "8"])
    assert not (tmp_path / "cache").exists()


def test_precompute_with_the_training_config_builds_the_cache_training_reads(
        tmp_path, tiny_cogvideox_dir, sample_dataset_dir, capsys, fresh_accelerate_state):
    # The settings the shipped configs use (bf16 encoders, a float16 cache, fps) are not precompute's old
    # defaults: given the training's config and flags, precompute builds the very cache training then reuses.
    config = tmp_path / "train.yaml"
    config.write_text("height: 96\nwidth: 160\nmax_num_frames: 9\nfps: 8\ncache_dtype: float16\n"
                      "mixed_precision: bf16\nrank: 4\nlora_alpha: 4\n")
    common = ["--config", str(config), "--pretrained_model_name_or_path", str(tiny_cogvideox_dir),
              "--instance_data_root", str(sample_dataset_dir), "--cache_dir", str(tmp_path / "cache")]
    main(["precompute", *common])
    assert "(reused)" not in capsys.readouterr().out
    sys.path.insert(0, str(REPO_ROOT / "recipes"))
    import train_cogvideox

    train_cogvideox.main([*common, "--output_dir", str(tmp_path / "run"), "--max_train_steps", "1",
                          "--checkpointing_steps", "0"])
    assert "(reused)" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").iterdir())) == 1


@pytest.fixture(scope="module")
def random_lora(tiny_cogvideox_dir, tmp_path_factory) -> Path:
    """A LoRA on the tiny transformer whose B weights are random, so it changes the output."""
    transformer = CogVideoXTransformer3DModel.from_pretrained(tiny_cogvideox_dir, subfolder="transformer")
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    state = get_peft_model_state_dict(transformer)
    assert any("lora_B" in key and value.abs().sum() > 0 for key, value in state.items())
    out = tmp_path_factory.mktemp("lora")
    CogVideoXPipeline.save_lora_weights(out, transformer_lora_layers=state)
    return out


def generate(model: Path, out: Path, *extra: str, num_frames: int = 9) -> torch.Tensor:
    main(["generate", "--model", str(model), "--prompt", "a red circle moving left to right", "--out", str(out),
          *SHAPE, "--num-frames", str(num_frames), "--steps", "2", "--seed", "3", *extra])
    return decode_video(out, FrameSampling(num_frames=num_frames, height=96, width=160))


def test_generate_applies_a_lora(tmp_path, tiny_cogvideox_dir, random_lora, capsys):
    lora_file = random_lora / "pytorch_lora_weights.safetensors"
    assert lora_file.is_file()
    base = generate(tiny_cogvideox_dir, tmp_path / "base.mp4")
    assert str(tmp_path / "base.mp4") in capsys.readouterr().out
    with_lora = generate(tiny_cogvideox_dir, tmp_path / "lora.mp4", "--lora", str(lora_file))
    scaled_to_zero = generate(tiny_cogvideox_dir, tmp_path / "zero.mp4", "--lora", str(random_lora),
                              "--lora-scale", "0")

    assert base.shape == with_lora.shape == (9, 3, 96, 160)
    for path in ("base.mp4", "lora.mp4"):  # exactly the 9 frames asked for
        assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / path))[0] == 9
    assert (with_lora - base).abs().mean() > 0.02
    # A LoRA at scale 0 is the base model: the difference above is the LoRA's, not noise.
    torch.testing.assert_close(scaled_to_zero, base, rtol=0, atol=2 / 255)


def test_generate_uses_a_fine_tuned_transformer_of_its_family_only(tmp_path, tiny_cogvideox_dir,
                                                                   tiny_hunyuan_video_dir):
    from blueberry_video.errors import ModelLayoutError

    tuned = CogVideoXTransformer3DModel.from_pretrained(tiny_cogvideox_dir, subfolder="transformer")
    with torch.no_grad():
        for param in tuned.parameters():
            param.add_(0.05 * torch.randn_like(param))
    tuned.save_pretrained(tmp_path / "run" / "transformer")  # as a full fine-tune's output_dir holds it
    base = generate(tiny_cogvideox_dir, tmp_path / "base.mp4")
    fine_tuned = generate(tiny_cogvideox_dir, tmp_path / "tuned.mp4", "--transformer", str(tmp_path / "run"))
    assert (fine_tuned - base).abs().mean() > 0.02
    with pytest.raises(ModelLayoutError, match="HunyuanVideoTransformer3DModel, but cogvideox needs"):
        generate(tiny_cogvideox_dir, tmp_path / "other.mp4", "--transformer", str(tiny_hunyuan_video_dir))
    assert not (tmp_path / "other.mp4").exists()


def test_generate_writes_the_frame_count_it_was_asked_for_or_refuses(tmp_path, tiny_cogvideox_dir):
    try:
        generate(tiny_cogvideox_dir, tmp_path / "five.mp4", num_frames=5)
    except ConfigError as error:
        assert "num_frames" in str(error) or "max_num_frames" in str(error)
        return
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "five.mp4"))[0] == 5


def test_generate_runs_hunyuan_video_attention_through_the_chosen_backend(tmp_path, tiny_hunyuan_video_dir):
    from torch.profiler import profile

    hunyuan = ["--family", "hunyuan_video", "--guidance-scale", "1"]
    native = generate(tiny_hunyuan_video_dir, tmp_path / "native.mp4", *hunyuan)
    with profile() as prof:
        math = generate(tiny_hunyuan_video_dir, tmp_path / "math.mp4", *hunyuan, "--attention-backend", "_native_math")
    assert any(event.key == "aten::_scaled_dot_product_attention_math" for event in prof.key_averages())
    # Another kernel, the same video: the transformers agree to ~1e-7, and H.264 moves a few pixels of the
    # nearly equal frames (0.001 on average here; a LoRA above changes the mean by over 0.02).
    assert (math - native).abs().mean() < 0.005, (math - native).abs().mean()

    with pytest.raises(ConfigError, match="attention_backend=_native_flash"):  # it cannot take the text mask
        generate(tiny_hunyuan_video_dir, tmp_path / "flash.mp4", *hunyuan, "--attention-backend", "_native_flash")
    assert not (tmp_path / "flash.mp4").exists()


def test_recipe_help_prints_the_flags_without_library_noise():
    # bitsandbytes, imported by diffusers, warns on CPU that a 4-bit kernel package is missing: not ours to show.
    recipe = str(REPO_ROOT / "recipes" / "train_hunyuan_video.py")
    done = subprocess.run([sys.executable, recipe, "--help"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0 and "--pretrained_model_name_or_path" in done.stdout
    assert "gemm_4bit" not in done.stderr and "kernels-community" not in done.stderr, done.stderr


@pytest.mark.parametrize("argv, suggestion", [
    (["estimate-memory", "--preset", "cogvideox-2b", "--max-frame"], "--max-frames"),  # the verb's own flag
    (["estimate-memory", "--preset", "cogvideox-2b", "--budget", "20"], "--budget-gib"),
    (["estimate-memory", "--preset", "cogvideox-2b", "--max_num_frame", "9"], "--max_num_frames"),  # a training one
    (["generate", "--model", "m", "--prompt", "p", "--out", "o.mp4", "--num_frames", "9"], "--num-frames"),
])
def test_an_unknown_flag_is_named_with_the_nearest_flag_of_that_command(argv, suggestion):
    with pytest.raises(ConfigError, match=rf"unknown flag {argv[-2 if argv[-1][0] != '-' else -1]} "
                                          rf"\(did you mean {suggestion}\?\); see blueberry-video {argv[0]} --help"):
        main(argv)


def test_generate_says_what_to_use_instead_of_the_pipelines_argument_names():
    with pytest.raises(ConfigError, match=r"^3 unknown flags: --num-inference-steps \(use --steps\); "
                                          r"--output_path \(use --out: the .mp4 to write\); --negative_prompt "
                                          r"\(not available: .*\); see blueberry-video generate --help$"):
        main(["generate", "--model", "m", "--prompt", "p", "--num-inference-steps", "20", "--output_path", "o.mp4",
              "--negative_prompt", "blurry"])


def test_a_verb_without_training_settings_does_not_point_at_one():
    with pytest.raises(ConfigError, match=r"^unknown flag --lr; see blueberry-video make-tiny-model --help$"):
        main(["make-tiny-model", "out", "--lr", "1e-4"])


def test_a_verb_taking_training_flags_says_what_to_use_instead_of_foreign_ones_all_at_once():
    with pytest.raises(ConfigError, match=r"^2 unknown flags: --hub_token \(nothing is uploaded.*; --lr \(use "
                                          r"--learning_rate\); see blueberry-video estimate-memory --help$"):
        main(["estimate-memory", "--preset", "cogvideox-2b", "--hub_token", "x", "--lr", "1e-4"])
    # with a bad value of a training flag: named in the same message, not one run later
    with pytest.raises(ConfigError, match=r"^unknown flag --push_to_hub \(nothing is uploaded.*; and argument "
                                          r"--optimizer: invalid choice: 'prodigy' .*; see blueberry-video train "
                                          r"--help$"):
        main(["train", "--pretrained_model_name_or_path", "m", "--dummy_data", "--optimizer", "prodigy",
              "--push_to_hub"])


def test_estimate_memory_without_a_model_names_both_ways_to_give_one():
    with pytest.raises(ConfigError, match="estimate-memory needs a model: --preset .* or --pretrained_model_name_or_path"):
        main(["estimate-memory", "--gradient_checkpointing"])


def test_estimate_memory_estimates_the_preset_asked_for_and_says_which_model_it_estimated(tiny_cogvideox_dir,
                                                                                         tmp_path, capsys):
    import json

    # An experiment made from the demo's config names the tiny model: --preset is what the user asks about
    config = tmp_path / "config.yaml"
    config.write_text(f"pretrained_model_name_or_path: {tiny_cogvideox_dir}\nrank: 64\nlora_alpha: 64\n")
    main(["estimate-memory", "--preset", "cogvideox-2b", "--config", str(config), "--gradient_checkpointing",
          "--json"])
    out, err = capsys.readouterr()
    estimate = json.loads(out.strip().splitlines()[-1])
    assert estimate["model"] == "cogvideox-2b" and estimate["total_params"] > 1.5e9
    assert f"note: the --config file names the model {tiny_cogvideox_dir}; --preset cogvideox-2b is estimated" in err
    main(["estimate-memory", "--pretrained_model_name_or_path", str(tiny_cogvideox_dir), "--height", "96",
          "--width", "160", "--max_num_frames", "9"])
    out = capsys.readouterr().out
    assert out.startswith(f"model: {tiny_cogvideox_dir}\n") and " of " in out and "0.0M" not in out
    with pytest.raises(ConfigError, match="--preset cogvideox-2b and --pretrained_model_name_or_path both name the "
                                          "model to estimate: give one"):
        main(["estimate-memory", "--preset", "cogvideox-2b", "--pretrained_model_name_or_path", str(tmp_path)])
    with pytest.raises(ConfigError, match="--preset hunyuan-video is a hunyuan_video model, not cogvideox: drop "
                                          "--family"):
        main(["estimate-memory", "--preset", "hunyuan-video", "--family", "cogvideox"])


def test_a_hub_id_for_a_model_says_how_to_download_it_once(tmp_path, monkeypatch):
    from blueberry_video.errors import ModelLayoutError
    from blueberry_video.models.cogvideox import CogVideoXFamily

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLayoutError, match=r"THUDM/CogVideoX-2b: model directory not found\. Weights are not "
                                               r"downloaded here: .*huggingface-cli download THUDM/CogVideoX-2b "
                                               r"--local-dir /models/CogVideoX-2b"):
        CogVideoXFamily("THUDM/CogVideoX-2b")
    with pytest.raises(ModelLayoutError, match=r"not found\. The model") as raised:
        CogVideoXFamily(tmp_path / "nope")
    assert "huggingface-cli" not in str(raised.value)


def test_casting_a_model_with_no_float32_modules_does_not_warn_that_it_has_some(tiny_cogvideox_dir, caplog):
    from diffusers import AutoencoderKLCogVideoX

    vae = AutoencoderKLCogVideoX.from_pretrained(tiny_cogvideox_dir, subfolder="vae")
    with caplog.at_level("WARNING"):
        vae.to(torch.bfloat16)
    assert "should be kept in float32" not in caplog.text


def test_precompute_refuses_one_setting_given_twice(tmp_path):
    with pytest.raises(ConfigError, match="--num-frames and --max_num_frames both given: they are the same setting"):
        main(["precompute", "--model", str(tmp_path), "--data", str(tmp_path), "--num-frames", "13",
              "--max_num_frames", "9"])


def test_precompute_spread_frames_is_the_training_setting(tmp_path):
    # Refused with --fps as the training config refuses both: the flag reached the config.
    with pytest.raises(ConfigError, match="spread_frames and fps=8 both choose which frames a clip takes"):
        main(["precompute", "--model", str(tmp_path), "--data", str(tmp_path), "--spread-frames", "--fps", "8"])


def test_generate_refuses_an_output_that_is_not_an_mp4_before_loading_anything(tmp_path):
    with pytest.raises(ConfigError, match=r"--out .*clip\.gif: generate writes an H\.264 \.mp4 video"):
        main(["generate", "--model", str(tmp_path / "no-model"), "--prompt", "p", "--out", str(tmp_path / "clip.gif")])


def test_estimate_memory_reads_a_shipped_config_without_its_tracker_installed(tiny_cogvideox_dir, capsys,
                                                                              monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    # The Quickstart's .venv has no tensorboard; every shipped config reports to it. Nothing is logged here.
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("tensorboard") else real_find_spec(name, *a))
    main(["estimate-memory", "--config", str(REPO_ROOT / "recipes/configs/cogvideox-2b_lora.yaml"),
          "--pretrained_model_name_or_path", str(tiny_cogvideox_dir), "--height", "96", "--width", "160",
          "--max_num_frames", "9", "--mixed_precision", "no", "--validation_prompt", "none"])
    assert "peak" in capsys.readouterr().out


def test_estimate_memory_refuses_the_settings_training_would_refuse(tiny_cogvideox_dir):
    with pytest.raises(ConfigError, match=r"weighting_scheme='mode': settings of the flow-matching objective"):
        main(["estimate-memory", "--pretrained_model_name_or_path", str(tiny_cogvideox_dir), "--height", "96",
              "--width", "160", "--max_num_frames", "9", "--weighting_scheme", "mode"])
