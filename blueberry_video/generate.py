"""Generate a video from a base model plus a trained LoRA or fine-tuned transformer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from blueberry_video.data.video_writer import write_mp4
from blueberry_video.errors import ModelLayoutError
from blueberry_video.models import load_family
from blueberry_video.training.attention import NATIVE, apply_attention_backend, check_attention_backend


def check_transformer_folder(family, folder: Path) -> None:
    """A fine-tuned transformer of another family would fail deep in diffusers' loading, or load with warnings."""
    config = folder / "config.json"
    if not config.is_file():
        raise ModelLayoutError(f"--transformer {folder}: no config.json; give the run's output_dir or its transformer/")
    found = json.loads(config.read_text()).get("_class_name")
    if found and found != family.transformer_class.__name__:
        raise ModelLayoutError(f"{config}: the transformer is a {found}, but {family.name} needs a "
                               f"{family.transformer_class.__name__}; give --model the base model it was trained from")


def load_pipeline(family, lora: str | None = None, transformer_dir: str | None = None,
                  lora_scale: float = 1.0, dtype: torch.dtype = torch.float32):
    transformer = None
    if transformer_dir:
        folder = Path(transformer_dir)
        folder = folder / "transformer" if (folder / "transformer").is_dir() else folder
        check_transformer_folder(family, folder)
        transformer = family.transformer_class.from_pretrained(folder, dtype=dtype)
    pipe = (family.build_pipeline(transformer, dtype) if transformer is not None
            else family.pipeline_class.from_pretrained(family.model_dir, dtype=dtype))
    if lora:
        pipe.load_lora_weights(lora, adapter_name="trained")
        pipe.set_adapters(["trained"], [lora_scale])
    return pipe


def encode_prompts_then_free_encoders(pipe, family, prompts: dict, num_videos: int, guidance_scale: float,
                                      device) -> dict:
    """{key: the pipeline's keyword arguments for that prompt} for `prompts` = {key: text}, computed with the
    text encoders on `device`. The encoders are then dropped from the pipeline, so the denoising loop and the
    VAE decode run without them (CogVideoX's T5-XXL alone is 9 GB, HunyuanVideo's Llama 14 GB)."""
    names = [name for name, part in pipe.components.items() if name.startswith("text_encoder") and part is not None]
    for name in names:
        getattr(pipe, name).to(device)
    encoded = {key: family.encode_prompt_for_pipeline(pipe, prompt, num_videos, guidance_scale, device)
               for key, prompt in prompts.items()}
    for name in names:
        setattr(pipe, name, None)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return encoded


def default_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def generate(family_name: str, model_dir, prompt: str, out: str | Path, lora=None, transformer_dir=None,
             num_frames: int = 49, height: int = 480, width: int = 720, num_inference_steps: int = 50,
             guidance_scale: float = 6.0, seed: int = 0, fps: int = 8, lora_scale: float = 1.0,
             device: str | None = None, dtype: torch.dtype | None = None, vae_tiling: bool = False,
             attention_backend: str = NATIVE) -> Path:
    family = load_family(family_name, model_dir)
    family.check_video_shape(num_frames, height, width)
    family.check_generation_frames(num_frames)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or default_dtype()
    check_attention_backend(family, attention_backend, device, dtype, backward=False)
    pipe = load_pipeline(family, lora, transformer_dir, lora_scale, dtype)
    apply_attention_backend(pipe.transformer, attention_backend)
    conditioning = encode_prompts_then_free_encoders(pipe, family, {0: prompt}, 1, guidance_scale, device)[0]
    pipe.to(device)
    if vae_tiling:
        pipe.vae.enable_tiling()
    frames = pipe(
        **conditioning, num_frames=num_frames, height=height, width=width,
        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
        generator=torch.Generator(device=device).manual_seed(seed), output_type="np",
        **family.generation_kwargs(num_frames, height, width),
    ).frames[0]
    return write_mp4((np.clip(frames, 0, 1) * 255).round().astype(np.uint8), out, fps=fps)
