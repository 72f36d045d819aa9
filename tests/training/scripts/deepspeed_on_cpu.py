"""Run a recipe under DeepSpeed with several CPU processes (gloo), for tests.

    ACCELERATE_USE_DEEPSPEED=true ACCELERATE_DEEPSPEED_CONFIG_FILE=... \\
        torchrun --nproc_per_node 2 deepspeed_on_cpu.py RECIPE [recipe arguments]

accelerate 1.15 finds no communication backend on a machine without GPUs unless told `cpu=True`, which also
turns DeepSpeed off; DeepSpeed then builds its 2-process gloo group anyway, and the two disagree on the world
size. One patch: where accelerate found no backend, it takes DeepSpeed's CPU one (gloo), as it takes NCCL on
GPUs. The recipe, trainer, DeepSpeed engine, checkpoints and export then run as they would on GPUs.
"""

import os
import runpy
import sys

import accelerate.state

_prepare_backend = accelerate.state.PartialState._prepare_backend


def _deepspeed_cpu_backend(self, cpu=False, sagemaker_dp=False, backend=None):
    backend, distributed_type = _prepare_backend(self, cpu, sagemaker_dp, backend)
    if backend is None and not cpu and int(os.environ.get("LOCAL_RANK", -1)) != -1:
        from deepspeed.accelerator import get_accelerator

        backend = get_accelerator().communication_backend_name()
    return backend, distributed_type


accelerate.state.PartialState._prepare_backend = _deepspeed_cpu_backend

if __name__ == "__main__":
    assert os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true", "set the environment accelerate launch exports"
    recipe = sys.argv[1]
    sys.argv = [recipe, *sys.argv[2:]]
    runpy.run_path(recipe, run_name="__main__")
