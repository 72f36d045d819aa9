"""One run per output_dir: a second run on it is refused while the first holds it; what killed attempts left
half-written is removed; a resume from an earlier checkpoint moves the later ones aside instead of returning to
them or deleting the new branch's checkpoints in their favour."""

from __future__ import annotations

import json
import logging

import pytest

from blueberry_video.errors import ConfigError
from tests.training.test_preflight import train_cogvideox
from tests.training.test_train_cogvideox import recipe_args


def steps_logged(output_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def run_args(tiny_cogvideox_dir, one_video_dataset_dir):
    def make(out, *extra):
        return recipe_args(tiny_cogvideox_dir, one_video_dataset_dir, out, "--rank", "4", "--lora_alpha", "4",
                           "--checkpointing_steps", "2", *extra)
    return make


def test_a_second_run_on_an_output_dir_in_use_is_refused(run_args, tmp_path, fresh_accelerate_state):
    from accelerate import Accelerator

    from blueberry_video.training.run_folder import hold_output_dir

    out = tmp_path / "busy"
    with hold_output_dir(Accelerator(cpu=True), out):  # as the first run holds it
        with pytest.raises(ConfigError, match=r"output_dir=.*busy is in use by another training run \(pid \d+ on "):
            train_cogvideox.main(run_args(out, "--max_train_steps", "1", "--resume_from_checkpoint", "latest"))
        assert not (out / "metrics.jsonl").exists()
    assert train_cogvideox.main(run_args(out, "--max_train_steps", "1", "--resume_from_checkpoint",
                                         "latest")).global_step == 1  # released when the first run ends


def test_an_output_dir_that_cannot_be_written_is_refused_in_one_line_before_the_cache(run_args, tmp_path,
                                                                                      monkeypatch, caplog):
    from blueberry_video.training import trainer

    monkeypatch.setattr(trainer, "precompute_latent_cache", lambda *a, **k: pytest.fail("encoded before refusing"))
    (tmp_path / "a-file").write_text("not a folder")  # as root, permissions would not stop the mkdir
    with pytest.raises(ConfigError, match=r"cannot write output_dir=.*a-file/run \(.*\): pick an --output_dir"):
        train_cogvideox.main(run_args(tmp_path / "a-file" / "run", "--max_train_steps", "1"))
    with pytest.raises(ConfigError, match=r"output_dir=.*a-file is a file, not a folder: pick another --output_dir"):
        train_cogvideox.main(run_args(tmp_path / "a-file", "--max_train_steps", "1"))
    # A resume is refused the same, without first saying it found no checkpoint there and starts a new run
    with caplog.at_level(logging.WARNING, logger="blueberry_video.training.checkpoints"):
        with pytest.raises(ConfigError, match=r"a-file is a file, not a folder"):
            train_cogvideox.main(run_args(tmp_path / "a-file", "--max_train_steps", "1", "--resume_from_checkpoint",
                                          "latest"))
    assert "starting a new run" not in caplog.text


def test_what_killed_attempts_left_half_written_is_removed(run_args, tmp_path):
    out = tmp_path / "run"
    train_cogvideox.main(run_args(out, "--max_train_steps", "2"))
    (out / "checkpoint-3.tmp").mkdir()  # a save that was killed
    (out / "checkpoint-3.tmp" / "optimizer.bin").write_bytes(b"part")
    (out / "tmpk2j4_x9q").mkdir()  # an export that was killed
    (out / "validation").mkdir()
    (out / "validation" / ".step-000003-prompt0-0.77.1a2b3c4d.tmp.mp4").write_bytes(b"part")
    (out / "validation" / "step-000002-prompt0-0.mp4").write_bytes(b"kept")
    (out / "tmp_notes").mkdir()  # not a name this toolkit writes
    train_cogvideox.main(run_args(out, "--max_train_steps", "3", "--resume_from_checkpoint", "latest"))
    assert not (out / "checkpoint-3.tmp").exists() and not (out / "tmpk2j4_x9q").exists()
    assert [p.name for p in (out / "validation").iterdir()] == ["step-000002-prompt0-0.mp4"]
    assert (out / "tmp_notes").is_dir()


def test_resuming_an_earlier_checkpoint_sets_the_later_ones_aside(run_args, tmp_path):
    out = tmp_path / "run"
    args = run_args(out, "--checkpoints_total_limit", "2")
    train_cogvideox.main([*args, "--max_train_steps", "4"])  # checkpoint-2, checkpoint-4
    train_cogvideox.main([*args, "--max_train_steps", "3", "--resume_from_checkpoint", "checkpoint-2"])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    aside = list(out.glob("set-aside-after-step-2-*"))
    assert len(aside) == 1 and (aside[0] / "checkpoint-4" / "training_state.json").is_file()  # kept, not deleted
    assert steps_logged(out) == [1, 2, 3]
    # `latest` now continues this branch, not the one set aside
    assert train_cogvideox.main([*args, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"]).global_step == 4
    assert steps_logged(out) == [1, 2, 3, 4]


def test_a_stop_during_the_export_lets_it_finish_and_skips_the_final_validation(run_args, tmp_path, monkeypatch,
                                                                                  capsys):
    import os
    import signal

    import blueberry_video.training.trainer as trainer

    export = trainer.export_trained_weights

    def stopped_while_exporting(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # SLURM's notice arrives as the export starts
        return export(*args, **kwargs)

    monkeypatch.setattr(trainer, "export_trained_weights", stopped_while_exporting)
    reached_default = []
    previous = signal.signal(signal.SIGTERM, lambda *_: reached_default.append(True))  # where it would kill the run
    try:
        out = tmp_path / "run"
        train_cogvideox.main(run_args(out, "--max_train_steps", "1", "--validation_prompt", "a red circle",
                                      "--num_inference_steps", "1"))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not reached_default
    assert (out / "pytorch_lora_weights.safetensors").is_file() and (out / "README.md").is_file()
    assert not (out / "validation").exists()
    assert "the final validation is skipped" in capsys.readouterr().out
