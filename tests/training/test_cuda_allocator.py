"""The recipes run the CUDA caching allocator with expandable segments unless told otherwise."""

from __future__ import annotations

import os

import pytest

from blueberry_video.config import parse_config
from blueberry_video.training.accelerator import build_accelerator
from blueberry_video.training.cuda_allocator import ALLOCATOR_VARIABLES, running_allocator_settings


def run_config(tmp_path, *flags):
    return parse_config(["--pretrained_model_name_or_path", str(tmp_path), "--dummy_data", "--output_dir",
                         str(tmp_path / "out"), "--mixed_precision", "no", *flags])


def test_a_run_turns_on_expandable_segments(tmp_path, no_allocator_setting, fresh_accelerate_state):
    build_accelerator(run_config(tmp_path))
    # The variable for the processes a launch starts; this process's allocator, which may have read its
    # settings before, is told directly.
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert running_allocator_settings() == "expandable_segments:True"


@pytest.mark.parametrize("name", ALLOCATOR_VARIABLES)
def test_the_users_own_allocator_setting_wins(name, tmp_path, no_allocator_setting, fresh_accelerate_state):
    no_allocator_setting.setenv(name, "max_split_size_mb:256")
    build_accelerator(run_config(tmp_path))
    assert os.environ[name] == "max_split_size_mb:256"
    assert [other for other in ALLOCATOR_VARIABLES if other in os.environ] == [name]


def test_the_setting_turns_them_off_and_the_out_of_memory_help_then_names_it(tmp_path, no_allocator_setting,
                                                                               fresh_accelerate_state):
    from blueberry_video.errors import out_of_memory_message

    config = run_config(tmp_path, "--no-expandable_segments")
    build_accelerator(config)
    assert not any(name in os.environ for name in ALLOCATOR_VARIABLES)
    assert running_allocator_settings() == "expandable_segments:False"
    assert "--expandable_segments (the default, turned off here" in out_of_memory_message(config, "detail")
    assert "--expandable_segments" not in out_of_memory_message(run_config(tmp_path), "detail")
