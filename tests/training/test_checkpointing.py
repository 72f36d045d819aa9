"""Gradient checkpointing of some of the blocks: which recompute, that gradients are unchanged, what it saves."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from benchmarks.common import synthetic_batch
from blueberry_video.config import TrainConfig, parse_config
from blueberry_video.errors import ConfigError
from blueberry_video.models import get_family_class
from blueberry_video.training.checkpointing import (
    enable_gradient_checkpointing,
    ratio_label,
    recomputed_block_count,
    transformer_blocks,
)
from blueberry_video.training.lora import make_trainable
from blueberry_video.training.memory_estimate import GIB, estimate_training_memory
from blueberry_video.training.sampling import sample_generators
from tests.conftest import REPO_ROOT

SHAPE = (9, 96, 160)


def family_of(family_name, request):
    model_dir = request.getfixturevalue(f"tiny_{family_name}_dir")
    return get_family_class(family_name)(model_dir)


def config_for(family, **options) -> TrainConfig:
    return TrainConfig(pretrained_model_name_or_path=str(family.model_dir), training_mode="full", dummy_data=True,
                       max_num_frames=SHAPE[0], height=SHAPE[1], width=SHAPE[2], **options)


def block_calls_and_gradients(family, config):
    """How often each block ran its forward in one training step (2 = recomputed in backward), and the gradients."""
    torch.manual_seed(0)
    transformer = family.load_transformer(dtype=torch.float32)
    params = make_trainable(transformer, config, family)
    blocks = transformer_blocks(transformer, family.block_class_names)
    calls = [0] * len(blocks)
    for index, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda module, args, index=index: calls.__setitem__(index, calls[index] + 1))
    batch = synthetic_batch(family, 2, *SHAPE, "cpu")
    loss = family.training_loss(transformer, family.load_training_scheduler(), batch,
                                sample_generators(0, 0, range(2), "cpu"))
    loss.backward()
    return calls, [p.grad.clone() for p in params]


@pytest.mark.parametrize("family_name", ["cogvideox", "hunyuan_video"])
def test_the_first_blocks_recompute_and_the_gradients_do_not_change(family_name, request):
    family = family_of(family_name, request)
    none, grads_none = block_calls_and_gradients(family, config_for(family))
    every, grads_every = block_calls_and_gradients(family, config_for(family, gradient_checkpointing=True))
    half, grads_half = block_calls_and_gradients(family, config_for(family, gradient_checkpointing=True,
                                                                    gradient_checkpointing_ratio=0.5))
    num_blocks = len(none)
    assert none == [1] * num_blocks and every == [2] * num_blocks
    recomputed = recomputed_block_count(0.5, num_blocks)
    assert 0 < recomputed < num_blocks
    assert half == [2] * recomputed + [1] * (num_blocks - recomputed)
    for grads in (grads_every, grads_half):
        for got, expected in zip(grads, grads_none):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_ratio_written_as_a_fraction_of_the_blocks_means_that_many_blocks():
    for num_blocks in (2, 30, 42, 60):
        for recomputed in range(num_blocks + 1):
            assert recomputed_block_count(float(ratio_label(recomputed, num_blocks)), num_blocks) == recomputed
    assert ratio_label(12, 30) == "0.4" and recomputed_block_count(0.4, 30) == 12


def test_fewer_recomputing_blocks_hold_more_memory(tiny_cogvideox_dir):
    family = get_family_class("cogvideox")(tiny_cogvideox_dir)
    peaks = [estimate_training_memory(family, config_for(family, gradient_checkpointing=True,
                                                         gradient_checkpointing_ratio=ratio)).step_peak_extra_bytes
             for ratio in (1.0, 0.5, 0.0)]
    assert peaks[0] < peaks[1] < peaks[2]


def test_the_ratio_is_checked(tiny_cogvideox_dir):
    required = ["--pretrained_model_name_or_path", str(tiny_cogvideox_dir), "--dummy_data"]
    with pytest.raises(ConfigError, match=r"gradient_checkpointing_ratio=1.5: must be in \[0, 1\]"):
        parse_config([*required, "--gradient_checkpointing", "--gradient_checkpointing_ratio", "1.5"])
    with pytest.raises(ConfigError, match="add --gradient_checkpointing"):
        parse_config([*required, "--gradient_checkpointing_ratio", "0.5"])
    config = parse_config([*required, "--gradient_checkpointing", "--gradient_checkpointing_ratio", "0.25"])
    assert config.gradient_checkpointing_ratio == 0.25


def test_the_estimate_finds_the_least_recomputation_that_fits(tiny_cogvideox_dir):
    family = get_family_class("cogvideox")(tiny_cogvideox_dir)
    every = estimate_training_memory(family, config_for(family, gradient_checkpointing=True))
    none = estimate_training_memory(family, config_for(family, gradient_checkpointing=True,
                                                       gradient_checkpointing_ratio=0.0))
    budget_gib = (every.total_bytes() + none.total_bytes()) / 2 / GIB  # between all and none recomputing
    done = subprocess.run(
        [sys.executable, "-m", "blueberry_video.cli", "estimate-memory", "--json", "--min-checkpointing",
         "--budget-gib", str(budget_gib), "--pretrained_model_name_or_path", str(tiny_cogvideox_dir),
         "--training_mode", "full", "--max_num_frames", str(SHAPE[0]), "--height", str(SHAPE[1]),
         "--width", str(SHAPE[2])],
        cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["fits"] and 0 < result["recomputed_blocks"] <= result["blocks"]
    # the least: one block fewer recomputing does not fit
    fewer = estimate_training_memory(family, config_for(
        family, gradient_checkpointing=True,
        gradient_checkpointing_ratio=float(ratio_label(result["recomputed_blocks"] - 1, result["blocks"]))))
    assert fewer.total_bytes() > budget_gib * GIB


def test_the_search_stops_at_once_where_not_even_every_block_recomputing_fits(tiny_cogvideox_dir, monkeypatch):
    from blueberry_video.training import memory_estimate

    family = get_family_class("cogvideox")(tiny_cogvideox_dir)
    config = config_for(family, gradient_checkpointing=True)
    every = estimate_training_memory(family, config)
    trials = []
    monkeypatch.setattr(memory_estimate, "estimate_training_memory",
                        lambda *args: trials.append(1) or estimate_training_memory(*args))
    assert memory_estimate.least_checkpointing_within(family, config, every.total_bytes() - 1)[0] is None
    assert len(trials) == 1  # a minute per trial at HunyuanVideo's size: no bisection that cannot succeed
    ratio, recomputed, blocks, _ = memory_estimate.least_checkpointing_within(family, config, every.total_bytes())
    assert recomputed == blocks and float(ratio) == 1.0  # all of them fit, and no fewer


def test_enable_counts_the_blocks_it_checkpoints(tiny_hunyuan_video_dir):
    family = get_family_class("hunyuan_video")(tiny_hunyuan_video_dir)
    transformer = family.load_transformer(dtype=torch.float32)
    blocks = transformer_blocks(transformer, family.block_class_names)
    # HunyuanVideo's two kinds of blocks, double-stream then single-stream, counted together in forward order
    assert {type(b).__name__ for b in blocks} == set(family.block_class_names)
    assert enable_gradient_checkpointing(transformer, family.block_class_names, 0.0) == 0
    assert enable_gradient_checkpointing(transformer, family.block_class_names, 1.0) == len(blocks)
    assert transformer.is_gradient_checkpointing


def test_the_search_says_when_nothing_needs_recomputing(tiny_cogvideox_dir):
    done = subprocess.run(
        [sys.executable, "-m", "blueberry_video.cli", "estimate-memory", "--min-checkpointing", "--budget-gib", "100",
         "--pretrained_model_name_or_path", str(tiny_cogvideox_dir), "--max_num_frames", str(SHAPE[0]),
         "--height", str(SHAPE[1]), "--width", str(SHAPE[2])],
        cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "with no block recomputing: --no-gradient_checkpointing is enough" in done.stdout


def test_compile_blocks_compiles_each_repeated_block(tiny_hunyuan_video_dir):
    from blueberry_video.training.step import compile_blocks

    family = get_family_class("hunyuan_video")(tiny_hunyuan_video_dir)
    transformer = family.load_transformer(dtype=torch.float32)
    blocks = transformer_blocks(transformer, family.block_class_names)
    assert compile_blocks(transformer, family.block_class_names) == len(blocks) > 0
    assert all(block._compiled_call_impl is not None for block in blocks)
    assert transformer._compiled_call_impl is None  # the blocks, not the whole model
