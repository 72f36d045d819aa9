"""Training configuration: YAML, flags, their precedence, and the errors a user meets."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from blueberry_video.config import TrainConfig, load_yaml, parse_config
from blueberry_video.errors import ConfigError

PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "blueberry_video" / "configs"


@pytest.fixture
def required(tmp_path) -> list[str]:
    """The two settings every run needs; the data folder must exist."""
    (tmp_path / "data").mkdir()
    return ["--pretrained_model_name_or_path", str(tmp_path / "model"), "--instance_data_root", str(tmp_path / "data")]


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_yaml_values_are_read_with_their_types(tmp_path, required):
    path = write_yaml(tmp_path, """
height: 64
learning_rate: 1e-4      # YAML 1.1 reads this as a string
adam_epsilon: 1.0e-8
lora_alpha: 16           # an int where a float is wanted
fps: 8
gradient_checkpointing: true
lora_target_modules: [to_q, to_k]
validation_prompt: ["a red circle", "a blue square"]
max_train_steps:         # empty: an optional setting left unset
training_mode: full
""")
    config = parse_config(["--config", str(path), *required])
    assert config.height == 64
    assert config.learning_rate == 1e-4 and isinstance(config.learning_rate, float)
    assert config.adam_epsilon == 1e-8
    assert config.lora_alpha == 16.0 and isinstance(config.lora_alpha, float)
    assert config.fps == 8.0
    assert config.gradient_checkpointing is True
    assert config.lora_target_modules == ["to_q", "to_k"]
    assert config.validation_prompt == ["a red circle", "a blue square"]
    assert config.max_train_steps is None
    assert config.training_mode == "full"
    assert config.width == TrainConfig.width  # untouched settings keep their defaults


def test_the_shipped_demo_config_loads(required):
    config = parse_config(["--config", str(PACKAGE_CONFIGS / "demo_cogvideox.yaml"), *required])
    assert (config.height, config.width, config.max_num_frames) == (96, 160, 9)
    assert config.mixed_precision == "no"  # quoted in the file: bare `no` would be YAML's False


@pytest.mark.parametrize("path", sorted((PACKAGE_CONFIGS.parents[1] / "recipes" / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_recipe_config_loads(path, required):
    config = parse_config(["--config", str(path), *required])
    assert config.mixed_precision == "bf16" and config.dataloader_num_workers >= 1  # written for GPUs


def test_flags_override_yaml_which_overrides_recipe_defaults(tmp_path, required):
    path = write_yaml(tmp_path, "height: 64\nrank: 8\nlearning_rate: 0.01\n")
    config = parse_config(["--config", str(path), "--height", "128", *required],
                          defaults={"rank": 4, "learning_rate": 0.5, "seed": 3})
    assert config.height == 128  # flag beats YAML
    assert config.rank == 8 and config.learning_rate == 0.01  # YAML beats the recipe's defaults
    assert config.seed == 3  # the recipe's default beats the dataclass's


def test_unknown_yaml_key_names_the_file_and_the_close_setting(tmp_path, required):
    path = write_yaml(tmp_path, "height: 64\nlearning_rat: 1e-4\n")
    with pytest.raises(ConfigError) as raised:
        parse_config(["--config", str(path), *required])
    message = str(raised.value)
    assert str(path) in message and "'learning_rat'" in message
    assert "did you mean 'learning_rate'" in message
    # Every unknown key in one message
    path = write_yaml(tmp_path, "lerning_rate: 1e-4\nheight: 64\nmax_num_frame: 9\n")
    with pytest.raises(ConfigError, match=r"unknown settings 'lerning_rate' \(did you mean 'learning_rate'\?\); "
                                          r"'max_num_frame' \(did you mean 'max_num_frames'\?\)"):
        parse_config(["--config", str(path), *required])


@pytest.mark.parametrize("flag, suggestion", [("--learning_rat", "learning_rate"),
                                              ("--gradient_checkpoint", "gradient_checkpointing"),
                                              ("--max_train_step=5", "max_train_steps"),
                                              ("--ranks", "rank"),  # not --no-rank: only on/off settings have it
                                              ("--no-gradient_checkpoint", "no-gradient_checkpointing")])
def test_unknown_flag_suggests_the_close_one(required, flag, suggestion):
    with pytest.raises(ConfigError) as raised:
        parse_config([*required, flag, "1"])
    message = str(raised.value)
    assert f"unknown flag {flag.split('=')[0]}" in message
    assert f"did you mean --{suggestion}?" in message


@pytest.mark.parametrize("line, setting", [
    ("rank: eight", "rank"),
    ("rank: true", "rank"),
    ("rank: 4.5", "rank"),
    ("learning_rate: fast", "learning_rate"),
    ("gradient_checkpointing: 'yes please'", "gradient_checkpointing"),
    ("validation_prompt: [1, 2]", "validation_prompt"),
    ("height:", "height"),
])
def test_a_yaml_value_of_the_wrong_type_names_the_setting(tmp_path, required, line, setting):
    path = write_yaml(tmp_path, line + "\n")
    with pytest.raises(ConfigError) as raised:
        parse_config(["--config", str(path), *required])
    assert str(path) in str(raised.value) and setting in str(raised.value)


def test_a_flag_of_the_wrong_type_names_the_flag_in_one_line(required, capsys):
    with pytest.raises(ConfigError, match="^argument --rank: invalid int value: 'eight'; see --help$"):
        parse_config([*required, "--rank", "eight"])
    assert "usage:" not in capsys.readouterr().err  # not the long usage summary first


def test_validation_prompts_split_on_the_command_line(tmp_path, required):
    config = parse_config([*required, "--validation_prompt", "a red circle, moving:::a blue square"])
    assert config.validation_prompt == ["a red circle, moving", "a blue square"]
    path = write_yaml(tmp_path, "validation_prompt: 'one:::two'\n")
    assert parse_config(["--config", str(path), *required]).validation_prompt == ["one", "two"]
    path = write_yaml(tmp_path, "validation_prompt: ['one, with a comma:::still one']\n")
    assert parse_config(["--config", str(path), *required]).validation_prompt == ["one, with a comma:::still one"]
    assert parse_config([*required, "--lora_target_modules", "to_q, to_v"]).lora_target_modules == ["to_q", "to_v"]


def test_bool_flags_turn_settings_on_and_off(tmp_path, required):
    assert parse_config(required).gradient_checkpointing is False
    assert parse_config([*required, "--gradient_checkpointing"]).gradient_checkpointing is True
    path = write_yaml(tmp_path, "gradient_checkpointing: true\n")
    assert parse_config(["--config", str(path), *required]).gradient_checkpointing is True
    assert parse_config(["--config", str(path), *required, "--no-gradient_checkpointing"]).gradient_checkpointing is False


@pytest.mark.parametrize("flag, value", [
    ("rank", "0"),
    ("learning_rate", "-1e-4"),
    ("learning_rate", "0"),
    ("height", "0"),
    ("train_batch_size", "0"),
    ("max_train_steps", "0"),
    ("checkpointing_steps", "-1"),
    ("lr_warmup_steps", "-5"),
    ("lora_dropout", "1.5"),
    ("adam_beta2", "1.0"),
    ("fps", "-2"),
    ("max_grad_norm", "-1"),
    ("adam_weight_decay", "-0.1"),
    ("dataloader_num_workers", "-1"),
    ("lora_alpha", "0"),
    ("seed", "-1"),
    ("seed", str(2**32)),
])
def test_an_out_of_range_value_names_the_setting(required, flag, value):
    with pytest.raises(ConfigError) as raised:
        parse_config([*required, f"--{flag}={value}"])  # '=': argparse takes a bare -1e-4 for a flag
    assert str(raised.value).startswith(f"{flag}=")


@pytest.mark.parametrize("flags, named", [
    (["--lr_scheduler", "constant", "--lr_warmup_steps", "3"],
     "lr_warmup_steps=3 does nothing with lr_scheduler=constant"),
    (["--lr_scheduler", "cosine", "--lr_num_cycles", "3"],
     "lr_num_cycles=3 only applies to lr_scheduler=cosine_with_restarts"),
    (["--lr_scheduler", "linear", "--lr_power", "2"], "lr_power=2.0 only applies to lr_scheduler=polynomial"),
])
def test_a_schedule_setting_the_chosen_schedule_would_ignore_is_refused(required, flags, named):
    with pytest.raises(ConfigError, match=named):
        parse_config([*required, *flags])
    for fine in (["--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", "3"],
                 ["--lr_scheduler", "cosine_with_restarts", "--lr_num_cycles", "3"],
                 ["--lr_scheduler", "polynomial", "--lr_power", "2"]):
        parse_config([*required, *fine])


def test_spread_frames_and_fps_together_are_refused(required):
    assert parse_config([*required, "--spread_frames"]).spread_frames
    with pytest.raises(ConfigError, match=r"spread_frames and fps=8 both choose which frames a clip takes .* "
                                          r"\(--fps none unsets fps, --no-spread_frames spread_frames\)"):
        parse_config([*required, "--spread_frames", "--fps", "8"])
    with pytest.raises(ConfigError, match=r"^--spread_frames=true: give on/off settings no value \(--spread_frames "
                                          r"turns it on, --no-spread_frames off\)$"):
        parse_config([*required, "--spread_frames=true"])


def test_an_invalid_choice_in_yaml_lists_the_choices(tmp_path, required):
    path = write_yaml(tmp_path, "crop: middle\n")
    with pytest.raises(ConfigError, match="crop='middle': choose one of center, random"):
        parse_config(["--config", str(path), *required])


def test_the_model_and_the_data_are_required(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigError, match="pretrained_model_name_or_path is required"):
        parse_config(["--instance_data_root", str(tmp_path / "data")])
    with pytest.raises(ConfigError, match="instance_data_root is required"):
        parse_config(["--pretrained_model_name_or_path", "model"])
    with pytest.raises(ConfigError, match=r"instance_data_root=.*nowhere: folder not found"):
        parse_config(["--pretrained_model_name_or_path", "model", "--instance_data_root", str(tmp_path / "nowhere")])
    # dummy data needs no dataset
    assert parse_config(["--pretrained_model_name_or_path", "model", "--dummy_data"]).dummy_data


def test_a_missing_config_file_is_named(tmp_path, required):
    with pytest.raises(ConfigError, match=r"--config .*absent\.yaml: file not found"):
        parse_config(["--config", str(tmp_path / "absent.yaml"), *required])


def test_a_yaml_that_is_not_a_mapping_is_refused(tmp_path):
    path = write_yaml(tmp_path, "- height: 64\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(path)


@pytest.mark.parametrize("tagged", [
    '!!python/object/apply:os.system ["touch {marker}"]',
    "!!python/object/new:pathlib.Path ['{marker}']",
    "!!python/name:os.system",
])
def test_yaml_python_tags_are_refused(tmp_path, tagged):
    marker = tmp_path / "executed"
    path = write_yaml(tmp_path, f"output_dir: {tagged.format(marker=marker)}\n")
    with pytest.raises(ConfigError) as raised:
        load_yaml(path)
    assert str(path) in str(raised.value) and "python" in str(raised.value)
    assert not marker.exists()


def test_an_unquoted_no_in_yaml_gets_a_hint_to_quote_it(tmp_path):
    path = write_yaml(tmp_path, "mixed_precision: no\n")
    with pytest.raises(ConfigError, match=r"mixed_precision=False .* in quotes, one of 'no', 'fp16', 'bf16'"):
        parse_config(["--config", str(path), "--pretrained_model_name_or_path", str(tmp_path), "--dummy_data"])


def test_a_tracker_that_is_not_installed_is_refused(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    # as on a machine without wandb (the test environment may have it from the `wandb` extra)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match="report_to=wandb: the wandb package is not installed"):
        parse_config(["--pretrained_model_name_or_path", str(tmp_path), "--dummy_data", "--report_to", "wandb"])
    assert parse_config(["--pretrained_model_name_or_path", str(tmp_path), "--dummy_data",
                         "--report_to", "tensorboard"]).report_to == "tensorboard"


def test_report_to_all_means_the_trackers_set_up_here_and_needs_one_installed(tmp_path, monkeypatch):
    import importlib.util

    from blueberry_video.training.trackers import trackers_to_start

    real_find_spec = importlib.util.find_spec
    # accelerate's "all" would also start MLflow, Comet, Aim... wherever installed, writing where they default to.
    assert trackers_to_start("all") == [name for name in ("tensorboard", "wandb")
                                        if real_find_spec(name) or (name == "tensorboard" and real_find_spec("tensorboardX"))]
    missing = {"wandb", "tensorboard", "tensorboardX"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match="report_to=all: the tensorboard or wandb package is not installed"):
        parse_config(["--pretrained_model_name_or_path", str(tmp_path), "--dummy_data", "--report_to", "all"])
    missing.remove("tensorboard")
    assert trackers_to_start("all") == ["tensorboard"]


def test_settings_a_full_fine_tune_would_ignore_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="init_lora_weights=.* only applies with training_mode=lora"):
        parse_config(["--pretrained_model_name_or_path", str(tmp_path), "--dummy_data", "--training_mode", "full",
                      "--init_lora_weights", str(tmp_path)])


def test_fp16_on_the_cpu_is_refused_before_any_work(tmp_path, fresh_accelerate_state):
    from blueberry_video.training.accelerator import build_accelerator

    with pytest.warns(UserWarning, match="fp16"):
        config = parse_config(["--pretrained_model_name_or_path", str(tmp_path), "--dummy_data",
                               "--output_dir", str(tmp_path / "out"), "--mixed_precision", "fp16"])
    with pytest.raises(ConfigError, match="mixed_precision=fp16 needs a GPU, and this run is on the CPU"):
        build_accelerator(config)


def test_the_launchers_mixed_precision_the_recipe_overrides_is_told(tmp_path, fresh_accelerate_state,
                                                                    no_allocator_setting, caplog):
    from accelerate.state import AcceleratorState

    from blueberry_video.training.accelerator import build_accelerator

    config = parse_config(["--pretrained_model_name_or_path", str(tmp_path), "--dummy_data",
                           "--output_dir", str(tmp_path / "out"), "--mixed_precision", "no"])
    told = "accelerate launch asked for mixed_precision=bf16 (its --mixed_precision flag or config file)"
    for launched, warned in (("bf16", True), ("no", False)):  # "no" is also what a launch with none set exports
        no_allocator_setting.setenv("ACCELERATE_MIXED_PRECISION", launched)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="blueberry_video.training.accelerator"):
            assert build_accelerator(config).mixed_precision == "no"
        assert (told in caplog.text) == warned
        assert ("give the recipe --mixed_precision bf16" in caplog.text) == warned
        AcceleratorState._reset_state(reset_partial_state=True)


def test_validation_steps_without_a_prompt_are_warned_about(required):
    with pytest.warns(UserWarning, match="validation_steps=5 has no effect without validation_prompt"):
        parse_config([*required, "--validation_steps", "5"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_config([*required, "--validation_steps", "5", "--validation_prompt", "a cat"])


def test_a_flag_can_unset_what_the_yaml_file_set(tmp_path):
    path = write_yaml(tmp_path, "fps: 8\nmax_train_steps: 100\nvalidation_steps: 5\nresume_from_checkpoint: latest\n")
    base = ["--config", str(path), "--pretrained_model_name_or_path", str(tmp_path), "--dummy_data"]
    config = parse_config([*base, "--fps", "none", "--max_train_steps", "null", "--num_train_epochs", "3",
                           "--validation_steps", "None", "--resume_from_checkpoint", "none"])
    assert (config.fps, config.max_train_steps, config.num_train_epochs) == (None, None, 3)
    assert config.validation_steps is None and config.resume_from_checkpoint is None
    assert parse_config(base).fps == 8.0
    with pytest.raises(ConfigError, match="argument --rank: invalid int value: 'none'; see --help"):
        parse_config([*base, "--rank", "none"])  # a setting that may not be unset keeps its type check
    with pytest.warns(UserWarning, match="num_train_epochs=3 has no effect: max_train_steps=100"):
        parse_config([*base, "--num_train_epochs", "3"])
    # The YAML's validation_steps without a prompt are warned about, not where a flag unset the prompt on purpose
    with pytest.warns(UserWarning, match="validation_steps=5 has no effect without validation_prompt"):
        parse_config(base)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_config([*base, "--validation_prompt", "none"])
        assert parse_config([*base, "--validation_prompt", ""]).validation_prompt == []


def test_a_yaml_setting_left_empty_names_the_kind_of_value_it_takes(tmp_path):
    path = write_yaml(tmp_path, "rank:\n")
    with pytest.raises(ConfigError, match=r"rank has no value; give an integer or remove the line to use the "
                                          r"default \(128\)"):
        parse_config(["--config", str(path), "--pretrained_model_name_or_path", str(tmp_path), "--dummy_data"])


def test_a_stray_value_is_named_as_a_value_not_as_a_flag(tmp_path):
    base = ["--pretrained_model_name_or_path", str(tmp_path), "--dummy_data"]
    with pytest.raises(ConfigError, match="unexpected value 'red' on the command line: put a value with spaces in quotes"):
        parse_config([*base, "--validation_prompt", "a", "red", "cat"])
    with pytest.raises(ConfigError, match="give on/off settings no value"):
        parse_config([*base, "--gradient_checkpointing", "true"])


def test_flags_of_diffusers_and_finetrainers_scripts_say_what_to_use_instead_all_at_once(required):
    # diffusers' examples/cogvideo README command, less what the recipe takes as it is.
    with pytest.raises(ConfigError) as raised:
        parse_config([*required, "--dataset_name", "my-videos", "--validation_prompt_separator", ":::",
                      "--enable_slicing", "--enable_tiling", "--hub_token", "abc", "--push_to_hub", "--fooo_bar", "1"])
    message = str(raised.value)
    assert message.startswith("7 unknown flags: ")
    assert "--enable_tiling (use --vae_tiling)" in message
    assert "--dataset_name (datasets are local folders: --instance_data_root" in message
    assert "--hub_token (nothing is uploaded" in message and "id_token" not in message  # not the nearest spelling
    assert "--fooo_bar;" in message  # an unknown one of no script: named, with no hint that fits
    # A bad value argparse stops at (diffusers' --optimizer prodigy) does not hide the unknown flags beside it.
    with pytest.raises(ConfigError) as raised:
        parse_config([*required, "--optimizer", "prodigy", "--push_to_hub", "--prodigy_beta3=0.1", "--rank", "8"])
    message = str(raised.value)
    assert message.startswith("2 unknown flags: --push_to_hub (nothing is uploaded")
    assert "--prodigy_beta3 (Prodigy is not available" in message
    assert message.endswith("; and argument --optimizer: invalid choice: 'prodigy' (choose from 'adamw', 'adam'); "
                            "see --help")


def test_every_flag_named_instead_of_a_foreign_one_is_ours_and_none_of_them_is():
    import re

    from blueberry_video.config import training_flags
    from blueberry_video.foreign_flags import INSTEAD

    ours = set(training_flags())
    assert not ours & set(INSTEAD)
    named = {flag for instead in INSTEAD.values() for flag in re.findall(r"--[a-z_0-9]+", instead)}
    assert named and named <= ours


def test_choices_are_taken_in_any_case(tmp_path, required):
    assert parse_config([*required, "--optimizer", "Adam", "--lr_scheduler", "Cosine"]).optimizer == "adam"
    path = write_yaml(tmp_path, "optimizer: AdamW\n")
    assert parse_config(["--config", str(path), *required]).optimizer == "adamw"


def test_space_separated_lora_target_modules_are_told_to_use_commas(required):
    with pytest.raises(ConfigError, match="unexpected value 'to_k' .* comma-separated"):
        parse_config([*required, "--lora_target_modules", "to_q", "to_k", "to_v"])
    assert parse_config([*required, "--lora_target_modules", "to_q,to_k"]).lora_target_modules == ["to_q", "to_k"]


def test_a_validation_prompt_with_finetrainers_size_suffix_is_refused(required):
    with pytest.raises(ConfigError, match="'@@@' .* training shape"):
        parse_config([*required, "--validation_prompt", "a goat:::afkx A cat@@@49x480x720"])


def test_single_dash_and_yaml_foreign_flags_are_refused_too(tmp_path, required):
    with pytest.raises(ConfigError, match="unknown flag -lr"):
        parse_config([*required, "-lr", "0.5"])
    with pytest.raises(ConfigError, match=r"2 unknown flags: --fooo_bar; -x"):
        parse_config([*required, "--fooo_bar", "-1", "-x"])  # -1: the value of the flag before it
    path = write_yaml(tmp_path, "hub_token: abc\n")
    with pytest.raises(ConfigError, match="unknown setting 'hub_token' \\(nothing is uploaded"):
        parse_config(["--config", str(path), *required])


def test_lora_target_modules_with_spaces_and_an_endless_nccl_timeout_are_refused(tmp_path, required):
    with pytest.raises(ConfigError, match="'to_q to_k' is not a module name: separate the names with commas"):
        parse_config([*required, "--lora_target_modules", "to_q to_k"])
    with pytest.raises(ConfigError, match="nccl_timeout=100000000000: at most 604800"):
        parse_config([*required, "--nccl_timeout", "100000000000"])
