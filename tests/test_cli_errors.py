"""What the scripts print when they stop: the toolkit's own errors as one line (a traceback with BLUEBERRY_DEBUG=1),
exit status 1; a finished training run's closing line. The real scripts run as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from blueberry_video.errors import ConfigError, exit_on_error
from tests.conftest import REPO_ROOT
from tests.test_cli import console_script

RECIPES = {"cogvideox": "recipes/train_cogvideox.py", "hunyuan_video": "recipes/train_hunyuan_video.py"}


def run_script(*argv, debug: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "BLUEBERRY_DEBUG": "1" if debug else ""}
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=env)


def model_dir(request, family: str):
    return request.getfixturevalue(f"tiny_{family}_dir")


@pytest.mark.parametrize("family", sorted(RECIPES))
def test_a_recipe_prints_its_configuration_error_as_one_line(family, request, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("an earlier run's")
    argv = [sys.executable, RECIPES[family], "--pretrained_model_name_or_path", str(model_dir(request, family)),
            "--dummy_data", "--output_dir", str(tmp_path / "out"), "--validation_steps", "5"]
    result = run_script(*argv)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"error: output_dir={tmp_path / 'out'} is not empty" in result.stderr
    assert "Traceback" not in result.stderr
    # A setting warning prints as a plain line too, not with the toolkit's file, line and source line
    assert "\nwarning: validation_steps=5 has no effect without validation_prompt" in "\n" + result.stderr
    assert "UserWarning" not in result.stderr and "SettingWarning" not in result.stderr
    if family == "cogvideox":  # the same wrapper in both recipes: one debug run is enough
        debugged = run_script(*argv, debug=True)
        assert debugged.returncode == 1
        assert "Traceback" in debugged.stderr and "ConfigError: output_dir=" in debugged.stderr


@pytest.mark.parametrize("family", sorted(RECIPES))
def test_a_recipe_ends_with_the_line_blueberry_video_train_prints(family, request, tmp_path):
    out = tmp_path / "out"
    result = run_script(sys.executable, RECIPES[family], "--pretrained_model_name_or_path",
                        str(model_dir(request, family)), "--dummy_data", "--output_dir", str(out),
                        "--max_train_steps", "1", "--max_num_frames", "9", "--height", "32", "--width", "48")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training on 1 process: 1 video(s) per step (1 per batch x 1 accumulation), 1 steps\n" in result.stdout
    assert result.stdout.splitlines()[-1] == f"1 steps; outputs in {out}"


def test_the_command_prints_its_errors_as_one_line(tiny_cogvideox_dir, tmp_path):
    typo = tmp_path / "outptu"
    result = run_script(console_script(), "generate", "--model", str(tiny_cogvideox_dir), "--lora", str(typo),
                        "--prompt", "a cat", "--out", str(tmp_path / "video.mp4"))
    assert result.returncode == 1
    assert f"error: --lora {typo}: no such file or folder" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(autouse=True)
def python_warning_format(monkeypatch):
    """exit_on_error formats setting warnings for the command line: put Python's format back for the other tests."""
    import warnings

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)


def test_exit_on_error_reports_only_the_toolkits_own_errors(capsys, monkeypatch):
    def refuse():
        raise ConfigError("rank=0: must be positive")

    monkeypatch.setenv("BLUEBERRY_DEBUG", "")
    with pytest.raises(SystemExit) as stopped:
        exit_on_error(refuse)
    assert stopped.value.code == 1 and capsys.readouterr().err == "error: rank=0: must be positive\n"
    assert exit_on_error(lambda value: value * 2, 21) == 42
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        exit_on_error(lambda: 1 / 0)
    monkeypatch.setenv("BLUEBERRY_DEBUG", "1")
    with pytest.raises(ConfigError):
        exit_on_error(refuse)


