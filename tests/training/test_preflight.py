"""A LoRA to start from, or a run to resume, that does not fit the settings is refused before the latent cache
is built; settings a resumed run's state overrides keep the run's values, and its records say so."""

from __future__ import annotations

import json
import logging
import sys
import warnings

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from blueberry_video.errors import ConfigError
from tests.conftest import REPO_ROOT
from tests.training.test_train_cogvideox import recipe_args

sys.path.insert(0, str(REPO_ROOT / "recipes"))
import train_cogvideox  # noqa: E402

SHORT = ["--rank", "4", "--lora_alpha", "4", "--checkpointing_steps", "2", "--max_train_steps", "2"]


@pytest.fixture(scope="module")
def short_run(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("preflight") / "run"
    train_cogvideox.main(recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, out, *SHORT,
                                     "--learning_rate", "2e-3"))
    return out


def fresh_args(model_dir, data_dir, out, *extra):
    args = recipe_args(model_dir, data_dir, out, *extra)
    args[args.index("--cache_dir") + 1] = str(out.parent / "fresh-cache")  # where a new cache would go
    return args


def test_a_lora_of_another_rank_is_refused_before_the_cache(short_run, tiny_cogvideox_dir, one_video_dataset_dir,
                                                           tmp_path):
    args = fresh_args(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path / "next", "--rank", "8",
                      "--init_lora_weights", str(short_run))
    with pytest.raises(ConfigError, match=r"its adapter has rank 4, this run's rank is 8; pass --rank 4"):
        train_cogvideox.main(args)
    assert not (tmp_path / "fresh-cache").exists()


def test_a_lora_of_other_layers_is_refused_before_the_cache(short_run, tiny_cogvideox_dir, one_video_dataset_dir,
                                                           tmp_path):
    args = fresh_args(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path / "next", "--rank", "4",
                      "--lora_target_modules", "to_q", "--init_lora_weights", str(short_run))
    with pytest.raises(ConfigError, match=r"adapts layers this run does not.*\['to_q'\]"):
        train_cogvideox.main(args)
    assert not (tmp_path / "fresh-cache").exists()


def test_a_lora_for_fewer_layers_loads_and_says_what_starts_from_scratch(short_run, tiny_cogvideox_dir,
                                                                        one_video_dataset_dir, tmp_path, caplog):
    weights = load_file(short_run / "pytorch_lora_weights.safetensors")
    partial = {name: tensor for name, tensor in weights.items() if ".to_v." not in name}
    save_file(partial, tmp_path / "partial.safetensors")
    args = recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path / "next", "--rank", "4", "--lora_alpha",
                       "4", "--max_train_steps", "1", "--checkpointing_steps", "0",
                       "--init_lora_weights", str(tmp_path / "partial.safetensors"))
    with caplog.at_level(logging.WARNING):
        train_cogvideox.main(args)
    assert "has no weights for" in caplog.text and ".to_v." in caplog.text


def test_resuming_with_another_rank_is_refused_before_the_cache(short_run, tiny_cogvideox_dir,
                                                                one_video_dataset_dir, tmp_path):
    args = fresh_args(tiny_cogvideox_dir, one_video_dataset_dir, short_run, "--rank", "8", "--lora_alpha", "8",
                      "--max_train_steps", "4", "--resume_from_checkpoint", "latest")
    with pytest.raises(ConfigError, match=r"was trained with rank=4 .* this run has rank=8"):
        train_cogvideox.main(args)
    assert not (short_run.parent / "fresh-cache").exists()


def test_an_incomplete_checkpoint_named_on_resume_is_refused_before_the_cache(short_run, tiny_cogvideox_dir,
                                                                              one_video_dataset_dir, tmp_path):
    (tmp_path / "checkpoint-9").mkdir()
    args = fresh_args(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path / "next", *SHORT,
                      "--resume_from_checkpoint", str(tmp_path / "checkpoint-9"))
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        train_cogvideox.main(args)
    assert not (tmp_path / "fresh-cache").exists()


def test_a_resumed_run_keeps_the_learning_rate_its_state_restores_and_records_it(
        short_run, tiny_cogvideox_dir, one_video_dataset_dir, tmp_path, caplog):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    args = recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, run, "--rank", "4", "--lora_alpha", "4",
                       "--checkpointing_steps", "0", "--max_train_steps", "3", "--learning_rate", "1e-4",
                       "--resume_from_checkpoint", "latest")
    args[args.index("--cache_dir") + 1] = str(short_run.parent / "cache")
    with caplog.at_level(logging.WARNING):
        train_cogvideox.main(args)
    assert "learning_rate=0.002" in caplog.text and "are ignored" in caplog.text
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 3 and records[-1]["lr"] == pytest.approx(2e-3)
    # the run's records say what it did: the restored rate, and the new step count
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["learning_rate"] == pytest.approx(2e-3) and saved["max_train_steps"] == 3
    assert "0.002" in (run / "README.md").read_text()


