"""Run `run_validation` on a tiny CogVideoX transformer sharded by FSDP2 or FSDP1 over every process (gloo).

    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 sharded_validation.py MODEL_DIR OUT_DIR fsdp2|fsdp1|none

accelerate does not shard on CPU, so the test shards with torch's own FSDP, as accelerate does on GPUs.
The main process writes the returned video paths to OUT_DIR/videos.json.
"""

import functools
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator

from blueberry_video.config import TrainConfig
from blueberry_video.models.cogvideox import CogVideoXFamily
from blueberry_video.training.validation import run_validation, weights_are_sharded

PROMPTS = ["a red circle", "a blue square", "a green line"]  # 3 prompts on 2 processes: one must pad


def shard(transformer, engine: str, num_processes: int):
    from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock

    if engine == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (num_processes,))
        for block in transformer.transformer_blocks:
            fully_shard(block, mesh=mesh)
        return fully_shard(transformer, mesh=mesh)
    if engine == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

        policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={CogVideoXBlock})
        return FullyShardedDataParallel(transformer, auto_wrap_policy=policy, device_id=torch.device("cpu"),
                                        use_orig_params=True)
    return transformer


def main(model_dir: str, out_dir: str, engine: str) -> None:
    accelerator = Accelerator()
    family = CogVideoXFamily(model_dir)
    transformer = shard(family.load_transformer(), engine, accelerator.num_processes)
    assert weights_are_sharded(transformer) == (engine != "none"), engine
    config = TrainConfig(pretrained_model_name_or_path=model_dir, output_dir=out_dir, dummy_data=True,
                         validation_prompt=PROMPTS, height=32, width=48, max_num_frames=9, num_inference_steps=2)
    videos = run_validation(accelerator, family, transformer, config, step=1, dtype=torch.float32)
    if accelerator.is_main_process:
        result = {"num_processes": accelerator.num_processes, "videos": [str(v) for v in videos]}
        (Path(out_dir) / "videos.json").write_text(json.dumps(result))
    if dist.is_initialized():
        dist.barrier()  # FSDP1 can abort at exit when a process leaves before the others
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
