"""The trainer under FSDP1, FSDP2, DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU processes, against the same run under DDP.

accelerate takes neither its FSDP path nor multi-process DeepSpeed on a machine without GPUs; the wrappers in
`scripts/` make it do so (each docstring says how), and the environment is what `accelerate launch` exports
for the shipped config file. What runs is the recipe, accelerate's engine set-up, the engine's checkpoints
and the gathered export, with the weights (ZeRO-2: the optimizer state) really split over the two processes.
Each run trains 4 steps with checkpoints, resumes to step 6, and must end where the DDP run ends.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO_ROOT
from tests.training.helpers import RECIPE, free_port, launch, launcher_environment, training_args

pytestmark = pytest.mark.slow

SCRIPTS = REPO_ROOT / "tests" / "training" / "scripts"
CONFIGS = REPO_ROOT / "accelerate_configs"
# Clipping must bite (the tiny model's gradient norm is about 1), so clipping stale parameters would show.
COMMON = ("--max_grad_norm", "0.05")
VALIDATION = ("--validation_prompt", "a red circle:::a blue square:::a green line", "--validation_steps", "2",
              "--num_inference_steps", "2")

# engine -> (accelerate config, wrapper, what run_info.json must say)
ENGINES = {
    "fsdp2": ("fsdp2_full_shard.yaml", "fsdp_on_cpu.py", "FSDP2"),
    "fsdp1": ("fsdp_full_shard.yaml", "fsdp_on_cpu.py", "FSDP1"),
    "zero2": ("deepspeed_zero2.yaml", "deepspeed_on_cpu.py", "DEEPSPEED ZeRO-2"),
    "zero3": ("deepspeed_zero3.yaml", "deepspeed_on_cpu.py", "DEEPSPEED ZeRO-3"),
}


def engine_environment(engine: str, workdir) -> dict:
    config, _, _ = ENGINES[engine]
    saved = dict(os.environ)
    try:
        _, env = launcher_environment(CONFIGS / config)
    finally:  # accelerate's plugins write some settings back into os.environ
        os.environ.clear()
        os.environ.update(saved)
    env = dict(env, OMP_NUM_THREADS="1")
    if engine.startswith("fsdp"):
        env["ACCELERATE_USE_CPU"] = "1"  # gloo; the wrapper restores the FSDP branch
    else:
        env.pop("ACCELERATE_USE_CPU", None)  # DeepSpeed finds the CPU itself
    if engine == "zero3":
        # Every weight partitioned: the tiny model's tensors are all under the shipped persistence threshold.
        ds = json.loads((REPO_ROOT / env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]).read_text())
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
        (workdir / "zero3.json").write_text(json.dumps(ds))
        env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = str(workdir / "zero3.json")
    return env


def launch_engine(engine: str, args, workdir):
    _, wrapper, _ = ENGINES[engine]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(SCRIPTS / wrapper), RECIPE, *args]
    run = subprocess.run(command, env=engine_environment(engine, workdir), capture_output=True, text=True,
                         timeout=600, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return run


def train_then_resume(start, model_dir, data_dir, out, cache, mode, *extra):
    args = training_args(model_dir, data_dir, out, cache, "--training_mode", mode, *COMMON, *extra)
    start(args)
    resumed = start([*args, "--resume_from_checkpoint", "latest", "--max_train_steps", "6",
                     "--validation_prompt", ""])
    assert "resumed from" in resumed.stdout and "checkpoint-4" in resumed.stdout


def exported(out, mode) -> dict[str, torch.Tensor]:
    if mode == "lora":
        return load_file(out / "pytorch_lora_weights.safetensors")
    from diffusers import CogVideoXTransformer3DModel

    return CogVideoXTransformer3DModel.from_pretrained(out / "transformer").state_dict()


@pytest.fixture(scope="module")
def ddp_runs(tiny_cogvideox_dir, sample_dataset_dir, tmp_path_factory):
    """The reference: the same runs under plain DDP on 2 processes."""
    root = tmp_path_factory.mktemp("ddp")

    def ddp(args):
        run = launch(args)
        assert run.returncode == 0, run.stderr[-3000:]
        return run

    for mode in ("lora", "full"):
        train_then_resume(ddp, tiny_cogvideox_dir, sample_dataset_dir, root / mode, root / "cache", mode)
    return root


# Some runs recompute half the blocks: gradients, and so every figure compared with DDP's, must not change.
HALF_CHECKPOINTED = ("--gradient_checkpointing", "--gradient_checkpointing_ratio", "0.5")


@pytest.mark.parametrize("engine, mode, validate, extra", [
    ("fsdp2", "lora", True, HALF_CHECKPOINTED), ("fsdp2", "full", False, ()), ("fsdp1", "lora", False, ()),
    ("fsdp1", "full", False, HALF_CHECKPOINTED), ("zero2", "lora", False, ()), ("zero3", "lora", True, ()),
    ("zero3", "full", False, ()),
])
def test_engine_trains_checkpoints_resumes_and_exports_what_ddp_does(engine, mode, validate, extra, ddp_runs,
                                                                     tiny_cogvideox_dir, sample_dataset_dir, tmp_path):
    out = tmp_path / engine
    train_then_resume(lambda args: launch_engine(engine, args, tmp_path), tiny_cogvideox_dir, sample_dataset_dir,
                      out, tmp_path / "cache", mode, *(VALIDATION if validate else ()), *extra)

    info = json.loads((out / "run_info.json").read_text())
    assert (info["engine"], info["num_processes"]) == (ENGINES[engine][2], 2)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (ddp_runs / mode / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    # the gradient norm is measured on the parameters the sharded model trains, and clipped at it
    for ours, theirs in zip(records, reference):
        assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-4)
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-4)

    weights, expected = exported(out, mode), exported(ddp_runs / mode, mode)
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        assert weights[name].shape == tensor.shape  # full tensors, not one process's shard
        torch.testing.assert_close(weights[name], tensor, rtol=1e-4, atol=1e-5)
    if validate:  # every process renders in lockstep: no process waits forever for the others
        assert sorted(p.name for p in (out / "validation").glob("*.mp4")) == [
            f"step-00000{step}-prompt{i}-0.mp4" for step in (2, 4) for i in range(3)]


@pytest.mark.parametrize("engine", ["fsdp1", "fsdp2"])
def test_lora_trains_under_fsdp_in_bf16(engine, tiny_cogvideox_dir, sample_dataset_dir, tmp_path):
    # The runs above are float32. In bf16 the frozen weights are stored in bf16 beside the float32 LoRA
    # weights, which FSDP1 cannot flatten into one tensor ("Must flatten tensors with uniform dtype").
    out = tmp_path / engine
    launch_engine(engine, training_args(tiny_cogvideox_dir, sample_dataset_dir, out, tmp_path / "cache",
                                        "--mixed_precision", "bf16", *COMMON), tmp_path)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    lora = load_file(out / "pytorch_lora_weights.safetensors")
    assert lora and all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in lora.values())
    assert any(t.abs().sum() > 0 for name, t in lora.items() if "lora_B" in name)  # it trained


@pytest.mark.parametrize("engine", ["fsdp1", "fsdp2", "zero3"])
def test_float8_frozen_weights_are_refused_where_the_engine_shards_them(engine, tiny_cogvideox_dir,
                                                                        sample_dataset_dir, tmp_path):
    _, wrapper, name = ENGINES[engine]
    args = training_args(tiny_cogvideox_dir, sample_dataset_dir, tmp_path / "run", tmp_path / "cache",
                         "--layerwise_casting")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(SCRIPTS / wrapper), RECIPE, *args]
    run = subprocess.run(command, env=engine_environment(engine, tmp_path), capture_output=True, text=True,
                         timeout=600, cwd=REPO_ROOT)
    assert run.returncode != 0
    assert f"layerwise_casting (float8 storage of the frozen weights) does not run under {name}" in run.stderr
    assert not (tmp_path / "cache").exists()  # refused before any video was encoded


def test_fsdp1_on_one_process_is_refused_before_any_work(tiny_cogvideox_dir, sample_dataset_dir, tmp_path):
    # torch runs it as NO_SHARD, whose first checkpoint fails ("FSDP assumes patch_embed.proj.weight is in the
    # state_dict"): found by resuming a 2-process run on one.
    args = training_args(tiny_cogvideox_dir, sample_dataset_dir, tmp_path / "run", tmp_path / "cache")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port",
               str(free_port()), str(SCRIPTS / ENGINES["fsdp1"][1]), RECIPE, *args]
    run = subprocess.run(command, env=engine_environment("fsdp1", tmp_path), capture_output=True, text=True,
                         timeout=600, cwd=REPO_ROOT)
    assert run.returncode != 0
    assert "an FSDP1 config launched with one process" in run.stderr
    assert not (tmp_path / "cache").exists()
