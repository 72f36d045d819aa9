"""`blueberry-video generate` with what training writes: the exported LoRA, a checkpoint-N folder, a full fine-tune,
another family's LoRA; the video settings a run implies; the checks that run before the pipeline loads."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import imageio_ffmpeg
import pytest
import torch
from accelerate.state import AcceleratorState
from diffusers import CogVideoXTransformer3DModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from blueberry_video.cli import main
from blueberry_video.config import parse_config
from blueberry_video.data.decode import FrameSampling, decode_video
from blueberry_video.errors import ConfigError, ModelLayoutError
from blueberry_video.generate import load_pipeline, video_settings
from blueberry_video.trained_weights import resolve_lora
from blueberry_video.models import load_family
from blueberry_video.models.cogvideox import CogVideoXFamily
from blueberry_video.models.hunyuan_video import HunyuanVideoFamily
from blueberry_video.training.checkpoints import LORA_FILE, OLDER_LORA_FILE, STATE_FILE, checkpoint_lora_state
from blueberry_video.training.export import LORA_WEIGHTS
from blueberry_video.training.lora import ADAPTER
from blueberry_video.training.trainer import run_recipe, train

# The runs train at this shape (and 12 fps), which no default has: a video of it came from the run's settings.
RUN_SHAPE = {"max_num_frames": 9, "height": 32, "width": 48}
PROMPT = "a red circle moving left to right"


def train_tiny_run(family_class, model_dir: Path, output_dir: Path, *flags: str,
                   stop_after_step: int | None = None) -> Path:
    """A real LoRA run on the tiny model: its config.yaml, run_info.json, export and checkpoint-N folders; with
    `stop_after_step`, stopped there with a checkpoint and no export, as a preempted job is."""
    argv = ["--pretrained_model_name_or_path", str(model_dir), "--dummy_data", "--output_dir", str(output_dir),
            "--fps", "12", *[f"--{k}={v}" for k, v in RUN_SHAPE.items()], *flags]
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        if stop_after_step is None:
            run_recipe(family_class, argv)
        else:
            train(parse_config(argv), family_class(model_dir), stop_after_step=stop_after_step)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return output_dir


@pytest.fixture(scope="module")
def cogvideox_run(tiny_cogvideox_dir, tmp_path_factory) -> Path:
    # lora_alpha is not the rank, so a checkpoint loaded at the wrong scale gives another video than the export;
    # the high learning rate makes the LoRA change the video visibly within two steps.
    return train_tiny_run(CogVideoXFamily, tiny_cogvideox_dir, tmp_path_factory.mktemp("runs") / "cogvideox",
                          "--rank=4", "--lora_alpha=8", "--learning_rate=0.05", "--max_train_steps=2",
                          "--checkpointing_steps=1", "--guidance_scale=3.5", "--num_inference_steps=3")


@pytest.fixture(scope="module")
def hunyuan_video_run(tiny_hunyuan_video_dir, tmp_path_factory) -> Path:
    return train_tiny_run(HunyuanVideoFamily, tiny_hunyuan_video_dir, tmp_path_factory.mktemp("runs") / "hunyuan",
                          "--max_train_steps=1", "--vae_tiling")


def generate(model: Path, out: Path, *flags: str) -> torch.Tensor:
    main(["generate", "--model", str(model), "--prompt", PROMPT, "--out", str(out), "--steps", "2", "--seed", "3",
          *flags])
    num_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(out))
    return decode_video(out, FrameSampling(num_frames=num_frames, height=32, width=48))


def mp4_fps(path: Path) -> float:
    frames = imageio_ffmpeg.read_frames(str(path))
    try:
        return next(frames)["fps"]
    finally:
        frames.close()


def test_a_checkpoint_generates_what_the_export_of_its_step_does(tmp_path, tiny_cogvideox_dir, cogvideox_run):
    family = load_family("cogvideox", tiny_cogvideox_dir)
    checkpoint = cogvideox_run / "checkpoint-2"
    pipe = load_pipeline(family, resolve_lora(family, checkpoint))
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=ADAPTER)
    saved = checkpoint_lora_state(checkpoint)
    assert loaded.keys() == saved.keys()
    for name in saved:
        torch.testing.assert_close(loaded[name], saved[name], rtol=0, atol=0)
    assert (pipe.transformer.peft_config[ADAPTER].r, pipe.transformer.peft_config[ADAPTER].lora_alpha) == (4, 8)

    exported = generate(tiny_cogvideox_dir, tmp_path / "export.mp4", "--lora", str(cogvideox_run))
    from_folder = generate(tiny_cogvideox_dir, tmp_path / "folder.mp4", "--lora", str(checkpoint))
    from_file = generate(tiny_cogvideox_dir, tmp_path / "file.mp4", "--lora", str(checkpoint / LORA_FILE))
    earlier = generate(tiny_cogvideox_dir, tmp_path / "step1.mp4", "--lora", str(cogvideox_run / "checkpoint-1"))
    base = generate(tiny_cogvideox_dir, tmp_path / "base.mp4", "--num-frames", "9", "--height", "32", "--width", "48")
    # The last checkpoint is the exported LoRA, loaded at the run's scale (alpha/rank = 2): the same video.
    torch.testing.assert_close(from_folder, exported, rtol=0, atol=0)
    torch.testing.assert_close(from_file, exported, rtol=0, atol=0)
    assert (exported - base).abs().mean() > 0.02
    assert (earlier - exported).abs().mean() > 0.005


def test_video_settings_default_to_the_runs_then_to_the_familys(tmp_path, tiny_cogvideox_dir,
                                                               tiny_hunyuan_video_dir, cogvideox_run, capsys):
    out = tmp_path / "run.mp4"
    video = generate(tiny_cogvideox_dir, out, "--lora", str(cogvideox_run / "checkpoint-1"))
    assert video.shape == (9, 3, 32, 48) and mp4_fps(out) == 12
    said = capsys.readouterr().out
    assert f"12 fps (--num-frames, --height, --width, --fps from the training run's {cogvideox_run}" in said
    assert "guidance scale 3.5 (the training run)" in said  # as its validation videos were rendered
    # Without --steps, the run's validation steps (3): the same video as asking for them, not the 2 others asked for.
    run_steps = tmp_path / "run-steps.mp4"
    main(["generate", "--model", str(tiny_cogvideox_dir), "--prompt", PROMPT, "--out", str(run_steps), "--seed", "3",
          "--lora", str(cogvideox_run / "checkpoint-1")])
    said = capsys.readouterr().out
    # ... and its precision (mixed_precision bf16, the recipe's default), on the CPU too.
    assert "3 denoising steps (the training run); weights in bfloat16 (the training run's mixed_precision)" in said
    three = generate(tiny_cogvideox_dir, tmp_path / "three.mp4", "--lora", str(cogvideox_run / "checkpoint-1"),
                     "--steps", "3", "--dtype", "bfloat16")
    num_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(run_steps))
    torch.testing.assert_close(decode_video(run_steps, FrameSampling(num_frames=num_frames, height=32, width=48)),
                               three, rtol=0, atol=0)
    assert not torch.equal(three, video)
    in_float32 = generate(tiny_cogvideox_dir, tmp_path / "fp32.mp4", "--lora", str(cogvideox_run / "checkpoint-1"),
                          "--steps", "3", "--dtype", "float32")
    assert not torch.equal(three, in_float32)

    shape = ["--num-frames", "9", "--height", "32", "--width", "48"]
    generate(tiny_cogvideox_dir, tmp_path / "cog.mp4", *shape)
    said = capsys.readouterr().out
    assert "guidance scale 6 (default)" in said and "denoising steps" not in said  # --steps 2 given
    generate(tiny_hunyuan_video_dir, tmp_path / "hunyuan.mp4", *shape, "--guidance-scale", "1")
    assert mp4_fps(tmp_path / "cog.mp4") == 8 and mp4_fps(tmp_path / "hunyuan.mp4") == 15
    said = capsys.readouterr().out
    assert "15 fps (--fps from hunyuan_video's usual)" in said and "guidance scale" not in said  # given
    # An unset shape is the family's usual too (not CogVideoX's 49x480x720 for every family).
    hunyuan = load_family("hunyuan_video", tiny_hunyuan_video_dir)
    settings, _ = video_settings(hunyuan, None, num_frames=None, height=None, width=None, fps=None)
    assert settings == HunyuanVideoFamily.usual_video and (settings.num_frames, settings.height) == (61, 320)


def generate_refused(model: Path, out: Path, *flags: str, match: str, error=ConfigError) -> None:
    with pytest.raises(error, match=match):
        generate(model, out, *flags)
    assert not out.exists()


def test_lora_paths_that_cannot_load_are_refused_with_the_fix(tmp_path, tiny_cogvideox_dir, cogvideox_run):
    out = tmp_path / "video.mp4"
    typo = tmp_path / "outptu"
    generate_refused(tiny_cogvideox_dir, out, "--lora", str(typo),
                     match=f"--lora {re.escape(str(typo))}: no such file or folder")

    full = tmp_path / "full-run"
    CogVideoXTransformer3DModel.from_pretrained(tiny_cogvideox_dir, subfolder="transformer").save_pretrained(
        full / "transformer")  # as a full fine-tune's output_dir holds it
    generate_refused(tiny_cogvideox_dir, out, "--lora", str(full),
                     match=f"this is a full fine-tune .*; use --transformer {re.escape(str(full))}")
    generate_refused(tiny_cogvideox_dir, out, "--transformer", str(cogvideox_run), error=ModelLayoutError,
                     match=f"this is a LoRA, not a full fine-tune; use --lora {re.escape(str(cogvideox_run))}")
    checkpoint = full / "checkpoint-3"  # a full fine-tune's under DeepSpeed or FSDP: sharded, marked complete by ours
    checkpoint.mkdir()
    (checkpoint / STATE_FILE).write_text("{}")
    generate_refused(tiny_cogvideox_dir, out, "--transformer", str(checkpoint), error=ModelLayoutError,
                     match="a full fine-tune's checkpoint saved sharded .*, which generate does not read; give the "
                           "run's output_dir once the run finishes")

    generate_refused(tiny_cogvideox_dir, out, "--num-frames", "10", "--height", "32", "--width", "48",
                     match=r"--num-frames 10: this cogvideox model's VAE takes .* frames; use")

    unfinished = tmp_path / "unfinished"  # a run stopped before its export: only checkpoints
    shutil.copytree(cogvideox_run, unfinished)
    (unfinished / LORA_WEIGHTS).unlink()
    generate_refused(tiny_cogvideox_dir, out, "--lora", str(unfinished),
                     match=f"not finished.*--lora {re.escape(str(unfinished / 'checkpoint-2'))}")

    # An older checkpoint's adapter (peft's key names, no rank or alpha) away from the config.yaml with its alpha
    alone = tmp_path / "alone" / OLDER_LORA_FILE
    alone.parent.mkdir()
    save_file(checkpoint_lora_state(cogvideox_run / "checkpoint-2"), alone)
    generate_refused(tiny_cogvideox_dir, out, "--lora", str(alone), match="without its rank and lora_alpha")


def test_numbers_that_are_not_positive_and_two_kinds_of_weights_are_refused_before_loading(tmp_path):
    out, no_model = tmp_path / "video.mp4", tmp_path / "no-model"
    for flag, value in (("--steps", "0"), ("--steps", "-1"), ("--height", "0"), ("--width", "-16"),
                        ("--num-frames", "0"), ("--fps", "0")):
        generate_refused(no_model, out, flag, value, match=f"{flag} {value}: must be positive")
    generate_refused(no_model, out, "--lora", "a", "--transformer", "b", match="--lora and --transformer both given")


def test_a_lora_on_another_model_than_it_trained_on_is_warned_about(tmp_path, tiny_cogvideox_dir, cogvideox_run,
                                                                   capsys):
    copied = Path(shutil.copytree(tiny_cogvideox_dir, tmp_path / "copy"))  # the same model elsewhere: no warning
    generate(copied, tmp_path / "same.mp4", "--lora", str(cogvideox_run))
    assert "warning" not in capsys.readouterr().out
    weights = copied / "transformer" / "diffusion_pytorch_model.safetensors"
    save_file({name: value * 1.01 for name, value in load_file(weights).items()}, weights, metadata={"format": "pt"})
    generate(copied, tmp_path / "other.mp4", "--lora", str(cogvideox_run))
    assert (f"warning: the LoRA was trained on the model in {tiny_cogvideox_dir}, whose transformer is not this "
            f"one's ({copied}): its videos will differ from the run's validation videos") in capsys.readouterr().out


@pytest.fixture(scope="module")
def cogvideox_full_run(tiny_cogvideox_dir, tmp_path_factory) -> Path:
    return train_tiny_run(CogVideoXFamily, tiny_cogvideox_dir, tmp_path_factory.mktemp("runs") / "full",
                          "--training_mode=full", "--learning_rate=0.01", "--max_train_steps=2",
                          "--checkpointing_steps=1")


def test_a_full_fine_tunes_checkpoint_generates_what_the_export_of_its_step_does(tmp_path, tiny_cogvideox_dir,
                                                                                 tiny_hunyuan_video_dir,
                                                                                 cogvideox_full_run):
    # The export holds the weights in the run's bf16, the checkpoint its float32 master weights: in bf16 the same.
    exported = generate(tiny_cogvideox_dir, tmp_path / "export.mp4", "--transformer", str(cogvideox_full_run),
                        "--dtype", "bfloat16")
    last = generate(tiny_cogvideox_dir, tmp_path / "step2.mp4", "--transformer",
                    str(cogvideox_full_run / "checkpoint-2"), "--dtype", "bfloat16")
    earlier = generate(tiny_cogvideox_dir, tmp_path / "step1.mp4", "--transformer",
                       str(cogvideox_full_run / "checkpoint-1"), "--dtype", "bfloat16")
    torch.testing.assert_close(last, exported, rtol=0, atol=0)
    assert (earlier - exported).abs().mean() > 0.005

    out = tmp_path / "video.mp4"
    unfinished = tmp_path / "unfinished"  # stopped before its export: only checkpoints
    shutil.copytree(cogvideox_full_run, unfinished)
    shutil.rmtree(unfinished / "transformer")
    generate_refused(tiny_cogvideox_dir, out, "--transformer", str(unfinished), error=ModelLayoutError,
                     match=f"not finished.*--transformer {re.escape(str(unfinished / 'checkpoint-2'))}")
    generate_refused(tiny_cogvideox_dir, out, "--lora", str(cogvideox_full_run / "checkpoint-2"),
                     match=f"a full fine-tune's checkpoint .*; use --transformer "
                           f"{re.escape(str(cogvideox_full_run / 'checkpoint-2'))}")
    generate_refused(tiny_hunyuan_video_dir, out, "--transformer", str(cogvideox_full_run / "checkpoint-2"),
                     error=ModelLayoutError, match="these weights do not fit the transformer of --model .*; give "
                                                   "--model the base model the run trained from")


def test_a_full_fine_tune_extended_past_its_finish_replaces_its_export(tmp_path, tiny_cogvideox_dir,
                                                                       cogvideox_full_run):
    extended = tmp_path / "extended"
    shutil.copytree(cogvideox_full_run, extended)
    before = load_file(extended / "transformer" / "diffusion_pytorch_model.safetensors")
    train_tiny_run(CogVideoXFamily, tiny_cogvideox_dir, extended, "--training_mode=full", "--learning_rate=0.01",
                   "--max_train_steps=3", "--checkpointing_steps=1", "--resume_from_checkpoint=latest")
    after = load_file(extended / "transformer" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(before[name], after[name]) for name in before)
    at_step_3 = load_file(extended / "checkpoint-3" / "model.safetensors")
    for name, value in after.items():  # the export is step 3's weights in the run's bf16
        torch.testing.assert_close(value, at_step_3[name].to(value.dtype), rtol=0, atol=0)
    # The earlier export was set aside in a temporary folder until the new one stood in its place, then removed.
    assert sorted(p.name for p in extended.iterdir() if p.is_dir()) == [
        "checkpoint-1", "checkpoint-2", "checkpoint-3", "transformer"]


def test_an_export_older_than_the_runs_last_checkpoint_is_named_as_the_earlier_finishs(
        tmp_path, tiny_cogvideox_dir, cogvideox_run, capsys):
    generate(tiny_cogvideox_dir, tmp_path / "finished.mp4", "--lora", str(cogvideox_run))
    assert "warning" not in capsys.readouterr().out

    resumed = tmp_path / "resumed"  # resumed past its finish, then stopped (preempted) before finishing again
    shutil.copytree(cogvideox_run, resumed)
    train_tiny_run(CogVideoXFamily, tiny_cogvideox_dir, resumed, "--rank=4", "--lora_alpha=8", "--learning_rate=0.05",
                   "--max_train_steps=4", "--checkpointing_steps=1", "--guidance_scale=3.5",
                   "--resume_from_checkpoint=latest", stop_after_step=3)
    generate(tiny_cogvideox_dir, tmp_path / "stale.mp4", "--lora", str(resumed))
    out = capsys.readouterr().out
    assert (f"warning: {resumed / LORA_WEIGHTS} is older than checkpoint-3: the run was resumed past its finish"
            in out)
    assert f"--lora {resumed / 'checkpoint-3'}" in out


@pytest.mark.parametrize("family_class, model_fixture", [(CogVideoXFamily, "tiny_cogvideox_dir"),
                                                         (HunyuanVideoFamily, "tiny_hunyuan_video_dir")])
def test_generate_renders_a_bf16_runs_validation_video_again_with_no_flag_but_its_seed(family_class, model_fixture,
                                                                                       request, tmp_path):
    # bf16, the recipes' default: the float32 LoRA computes under autocast in validation; HunyuanVideo's pipeline
    # steps its scheduler in what the transformer returns (float32 from accelerate's wrapper, in training).
    model = request.getfixturevalue(model_fixture)
    run = train_tiny_run(family_class, model, tmp_path / "run", "--max_train_steps=1", "--rank=4",
                         "--learning_rate=0.01", "--seed=11", "--validation_prompt=a red circle",
                         "--num_validation_videos=2", "--num_inference_steps=2", "--guidance_scale=2.0")
    validation = sorted((run / "validation").glob("*.mp4"))
    assert [v.name for v in validation] == ["step-000001-prompt0-0.mp4", "step-000001-prompt0-1.mp4"]
    again = tmp_path / "again.mp4"
    main(["generate", "--model", str(model), "--prompt", "a red circle", "--out", str(again), "--lora", str(run),
          "--seed", "12"])
    assert again.read_bytes() == validation[1].read_bytes()


def test_a_checkpoint_generates_with_the_settings_of_its_step_not_those_a_resume_changed(tiny_cogvideox_dir,
                                                                                       tmp_path, capsys):
    flags = ["--rank=4", "--learning_rate=0.01", "--seed=3", "--validation_prompt=a red circle",
             "--validation_steps=2", "--checkpointing_steps=2", "--mixed_precision=no"]
    run = train_tiny_run(CogVideoXFamily, tiny_cogvideox_dir, tmp_path / "run", *flags, "--max_train_steps=2",
                         "--num_inference_steps=3")
    train_tiny_run(CogVideoXFamily, tiny_cogvideox_dir, run, *flags, "--max_train_steps=4", "--num_inference_steps=2",
                   "--resume_from_checkpoint=latest")
    capsys.readouterr()
    again = tmp_path / "again.mp4"
    main(["generate", "--model", str(tiny_cogvideox_dir), "--prompt", "a red circle", "--out", str(again), "--lora",
          str(run / "checkpoint-2"), "--seed", "3"])
    assert "3 denoising steps (the training run)" in capsys.readouterr().out
    assert again.read_bytes() == (run / "validation" / "step-000002-prompt0-0.mp4").read_bytes()


def test_vae_tiling_is_the_runs_unless_turned_off(tmp_path, tiny_hunyuan_video_dir, hunyuan_video_run, capsys,
                                                  monkeypatch):
    from diffusers import AutoencoderKLHunyuanVideo

    tiled = []  # the real enable_tiling, watched
    enable_tiling = AutoencoderKLHunyuanVideo.enable_tiling
    monkeypatch.setattr(AutoencoderKLHunyuanVideo, "enable_tiling",
                        lambda vae, *args, **kwargs: (tiled.append(vae), enable_tiling(vae, *args, **kwargs))[1])
    generate(tiny_hunyuan_video_dir, tmp_path / "tiled.mp4", "--lora", str(hunyuan_video_run))
    assert "VAE tiling (the training run)" in capsys.readouterr().out and len(tiled) == 1 and tiled[0].use_tiling
    generate(tiny_hunyuan_video_dir, tmp_path / "untiled.mp4", "--lora", str(hunyuan_video_run), "--no-vae-tiling")
    assert "VAE tiling" not in capsys.readouterr().out and len(tiled) == 1


def test_another_familys_lora_is_refused_naming_its_family(tmp_path, tiny_cogvideox_dir, hunyuan_video_run):
    out = tmp_path / "video.mp4"
    generate_refused(tiny_cogvideox_dir, out, "--lora", str(hunyuan_video_run / "checkpoint-1"),
                     match="a LoRA trained for hunyuan_video .* but --model .* is a cogvideox model")
    # Away from its run, the file's layer names say whose it is.
    alone = tmp_path / "downloaded" / LORA_WEIGHTS
    alone.parent.mkdir()
    shutil.copy(hunyuan_video_run / LORA_WEIGHTS, alone)
    generate_refused(tiny_cogvideox_dir, out, "--lora", str(alone),
                     match="layers this cogvideox model does not have .*: a LoRA for hunyuan_video")


def test_generate_help_shows_what_each_option_defaults_to(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for line in ("--steps STEPS denoising steps (default: the run's validation num_inference_steps, else 50)",
                 "--lora-scale LORA_SCALE strength of the LoRA (default: 1.0)",
                 "--fps FPS frame rate of the .mp4 (default: the run's validation_fps or fps, else the family's "
                 "usual)"):
        assert line in text
    for usual, name in ((CogVideoXFamily.usual_video, "CogVideoX"), (HunyuanVideoFamily.usual_video, "HunyuanVideo")):
        assert f"{name} {usual.num_frames} frames at {usual.height}x{usual.width}, {usual.fps:g} fps" in text
    with pytest.raises(SystemExit):
        main(["create-sample-videos", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--num NUM number of videos (default: 8)" in text
    assert "--num-frames NUM_FRAMES frames per video (default: 49)" in text


def test_a_runs_precision_is_generated_in_where_the_device_has_it(tmp_path):
    from blueberry_video.config import TrainConfig
    from blueberry_video.generate import run_dtype
    from blueberry_video.trained_weights import TrainingRun

    def run(precision):
        return TrainingRun(tmp_path, TrainConfig(mixed_precision=precision), "cogvideox")

    assert run_dtype(run("bf16"), "cpu")[0] == torch.bfloat16 and run_dtype(run("no"), "cuda")[0] == torch.float32
    assert run_dtype(run("fp16"), "cuda:0")[0] == torch.float16
    assert run_dtype(run("fp16"), "cpu") == (torch.float32, "float32 (the training run's fp16 needs a GPU)")