def test_a_stop_that_a_library_turned_into_its_own_error_is_reported_as_the_stop(capsys, monkeypatch, tmp_path):
    # Ctrl-C while diffusers reads weights: its loader turns whatever its reading raises into "Unable to load weights"
    import safetensors.torch
    from diffusers.models.model_loading_utils import load_state_dict

    from blueberry_video.errors import StoppedBySignal

    def signal_while_reading(*args, **kwargs):
        raise StoppedBySignal("SIGINT: stopped while encoding the latent cache X: 4 of 8 videos are kept", 2)

    monkeypatch.setattr(safetensors.torch, "load_file", signal_while_reading)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\x00" * 64)
    monkeypatch.setenv("BLUEBERRY_DEBUG", "")
    with pytest.raises(SystemExit) as stopped:
        exit_on_error(load_state_dict, str(weights))
    assert stopped.value.code == 130
    assert capsys.readouterr().err == "error: SIGINT: stopped while encoding the latent cache X: 4 of 8 videos are kept\n"


def test_a_process_whose_peer_stopped_first_waits_for_its_own_stop_signal():
    # torchrun signals its processes one after another: the first one's exit breaks the barrier the second waits in
    import os
    import signal
    import threading

    from blueberry_video.errors import StoppedBySignal
    from blueberry_video.stop_signals import stop_with_message

    own_signal = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    own_signal.start()
    try:
        with pytest.raises(StoppedBySignal, match="SIGINT: 3 of 5 videos are kept") as stopped:
            with stop_with_message(lambda: "3 of 5 videos are kept"):
                raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:2284")
    finally:
        own_signal.cancel()  # where the error came out at once, the signal must not reach pytest
    assert isinstance(stopped.value.__context__, RuntimeError)
    with pytest.raises(ValueError):  # another error is raised as it is, at once
        with stop_with_message(lambda: "kept"):
            raise ValueError("a bug")


def test_processes_of_one_launch_on_one_machine_print_a_message_once(capsys, monkeypatch, tmp_path):
    # The launcher gives each local process an error file in its own folder under one attempt folder.
    monkeypatch.setenv("BLUEBERRY_DEBUG", "")
    for local_rank in range(3):
        (tmp_path / "attempt_0" / str(local_rank)).mkdir(parents=True)

    def process(local_rank, message):
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "attempt_0" / str(local_rank) / "error.json"))
        def refuse():
            raise ConfigError(message)

        with pytest.raises(SystemExit):
            exit_on_error(refuse)
        launcher_reads = json.loads((tmp_path / "attempt_0" / str(local_rank) / "error.json").read_text())
        assert launcher_reads["message"] == f"error: {message}"  # every process still tells the launcher
        return capsys.readouterr().err

    assert process(0, "rank=0: must be positive") == "error: rank=0: must be positive\n"
    assert process(1, "rank=0: must be positive") == ""
    assert process(2, "/data/x.mp4: not readable") == "error: /data/x.mp4: not readable\n"  # its own: printed
    # An error file named by hand, outside the launcher's layout: every run prints, and leaves no marker behind.
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    def refuse():
        raise ConfigError("rank=0: must be positive")

    for _ in range(2):
        with pytest.raises(SystemExit):
            exit_on_error(refuse)
        assert capsys.readouterr().err == "error: rank=0: must be positive\n"
    assert not list(tmp_path.glob("said-*"))


def test_a_run_stopped_before_its_last_step_ends_saying_so(tmp_path, capsys):
    from blueberry_video.cli import print_train_result
    from blueberry_video.training.trainer import TrainResult

    print_train_result(TrainResult(tmp_path, 225, tmp_path / "checkpoint-225", stopped_early=True))
    assert capsys.readouterr().out == (f"225 steps, stopped before the last: no weights exported; "
                                       f"{tmp_path / 'checkpoint-225'} holds them\n")
    print_train_result(TrainResult(tmp_path, 400, tmp_path / "pytorch_lora_weights.safetensors"))
    assert capsys.readouterr().out == f"400 steps; outputs in {tmp_path}\n"
