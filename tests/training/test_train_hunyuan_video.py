"""End-to-end HunyuanVideo runs of the recipe on the tiny model: learning, outputs, LoRA reload."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.training.helpers import transformer_output_after_fresh_lora_load

sys.path.insert(0, str(REPO_ROOT / "recipes"))
import train_hunyuan_video  # noqa: E402


@pytest.fixture(scope="module")
def lora_run(tiny_hunyuan_video_dir, one_video_dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hunyuan") / "run"
    return train_hunyuan_video.main([
        "--pretrained_model_name_or_path", str(tiny_hunyuan_video_dir), "--instance_data_root",
        str(one_video_dataset_dir), "--output_dir", str(out), "--cache_dir", str(out.parent / "cache"),
        "--height", "96", "--width", "160", "--max_num_frames", "9", "--mixed_precision", "no",
        "--rank", "16", "--lora_alpha", "32", "--learning_rate", "5e-3", "--dataset_repeats", "4",
        "--train_batch_size", "4", "--max_train_steps", "40", "--checkpointing_steps", "20",
        "--validation_prompt", "a red circle", "--num_inference_steps", "2",
    ])


def test_lora_loss_falls_on_a_repeated_video(lora_run):
    assert len(lora_run.losses) == 40
    assert np.mean(lora_run.losses[-5:]) < 0.8 * np.mean(lora_run.losses[:5]), lora_run.losses


def test_outputs_and_validation_video(lora_run):
    out = lora_run.output_dir
    for name in ("pytorch_lora_weights.safetensors", "README.md", "loss.png", "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert "HunyuanVideoPipeline" in (out / "README.md").read_text()
    assert [p.name for p in (out / "validation").glob("*.mp4")] == ["step-000040-prompt0-0.mp4"]


def test_saved_lora_reloads_in_a_fresh_process_with_the_trained_effect(lora_run, tiny_hunyuan_video_dir, tmp_path):
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 4, 3, 12, 20, generator=g), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 256, 32, generator=g),
                  encoder_attention_mask=torch.cat([torch.ones(1, 20), torch.zeros(1, 236)], dim=1).long(),
                  pooled_projections=torch.randn(1, 16, generator=g), guidance=torch.tensor([1000.0]))
    with torch.no_grad():
        trained = lora_run.transformer.eval()(**inputs, return_dict=False)[0]
    base, loaded = transformer_output_after_fresh_lora_load("HunyuanVideoPipeline", tiny_hunyuan_video_dir,
                                                             lora_run.output_dir, inputs, tmp_path)
    assert (loaded - base).abs().max() > 1e-2
    torch.testing.assert_close(loaded, trained, rtol=1e-5, atol=1e-5)
