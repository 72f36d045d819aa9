"""Killed and preempted runs lose nothing: SIGKILL at random moments, SIGTERM from a scheduler, Ctrl-C."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

RECIPE = str(REPO_ROOT / "recipes" / "train_cogvideox.py")


def args(model_dir, data_dir, out, cache, steps, *extra):
    return ["--pretrained_model_name_or_path", str(model_dir), "--instance_data_root", str(data_dir),
            "--output_dir", str(out), "--cache_dir", str(cache), "--height", "96", "--width", "160",
            "--max_num_frames", "9", "--mixed_precision", "no", "--rank", "8", "--learning_rate", "1e-3",
            "--lr_scheduler", "cosine", "--train_batch_size", "2", "--max_train_steps", str(steps),
            "--dataset_repeats", "3", "--checkpointing_steps", "1", "--checkpoints_total_limit", "2", *extra]


def start(arguments):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, RECIPE, *arguments], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def logged_steps(out) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_for_step(process, out, step, timeout=120):
    deadline = time.time() + timeout
    while logged_steps(out) < step:
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.005)


def test_sigkill_at_random_points_then_resume_gives_the_same_weights(tiny_cogvideox_dir, sample_dataset_dir, tmp_path):
    steps = 12
    reference = subprocess.run([sys.executable, RECIPE, *args(tiny_cogvideox_dir, sample_dataset_dir, tmp_path / "ref",
                                                              tmp_path / "cache", steps)],
                               cwd=REPO_ROOT, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "killed"
    rng = random.Random(1234)
    killed_at = []
    for attempt in range(3):
        extra = ["--resume_from_checkpoint", "latest"] if attempt else []
        process = start(args(tiny_cogvideox_dir, sample_dataset_dir, out, tmp_path / "cache", steps, *extra))
        target = min(steps - 1, logged_steps(out) + rng.randint(1, 3))
        wait_for_step(process, out, target)
        time.sleep(rng.uniform(0.0, 0.08))  # lands in a step, or in the checkpoint save that follows each step
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed_at.append(logged_steps(out))
    final = subprocess.run([sys.executable, RECIPE, *args(tiny_cogvideox_dir, sample_dataset_dir, out,
                                                           tmp_path / "cache", steps, "--resume_from_checkpoint", "latest")],
                           cwd=REPO_ROOT, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "resumed from" in final.stdout, killed_at
    a = load_file(tmp_path / "ref" / "pytorch_lora_weights.safetensors")
    b = load_file(out / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-7)
    steps_logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == list(range(1, steps + 1))  # lines of killed runs after their checkpoint were dropped
    assert not list(out.glob("checkpoint-*.tmp"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_sigterm_or_ctrl_c_saves_a_checkpoint_and_exits_cleanly(signum, tiny_cogvideox_dir, sample_dataset_dir,
                                                                 tmp_path):
    out = tmp_path / "preempted"
    run_args = args(tiny_cogvideox_dir, sample_dataset_dir, out, tmp_path / "cache", 400,
                    "--checkpointing_steps", "1000")
    process = start(run_args)
    wait_for_step(process, out, 3)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert "stopped at step" in output
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1
    state = json.loads((checkpoints[0] / "training_state.json").read_text())
    assert 3 <= state["global_step"] < 400
    assert not (out / "pytorch_lora_weights.safetensors").exists()  # not finished: no final export yet
