"""Resumable checkpoints: written whole or not at all, newest K kept, found again by `latest`.

`accelerator.save_state` writes into `checkpoint-N.tmp`; only after every process has finished does the
main process add `training_state.json` and rename the folder, so a kill mid-save never leaves a
`checkpoint-N` that looks complete. For LoRA runs only the adapter is saved, not the frozen transformer, in the
diffusers format the run's export has, so a checkpoint loads with `pipe.load_lora_weights("checkpoint-N")` too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import torch

from blueberry_video.errors import ConfigError
from blueberry_video.config import checkpoint_folder
from blueberry_video.training.file_modes import apply_umask
from blueberry_video.training.lora import (
    ADAPTER,
    CHECKPOINT_ADAPTER_FILE,
    DIFFUSERS_LORA_FILE,
    lora_file_in_folder,
    lora_metadata,
    lora_state_dict,
    peft_keyed_state,
)

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.json"
FILES_MANIFEST = "checkpoint_files.json"
LORA_FILE = DIFFUSERS_LORA_FILE
# Checkpoints written before 2026-11-27 hold the adapter in peft's key names, without rank and alpha.
OLDER_LORA_FILE = CHECKPOINT_ADAPTER_FILE
_NAME = re.compile(r"^checkpoint-(\d+)$")


def register_lora_checkpoint_hooks(accelerator, training_mode: str, family) -> None:
    """Make save_state/load_state store only the LoRA weights of the transformer (not gigabytes of frozen ones).

    Not under DeepSpeed or FSDP: their engines save the model themselves, whatever the hooks do, and reading a
    sharded model's weights on the main process alone (as the save hook does) would wait for the others forever.
    """
    if training_mode != "lora" or _is_deepspeed(accelerator) or accelerator.distributed_type.value == "FSDP":
        return
    from peft.utils import set_peft_model_state_dict

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                model = accelerator.unwrap_model(model)
                # In the training precision (float32): the resume continues from exactly these weights.
                state = {k: v.detach().cpu().contiguous() for k, v in lora_state_dict(model).items()}
                family.pipeline_class.save_lora_weights(output_dir, transformer_lora_layers=state,
                                                        transformer_lora_adapter_metadata=lora_metadata(model))
        while weights:
            weights.pop()

    def load_hook(models, input_dir):
        while models:
            model = accelerator.unwrap_model(models.pop())
            set_peft_model_state_dict(model, checkpoint_lora_state(Path(input_dir)), adapter_name=ADAPTER)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def checkpoint_lora_state(folder: Path) -> dict[str, torch.Tensor]:
    """A LoRA checkpoint's adapter in peft's key names, from either format."""
    return peft_keyed_state(lora_file_in_folder(folder))


def missing_files(path: Path) -> list[str]:
    """Files the checkpoint's manifest lists that are gone or changed size since it was saved (a copy cut short,
    a file deleted by hand); checkpoints from before the manifest are taken as they are."""
    manifest = path / FILES_MANIFEST
    if not manifest.is_file():
        return []
    listed = json.loads(manifest.read_text())
    return [name for name, size in listed.items()
            if not (path / name).is_file() or (path / name).stat().st_size != size]


def checkpoint_folders(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Every `checkpoint-N` folder, complete or not, oldest first."""
    return sorted((int(match.group(1)), path) for path in Path(output_dir).glob("checkpoint-*")
                  if (match := _NAME.match(path.name)) and path.is_dir())


