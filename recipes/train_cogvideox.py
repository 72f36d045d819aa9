"""Fine-tune a CogVideoX transformer (LoRA or full) on a folder of videos.

    accelerate launch recipes/train_cogvideox.py --config recipes/configs/cogvideox-2b_lora.yaml \
        --pretrained_model_name_or_path /models/CogVideoX-2b --instance_data_root /data/my_videos

Settings come from the YAML file, then from flags (same names as diffusers'
examples/cogvideo/train_cogvideox_lora.py). The run itself — latent cache, LoRA, loop, checkpoints,
validation, export — is `blueberry_video.training.trainer.train`, shared with every model family;
what is CogVideoX-specific (loading, prompt encoding, the v-prediction objective, the pipeline) is
`blueberry_video.models.cogvideox.CogVideoXFamily`.
"""

from blueberry_video.config import parse_config
from blueberry_video.models.cogvideox import CogVideoXFamily
from blueberry_video.training.trainer import train


def main(argv=None):
    config = parse_config(argv, description=__doc__)
    family = CogVideoXFamily(config.pretrained_model_name_or_path)
    return train(config, family)


if __name__ == "__main__":
    main()
