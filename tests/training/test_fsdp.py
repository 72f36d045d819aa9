"""The trainer under accelerate's FSDP1 and FSDP2 on 2 CPU processes, against the same run under DDP.

accelerate does not take its FSDP path on CPU; `scripts/fsdp_on_cpu.py` makes it do so (see its docstring),
so what runs is the recipe, accelerate's FSDP prepare, sharded `save_state`/`load_state` and the gathered
export, with every weight really sharded over the two processes. Each run trains 4 steps with checkpoints,
resumes to step 6, and must end with the weights the DDP run ends with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO_ROOT
from tests.training.helpers import RECIPE, free_port, launch, training_args

pytestmark = pytest.mark.slow

WRAPPER = str(REPO_ROOT / "tests" / "training" / "scripts" / "fsdp_on_cpu.py")
# Clipping must bite (the tiny model's gradient norm is about 1), so a clip of stale parameters would show.
COMMON = ("--max_grad_norm", "0.05")


def fsdp_environment(version: int) -> dict:
    env = dict(os.environ, ACCELERATE_USE_CPU="1", ACCELERATE_USE_FSDP="true", FSDP_VERSION=str(version),
               FSDP_AUTO_WRAP_POLICY="TRANSFORMER_BASED_WRAP", FSDP_TRANSFORMER_CLS_TO_WRAP="CogVideoXBlock",
               FSDP_STATE_DICT_TYPE="SHARDED_STATE_DICT", OMP_NUM_THREADS="1")
    if version == 1:
        env.update(FSDP_SHARDING_STRATEGY="FULL_SHARD", FSDP_USE_ORIG_PARAMS="true")
    else:
        env.update(FSDP_RESHARD_AFTER_FORWARD="true")
    return env


def launch_fsdp(version: int, args):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), WRAPPER, RECIPE, *args]
    run = subprocess.run(command, env=fsdp_environment(version), capture_output=True, text=True, timeout=600,
                         cwd=REPO_ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return run


def train_then_resume(start, model_dir, data_dir, out, cache, mode, *extra):
    args = training_args(model_dir, data_dir, out, cache, "--training_mode", mode, *COMMON, *extra)
    first = start(args)
    resumed = start([*args, "--resume_from_checkpoint", "latest", "--max_train_steps", "6",
                     "--validation_prompt", ""])
    assert "resumed from" in resumed.stdout and "checkpoint-4" in resumed.stdout
    return first


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


@pytest.mark.parametrize("version", [2, 1])
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_fsdp_trains_checkpoints_resumes_and_exports_what_ddp_does(version, mode, ddp_runs, tiny_cogvideox_dir,
                                                                   sample_dataset_dir, tmp_path):
    out = tmp_path / "fsdp"
    validation = ("--validation_prompt", "a red circle:::a blue square:::a green line", "--validation_steps", "2",
                  "--num_inference_steps", "2") if mode == "lora" else ()
    train_then_resume(lambda args: launch_fsdp(version, args), tiny_cogvideox_dir, sample_dataset_dir, out,
                      tmp_path / "cache", mode, *validation)

    info = json.loads((out / "run_info.json").read_text())
    assert (info["engine"], info["num_processes"]) == (f"FSDP{version}", 2)
    assert any((out / "checkpoint-4").rglob("*.distcp"))  # sharded checkpoint: one file per process
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
    if validation:
        assert sorted(p.name for p in (out / "validation").glob("*.mp4")) == [
            f"step-00000{s}-prompt{i}-0.mp4" for s in (2, 4) for i in range(3)]
