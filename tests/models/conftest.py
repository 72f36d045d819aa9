"""Tiny pipelines saved once per session in the diffusers layout, and test videos."""

from __future__ import annotations

import pytest
import torch

from blueberry_video.models.cogvideox import CogVideoXFamily
from blueberry_video.models.hunyuan_video import HunyuanVideoFamily
from tests.models.helpers import cached_batch


@pytest.fixture(scope="session")
def cogvideox_dir(tmp_path_factory):
    return CogVideoXFamily.save_tiny_pipeline(tmp_path_factory.mktemp("tiny-cogvideox"))


@pytest.fixture(scope="session")
def hunyuan_dir(tmp_path_factory):
    return HunyuanVideoFamily.save_tiny_pipeline(tmp_path_factory.mktemp("tiny-hunyuan-video"))


@pytest.fixture(scope="session")
def videos():
    """Two 9-frame 32x32 clips in [-1, 1], [B, F, C, H, W] as the cache hands them to `encode_videos`."""
    return torch.rand(2, 9, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


# Each test module defines a module-scoped `family` fixture; these build on whichever it is.
@pytest.fixture(scope="module")
def encoders(family):
    return family.load_encoders(torch.float32, "cpu")


@pytest.fixture(scope="module")
def batch(family, encoders, videos):
    return cached_batch(family, encoders, videos)
