"""Non-finite losses are skipped and counted, too many in a row stop the run; GPU OOM explains the options."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from blueberry_video.config import parse_config
from blueberry_video.errors import OutOfMemoryHelp, RecordWarning
from blueberry_video.models.cogvideox import CogVideoXFamily
from blueberry_video.training.checkpoints import checkpoint_lora_state
from blueberry_video.training.trainer import TooManyBadStepsError, run_recipe, train


def config_for(model_dir, data_dir, out, *extra):
    return parse_config(["--pretrained_model_name_or_path", str(model_dir), "--instance_data_root", str(data_dir),
                         "--output_dir", str(out), "--cache_dir", str(out.parent / "cache"), "--height", "96",
                         "--width", "160", "--max_num_frames", "9", "--mixed_precision", "no", "--rank", "8",
                         "--train_batch_size", "2", "--checkpointing_steps", "1", *extra])


class PoisonedLoss(CogVideoXFamily):
    """A loss that turns NaN on chosen calls, as a corrupt latent or an overflow would make it."""

    def __init__(self, model_dir, bad_calls):
        super().__init__(model_dir)
        self.bad_calls, self.calls = bad_calls, 0

    def training_loss(self, *args, **kwargs):
        self.calls += 1
        loss = super().training_loss(*args, **kwargs)
        return loss * float("nan") if self.bad_calls(self.calls) else loss


def test_a_nan_step_is_skipped_and_training_goes_on(tiny_cogvideox_dir, sample_dataset_dir, tmp_path, caplog):
    family = PoisonedLoss(tiny_cogvideox_dir, lambda call: call == 3)
    with caplog.at_level(logging.WARNING, logger="blueberry_video.training.loop"):
        result = train(config_for(tiny_cogvideox_dir, sample_dataset_dir, tmp_path / "run", "--max_train_steps", "6"),
                       family)
    assert result.global_step == 6 and result.bad_steps == 1
    # Said by the first process only, so with no process number before it
    assert [record.getMessage() for record in caplog.records if record.name == "blueberry_video.training.loop"] == [
        "step 3: non-finite loss/gradient, update skipped (1 in a row)"]
    weights = load_file(result.weights)
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_too_many_bad_steps_stop_with_the_last_good_checkpoint_kept(tiny_cogvideox_dir, sample_dataset_dir, tmp_path):
    family = PoisonedLoss(tiny_cogvideox_dir, lambda call: call > 2)
    out = tmp_path / "run"
    with pytest.raises(TooManyBadStepsError, match="3 steps in a row.*learning_rate"):
        train(config_for(tiny_cogvideox_dir, sample_dataset_dir, out, "--max_train_steps", "20",
                         "--max_consecutive_bad_steps", "3"), family)
    good = checkpoint_lora_state(out / "checkpoint-2")
    assert all(torch.isfinite(t).all() for t in good.values())


class OutOfMemoryFamily(CogVideoXFamily):
    def training_loss(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_out_of_memory_lists_the_memory_options(tiny_cogvideox_dir, sample_dataset_dir, tmp_path):
    args = ["--pretrained_model_name_or_path", str(tiny_cogvideox_dir), "--instance_data_root", str(sample_dataset_dir),
            "--output_dir", str(tmp_path / "oom"), "--cache_dir", str(tmp_path / "cache"), "--height", "96",
            "--width", "160", "--max_num_frames", "9", "--mixed_precision", "no", "--train_batch_size", "2"]
    with pytest.raises(OutOfMemoryHelp) as error:
        run_recipe(OutOfMemoryFamily, args)
    message = str(error.value)
    assert "Tried to allocate 20.00 GiB" in message
    for option in ("--gradient_checkpointing", "--use_8bit_adam", "--max_num_frames 9", "--train_batch_size 1",
                   "deepspeed_zero2_offload.yaml"):
        assert option in message


def test_bad_videos_are_reported_and_the_good_ones_still_train(tiny_cogvideox_dir, sample_dataset_dir, tmp_path, capsys):
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(sample_dataset_dir, data, ignore=shutil.ignore_patterns(".latent_cache"))
    good = (data / "videos" / "0000.mp4").read_bytes()
    (data / "videos" / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (data / "videos" / "empty.mp4").write_bytes(b"")
    (data / "videos" / "garbage.mp4").write_bytes(b"\x00not a video\xff" * 100)
    metadata = json.loads((data / "metadata.json").read_text())
    metadata += [{"file": f"videos/{name}.mp4", "caption": "broken"} for name in ("truncated", "empty", "garbage")]
    metadata.append({"file": "videos/0001.mp4", "caption": ""})  # a second entry for 0001 with no caption
    (data / "metadata.json").write_text(json.dumps(metadata))

    result = train(config_for(tiny_cogvideox_dir, data, tmp_path / "run", "--max_train_steps", "3"),
                   CogVideoXFamily(tiny_cogvideox_dir))
    assert result.global_step == 3
    report = capsys.readouterr().out
    assert "4 cached, 4 skipped" in report
    for name in ("truncated.mp4", "empty.mp4", "garbage.mp4"):
        assert name in report
    assert "0 bytes" in report and "no caption" in report


def test_a_resume_after_a_crash_that_cut_the_last_metrics_line_short(tiny_cogvideox_dir, sample_dataset_dir, tmp_path):
    out = tmp_path / "run"
    train(config_for(tiny_cogvideox_dir, sample_dataset_dir, out, "--max_train_steps", "3"),
          CogVideoXFamily(tiny_cogvideox_dir))
    with open(out / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 4, "loss": 0.')  # a crash or a full disk while step 4's line was written
    with pytest.warns(RecordWarning, match="its last line was cut short"):
        result = train(config_for(tiny_cogvideox_dir, sample_dataset_dir, out, "--max_train_steps", "5",
                                  "--resume_from_checkpoint", "latest"), CogVideoXFamily(tiny_cogvideox_dir))
    assert result.global_step == 5
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]
