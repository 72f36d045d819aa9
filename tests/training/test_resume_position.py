"""A run resumed with another batch size or number of processes continues its epoch and its learning-rate
schedule where the checkpoint left them, converted from the checkpoint's units."""

from __future__ import annotations

import json

import pytest
import torch

from blueberry_video.config import TrainConfig
from blueberry_video.training.optim import build_lr_scheduler
from blueberry_video.training.resume_position import rescale_lr_schedule
from tests.training.test_preflight import train_cogvideox
from tests.training.test_train_cogvideox import recipe_args


def epochs_by_step(output_dir) -> dict[int, int]:
    return {r["step"]: r["epoch"] for r in map(json.loads, (output_dir / "metrics.jsonl").read_text().splitlines())}


def test_a_larger_batch_on_resume_takes_the_rest_of_the_epoch_once(tiny_cogvideox_dir, one_video_dataset_dir,
                                                                   tmp_path):
    out = tmp_path / "run"
    # 12 items an epoch: at batch 2, steps 1-2 take 4 of them; at batch 4 the other 8 are steps 3-4.
    args = recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, out, "--rank", "4", "--lora_alpha", "4",
                       "--dataset_repeats", "12", "--checkpointing_steps", "2")
    train_cogvideox.main([*args, "--train_batch_size", "2", "--max_train_steps", "2"])
    train_cogvideox.main([*args, "--train_batch_size", "4", "--max_train_steps", "6",
                          "--resume_from_checkpoint", "latest"])
    assert epochs_by_step(out) == {1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 6: 1}
    saved = json.loads((out / "checkpoint-6" / "training_state.json").read_text())
    assert saved["samples_per_batch"] == 4 and saved["num_processes"] == 1 and saved["engine"] == "NO"
    # config.yaml now says batch 4; run_info.json says which steps ran with what
    segments = json.loads((out / "run_info.json").read_text())["segments"]
    assert segments == [{"from_step": 0, "num_processes": 1},
                        {"from_step": 2, "num_processes": 1, "resumed_from": str(out / "checkpoint-2"),
                         "changed": {"train_batch_size": [2, 4], "max_train_steps": [2, 6]}}]


def test_the_schedule_saved_on_one_process_continues_at_the_same_rate_on_two():
    config = TrainConfig(dummy_data=True, lr_scheduler="cosine", lr_warmup_steps=2, learning_rate=1e-3)

    def schedule(num_processes):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.learning_rate)
        return build_lr_scheduler(optimizer, config, max_train_steps=20, num_processes=num_processes)

    one = schedule(1)
    for _ in range(7):  # 7 optimizer steps on one process: accelerate steps the scheduler once each
        one.optimizer.step()
        one.step()
    two = schedule(2)
    two.load_state_dict(one.state_dict())  # what accelerate's load_state does
    rescale_lr_schedule(two, {"global_step": 7, "num_processes": 1}, num_processes=2)
    assert two.get_last_lr() == pytest.approx(one.get_last_lr())
    assert two.optimizer.param_groups[0]["lr"] == pytest.approx(one.optimizer.param_groups[0]["lr"])
    for _ in range(2):  # the next step: twice on two processes, once on one
        two.optimizer.step()
        two.step()
    one.optimizer.step()
    one.step()
    assert two.get_last_lr() == pytest.approx(one.get_last_lr())


def test_a_smaller_batch_on_resume_trains_every_step_asked_for(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path):
    out = tmp_path / "run"
    # 12 items an epoch: 3 steps at batch 4, 6 at batch 2. Step 4 took 4 items of epoch 1; at batch 2 its other
    # 8 are steps 5-8, and steps 9-10 need a third epoch, which the saved run's count of epochs did not have.
    args = recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, out, "--rank", "4", "--lora_alpha", "4",
                       "--dataset_repeats", "12", "--checkpointing_steps", "4")
    train_cogvideox.main([*args, "--train_batch_size", "4", "--max_train_steps", "4"])
    result = train_cogvideox.main([*args, "--train_batch_size", "2", "--max_train_steps", "10",
                                   "--resume_from_checkpoint", "latest"])
    assert result.global_step == 10
    assert epochs_by_step(out) == {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1, 9: 2, 10: 2}


