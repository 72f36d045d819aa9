"""Real multi-process runs on CPU (gloo): DDP on one machine, two 'machines' on loopback, the launch trap.

On a machine without CUDA only `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu` gives real DDP
(see shared/notes/accelerate-on-cpu.md); every test checks the run really had two processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

RECIPE = str(REPO_ROOT / "recipes" / "train_cogvideox.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_args(model_dir, data_dir, output_dir, cache_dir, *extra):
    return ["--pretrained_model_name_or_path", str(model_dir), "--instance_data_root", str(data_dir),
            "--output_dir", str(output_dir), "--cache_dir", str(cache_dir), "--height", "96", "--width", "160",
            "--max_num_frames", "9", "--mixed_precision", "no", "--rank", "8", "--learning_rate", "1e-3",
            "--max_train_steps", "4", "--checkpointing_steps", "2", "--seed", "3", *extra]


def launch(args, num_processes=2, cpu_backend=True, extra_launch=(), timeout=600):
    env = dict(os.environ)
    env.pop("ACCELERATE_USE_CPU", None)
    if cpu_backend:
        env["ACCELERATE_USE_CPU"] = "1"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), *extra_launch, RECIPE, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def test_two_process_ddp_trains_saves_once_and_resumes(tiny_cogvideox_dir, sample_dataset_dir, tmp_path):
    out = tmp_path / "ddp"
    run = launch(training_args(tiny_cogvideox_dir, sample_dataset_dir, out, tmp_path / "cache"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((out / "run_info.json").read_text())["num_processes"] == 2
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["step"] for m in metrics] == [1, 2, 3, 4]  # one writer: no line twice
    lora = load_file(out / "pytorch_lora_weights.safetensors")
    assert lora and all(torch.isfinite(t).all() for t in lora.values())
    # the same run continued from its last checkpoint by 2 more steps, again on 2 processes
    resumed = launch(training_args(tiny_cogvideox_dir, sample_dataset_dir, out, tmp_path / "cache",
                                   "--resume_from_checkpoint", "latest", "--max_train_steps", "6"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "checkpoint-4" in resumed.stdout
    assert [json.loads(m)["step"] for m in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


def test_two_ranks_of_batch_one_equal_one_rank_of_batch_two(tiny_cogvideox_dir, sample_dataset_dir, tmp_path):
    from blueberry_video.config import parse_config
    from blueberry_video.models.cogvideox import CogVideoXFamily
    from blueberry_video.training.trainer import train

    ddp = launch(training_args(tiny_cogvideox_dir, sample_dataset_dir, tmp_path / "ddp", tmp_path / "cache",
                               "--train_batch_size", "1"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "run_info.json").read_text())["num_processes"] == 2
    single = parse_config(training_args(tiny_cogvideox_dir, sample_dataset_dir, tmp_path / "single",
                                        tmp_path / "cache", "--train_batch_size", "2"))
    train(single, CogVideoXFamily(tiny_cogvideox_dir))
    a = load_file(tmp_path / "ddp" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "single" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    # LoRA's B matrices start at zero, so their values are exactly what training learned. The two runs sum the
    # same gradients in another order (all-reduce vs batch mean, 1 vs 2 threads): Adam may round a near-zero
    # gradient's step differently, so compare against the size of the whole update, not elementwise at 1e-6.
    learned = torch.cat([a[k].flatten() for k in a if "lora_B" in k])
    difference = torch.cat([(a[k] - b[k]).flatten() for k in a if "lora_B" in k])
    assert learned.norm() > 0
    assert difference.norm() < 1e-3 * learned.norm(), (difference.norm(), learned.norm())
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=5e-5)


def test_two_machines_on_loopback(tiny_cogvideox_dir, sample_dataset_dir, tmp_path):
    port = free_port()
    env = dict(os.environ, ACCELERATE_USE_CPU="1")
    out = tmp_path / "nodes"
    args = training_args(tiny_cogvideox_dir, sample_dataset_dir, out, tmp_path / "cache")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
             "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
             "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no", RECIPE, *args],
            env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    assert json.loads((out / "run_info.json").read_text())["num_processes"] == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    assert (out / "pytorch_lora_weights.safetensors").is_file()


def test_launch_that_would_train_alone_twice_is_refused(tiny_cogvideox_dir, sample_dataset_dir, tmp_path):
    run = launch(training_args(tiny_cogvideox_dir, sample_dataset_dir, tmp_path / "trap", tmp_path / "cache"),
                 cpu_backend=False)
    assert run.returncode != 0
    assert "ACCELERATE_USE_CPU=1" in run.stderr and "WORLD_SIZE=2" in run.stderr
    assert not (tmp_path / "trap" / "pytorch_lora_weights.safetensors").exists()
