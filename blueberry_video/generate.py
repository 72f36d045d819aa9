"""Generate a video from a base model plus a trained LoRA or fine-tuned transformer (checked first by
`trained_weights`). A checkpoint-N folder's adapter loads as `--init_lora_weights` reads it in training, scaled by
the run's own rank and lora_alpha; a full fine-tune's, as the base model's transformer with the checkpoint's weights.
Unset video settings come from the training run the weights belong to."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from accelerate import init_empty_weights
from accelerate.utils import SAFE_WEIGHTS_NAME
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file

from blueberry_video.data.video_writer import write_mp4
from blueberry_video.errors import ConfigError, ModelLayoutError
from blueberry_video.file_digests import sampled_digest
from blueberry_video.models import load_family
from blueberry_video.models.base import PRECISION_DTYPES, VideoSettings
from blueberry_video.trained_weights import (
    RUN_CONFIG,
    LoraWeights,
    TrainingRun,
    earlier_export_note,
    find_run,
    resolve_lora,
    resolve_transformer,
)
from blueberry_video.training.attention import NATIVE, apply_attention_backend, check_attention_backend
from blueberry_video.training.checkpoints import STATE_FILE
from blueberry_video.training.decode import decode_without_autocast
from blueberry_video.training.lora import ADAPTER, DIFFUSERS_LORA_PREFIX, add_lora, adapter_to_float32


def video_settings(family, run: TrainingRun | None, **given) -> tuple[VideoSettings, str]:
    """The video to make from `given` (num_frames, height, width, fps; None where unset): unset ones as the
    training run trained (and saved its validation videos), else the family's usual. Also a line saying so."""
    trained = run.trained_video if run is not None else {}
    usual = dataclasses.asdict(family.usual_video)
    values, origins = {}, {}
    for name, value in given.items():
        if value is None and trained.get(name) is not None:
            value, origin = trained[name], f"the training run's {run.path / RUN_CONFIG}"
        elif value is None:
            value, origin = usual[name], f"{family.name}'s usual"
        else:
            origin = None
        values[name] = value
        if origin:
            origins.setdefault(origin, []).append(f"--{name.replace('_', '-')}")
    settings = VideoSettings(**values)
    line = f"{settings.num_frames} frames at {settings.height}x{settings.width}, {settings.fps:g} fps"
    if origins:
        line += " (" + "; ".join(", ".join(flags) + f" from {origin}" for origin, flags in origins.items()) + ")"
    return settings, line


def load_pipeline(family, lora: LoraWeights | None = None, transformer_folder: Path | None = None,
                  lora_scale: float = 1.0, dtype: torch.dtype = torch.float32):
    """The family's pipeline with the fine-tuned transformer and/or the LoRA (as `resolve_transformer` and
    `resolve_lora` return them)."""
    transformer = None
    if transformer_folder and (transformer_folder / STATE_FILE).is_file():
        transformer = checkpoint_transformer(family, transformer_folder, dtype)
    elif transformer_folder:
        transformer = family.transformer_class.from_pretrained(transformer_folder, dtype=dtype)
    pipe = (family.build_pipeline(transformer, dtype) if transformer is not None
            else family.pipeline_class.from_pretrained(family.model_dir, dtype=dtype))
    if lora is None:
        return pipe
    if lora.from_checkpoint:
        # As training's --init_lora_weights reads it: the run's rank, lora_alpha and targets, then the weights.
        add_lora(pipe.transformer, dataclasses.replace(lora.run.config, init_lora_weights=str(lora.file)), family)
    else:
        pipe.load_lora_weights(str(lora.file), adapter_name=ADAPTER)
        # Loaded into weights of the pipeline's dtype: load them again, exactly, into float32 ones.
        adapter_to_float32(pipe.transformer)
        state = pipe.lora_state_dict(str(lora.file))  # in the transformer's key names, whatever the file's format
        set_peft_model_state_dict(pipe.transformer, {k.removeprefix(DIFFUSERS_LORA_PREFIX): v.to(torch.float32)
                                                     for k, v in state.items()}, adapter_name=ADAPTER)
    pipe.set_adapters([ADAPTER], [lora_scale])
    return pipe


def checkpoint_transformer(family, checkpoint: Path, dtype: torch.dtype):
    """A full fine-tune's transformer at a checkpoint-N: the base model's transformer config with the weights
    accelerate saved there."""
    config = family.transformer_class.load_config(Path(family.model_dir) / "transformer")
    with init_empty_weights():  # no random initialisation of weights about to be replaced
        transformer = family.transformer_class.from_config(config)
    weights = checkpoint / SAFE_WEIGHTS_NAME
    try:
        transformer.load_state_dict(load_file(weights), strict=True, assign=True)
    except RuntimeError as error:
        raise ModelLayoutError(f"{weights}: these weights do not fit the transformer of --model {family.model_dir} "
                               f"({str(error).splitlines()[0]}); give --model the base model the run trained "
                               f"from") from error
    return transformer.to(dtype)


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


def run_dtype(run: TrainingRun, device: str) -> tuple[torch.dtype, str]:
    """The dtype the run's validation videos were rendered in (its mixed_precision), and where that came from;
    float16 only on a GPU (the CPU has no float16 kernels for much of the pipeline)."""
    dtype = PRECISION_DTYPES[run.config.mixed_precision]
    if dtype == torch.float16 and not str(device).startswith("cuda"):
        return torch.float32, "float32 (the training run's fp16 needs a GPU)"
    return dtype, f"{str(dtype).removeprefix('torch.')} (the training run's mixed_precision)"