def test_a_run_of_epochs_resumed_with_a_smaller_batch_ends_its_schedule_with_its_last_epoch(
        tiny_cogvideox_dir, one_video_dataset_dir, tmp_path):
    out = tmp_path / "run"
    args = recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, out, "--rank", "4", "--lora_alpha", "4",
                       "--dataset_repeats", "12", "--checkpointing_steps", "4", "--lr_scheduler", "cosine",
                       "--lr_warmup_steps", "0")
    train_cogvideox.main([*args, "--train_batch_size", "4", "--max_train_steps", "4"])
    # Three epochs: step 4 is one batch of 4 into epoch 1; at batch 2 that epoch has 4 steps left, epoch 2 has 6.
    train_cogvideox.main([*args, "--train_batch_size", "2", "--max_train_steps", "none", "--num_train_epochs", "3",
                          "--resume_from_checkpoint", "latest"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"]: r["epoch"] for r in records} == {**{s: 0 for s in (1, 2, 3)}, **{s: 1 for s in range(4, 9)},
                                                         **{s: 2 for s in range(9, 15)}}
    # The cosine schedule ends at step 14, the run's last: counted as 3 epochs of 6 it would still be at a
    # fifth of its rate.
    assert records[-1]["lr"] < 0.05 * records[0]["lr"]


@pytest.mark.parametrize("saved, now, refused", [
    ("NO", "MULTI_GPU", None),  # one process and DDP write the same layout
    ("MULTI_GPU", "NO", None),
    ("FSDP2", "FSDP2", None),
    ("NO", "DEEPSPEED ZeRO-2", "written under one process, but this launch runs DEEPSPEED ZeRO-2"),
    ("DEEPSPEED ZeRO-2", "DEEPSPEED ZeRO-3", "written under DEEPSPEED ZeRO-2, but this launch runs DEEPSPEED ZeRO-3"),
    ("FSDP2", "MULTI_GPU", "written under FSDP2, but this launch runs DDP"),
    (None, "FSDP2", None),  # a checkpoint from before the engine was recorded
])
def test_a_checkpoint_of_a_sharding_engine_resumes_only_under_it(tmp_path, saved, now, refused):
    from blueberry_video.errors import ConfigError
    from blueberry_video.training.preflight import check_resume_engine

    state = {"global_step": 2} | ({"engine": saved} if saved else {})
    if refused:
        with pytest.raises(ConfigError, match=refused):
            check_resume_engine(state, tmp_path / "checkpoint-2", now, 2)
    else:
        check_resume_engine(state, tmp_path / "checkpoint-2", now, 2)


@pytest.mark.parametrize("engine, refused", [("DEEPSPEED ZeRO-2", True), ("DEEPSPEED ZeRO-3", True),
                                             ("MULTI_GPU", False), ("FSDP2", False)])
def test_a_deepspeed_checkpoint_resumes_only_on_as_many_processes(tmp_path, engine, refused):
    # DeepSpeed would refuse too, but only inside load_state: after the latent cache and the weights.
    from blueberry_video.errors import ConfigError
    from blueberry_video.training.preflight import check_resume_engine

    state = {"global_step": 2, "engine": engine, "num_processes": 2}
    check_resume_engine(state, tmp_path / "checkpoint-2", engine, 2)
    if refused:
        with pytest.raises(ConfigError, match="written by 2 processes .* this launch has 1.*Resume with 2 processes"):
            check_resume_engine(state, tmp_path / "checkpoint-2", engine, 1)
    else:
        check_resume_engine(state, tmp_path / "checkpoint-2", engine, 1)
