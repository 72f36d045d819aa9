"""--overwrite_output_dir starts the new run from a clean output_dir: none of the earlier run's files is left to be
resumed, pruned against or read into the new run's records; files a run does not write stay."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from blueberry_video.training.accelerator import remove_run_outputs

SHAPE = ["--height", "96", "--width", "160", "--max_num_frames", "9", "--mixed_precision", "no"]


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def steps_logged(output_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def train_in(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path):
    from blueberry_video.config import parse_config
    from blueberry_video.models.cogvideox import CogVideoXFamily
    from blueberry_video.training.trainer import train

    def run(output_dir, *extra):
        config = parse_config(["--pretrained_model_name_or_path", str(tiny_cogvideox_dir),
                               "--instance_data_root", str(one_video_dataset_dir), "--output_dir", str(output_dir),
                               "--cache_dir", str(tmp_path / "cache"), *SHAPE, "--rank", "8",
                               "--learning_rate", "1e-3", "--checkpointing_steps", "2",
                               "--checkpoints_total_limit", "2", *extra])
        return train(config, CogVideoXFamily(tiny_cogvideox_dir))

    return run


def test_a_new_run_over_an_earlier_one_keeps_none_of_its_outputs(train_in, tmp_path, capsys):
    out = tmp_path / "run"
    train_in(out, "--max_train_steps", "4", "--validation_prompt", "a red circle", "--num_inference_steps", "1")
    assert {"checkpoint-2", "checkpoint-4", "validation", "README.md"} <= set(names(out))
    (out / "checkpoint-6.tmp").mkdir()  # a save that was killed
    (out / "notes.txt").write_text("mine")
    (out / "my_data").mkdir()
    (out / "my_data" / "clip.mp4").write_bytes(b"mine too")

    second = train_in(out, "--overwrite_output_dir", "--max_train_steps", "3")
    assert second.global_step == 3
    # Left there, the earlier checkpoint-4 would outlive the new checkpoint-2 under checkpoints_total_limit=2.
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-3"]
    assert steps_logged(out) == [1, 2, 3]
    assert json.loads((out / "final_metrics.json").read_text())["steps"] == 3
    assert not (out / "validation").exists()  # this run made no video
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "my_data" / "clip.mp4").read_bytes() == b"mine too"

    capsys.readouterr()
    resumed = train_in(out, "--resume_from_checkpoint", "latest", "--max_train_steps", "4")
    assert "resumed from" in capsys.readouterr().out and resumed.global_step == 4
    assert len(resumed.losses) == 1  # from the new run's step 3, not the earlier run's step 4
    assert steps_logged(out) == [1, 2, 3, 4]


def test_a_new_run_trains_into_a_folder_holding_only_the_users_readme_and_hidden_files(train_in, tmp_path):
    # A clone of a Hub repository to push the result to: its README.md and .git are not an earlier run
    out = tmp_path / "hub-repo"
    (out / ".git").mkdir(parents=True)
    (out / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (out / "README.md").write_text("# my LoRA\n")
    assert train_in(out, "--max_train_steps", "1").global_step == 1
    assert (out / "README.md").read_text() == "# my LoRA\n" and (out / "MODEL_CARD.md").is_file()
    assert (out / ".git").is_dir() and (out / "pytorch_lora_weights.safetensors").is_file()
    # Beside the run's own files they are still an earlier run's
    from blueberry_video.errors import ConfigError

    with pytest.raises(ConfigError, match="is not empty"):
        train_in(out, "--max_train_steps", "1")


def test_a_readme_the_user_wrote_is_kept_and_the_card_goes_beside_it(train_in, tmp_path):
    out = tmp_path / "run"
    train_in(out, "--max_train_steps", "2")
    notes = "# my LoRA\n\nTrained on the beach clips, lr sweep 3 of 5.\n"
    (out / "README.md").write_text(notes)  # the user's own, replacing the card
    train_in(out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest")
    assert (out / "README.md").read_text() == notes
    assert "| steps | 4 |" in (out / "MODEL_CARD.md").read_text()

    train_in(out, "--overwrite_output_dir", "--max_train_steps", "1")  # the card is the run's, the notes are not
    assert (out / "README.md").read_text() == notes and "| steps | 1 |" in (out / "MODEL_CARD.md").read_text()


def test_only_what_a_run_writes_is_removed(tmp_path):
    out = tmp_path / "run"
    run_files = ["config.yaml", "run_info.json", "metrics.jsonl", "loss.png", "final_metrics.json",
                 "pytorch_lora_weights.safetensors", "MODEL_CARD.md"]
    run_folders = ["checkpoint-10", "checkpoint-20.tmp", "transformer", "validation", "logs", "tmpa1b2_c3d"]
    user_files = ["notes.txt", "checkpoint-best.safetensors", "README.md"]
    for name in run_files + user_files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("Trained with blueberry-video." if name == "MODEL_CARD.md" else "x")
    for name in run_folders + ["latent_cache", "videos"]:
        (out / name).mkdir()
        (out / name / "inside").write_text("x")

    removed, left = remove_run_outputs(out, keep=out / "latent_cache")
    assert removed == sorted(run_files + run_folders)
    assert left == names(out) == sorted(user_files + ["latent_cache", "videos"])

    (out / "README.md").write_text("# cogvideox lora fine-tune\n\nTrained with blueberry-video.\n")  # the model card
    assert remove_run_outputs(out) == (["README.md"], sorted(user_files[:2] + ["latent_cache", "videos"]))


@pytest.mark.slow
def test_two_processes_start_over_once(tiny_cogvideox_dir, sample_dataset_dir, tmp_path):
    from tests.training.helpers import launch, training_args

    out = tmp_path / "ddp"
    first = launch(training_args(tiny_cogvideox_dir, sample_dataset_dir, out, tmp_path / "cache"))
    assert first.returncode == 0, first.stderr[-3000:]
    (out / "notes.txt").write_text("mine")
    again = launch(training_args(tiny_cogvideox_dir, sample_dataset_dir, out, tmp_path / "cache",
                                 "--overwrite_output_dir", "--max_train_steps", "3"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("removed the earlier run's") == 1  # by the main process alone
    assert json.loads((out / "run_info.json").read_text())["num_processes"] == 2
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-3"]
    assert steps_logged(out) == [1, 2, 3]
    assert (out / "notes.txt").read_text() == "mine"


def test_resuming_latest_before_any_checkpoint_is_a_new_run_over_the_earlier_attempt(train_in, tmp_path):
    # An attempt that died before its first checkpoint left records; `latest` finds nothing to resume, so the
    # run starts at step 0 and its records must not follow the attempt's.
    out = tmp_path / "run"
    train_in(out, "--max_train_steps", "3", "--checkpointing_steps", "0",
             "--validation_prompt", "a red circle", "--num_inference_steps", "1", "--validation_steps", "3")
    def lose_the_checkpoints():  # the end-of-run checkpoint is always written: remove it to stand for a crash
        for checkpoint in out.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)

    lose_the_checkpoints()
    train_in(out, "--resume_from_checkpoint", "latest", "--max_train_steps", "2", "--checkpointing_steps", "0")
    assert steps_logged(out) == [1, 2]
    assert (out / "validation").exists()  # without --overwrite_output_dir nothing else is removed
    lose_the_checkpoints()
    train_in(out, "--resume_from_checkpoint", "latest", "--overwrite_output_dir", "--max_train_steps", "2",
             "--checkpointing_steps", "0")
    assert steps_logged(out) == [1, 2] and not (out / "validation").exists()


def test_a_run_started_again_after_an_attempt_that_trained_nothing_is_not_refused(train_in, tmp_path, caplog):
    from blueberry_video.errors import ConfigError

    out = tmp_path / "run"
    # Stopped before its first step (here: a batch the one-video dataset cannot fill), after the trackers started.
    with pytest.raises(ConfigError, match="fewer than train_batch_size"):
        train_in(out, "--report_to", "tensorboard", "--train_batch_size", "2", "--max_train_steps", "2")
    assert names(out) == [".blueberry-run.lock", "logs"]
    # Fixed and started again, with no --overwrite_output_dir or --resume_from_checkpoint: it runs, over them.
    assert train_in(out, "--report_to", "tensorboard", "--max_train_steps", "2").global_step == 2
    assert "held only logs from an earlier attempt that stopped before its first step" in caplog.text
    assert steps_logged(out) == [1, 2]

    # The same for what an attempt that failed in its first step leaves: its settings beside the trackers' files.
    for name in names(out):
        if name not in ("config.yaml", "run_info.json", "logs", ".blueberry-run.lock"):
            shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    assert train_in(out, "--max_train_steps", "1").global_step == 1
    assert yaml.safe_load((out / "config.yaml").read_text())["max_train_steps"] == 1
    assert steps_logged(out) == [1]

    # A run killed after training steps it did not log or checkpoint: its records are not an attempt's leftovers.
    trained = tmp_path / "trained"
    train_in(trained, "--report_to", "tensorboard", "--max_train_steps", "2", "--logging_steps", "5",
             "--checkpointing_steps", "0")
    for name in names(trained):
        if name not in ("config.yaml", "run_info.json", "logs", "metrics.jsonl", ".blueberry-run.lock"):
            shutil.rmtree(trained / name) if (trained / name).is_dir() else (trained / name).unlink()
    (trained / "metrics.jsonl").write_text("")  # as it stood before the 5th step
    with pytest.raises(ConfigError, match="is not empty"):
        train_in(trained, "--max_train_steps", "1")

    # The latent cache alone in output_dir (a dummy-data run's place for it) is kept and reused, not refused.
    cached = tmp_path / "cached"
    (cached / "latent_cache").mkdir(parents=True)
    (cached / "latent_cache" / "chunk").write_text("kept")
    assert train_in(cached, "--max_train_steps", "1", "--cache_dir", str(cached / "latent_cache")).global_step == 1
    assert (cached / "latent_cache" / "chunk").read_text() == "kept"

    # A config.yaml without run_info.json, or a logs folder of other files, may be the user's: refused, and kept.
    mine = tmp_path / "mine"
    (mine / "logs").mkdir(parents=True)
    (mine / "logs" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty"):
        train_in(mine, "--max_train_steps", "1")
    (mine / "logs" / "notes.txt").unlink()
    (mine / "config.yaml").write_text("learning_rate: 1.0e-4\n")
    with pytest.raises(ConfigError, match="is not empty"):
        train_in(mine, "--max_train_steps", "1")
    assert (mine / "config.yaml").read_text() == "learning_rate: 1.0e-4\n"
