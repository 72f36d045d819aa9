"""Final outputs a user can load at once: the LoRA in diffusers' format, or a `transformer/` folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from accelerate import init_empty_weights

from blueberry_video.models.base import model_class
from blueberry_video.training.file_modes import apply_umask
from blueberry_video.training.lora import LORA_FILE_NAMES, lora_metadata, lora_state_dict

LORA_WEIGHTS = LORA_FILE_NAMES[0]


def export_trained_weights(accelerator, family, transformer, output_dir, training_mode: str, dtype: torch.dtype) -> Path:
    """Gather the full weights (ZeRO-3/FSDP shard them) on every process, write them once from the main one."""
    state_dict = accelerator.get_state_dict(transformer)
    unwrapped = accelerator.unwrap_model(transformer)
    output_dir = Path(output_dir)
    target = output_dir / (LORA_WEIGHTS if training_mode == "lora" else "transformer")
    if accelerator.is_main_process:
        with tempfile.TemporaryDirectory(dir=output_dir) as tmp:
            if training_mode == "lora":
                layers = {k: v.to(dtype).contiguous() for k, v in lora_state_dict(unwrapped, state_dict).items()}
                family.pipeline_class.save_lora_weights(
                    tmp, transformer_lora_layers=layers, transformer_lora_adapter_metadata=lora_metadata(unwrapped)
                )
                apply_umask(Path(tmp) / LORA_WEIGHTS)
                os.replace(Path(tmp) / LORA_WEIGHTS, target)
            else:
                state_dict = {k: v.to(dtype) for k, v in state_dict.items()}
                model_with(unwrapped, state_dict).save_pretrained(Path(tmp) / "transformer", safe_serialization=True)
                apply_umask(Path(tmp) / "transformer")
                if target.exists():  # an earlier finish's: set aside, not deleted, until the new one is in place
                    os.replace(target, Path(tmp) / "previous")
                os.replace(Path(tmp) / "transformer", target)
    accelerator.wait_for_everyone()
    return target


def model_with(model, state_dict: dict[str, torch.Tensor]):
    """A copy of the diffusers `model` holding `state_dict`'s tensors, for `save_pretrained`.

    diffusers' `save_pretrained` takes no state dict (a `state_dict=` argument is silently ignored) and saves
    the model's own tensors: empty shards under ZeRO-3 and FSDP, and never in the requested dtype.
    """
    with init_empty_weights():
        copy = model_class(model).from_config(model.config)
    copy.load_state_dict(state_dict, strict=True, assign=True)
    return copy