def test_resuming_with_the_default_targets_spelled_out_is_the_same_run(short_run, tiny_cogvideox_dir,
                                                                       one_video_dataset_dir, tmp_path):
    import shutil

    from blueberry_video.models.cogvideox import CogVideoXFamily

    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    targets = ",".join(reversed(CogVideoXFamily.default_lora_target_modules))
    args = recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, run, "--rank", "4", "--lora_alpha", "4",
                       "--learning_rate", "2e-3", "--checkpointing_steps", "0", "--max_train_steps", "3",
                       "--lora_target_modules", targets, "--resume_from_checkpoint", "latest")
    args[args.index("--cache_dir") + 1] = str(short_run.parent / "cache")
    assert train_cogvideox.main(args).global_step == 3


def test_a_damaged_checkpoint_is_refused_or_passed_over(short_run, tiny_cogvideox_dir, one_video_dataset_dir,
                                                        tmp_path, caplog):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    listed = json.loads((run / "checkpoint-2" / "checkpoint_files.json").read_text())
    assert "optimizer.bin" in listed and "training_state.json" not in listed
    shutil.copytree(run / "checkpoint-2", run / "checkpoint-3")
    (run / "checkpoint-3" / "optimizer.bin").unlink()  # a copy cut short, a file deleted by hand
    args = fresh_args(tiny_cogvideox_dir, one_video_dataset_dir, run, *SHORT,
                      "--resume_from_checkpoint", str(run / "checkpoint-3"))
    with pytest.raises(ConfigError, match="checkpoint-3: damaged: optimizer.bin missing"):
        train_cogvideox.main(args)
    assert not (run.parent / "fresh-cache").exists()
    # `latest` passes over it to the newest whole one, and the run's own step 3 does not write over it
    args = recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, run, "--rank", "4", "--lora_alpha", "4",
                       "--learning_rate", "2e-3", "--checkpointing_steps", "1", "--max_train_steps", "3",
                       "--resume_from_checkpoint", "latest")
    args[args.index("--cache_dir") + 1] = str(short_run.parent / "cache")
    with caplog.at_level(logging.WARNING):
        assert train_cogvideox.main(args).global_step == 3
    assert caplog.text.count("ignoring damaged checkpoint") == 1 and "checkpoint-3" in caplog.text
    [aside] = run.glob("set-aside-after-step-2-*")
    kept = aside / "checkpoint-3"
    assert (kept / "training_state.json").is_file() and not (kept / "optimizer.bin").exists()
    assert (run / "checkpoint-3" / "optimizer.bin").is_file()


def test_a_damaged_checkpoint_of_the_step_being_saved_is_kept_beside_it(tmp_path, caplog):
    from blueberry_video.training.checkpoints import FILES_MANIFEST, STATE_FILE, _clear_the_way

    damaged = tmp_path / "checkpoint-6"
    damaged.mkdir()
    (damaged / FILES_MANIFEST).write_text(json.dumps({"optimizer.bin": 10}))
    (damaged / STATE_FILE).write_text("{}")
    with caplog.at_level(logging.WARNING):
        _clear_the_way(damaged)
    [kept] = tmp_path.glob("checkpoint-6.damaged-*")
    assert not damaged.exists() and (kept / FILES_MANIFEST).is_file() and "kept as" in caplog.text
    whole = tmp_path / "checkpoint-7"  # a complete one a resumed run passes again is replaced
    whole.mkdir()
    (whole / STATE_FILE).write_text("{}")
    _clear_the_way(whole)
    assert not whole.exists() and not list(tmp_path.glob("checkpoint-7.*"))


def test_flow_matching_settings_are_refused_for_cogvideox_before_the_cache(tiny_cogvideox_dir, one_video_dataset_dir,
                                                                          tmp_path):
    args = fresh_args(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path / "ddpm", "--weighting_scheme", "mode",
                      "--flow_shift", "3")
    with pytest.raises(ConfigError, match=r"weighting_scheme='mode', flow_shift=3.0: settings of the flow-matching "
                                          r"objective, which cogvideox does not train with"):
        train_cogvideox.main(args)
    assert not (tmp_path / "fresh-cache").exists()


