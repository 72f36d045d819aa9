r"""Fine-tune a HunyuanVideo transformer (LoRA or full) on a folder of videos.

    accelerate launch recipes/train_hunyuan_video.py --config recipes/configs/hunyuan-video_lora.yaml \
        --pretrained_model_name_or_path /models/HunyuanVideo --instance_data_root /data/my_videos

Settings come from the YAML file (--config), then from the flags below (named as in diffusers' example
scripts). HunyuanVideo trains by flow matching: --weighting_scheme and --flow_shift set its noise levels.
recipes/configs/hunyuan-video_lora.yaml is a LoRA at 33x544x960 on one 80 GB GPU; accelerate_configs/ picks
DDP, FSDP or DeepSpeed.
"""

# The run is the same shared blueberry_video.training.trainer.train as CogVideoX's. What is HunyuanVideo's own
# (Llama + CLIP prompt encoding with the prompt template, the 4x/8x VAE, the flow-matching objective, the
# guidance embedding, the pipeline) is blueberry_video.models.hunyuan_video.HunyuanVideoFamily.

from blueberry_video.cli import print_train_result
from blueberry_video.errors import exit_on_error
from blueberry_video.models.hunyuan_video import HunyuanVideoFamily
from blueberry_video.training.trainer import run_recipe


def main(argv=None):
    return run_recipe(HunyuanVideoFamily, argv, description=__doc__)


if __name__ == "__main__":
    print_train_result(exit_on_error(main))
