"""Shared fixtures: the tiny models and real encoded sample videos, built once per test session."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_cogvideox_dir(tmp_path_factory) -> Path:
    from blueberry_video.models.cogvideox import CogVideoXFamily

    return CogVideoXFamily.save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-cogvideox")


@pytest.fixture(scope="session")
def sample_dataset_dir(tmp_path_factory) -> Path:
    """Four real H.264 videos (49 frames, 96x160) with captions in metadata.json."""
    from blueberry_video.data.sample_videos import create_sample_videos

    root = tmp_path_factory.mktemp("data") / "samples"
    create_sample_videos(root, num=4)
    return root


@pytest.fixture(scope="session")
def one_video_dataset_dir(sample_dataset_dir, tmp_path_factory) -> Path:
    """A dataset of a single video: a model trained on it repeated must show a falling loss."""
    root = tmp_path_factory.mktemp("data") / "one-video"
    entry = json.loads((sample_dataset_dir / "metadata.json").read_text())[0]
    (root / Path(entry["file"]).parent).mkdir(parents=True)
    shutil.copy(sample_dataset_dir / entry["file"], root / entry["file"])
    (root / "metadata.json").write_text(json.dumps([entry]))
    return root


@pytest.fixture(scope="session")
def tiny_hunyuan_video_dir(tmp_path_factory) -> Path:
    from blueberry_video.models.hunyuan_video import HunyuanVideoFamily

    return HunyuanVideoFamily.save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-hunyuan-video")


@pytest.fixture
def fresh_accelerate_state():
    """For tests whose code builds an Accelerator in this process: start from none, and leave none behind."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def no_allocator_setting(monkeypatch):
    """No allocator variable of the user's, and this process's allocator (its settings outlive a test) with
    expandable segments off: what a run then sets is the run's own doing."""
    import torch

    from blueberry_video.training.cuda_allocator import ALLOCATOR_VARIABLES

    for name in ALLOCATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    torch._C._accelerator_setAllocatorSettings("expandable_segments:False")
    return monkeypatch
