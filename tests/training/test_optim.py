"""The optimizer the trainer builds."""

from __future__ import annotations

import pytest
import torch

from blueberry_video.config import TrainConfig
from blueberry_video.training.optim import build_optimizer


@pytest.mark.parametrize("run_device, fused", [("cuda", True), ("cpu", True), ("mps", None)])
def test_fused_adamw_follows_the_runs_device_not_where_the_weights_wait(run_device, fused):
    # The trainer loads the transformer on the CPU and accelerate moves it to the GPU after the optimizer
    # is made: deciding by the weights' device left every GPU run on torch's slower per-tensor AdamW.
    params = [torch.nn.Parameter(torch.zeros(4, 4))]
    optimizer = build_optimizer(params, TrainConfig(pretrained_model_name_or_path="unused"), device=run_device)
    assert optimizer.defaults["fused"] is fused


def test_fused_and_per_tensor_adamw_take_the_same_steps():
    config = TrainConfig(pretrained_model_name_or_path="unused", learning_rate=1e-2, adam_weight_decay=1e-2)
    weights = {}
    for device in ("cpu", "mps"):  # fused, and the per-tensor path torch takes without fused kernels
        torch.manual_seed(0)
        param = torch.nn.Parameter(torch.randn(8, 8))
        optimizer = build_optimizer([param], config, device=device)
        for _ in range(3):
            param.grad = torch.ones_like(param)
            optimizer.step()
        weights[device] = param.detach()
    torch.testing.assert_close(weights["cpu"], weights["mps"])
