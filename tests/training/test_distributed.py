"""Real multi-process runs on CPU (gloo): DDP on one machine, two 'machines' on loopback, the launch trap.

On a machine without CUDA only `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu` gives real DDP
(see shared/notes/accelerate-on-cpu.md); every test checks the run really had two processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO_ROOT
from tests.training.helpers import RECIPE, free_port, launch, training_args

pytestmark = pytest.mark.slow


def test_two_process_ddp_trains_saves_once_and_resumes(tiny_cogvideox_dir, sample_dataset_dir, tmp_path):
    out = tmp_path / "ddp"
    run = launch(training_args(tiny_cogvideox_dir, sample_dataset_dir, out, tmp_path / "cache",
                               "--nccl_timeout", "1234"))
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["num_processes"] == 2
    # Said at the start, and in the card: a launch that came out as one process is seen at once
    assert ("training on 2 processes (DDP): 2 video(s) per step (1 per batch x 1 accumulation x 2 processes), "
            "4 steps") in run.stdout
    assert "| batch | 2 video(s) per step" in (out / "README.md").read_text()
    assert info["segments"][0]["process_group_timeout_s"] == 1234  # read back from torch's process group
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
    # The one-process run resumed on two: the schedule's conversion is told once, not by each process
    resumed = launch(training_args(tiny_cogvideox_dir, sample_dataset_dir, tmp_path / "single", tmp_path / "cache",
                                   "--train_batch_size", "1", "--max_train_steps", "6", "--resume_from_checkpoint",
                                   "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    told = resumed.stdout + resumed.stderr
    assert told.count("resuming on 2 processes, saved on 1 process: the learning-rate schedule") == 1, told[-3000:]


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


def test_a_cpu_launch_asking_for_two_processes_that_starts_one_is_refused(tiny_cogvideox_dir, sample_dataset_dir,
                                                                          tmp_path):
    # accelerate's plain launcher starts ONE process for `--cpu --num_processes 2` (it expects mpirun there).
    out = tmp_path / "alone"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
               "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no", RECIPE,
               *training_args(tiny_cogvideox_dir, sample_dataset_dir, out, tmp_path / "cache")]
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "MASTER_ADDR", "WORLD_SIZE")}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert run.returncode != 0
    assert "accelerate's plain launcher starts one process there" in run.stderr, run.stderr[-3000:]
    assert "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N" in run.stderr
    assert not (out / "pytorch_lora_weights.safetensors").exists()


def test_validation_prompts_are_shared_out_and_every_video_is_written_once(tiny_cogvideox_dir, sample_dataset_dir,
                                                                            tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "validate"
    run = launch(training_args(tiny_cogvideox_dir, sample_dataset_dir, out, tmp_path / "cache",
                               "--max_train_steps", "2", "--validation_steps", "2", "--num_inference_steps", "2",
                               "--validation_prompt", "a red circle:::a blue square:::a green line",
                               "--report_to", "tensorboard"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((out / "run_info.json").read_text())["num_processes"] == 2
    # 3 prompts over 2 processes (rank 0: prompts 0 and 2, rank 1: prompt 1), each video written once, and
    # the final validation at the same step is not repeated.
    assert sorted(p.name for p in (out / "validation").iterdir()) == [
        f"step-000002-prompt{i}-0.mp4" for i in range(3)]
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    tags = EventAccumulator(str(events[0].parent)).Reload().Tags()["images"]
    assert sorted(tags) == [f"validation/prompt{i}-0" for i in range(3)]  # the main process logged all three


def run_sharded_validation(model_dir, out_dir, engine: str, num_processes: int):
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_processes),
               "--master_port", str(free_port()), str(REPO_ROOT / "tests" / "training" / "scripts" /
                                                    "sharded_validation.py"), str(model_dir), str(out_dir), engine]
    # A process that skipped a forward would leave the others waiting in a gather: the timeout turns a hang
    # into a failure.
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((out_dir / "videos.json").read_text())
    assert result["num_processes"] == num_processes
    return result["videos"]


@pytest.fixture(scope="module")
def unsharded_videos(tiny_cogvideox_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("unsharded")
    return run_sharded_validation(tiny_cogvideox_dir, out, "none", 1)


@pytest.mark.parametrize("engine", ["fsdp2", "fsdp1"])
def test_validation_on_weights_sharded_over_two_processes_matches_unsharded(engine, tiny_cogvideox_dir,
                                                                           unsharded_videos, tmp_path):
    from blueberry_video.data.decode import FrameSampling, decode_video

    videos = run_sharded_validation(tiny_cogvideox_dir, tmp_path, engine, 2)
    assert [os.path.basename(v) for v in videos] == [f"step-000001-prompt{i}-0.mp4" for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "validation").iterdir()) == [os.path.basename(v) for v in videos]
    sampling = FrameSampling(num_frames=9, height=32, width=48)
    for sharded, whole in zip(videos, unsharded_videos):
        torch.testing.assert_close(decode_video(sharded, sampling), decode_video(whole, sampling), rtol=0, atol=0)


def test_sigterm_to_one_process_stops_both_at_the_same_step_with_a_checkpoint(tiny_cogvideox_dir, sample_dataset_dir,
                                                                              tmp_path):
    import psutil

    out = tmp_path / "preempted"
    env = dict(os.environ, ACCELERATE_USE_CPU="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(free_port()), RECIPE, *training_args(tiny_cogvideox_dir, sample_dataset_dir, out,
                                                        tmp_path / "cache", "--max_train_steps", "400",
                                                        "--checkpointing_steps", "1000", "--dataset_repeats", "50")]
    launcher = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    workers = []
    try:
        deadline = time.time() + 180
        while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 3:
            assert launcher.poll() is None and time.time() < deadline, launcher.stdout.read()[-3000:]
            time.sleep(0.05)
        workers = [p for p in psutil.Process(launcher.pid).children(recursive=True) if RECIPE in " ".join(p.cmdline())]
        assert len(workers) == 2
        workers[-1].send_signal(signal.SIGTERM)  # as a scheduler might signal only one node's processes
        output, _ = launcher.communicate(timeout=180)
    finally:
        # A process left waiting for the other must not outlive a failed test.
        for worker in workers:
            if worker.is_running():
                worker.kill()
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, output[-3000:]
    assert "stopped at step" in output
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1
    step = json.loads((checkpoints[0] / "training_state.json").read_text())["global_step"]
    assert 3 <= step < 400
    assert len((out / "metrics.jsonl").read_text().splitlines()) == step  # neither process went on alone


def test_an_fsdp_config_that_would_train_as_plain_ddp_is_refused(tiny_cogvideox_dir, sample_dataset_dir, tmp_path):
    out = tmp_path / "not-fsdp"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO_ROOT / "accelerate_configs" / "fsdp2_full_shard.yaml"), "--num_processes", "2",
               "--main_process_port", str(free_port()), RECIPE,
               *training_args(tiny_cogvideox_dir, sample_dataset_dir, out, tmp_path / "cache")]
    # What a user trying the FSDP config on a CPU box would do: accelerate makes it plain DDP over gloo.
    run = subprocess.run(command, env=dict(os.environ, ACCELERATE_USE_CPU="1"), capture_output=True, text=True,
                         timeout=600, cwd=REPO_ROOT)
    assert run.returncode != 0
    assert "asked for FSDP" in run.stderr and "MULTI_CPU" in run.stderr
    assert len([line for line in run.stderr.splitlines() if line.startswith("error: ")]) == 1  # not once a process
    assert not (out / "metrics.jsonl").exists()
    # The launcher's closing report names our message as the root cause, not a link and the other rank's SIGTERM.
    root_cause = run.stderr.split("Root Cause")[-1]
    assert "traceback : error: " in root_cause and "asked for FSDP" in root_cause
    assert "To enable traceback" not in run.stderr
