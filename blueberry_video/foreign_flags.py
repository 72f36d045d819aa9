"""Flags of diffusers' CogVideoX example scripts, cogvideox-factory and finetrainers that the recipes do not take,
each with what to use instead. People bring their command lines from those scripts: the nearest spelling would point some of
these at the wrong setting (--hub_token at --id_token, which would put the token into every caption)."""

from __future__ import annotations

_NO_HUB = "nothing is uploaded or downloaded here"
_NO_PRODIGY = "Prodigy is not available: --optimizer adamw or adam"
_NO_IMAGE_TO_VIDEO = "image-to-video training is not available: the recipes train text-to-video"
_LOCAL_MODEL = "the model is read as it is from the local folder --pretrained_model_name_or_path: point it at the files"

INSTEAD = {
    # diffusers examples/cogvideo/train_cogvideox_lora.py (and its image-to-video sibling)
    "--dataset_name": "datasets are local folders: --instance_data_root (a downloaded copy with prompts.txt and "
                      "videos.txt works)",
    "--dataset_config_name": "datasets are local folders: --instance_data_root",
    "--revision": _LOCAL_MODEL + " of that revision",
    "--variant": _LOCAL_MODEL + " of that variant",
    "--random_flip": "not available: clips are encoded once into the latent cache, so no flip can be drawn per epoch",
    "--video_reshape_mode": "--crop center|random (frames are resized to cover height x width, then cropped)",
    "--enable_slicing": "not needed: validation decodes one video at a time; --vae_tiling saves the decode's memory",
    "--enable_tiling": "--vae_tiling",
    "--use_dynamic_cfg": "not available: validation uses the pipeline's constant guidance (--guidance_scale)",
    "--validation_prompt_separator": "the separator is ':::', as diffusers' default",
    "--tracker_name": "--tracker_project_name",
    "--logging_dir": "trackers write under output_dir/logs",
    "--push_to_hub": f"{_NO_HUB}: upload output_dir after training (`huggingface-cli upload NAME output_dir`); "
                     "its README.md is the model card",
    "--hub_model_id": f"{_NO_HUB}: upload output_dir yourself after training",
    "--hub_token": f"{_NO_HUB}: upload output_dir yourself after training",
    "--use_cpu_offload_optimizer": "accelerate_configs/deepspeed_zero2_offload.yaml keeps the optimizer state in CPU "
                                   "memory",
    "--offload_gradients": "accelerate_configs/deepspeed_zero2_offload.yaml",
    "--prodigy_beta3": _NO_PRODIGY,
    "--prodigy_decouple": _NO_PRODIGY,
    "--prodigy_use_bias_correction": _NO_PRODIGY,
    "--prodigy_safeguard_warmup": _NO_PRODIGY,
    "--noised_image_dropout": _NO_IMAGE_TO_VIDEO,
    "--validation_images": _NO_IMAGE_TO_VIDEO,
    "--image_column": _NO_IMAGE_TO_VIDEO,
    "--enable_model_cpu_offload": "not available for validation; --vae_tiling saves the decode's memory",
    # cogvideox-factory and finetrainers
    "--dataset_file": "--instance_data_root (a folder with metadata.json, .csv, .jsonl or prompts.txt + videos.txt)",
    "--validation_separator": "the separator is ':::'",
    "--validation_frame_rate": "--validation_fps",
    "--validation_videos": "validation renders --validation_prompt only (text to video)",
    "--validation_dataset_file": "--validation_prompt ('a:::b')",
    "--validation_heights": "validation renders at the training shape (--height)",
    "--validation_widths": "validation renders at the training shape (--width)",
    "--validation_num_frames": "validation renders at the training shape (--max_num_frames)",
    "--vae_dtype": "the VAE runs in the run's precision (--mixed_precision); --cache_dtype sets the stored latents'",
    "--use_4bit": "4-bit weights are not available: --layerwise_casting stores the frozen weights in float8 (LoRA)",
    "--flow_base_shift": "a resolution-dependent shift is not available: --flow_shift",
    "--flow_max_shift": "a resolution-dependent shift is not available: --flow_shift",
    "--train_epochs": "--num_train_epochs",
    "--lora_rank": "--rank",
    "--model_name": "the recipe is the model family: recipes/train_cogvideox.py or recipes/train_hunyuan_video.py",
    "--data_root": "--instance_data_root",
    "--video_resolution_buckets": "one clip shape per run: --max_num_frames, --height, --width",
    "--precompute_conditions": "always: latents and text embeddings are cached before training",
    "--training_type": "--training_mode lora|full",
    "--batch_size": "--train_batch_size",
    "--train_steps": "--max_train_steps",
    "--target_modules": "--lora_target_modules (comma-separated: to_q,to_k,to_v,to_out.0)",
    "--checkpointing_limit": "--checkpoints_total_limit",
    "--lr": "--learning_rate",
    "--lr_warmup_steps_ratio": "--lr_warmup_steps (a step count)",
    "--beta1": "--adam_beta1",
    "--beta2": "--adam_beta2",
    "--weight_decay": "--adam_weight_decay",
    "--epsilon": "--adam_epsilon",
    "--validation_prompts": "--validation_prompt (':::'-separated; validation renders at the training shape, so "
                            "leave out any @@@FxHxW size)",
    "--flow_weighting_scheme": "--weighting_scheme",
    "--flow_logit_mean": "--logit_mean",
    "--flow_logit_std": "--logit_std",
    "--flow_mode_scale": "--mode_scale",
    "--caption_dropout_p": "not available: every step sees its caption",
    "--caption_dropout_technique": "not available: every step sees its caption",
}


# `blueberry-video generate`: the arguments of the pipelines' __call__ and of the CogVideoX repository's
# cli_demo.py, whose names people bring; the nearest spelling misses most of them (--num_inference_steps).
GENERATE_INSTEAD = {
    "--num_inference_steps": "--steps",
    "--model_path": "--model: the base model's folder, diffusers layout",
    "--pretrained_model_name_or_path": "--model: the base model's folder, diffusers layout",
    "--lora_path": "--lora: a run's output_dir, a checkpoint-N folder or a .safetensors file",
    "--lora_weights": "--lora: a run's output_dir, a checkpoint-N folder or a .safetensors file",
    "--output_path": "--out: the .mp4 to write",
    "--output_file": "--out: the .mp4 to write",
    "--num_videos_per_prompt": "one video per run: run again with another --seed",
    "--negative_prompt": "not available: generate renders as validation does, without a negative prompt",
    "--generate_type": "text to video only",
    "--image_or_video_path": _NO_IMAGE_TO_VIDEO,
    "--use_dynamic_cfg": "not available: constant guidance (--guidance-scale)",
    "--enable_model_cpu_offload": "not available; --vae-tiling saves the decode's memory",
    "--enable_sequential_cpu_offload": "not available; --vae-tiling saves the decode's memory",
}


def instead_of(flag: str, table: dict[str, str] = INSTEAD) -> str | None:
    """What to use instead of `flag` (`--name` or `--name=value`), or None when it is not a known foreign flag."""
    return table.get(flag.split("=")[0].replace("-", "_").replace("__", "--", 1))


def instead_hint(flag: str, table: dict[str, str] = INSTEAD) -> str | None:
    """` (use --x)` or ` (why not, and what instead)` for a known foreign flag, else None."""
    instead = instead_of(flag, table)
    if instead is None:
        return None
    return f" ({'use ' if instead.startswith('--') else ''}{instead})"
