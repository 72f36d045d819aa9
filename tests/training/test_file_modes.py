"""Exported weights and checkpoints get the mode the umask allows, not the 0600 safetensors writes."""

from __future__ import annotations

import os
import stat

import pytest

from blueberry_video.training.file_modes import umask
from tests.training.helpers import training_args


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def modes(paths) -> dict[str, int]:
    return {str(p): stat.S_IMODE(p.stat().st_mode) for p in paths}


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600)], ids=["umask-022", "umask-077"])
@pytest.mark.parametrize("training_mode", ["lora", "full"])
def test_weights_and_checkpoints_are_as_readable_as_the_umask_allows(
        training_mode, mask, mode, tiny_cogvideox_dir, one_video_dataset_dir, cache_dir, tmp_path):
    from blueberry_video.config import parse_config
    from blueberry_video.models.cogvideox import CogVideoXFamily
    from blueberry_video.training.trainer import train

    out = tmp_path / "run"
    config = parse_config(training_args(tiny_cogvideox_dir, one_video_dataset_dir, out, cache_dir,
                                        "--training_mode", training_mode, "--max_train_steps", "2",
                                        "--checkpointing_steps", "1", "--checkpoints_total_limit", "1"))
    previous = os.umask(mask)
    try:
        train(config, CogVideoXFamily(tiny_cogvideox_dir))
    finally:
        os.umask(previous)
    exported = [out / "pytorch_lora_weights.safetensors"] if training_mode == "lora" else \
        sorted((out / "transformer").glob("*.safetensors"))
    checkpoint = sorted(p for p in (out / "checkpoint-2").rglob("*") if p.is_file())
    assert exported and any(p.suffix == ".safetensors" for p in checkpoint)
    assert modes(exported + checkpoint) == {str(p): mode for p in exported + checkpoint}


def test_reading_the_umask_leaves_it_as_it_was():
    previous = os.umask(0o027)
    try:
        assert umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(previous)