def test_a_checkpoint_named_without_its_path_is_found_in_output_dir(short_run, tiny_cogvideox_dir,
                                                                   one_video_dataset_dir, tmp_path, monkeypatch,
                                                                   capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    monkeypatch.chdir(tmp_path)  # not output_dir: the name is looked up there, as diffusers' examples do
    args = recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, run, "--rank", "4", "--lora_alpha", "4",
                       "--learning_rate", "2e-3", "--checkpointing_steps", "0", "--max_train_steps", "3",
                       "--resume_from_checkpoint", "checkpoint-2")
    args[args.index("--cache_dir") + 1] = str(short_run.parent / "cache")
    assert train_cogvideox.main(args).global_step == 3
    assert f"resumed from {run / 'checkpoint-2'} at step 2" in capsys.readouterr().out
    args[args.index("--resume_from_checkpoint") + 1] = "checkpoint-7"
    with pytest.raises(ConfigError, match=r"checkpoint-7: folder not found, neither as given nor in output_dir="):
        train_cogvideox.main(args)


def test_a_resume_that_changes_the_length_of_a_decaying_schedule_says_the_rate_jumps(
        tiny_cogvideox_dir, one_video_dataset_dir, tmp_path, caplog):
    out = tmp_path / "cosine"
    args = recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, out, "--rank", "4", "--lora_alpha", "4",
                       "--lr_scheduler", "cosine", "--lr_warmup_steps", "0", "--checkpointing_steps", "2")
    train_cogvideox.main([*args, "--max_train_steps", "2"])
    with caplog.at_level(logging.WARNING):
        train_cogvideox.main([*args, "--max_train_steps", "2", "--resume_from_checkpoint", "latest"])
    assert "nothing is left to train" in caplog.text and "rate jumps" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        train_cogvideox.main([*args, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"])
    assert "max_train_steps=4 (was 2): the cosine learning-rate schedule is laid out over the new length" in caplog.text


def test_a_warm_up_as_long_as_the_run_is_said_and_a_longer_run_still_warming_up_is_not_said_to_jump(
        tiny_cogvideox_dir, one_video_dataset_dir, tmp_path, caplog):
    # A shipped config's warm-up (100 steps) in a short trial run: the rate would never reach learning_rate
    args = recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path / "warm", "--rank", "4", "--lora_alpha",
                       "4", "--lr_scheduler", "cosine", "--lr_warmup_steps", "5", "--checkpointing_steps", "2")
    with pytest.warns(UserWarning, match=r"lr_warmup_steps=5 is as long as the run \(2 steps\) or longer: the "
                                         "learning rate only rises"):
        train_cogvideox.main([*args, "--max_train_steps", "2"])
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match=r"\(4 steps\) or longer"):
        train_cogvideox.main([*args, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"])
    assert "rate jumps" not in caplog.text


def test_a_new_run_can_start_from_a_checkpoint_folder(short_run, tiny_cogvideox_dir, one_video_dataset_dir,
                                                      tmp_path):
    from blueberry_video.training.checkpoints import checkpoint_lora_state
    from blueberry_video.training.lora import lora_state_dict

    args = recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path / "branch", *SHORT,
                       "--learning_rate", "1e-12", "--init_lora_weights", str(short_run / "checkpoint-2"))
    args[args.index("--cache_dir") + 1] = str(short_run.parent / "cache")
    branch = train_cogvideox.main(args)
    saved = checkpoint_lora_state(short_run / "checkpoint-2")
    started = lora_state_dict(branch.transformer)
    assert saved.keys() == started.keys()
    for name, value in saved.items():
        torch.testing.assert_close(started[name], value, rtol=0, atol=1e-6)  # lr 1e-12: still the checkpoint's


def test_the_other_familys_recipe_config_is_warned_about_before_any_work(tiny_hunyuan_video_dir, one_video_dataset_dir,
                                                                        tmp_path):
    from blueberry_video.errors import SettingWarning
    from blueberry_video.models.hunyuan_video import HunyuanVideoFamily
    from blueberry_video.training.trainer import run_recipe

    (tmp_path / "a_file").write_text("")  # the run then stops at its first check, after the warning
    args = ["--config", str(REPO_ROOT / "recipes" / "configs" / "cogvideox-2b_lora.yaml"),
            "--pretrained_model_name_or_path", str(tiny_hunyuan_video_dir), "--instance_data_root",
            str(one_video_dataset_dir), "--output_dir", str(tmp_path / "a_file")]
    with pytest.warns(SettingWarning, match=r"cogvideox-2b_lora.yaml is named for cogvideox, and this run is of "
                                            r"hunyuan_video.*use recipes/train_cogvideox.py"):
        with pytest.raises(ConfigError, match="is a file"):
            run_recipe(HunyuanVideoFamily, args)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SettingWarning)  # its own family's config: no warning
        with pytest.raises(ConfigError, match="is a file"):
            run_recipe(HunyuanVideoFamily, [*args[2:], "--config",
                                            str(REPO_ROOT / "recipes" / "configs" / "hunyuan-video_lora.yaml")])
