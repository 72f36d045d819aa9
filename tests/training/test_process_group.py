"""A finished recipe run ends its process group itself, rather than leaving it to the interpreter's exit."""

from __future__ import annotations

import torch.distributed as dist

from tests.training.helpers import training_args


def test_a_finished_recipe_run_releases_the_process_group(tiny_cogvideox_dir, one_video_dataset_dir, tmp_path):
    from blueberry_video.models.cogvideox import CogVideoXFamily
    from blueberry_video.training.trainer import run_recipe

    # A one-process gloo group stands for a launched run's: accelerate's single-process state leaves it alone.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        result = run_recipe(CogVideoXFamily, training_args(tiny_cogvideox_dir, one_video_dataset_dir,
                                                           tmp_path / "run", tmp_path / "cache",
                                                           "--max_train_steps", "1"))
        assert result.global_step == 1
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