def checkpoint_steps(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    found = []
    for step, path in checkpoint_folders(output_dir):
        if not (path / STATE_FILE).is_file():
            logger.warning("ignoring incomplete checkpoint %s (no %s)", path, STATE_FILE)
        elif missing := missing_files(path):
            logger.warning("ignoring damaged checkpoint %s (%s missing or changed)", path, ", ".join(missing))
        else:
            found.append((step, path))
    return found


def is_complete_checkpoint(path: Path) -> bool:
    return (path / STATE_FILE).is_file() and not missing_files(path)


def resolve_resume_path(output_dir, resume_from_checkpoint: str | None) -> Path | None:
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = checkpoint_steps(output_dir)
        if not found:
            logger.warning("resume_from_checkpoint=latest: no checkpoint in %s, starting a new run", output_dir)
            return None
        return found[-1][1]
    path = checkpoint_folder(output_dir, resume_from_checkpoint)
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"resume_from_checkpoint={path}: not a complete checkpoint (no {STATE_FILE})")
    if missing := missing_files(path):
        raise ConfigError(f"resume_from_checkpoint={path}: damaged: {', '.join(missing)} missing or changed since "
                          f"it was saved (listed in {FILES_MANIFEST}); resume from another checkpoint")
    return path


def save_checkpoint(accelerator, output_dir, step: int, state: dict, total_limit: int | None) -> Path | None:
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), **_deepspeed_save_kwargs(accelerator))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # Every process's files, by size; the state file, written last, marks the checkpoint complete.
        files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        (tmp / FILES_MANIFEST).write_text(json.dumps(files, indent=1))
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        apply_umask(tmp)  # the .safetensors files are 0600, as safetensors writes them
        if final.exists():
            _clear_the_way(final)
        os.replace(tmp, final)
        if total_limit:
            for _, old in checkpoint_steps(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _clear_the_way(final: Path) -> None:
    """A complete checkpoint of the same step is one a resumed run already passed: replaced. A damaged or
    incomplete one is kept beside under another name, for its owner to inspect (troubleshooting says so)."""
    if is_complete_checkpoint(final):
        shutil.rmtree(final)
        return
    kept = final.with_name(f"{final.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(final, kept)
    logger.warning("%s was damaged or incomplete: kept as %s, and this run's checkpoint of that step written in "
                   "its place", final, kept.name)


def _deepspeed_save_kwargs(accelerator) -> dict:
    # The save hooks above do not run under DeepSpeed, whose engine writes the model itself: told to leave out
    # the frozen weights, a LoRA checkpoint holds the adapter and its optimizer state, not the whole transformer.
    # (A full fine-tune has no frozen weights, so nothing changes for it.)
    return {"exclude_frozen_parameters": True} if _is_deepspeed(accelerator) else {}


def _is_fsdp1(accelerator) -> bool:
    return accelerator.distributed_type.value == "FSDP" and accelerator.state.fsdp_plugin.fsdp_version == 1


def create_optimizer_state(optimizer) -> None:
    """A step at learning rate 0 on zero gradients: creates the optimizer's state without moving a weight.

    accelerate (1.15) loads an FSDP1 optimizer checkpoint into the state the optimizer already has — none
    before its first step — so without this Adam's moments would silently restart at every resume.
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # past accelerate's wrapper, which may skip steps
    learning_rates = [group["lr"] for group in inner.param_groups]
    for group in inner.param_groups:
        group["lr"] = 0.0
        for param in group["params"]:
            if param.requires_grad and param.grad is None:
                param.grad = torch.zeros_like(param)
    inner.step()
    for group, lr in zip(inner.param_groups, learning_rates):
        group["lr"] = lr
    inner.zero_grad(set_to_none=True)


def _is_deepspeed(accelerator) -> bool:
    return accelerator.distributed_type.value == "DEEPSPEED"


def load_checkpoint(accelerator, path: Path, optimizer) -> None:
    """Model, optimizer, schedule and random states; the position is read_checkpoint_state's."""
    if _is_fsdp1(accelerator):
        create_optimizer_state(optimizer)
    # Non-strict under DeepSpeed: the frozen weights left out of a LoRA checkpoint keep their pretrained values.
    accelerator.load_state(str(path), **({"load_module_strict": False} if _is_deepspeed(accelerator) else {}))


def read_checkpoint_state(path: Path) -> dict:
    """A complete checkpoint's position (step, epoch, batches into it), the units it is counted in and the
    engine that wrote it."""
    return json.loads((Path(path) / STATE_FILE).read_text())


def checkpoint_step(path: Path) -> int:
    """The optimizer step a complete checkpoint was saved at."""
    return read_checkpoint_state(path)["global_step"]
