"""The batch loop's records: metrics.jsonl shows a run that trained from its first step on."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from blueberry_video.config import TrainConfig
from blueberry_video.data.latent_dataset import DummyLatentDataset
from blueberry_video.models.cogvideox import CogVideoXFamily
from blueberry_video.training.loop import BatchLoop
from blueberry_video.training.lora import make_trainable
from blueberry_video.training.optim import build_lr_scheduler, build_optimizer
from blueberry_video.training.records import MetricsLog


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_metrics_jsonl_exists_from_the_first_step_before_any_line_is_logged(tiny_cogvideox_dir, tmp_path):
    # A run killed before its first logged step must still look trained: a new run would otherwise start over
    # its output_dir (accelerator.records_of_an_attempt_that_trained_nothing) and remove its tracker logs.
    family = CogVideoXFamily(tiny_cogvideox_dir)
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_cogvideox_dir), rank=4, max_num_frames=9, height=96,
                         width=160, logging_steps=5, mixed_precision="no")
    accelerator = Accelerator(cpu=True)
    transformer = family.load_transformer(torch.float32)
    params = make_trainable(transformer, config, family)
    optimizer = build_optimizer(params, config, device="cpu")
    lr_scheduler = build_lr_scheduler(optimizer, config, 10)
    transformer, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)
    metrics = MetricsLog(tmp_path)
    loop = BatchLoop(accelerator, family, transformer, family.load_training_scheduler(), params, optimizer,
                     lr_scheduler, config, metrics=metrics)
    item = DummyLatentDataset(family, 1, 9, 96, 160)[0]
    assert not metrics.path.exists()
    loop.run({name: value[None] for name, value in item.items()}, epoch=0)
    assert metrics.path.exists() and metrics.read() == []  # no line until step 5
    metrics.close()