def other_base_model_note(family, run: TrainingRun) -> str | None:
    """Where the LoRA's run trained on a model folder that still exists and whose transformer files are not this
    model's (by name, size and a sampled digest: a copy of the same model is the same), a line saying so: the LoRA
    loads, and renders something other than its validation videos showed."""
    trained_on = Path(run.config.pretrained_model_name_or_path or "")
    if not (trained_on / "transformer").is_dir() or trained_on.resolve() == Path(family.model_dir).resolve():
        return None

    def transformer_files(model: Path) -> list:
        return [(path.name, path.stat().st_size, sampled_digest(path))
                for path in sorted((model / "transformer").iterdir()) if path.is_file()]

    if transformer_files(trained_on) == transformer_files(Path(family.model_dir)):
        return None
    return (f"the LoRA was trained on the model in {trained_on}, whose transformer is not this one's "
            f"({family.model_dir}): its videos will differ from the run's validation videos")


DEFAULT_GUIDANCE_SCALE = 6.0  # both families' pipelines' default
DEFAULT_INFERENCE_STEPS = 50  # both families' pipelines' default


def generate(family_name: str, model_dir, prompt: str, out: str | Path, lora=None, transformer_dir=None,
             num_frames: int | None = None, height: int | None = None, width: int | None = None,
             num_inference_steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
             fps: float | None = None,
             lora_scale: float = 1.0, device: str | None = None, dtype: torch.dtype | None = None,
             vae_tiling: bool | None = None, attention_backend: str = NATIVE) -> Path:
    """Render `prompt` to the .mp4 `out`; video settings left None are the training run's (see `video_settings`),
    and so are the guidance scale, the denoising steps, the dtype and VAE tiling (those its validation videos were
    rendered with), else 6.0, 50, bfloat16 on a GPU or float32 on the CPU, and no tiling."""
    if Path(out).suffix.lower() != ".mp4":  # checked before minutes of rendering
        raise ConfigError(f"--out {out}: generate writes an H.264 .mp4 video; give a file name ending in .mp4")
    for flag, value in (("--num-frames", num_frames), ("--height", height), ("--width", width),
                        ("--steps", num_inference_steps), ("--fps", fps)):
        if value is not None and value <= 0:  # diffusers takes 0 for unset, or divides by it after loading
            raise ConfigError(f"{flag} {value:g}: must be positive")
    if lora and transformer_dir:
        raise ConfigError("--lora and --transformer both given: a LoRA applies to the transformer it was trained on, "
                          "and a full fine-tune's transformer replaces the base model's; give one")
    family = load_family(family_name, model_dir)
    lora = resolve_lora(family, lora) if lora else None
    if lora is not None and lora.run is not None and (note := other_base_model_note(family, lora.run)):
        print(f"warning: {note}")
    transformer_folder = resolve_transformer(family, transformer_dir) if transformer_dir else None
    run = (lora.run if lora else None) or (find_run(transformer_folder) if transformer_folder else None)
    video, summary = video_settings(family, run, num_frames=num_frames, height=height, width=width, fps=fps)
    try:
        family.check_video_shape(video.num_frames, video.height, video.width)
        family.check_generation_frames(video.num_frames)
    except ConfigError as error:  # the checks are training's and name its settings; name generate's flags
        message = str(error)
        for setting, flag in (("max_num_frames=", "--num-frames "), ("height=", "--height "), ("width=", "--width ")):
            message = message.replace(setting, flag)
        raise ConfigError(message) from error
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_origin = None
    if dtype is None and run is not None:
        dtype, dtype_origin = run_dtype(run, device)
    dtype = dtype or default_dtype()
    check_attention_backend(family, attention_backend, device, dtype, backward=False)
    origin = "the training run" if run is not None else "default"
    if guidance_scale is None:
        guidance_scale = run.config.guidance_scale if run is not None else DEFAULT_GUIDANCE_SCALE
        summary += f"; guidance scale {guidance_scale:g} ({origin})"
    if num_inference_steps is None:
        num_inference_steps = run.config.num_inference_steps if run is not None else DEFAULT_INFERENCE_STEPS
        summary += f"; {num_inference_steps} denoising steps ({origin})"
    if dtype_origin:
        summary += f"; weights in {dtype_origin}"
    if vae_tiling is None:
        vae_tiling = run is not None and run.config.vae_tiling
        summary += "; VAE tiling (the training run)" if vae_tiling else ""
    for exported in (lora.file if lora else None, transformer_folder):
        if exported is not None and (note := earlier_export_note(exported)):
            print(f"warning: {note}")
    print(f"generating {summary}")
    pipe = load_pipeline(family, lora, transformer_folder, lora_scale, dtype)
    apply_attention_backend(pipe.transformer, attention_backend)
    conditioning = encode_prompts_then_free_encoders(pipe, family, {0: prompt}, 1, guidance_scale, device)[0]
    pipe.to(device)
    if vae_tiling:
        pipe.vae.enable_tiling()
    # As validation renders: the float32 LoRA computes in the half dtype under autocast; the VAE decodes outside.
    decode_without_autocast(pipe.vae)
    with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype in (torch.bfloat16, torch.float16)):
        frames = pipe(
            **conditioning, num_frames=video.num_frames, height=video.height, width=video.width,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            generator=torch.Generator(device=device).manual_seed(seed), output_type="np",
            **family.generation_kwargs(video.num_frames, video.height, video.width),
        ).frames[0]
    return write_mp4((np.clip(frames, 0, 1) * 255).round().astype(np.uint8), out, fps=video.fps)
