"""End-to-end CogVideoX runs of the recipe on the tiny model: learning, outputs, reload, resume."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import CogVideoXPipeline

from blueberry_video.data.decode import FrameSampling, decode_video
from blueberry_video.data.video_writer import write_mp4
from tests.conftest import REPO_ROOT
from tests.training.helpers import transformer_output_after_fresh_lora_load

sys.path.insert(0, str(REPO_ROOT / "recipes"))
import train_cogvideox  # noqa: E402

SHAPE = ["--height", "96", "--width", "160", "--max_num_frames", "9", "--mixed_precision", "no"]


def recipe_args(model_dir, data_dir, output_dir, *extra):
    return ["--pretrained_model_name_or_path", str(model_dir), "--instance_data_root", str(data_dir),
            "--output_dir", str(output_dir), "--cache_dir", str(output_dir.parent / "cache"), *SHAPE, *extra]


def transformer_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 3, 4, 12, 20, generator=g),
                encoder_hidden_states=torch.randn(1, 32, 32, generator=g),
                timestep=torch.tensor([500]))


@pytest.fixture(scope="module")
def lora_run(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    args = recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, out,
                       "--rank", "16", "--lora_alpha", "32", "--learning_rate", "3e-3", "--dataset_repeats", "4",
                       "--train_batch_size", "4", "--max_train_steps", "60", "--checkpointing_steps", "30",
                       "--validation_prompt", "a red circle:::a blue square", "--validation_steps", "30",
                       "--num_inference_steps", "2")
    return train_cogvideox.main(args)


def test_lora_loss_falls_on_a_repeated_video(lora_run):
    losses = lora_run.losses
    assert len(losses) == 60
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_lora_run_writes_every_output(lora_run):
    out = lora_run.output_dir
    for name in ("pytorch_lora_weights.safetensors", "README.md", "loss.png", "config.yaml", "run_info.json",
                 "metrics.jsonl", "final_metrics.json"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-30", "checkpoint-60"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 61))
    # each step's wall time and the part of it spent waiting for the batch
    assert all(0 <= m["data_wait"] < m["step_time"] for m in metrics[1:])
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["steps"] == 60 and final["final_loss"] == pytest.approx(lora_run.losses[-1])
    videos = sorted(p.name for p in (out / "validation").glob("*.mp4"))
    assert videos == ["step-000030-prompt0-0.mp4", "step-000030-prompt1-0.mp4",
                      "step-000060-prompt0-0.mp4", "step-000060-prompt1-0.mp4"]
    clip = decode_video(out / "validation" / videos[0], FrameSampling(num_frames=9, height=96, width=160))
    assert clip.shape == (9, 3, 96, 160)
    card = (out / "README.md").read_text()
    assert "load_lora_weights" in card and "step-000060-prompt0-0.mp4" in card
    assert "| precision | float32 (no mixed precision) |" in card
    # Only the adapter goes into a LoRA run's checkpoints, not the frozen transformer.
    checkpoint_files = {p.name for p in (out / "checkpoint-30").iterdir()}
    assert "pytorch_lora_weights.safetensors" in checkpoint_files and "model.safetensors" not in checkpoint_files


def test_a_checkpoint_loads_into_the_pipeline_with_diffusers_own_loader(lora_run, tiny_cogvideox_dir, tmp_path):
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from blueberry_video.training.checkpoints import OLDER_LORA_FILE, checkpoint_lora_state

    checkpoint = lora_run.output_dir / "checkpoint-30"
    pipe = CogVideoXPipeline.from_pretrained(tiny_cogvideox_dir, dtype=torch.float32)
    pipe.load_lora_weights(checkpoint)  # as a user would, mid-run
    adapter = next(iter(pipe.transformer.peft_config))
    config = pipe.transformer.peft_config[adapter]
    assert (config.r, config.lora_alpha) == (16, 32)  # the run's scale travels with the weights
    saved = checkpoint_lora_state(checkpoint)
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=adapter)
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[name], saved[name]) for name in saved)
    # A checkpoint from before (peft's key names) still resumes: the hook reads either file.
    older = tmp_path / "older"
    older.mkdir()
    save_file(saved, older / OLDER_LORA_FILE)
    assert checkpoint_lora_state(older).keys() == saved.keys()


def test_the_model_card_code_renders_a_video_as_written(lora_run, tmp_path, monkeypatch):
    card = (lora_run.output_dir / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\n")  # Hub metadata
    assert '(validation/step-000060-prompt1-0.mp4): "a blue square"' in card
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "model card", "exec"), namespace)  # as a user pastes it (the tiny model needs its text length)
    clip = decode_video(tmp_path / "sample.mp4", FrameSampling(num_frames=9, height=96, width=160))
    assert clip.shape == (9, 3, 96, 160)
    # With validation's seed it renders the last validation's sample of that prompt: written as validation writes
    # its videos, the same frames.
    write_mp4(np.stack([np.asarray(image) for image in namespace["video"]]), tmp_path / "as_validation.mp4", fps=8)
    sampling = FrameSampling(num_frames=9, height=96, width=160)
    assert torch.equal(decode_video(tmp_path / "as_validation.mp4", sampling),
                       decode_video(lora_run.output_dir / "validation/step-000060-prompt0-0.mp4", sampling))


def test_a_resumed_runs_card_lists_the_samples_before_the_resume(tiny_cogvideox_dir, one_video_dataset_dir,
                                                                  tmp_path):
    out = tmp_path / "card"
    args = recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, out, "--checkpointing_steps", "1",
                       "--validation_prompt", "a red circle", "--validation_steps", "1", "--num_inference_steps", "1")
    train_cogvideox.main([*args, "--max_train_steps", "1"])
    train_cogvideox.main([*args, "--max_train_steps", "2", "--resume_from_checkpoint", "latest"])
    card = (out / "README.md").read_text()
    assert '(validation/step-000001-prompt0-0.mp4): "a red circle"' in card and "step-000002-prompt0-0.mp4" in card


def test_the_card_lists_a_video_rendered_again_after_a_resume_with_its_prompt_in_render_order(tmp_path):
    from types import SimpleNamespace

    from blueberry_video.training.records import samples_list

    (tmp_path / "validation").mkdir()
    for name in ("step-000002-prompt0-0.mp4", "step-000002-prompt0-0-1.mp4", "step-000002-prompt1-0.mp4"):
        (tmp_path / "validation" / name).write_bytes(b"")
    lines = samples_list(tmp_path, SimpleNamespace(validation_prompt=["a cat", "a dog"])).splitlines()
    assert lines == ['- [step-000002-prompt0-0.mp4](validation/step-000002-prompt0-0.mp4): "a cat"',
                     '- [step-000002-prompt0-0-1.mp4](validation/step-000002-prompt0-0-1.mp4): "a cat"',
                     '- [step-000002-prompt1-0.mp4](validation/step-000002-prompt1-0.mp4): "a dog"']


def test_saved_lora_reloads_in_a_fresh_process_with_the_trained_effect(lora_run, tiny_cogvideox_dir, tmp_path):
    inputs = transformer_inputs()
    with torch.no_grad():
        trained = lora_run.transformer.eval()(**inputs, return_dict=False)[0]
    base, loaded = transformer_output_after_fresh_lora_load("CogVideoXPipeline", tiny_cogvideox_dir,
                                                             lora_run.output_dir, inputs, tmp_path)
    assert (loaded - base).abs().max() > 1e-2  # the LoRA changes the output ...
    torch.testing.assert_close(loaded, trained, rtol=1e-5, atol=1e-5)  # ... exactly as it did in training


def test_full_finetune_saves_a_loadable_transformer(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path):
    from diffusers import CogVideoXTransformer3DModel

    result = train_cogvideox.main(recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path / "full",
                                              "--training_mode", "full", "--learning_rate", "1e-3",
                                              "--max_train_steps", "4", "--checkpointing_steps", "0"))
    reloaded = CogVideoXTransformer3DModel.from_pretrained(tmp_path / "full" / "transformer")
    base = CogVideoXTransformer3DModel.from_pretrained(tiny_cogvideox_dir, subfolder="transformer")
    trained = result.transformer.state_dict()
    changed = 0
    for name, tensor in reloaded.state_dict().items():
        torch.testing.assert_close(tensor, trained[name].float())
        changed += not torch.equal(tensor, base.state_dict()[name])
    assert changed > 10


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_resume_matches_an_uninterrupted_run(mode, tiny_cogvideox_dir, sample_dataset_dir, tmp_path):
    from blueberry_video.config import parse_config
    from blueberry_video.models.cogvideox import CogVideoXFamily
    from blueberry_video.training.trainer import train

    def run(name, *extra, stop=None):
        config = parse_config(recipe_args(tiny_cogvideox_dir, sample_dataset_dir, tmp_path / name,
                                          "--training_mode", mode, "--rank", "8", "--learning_rate", "1e-3",
                                          "--lr_scheduler", "cosine", "--lr_warmup_steps", "2",
                                          "--train_batch_size", "2", "--gradient_accumulation_steps", "2",
                                          "--dataset_repeats", "2", "--num_train_epochs", "3",
                                          "--checkpointing_steps", "3", *extra))
        return train(config, CogVideoXFamily(tiny_cogvideox_dir), stop_after_step=stop)

    whole = run("whole")
    assert whole.global_step == 6  # 8 items / (2 x 2) = 2 steps per epoch, 3 epochs
    first = run("parts", stop=3)  # stops mid-epoch, mid-warm-up of the schedule's cosine
    assert first.global_step == 3
    second = run("parts", "--resume_from_checkpoint", "latest")
    assert second.global_step == 6
    a, b = whole.transformer.state_dict(), second.transformer.state_dict()
    trained = [k for k, p in whole.transformer.named_parameters() if p.requires_grad]
    for name in trained:
        torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=1e-7)
    assert whole.losses[3:] == pytest.approx(second.losses, rel=1e-5)


def test_with_logging_steps_each_line_averages_its_steps_and_checkpoints_and_the_end_are_logged(
        tiny_cogvideox_dir, one_video_dataset_dir, tmp_path):
    out = tmp_path / "run"
    args = recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, out, "--rank", "4", "--lora_alpha", "4",
                       "--logging_steps", "5", "--checkpointing_steps", "4")
    train_cogvideox.main([*args, "--max_train_steps", "4"])
    resumed = train_cogvideox.main([*args, "--max_train_steps", "12", "--resume_from_checkpoint", "latest"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # every fifth step, each checkpoint's step (a resume keeps the log up to it) and the last
    assert [r["step"] for r in records] == [4, 5, 8, 10, 12]
    assert [r.get("logged_steps", 1) for r in records] == [4, 1, 3, 2, 2]
    assert records[2]["loss"] == pytest.approx(sum(resumed.losses[1:4]) / 3)  # steps 6-8 of this attempt
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["steps"] == 12 and final["final_loss"] == records[-1]["loss"]
    assert final["train_seconds"] == pytest.approx(sum(r["step_time"] * r.get("logged_steps", 1) for r in records))


def test_checkpoints_and_validation_are_not_counted_in_the_next_steps_time(tiny_cogvideox_dir, one_video_dataset_dir,
                                                                           tmp_path, monkeypatch):
    from blueberry_video.training import loop, trainer

    # The step clock jumps 1000 s during each checkpoint and validation: no step may have that in its time.
    offset = [0.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda real=loop.time.perf_counter: real() + offset[0])

    def slow(work):
        def wrapped(*args, **kwargs):
            offset[0] += 1000.0
            return work(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(trainer, "save_checkpoint", slow(trainer.save_checkpoint))
    monkeypatch.setattr(trainer, "run_validation", slow(trainer.run_validation))
    out = tmp_path / "run"
    train_cogvideox.main(recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, out, "--rank", "4", "--lora_alpha",
                                     "4", "--max_train_steps", "4", "--checkpointing_steps", "1",
                                     "--validation_prompt", "a red circle", "--validation_steps", "2",
                                     "--num_inference_steps", "1"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert offset[0] >= 6000 and len(records) == 4  # four checkpoints and two validations ran
    assert all(record["step_time"] < 1000 for record in records)


def test_the_run_steps_with_torchs_fused_adamw(lora_run):
    # The weights are still on the CPU when the optimizer is made; the kernels follow the run's device.
    state = torch.load(lora_run.output_dir / "checkpoint-60" / "optimizer.bin", weights_only=True)
    assert state["param_groups"] and all(group["fused"] for group in state["param_groups"])


def test_memory_options_train_lora_with_8bit_adam_checkpointing_and_float8_storage(
        tiny_cogvideox_dir, one_video_dataset_dir, tmp_path):
    result = train_cogvideox.main(recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path / "memory",
                                              "--rank", "8", "--learning_rate", "3e-3", "--dataset_repeats", "4",
                                              "--train_batch_size", "4", "--max_train_steps", "30",
                                              "--checkpointing_steps", "0", "--use_8bit_adam",
                                              "--gradient_checkpointing", "--layerwise_casting"))
    model = result.transformer
    assert model.is_gradient_checkpointing
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert torch.float8_e4m3fn in frozen
    assert np.mean(result.losses[-5:]) < 0.8 * np.mean(result.losses[:5]), result.losses
    state = torch.load(tmp_path / "memory" / "checkpoint-30" / "optimizer.bin", weights_only=False)
    # bitsandbytes' state layout (state1/state2), not torch AdamW's (exp_avg/exp_avg_sq); tensors this small
    # keep 32-bit states, as bitsandbytes does below its min_8bit_size.
    assert all("__bnb_optimizer_quant_state__" in s and "exp_avg" not in s for s in state["state"].values())


def test_training_can_start_from_an_existing_lora(lora_run, tiny_cogvideox_dir, one_video_dataset_dir, tmp_path):
    config_args = recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path / "continued", "--rank", "16",
                              "--lora_alpha", "32", "--init_lora_weights", str(lora_run.output_dir),
                              "--learning_rate", "1e-12", "--max_train_steps", "1", "--checkpointing_steps", "0")
    continued = train_cogvideox.main(config_args)
    inputs = transformer_inputs()
    with torch.no_grad():
        before = lora_run.transformer.eval()(**inputs, return_dict=False)[0]
        after = continued.transformer.eval()(**inputs, return_dict=False)[0]
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_tensorboard_receives_losses_and_validation_frames(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_cogvideox.main(recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path / "tb", "--max_train_steps",
                                     "3", "--checkpointing_steps", "0", "--report_to", "tensorboard",
                                     "--validation_prompt", "a red circle", "--num_inference_steps", "2"))
    events = list((tmp_path / "tb" / "logs").rglob("events.out.tfevents.*"))
    # one run in TensorBoard's list: the settings (hparams) beside the losses, not in sub-folders of their own
    assert len({event.parent for event in events}) == 1
    assert not [path for path in (tmp_path / "tb" / "logs").rglob("*") if path.is_dir() and
                path.parent == events[0].parent]
    accumulator = EventAccumulator(str(events[0].parent)).Reload()
    assert len(accumulator.Scalars("loss")) == 3
    assert accumulator.Tags()["images"]
    assert "learning_rate" in accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"].decode(
        errors="replace")


def test_tensorboard_drops_the_steps_a_resume_logs_again(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb-resumed"
    args = recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, out, "--checkpointing_steps", "2",
                       "--report_to", "tensorboard", "--max_train_steps", "4")
    train_cogvideox.main(args)  # as if killed after step 4: the resume from step 2 logs 3 and 4 again
    # TensorBoard reads a folder's event files in name order, named by the second they were opened (then host, pid
    # and a count within the process): a resume in a later second, as any real one is, not in the same.
    time.sleep(1.1)
    train_cogvideox.main([*args, "--resume_from_checkpoint", str(out / "checkpoint-2")])
    folder = next((out / "logs").rglob("events.out.tfevents.*")).parent
    assert [event.step for event in EventAccumulator(str(folder)).Reload().Scalars("loss")] == [1, 2, 3, 4]


def test_wandb_records_unset_settings_as_null_and_tensorboard_as_scalars(tiny_cogvideox_dir):
    from blueberry_video.config import parse_config
    from blueberry_video.training.trackers import tracker_config

    config = parse_config(["--pretrained_model_name_or_path", str(tiny_cogvideox_dir), "--dummy_data",
                           "--validation_prompt", "a:::b"])
    for_wandb, for_tensorboard = tracker_config(config, "wandb"), tracker_config(config, "tensorboard")
    # As wandb's filters read them: null and a list, not "None" and "['a', 'b']"
    assert for_wandb["fps"] is None and for_wandb["validation_prompt"] == ["a", "b"]
    assert for_tensorboard["fps"] == "None" and for_tensorboard["validation_prompt"] == "['a', 'b']"
    assert for_wandb.keys() == for_tensorboard.keys()


@pytest.fixture
def fresh_wandb():
    """wandb reads its environment once per process: each test starts and leaves a new wandb session."""
    wandb = pytest.importorskip("wandb")
    wandb.teardown()
    yield
    wandb.teardown()


def test_wandb_writes_into_output_dir_and_a_resume_continues_its_run(tiny_cogvideox_dir, one_video_dataset_dir,
                                                                      tmp_path, monkeypatch, fresh_wandb):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)  # wandb's default is ./wandb, where the job was started
    out = tmp_path / "wb"
    args = recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, out, "--checkpointing_steps", "1",
                       "--report_to", "wandb")
    train_cogvideox.main([*args, "--max_train_steps", "1"])
    train_cogvideox.main([*args, "--max_train_steps", "2", "--resume_from_checkpoint", "latest"])
    run_id = (out / "logs" / "wandb_run_id").read_text().strip()
    runs = sorted((out / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(run.name.endswith(f"-{run_id}") for run in runs)  # one wandb run, two sessions
    assert not (tmp_path / "wandb").exists()


def test_wandb_without_a_login_is_refused_before_the_cache_is_built(tiny_cogvideox_dir, one_video_dataset_dir,
                                                                     tmp_path, monkeypatch, fresh_wandb):
    from blueberry_video.errors import ConfigError

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_CONFIG_DIR", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a wandb key
    out = tmp_path / "nologin"
    with pytest.raises(ConfigError, match="wandb could not start a run .*wandb login.*WANDB_MODE=offline"):
        train_cogvideox.main([*recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, out, "--report_to", "wandb"),
                              "--cache_dir", str(tmp_path / "fresh-cache")])
    assert not (tmp_path / "fresh-cache").exists()


def test_a_new_run_refuses_an_output_dir_holding_an_earlier_run(lora_run, tiny_cogvideox_dir, one_video_dataset_dir):
    from blueberry_video.errors import ConfigError

    before = sorted(p.name for p in lora_run.output_dir.rglob("*"))
    with pytest.raises(ConfigError, match="is not empty.*--resume_from_checkpoint latest.*--overwrite_output_dir"):
        train_cogvideox.main(recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, lora_run.output_dir,
                                         "--max_train_steps", "1"))
    assert sorted(p.name for p in lora_run.output_dir.rglob("*")) == before  # nothing written or removed


def test_a_run_refused_before_it_writes_anything_leaves_no_output_dir(tiny_cogvideox_dir, one_video_dataset_dir,
                                                                      tmp_path):
    from blueberry_video.errors import ConfigError

    out = tmp_path / "new" / "run"
    with pytest.raises(ConfigError, match="max_num_frames=8"):  # checked once the model's VAE is read
        train_cogvideox.main(recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, out, "--max_num_frames", "8"))
    assert not out.exists()


def test_fp16_is_warned_about(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path):
    from blueberry_video.config import parse_config

    args = recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path / "fp16")
    with pytest.warns(UserWarning, match="fp16 training of video transformers often produces NaN losses"):
        parse_config([*args, "--mixed_precision", "fp16"])


def test_the_model_card_code_names_folders_that_work_from_anywhere(tiny_cogvideox_dir, tmp_path, monkeypatch):
    from blueberry_video.config import TrainConfig
    from blueberry_video.models.cogvideox import CogVideoXFamily
    from blueberry_video.training.records import usage_code

    monkeypatch.chdir(tiny_cogvideox_dir.parent)  # a run launched with relative paths, as the demo is
    config = TrainConfig(pretrained_model_name_or_path=tiny_cogvideox_dir.name, dummy_data=True)
    code = usage_code(Path("outputs/run"), config, CogVideoXFamily(tiny_cogvideox_dir))
    assert f'from_pretrained("{tiny_cogvideox_dir.resolve()}"' in code
    assert f'load_lora_weights("{(tiny_cogvideox_dir.parent / "outputs" / "run").resolve()}")' in code
    # It decodes as validation did: tile by tile where the run set vae_tiling (HunyuanVideo's shipped config does)
    assert "enable_tiling" not in code
    tiled = usage_code(Path("outputs/run"), dataclasses.replace(config, vae_tiling=True),
                       CogVideoXFamily(tiny_cogvideox_dir))
    assert "pipe.to(device)\npipe.vae.enable_tiling()" in tiled
