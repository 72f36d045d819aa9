"""`attention_backend`: diffusers' attention backends, tried on the run's device before any work."""

from __future__ import annotations

import sys

import pytest
import torch
from torch.profiler import profile

from blueberry_video.config import parse_config
from blueberry_video.data.latent_dataset import DummyLatentDataset
from blueberry_video.errors import ConfigError
from blueberry_video.models.cogvideox import CogVideoXFamily
from blueberry_video.models.hunyuan_video import HunyuanVideoFamily
from blueberry_video.training.attention import check_attention_backend
from blueberry_video.training.sampling import sample_generators
from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "recipes"))
import train_hunyuan_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
SHAPE = ["--height", "96", "--width", "160", "--max_num_frames", "9", "--mixed_precision", "no"]
MATH_KERNEL = "aten::_scaled_dot_product_attention_math"


def hunyuan_args(model_dir, out, *extra):
    return ["--pretrained_model_name_or_path", str(model_dir), "--output_dir", str(out), "--dummy_data",
            "--num_dummy_samples", "2", "--rank", "8", "--max_train_steps", "2", "--checkpointing_steps", "0",
            *SHAPE, *extra]


def attention_ops_of_a_training_forward(family, transformer) -> set[str]:
    item = DummyLatentDataset(family, 1, 9, 96, 160)[0]
    batch = {name: value[None] for name, value in item.items()}
    with profile() as prof:
        family.training_loss(transformer, family.load_training_scheduler(), batch, sample_generators(0, 0, [0], "cpu"))
    return {event.key for event in prof.key_averages() if "scaled_dot_product" in event.key}


def test_the_recipe_runs_the_transformers_attention_through_the_chosen_backend(tiny_hunyuan_video_dir, tmp_path):
    chosen = train_hunyuan_video.main(hunyuan_args(tiny_hunyuan_video_dir, tmp_path / "math",
                                                   "--attention_backend", "_native_math"))
    assert all(torch.isfinite(torch.tensor(chosen.losses)))
    family = HunyuanVideoFamily(tiny_hunyuan_video_dir)
    assert MATH_KERNEL in attention_ops_of_a_training_forward(family, chosen.transformer)
    # ... which torch's own choice on this CPU is not
    assert MATH_KERNEL not in attention_ops_of_a_training_forward(family, family.load_transformer())


def test_a_backend_that_cannot_take_the_text_mask_is_refused_before_the_cache_is_built(
        tiny_hunyuan_video_dir, one_video_dataset_dir, tmp_path):
    args = ["--pretrained_model_name_or_path", str(tiny_hunyuan_video_dir), "--instance_data_root",
            str(one_video_dataset_dir), "--output_dir", str(tmp_path / "run"), "--cache_dir", str(tmp_path / "cache"),
            "--attention_backend", "_native_flash", *SHAPE]
    with pytest.raises(ConfigError, match="attention_backend=_native_flash") as error:
        train_hunyuan_video.main(args)
    assert "masks the padding of its text tokens" in str(error.value) and "_native_cudnn" in str(error.value)
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU has no memory-efficient SDPA kernel; a GPU has")
def test_a_backend_with_no_kernel_for_the_device_is_refused(tiny_hunyuan_video_dir):
    with pytest.raises(ConfigError, match=r"attention_backend=_native_efficient failed .* on cpu"):
        check_attention_backend(HunyuanVideoFamily(tiny_hunyuan_video_dir), "_native_efficient", "cpu", torch.float32)


def test_a_backend_that_a_package_provides_names_the_package(tiny_hunyuan_video_dir):
    try:
        import flash_attn  # noqa: F401
        pytest.skip("flash-attn is installed")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="flash-attn"):
        check_attention_backend(HunyuanVideoFamily(tiny_hunyuan_video_dir), "flash_varlen", "cpu", torch.float32)


def test_cogvideox_refuses_a_backend_its_attention_would_ignore(tiny_cogvideox_dir):
    # diffusers' CogVideoX processor calls torch's SDPA directly: setting a backend would silently change nothing.
    with pytest.raises(ConfigError, match="do not reach it"):
        check_attention_backend(CogVideoXFamily(tiny_cogvideox_dir), "_native_math", "cpu", torch.float32)
    check_attention_backend(CogVideoXFamily(tiny_cogvideox_dir), "native", "cpu", torch.float32)


def test_a_misspelt_backend_is_refused_with_the_closest_name():
    with pytest.raises(ConfigError, match="did you mean '_native_cudnn'"):
        parse_config(["--pretrained_model_name_or_path", "x", "--dummy_data", "--attention_backend", "native_cudnn"])
