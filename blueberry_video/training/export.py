"""Final outputs a user can load at once: the LoRA in diffusers' format, or a `transformer/` folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from blueberry_video.training.lora import lora_metadata, lora_state_dict

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


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
                os.replace(Path(tmp) / LORA_WEIGHTS, target)
            else:
                state_dict = {k: v.to(dtype) for k, v in state_dict.items()}
                unwrapped.save_pretrained(Path(tmp) / "transformer", state_dict=state_dict, safe_serialization=True)
                if target.exists():
                    shutil.rmtree(target)
                os.replace(Path(tmp) / "transformer", target)
    accelerator.wait_for_everyone()
    return target
