r"""Fine-tune a CogVideoX transformer (LoRA or full) on a folder of videos.

    accelerate launch recipes/train_cogvideox.py --config recipes/configs/cogvideox-2b_lora.yaml \
        --pretrained_model_name_or_path /models/CogVideoX-2b --instance_data_root /data/my_videos

Settings come from the YAML file (--config), then from the flags below, whose names are those of diffusers'
examples/cogvideo/train_cogvideox_lora.py. Configs for CogVideoX-2b/5b LoRA and full fine-tuning are in
recipes/configs/; accelerate_configs/ picks DDP, FSDP or DeepSpeed.
"""

# The run (latent cache, LoRA or full fine-tune, loop, checkpoints, validation videos, export) is
# blueberry_video.training.trainer.train, shared by every model family. What is CogVideoX's own (loading, T5
# prompt encoding, the v-prediction objective weighted by 1/(1-alpha_bar), the pipeline) is
# blueberry_video.models.cogvideox.CogVideoXFamily.

from blueberry_video.cli import print_train_result
from blueberry_video.errors import exit_on_error
from blueberry_video.models.cogvideox import CogVideoXFamily
from blueberry_video.training.trainer import run_recipe


def main(argv=None):
    return run_recipe(CogVideoXFamily, argv, description=__doc__)


if __name__ == "__main__":
    print_train_result(exit_on_error(main))
