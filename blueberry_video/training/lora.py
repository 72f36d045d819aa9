"""Making the transformer trainable: a peft LoRA adapter, or every parameter."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from blueberry_video.errors import ConfigError
from blueberry_video.models.base import model_class
from blueberry_video.training.checkpointing import enable_gradient_checkpointing

logger = logging.getLogger(__name__)

ADAPTER = "default"
# A LoRA as diffusers' pipelines save and load it: a run's export (training/export.py) and its checkpoints.
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"
DIFFUSERS_LORA_PREFIX = "transformer."
# The adapter a LoRA run's checkpoint-N held before 2026-11-27, in peft's key names.
CHECKPOINT_ADAPTER_FILE = "lora_adapter.safetensors"
# Where a folder's LoRA is, in order.
LORA_FILE_NAMES = (DIFFUSERS_LORA_FILE, CHECKPOINT_ADAPTER_FILE)


def lora_targets(configured: list | None, family) -> list[str]:
    """The module names a LoRA adapts: the configured `lora_target_modules`, or the family's defaults."""
    return list(configured or family.default_lora_target_modules)


def add_lora(transformer, config, family) -> None:
    targets = lora_targets(config.lora_target_modules, family)
    transformer.add_adapter(
        LoraConfig(
            r=config.rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            init_lora_weights=True,
            target_modules=targets,
        )
    )
    adapter_to_float32(transformer)
    if config.init_lora_weights:
        load_lora_into(transformer, config.init_lora_weights)


def adapter_to_float32(transformer) -> None:
    """The adapter's weights in float32, as training keeps them. peft makes them in the frozen weights' dtype, so
    a LoRA loaded into a bf16 model would be rounded to bf16 (a 0.4 % change that validation never saw)."""
    for name, param in transformer.named_parameters():
        if "lora_" in name and f".{ADAPTER}." in name:
            param.data = param.data.to(torch.float32)


def lora_file_in_folder(folder: Path) -> Path | None:
    """The LoRA a folder holds: a run's export, else a LoRA checkpoint's adapter; None when neither is there."""
    return next((folder / name for name in LORA_FILE_NAMES if (folder / name).is_file()), None)


def lora_file(path: str | Path) -> Path:
    """The .safetensors file of a LoRA given as the file, the folder it was exported to, or a checkpoint-N."""
    path = Path(path)
    if not path.is_dir():
        if not path.is_file():
            raise ConfigError(f"init_lora_weights={path}: no such file")
        return path
    if (found := lora_file_in_folder(path)) is None:
        raise ConfigError(f"init_lora_weights={path}: no {LORA_FILE_NAMES[0]} (a run's output_dir) or "
                          f"{CHECKPOINT_ADAPTER_FILE} (a LoRA run's checkpoint-N) there")
    return found


def peft_keyed_state(file: Path) -> dict[str, torch.Tensor]:
    """A LoRA file's tensors under peft's key names: diffusers' files prefix them with the pipeline component."""
    return {k.removeprefix(DIFFUSERS_LORA_PREFIX): v for k, v in load_file(file).items()}


def load_lora_into(transformer, path: str | Path) -> None:
    """Start from an existing diffusers-format LoRA (as this toolkit or diffusers scripts save it)."""
    file = lora_file(path)
    state = peft_keyed_state(file)
    try:
        result = set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER)
    except RuntimeError as error:  # "size mismatch for ...": another rank than the file's
        raise ConfigError(f"init_lora_weights={file}: its shapes do not match this run's LoRA (rank "
                          f"{transformer.peft_config[ADAPTER].r}): {str(error).splitlines()[-1].strip()}") from error
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ConfigError(
            f"init_lora_weights={file}: {len(unexpected)} keys do not match this model's LoRA "
            f"(e.g. {unexpected[0]}); check rank and lora_target_modules match the file"
        )
    # A file for fewer layers (a partial or another model's LoRA) loads what it has; say what starts from zero.
    missing = sorted(set(get_peft_model_state_dict(transformer, adapter_name=ADAPTER)) - set(state))
    if missing:
        logger.warning("init_lora_weights=%s has no weights for %d of this model's LoRA tensors (e.g. %s): "
                       "those start from scratch", file, len(missing), missing[0])


def make_trainable(transformer, config, family) -> list[torch.nn.Parameter]:
    """Freeze what is not trained; return the trained parameters (kept in fp32 for the optimizer)."""
    if config.layerwise_casting and config.training_mode != "lora":
        raise ConfigError("layerwise_casting stores frozen weights in float8: it needs training_mode=lora")
    if config.training_mode == "lora":
        transformer.requires_grad_(False)
        if config.layerwise_casting:
            # diffusers' hooks keep each frozen layer in float8 and upcast it only while it computes.
            transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=transformer.dtype)
        add_lora(transformer, config, family)
    else:
        transformer.requires_grad_(True)
    cast_training_params(transformer, dtype=torch.float32)
    params = [p for p in transformer.parameters() if p.requires_grad]
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(transformer, family.block_class_names, config.gradient_checkpointing_ratio)
    return params


def lora_state_dict(transformer, state_dict=None) -> dict[str, torch.Tensor]:
    """The adapter's weights under diffusers' key names; `state_dict` may be a gathered full one."""
    if state_dict is not None:
        # peft finds the adapter's keys by module name, and FSDP1 puts `_fsdp_wrapped_module.` inside the names
        # of the blocks it wraps while the gathered state dict's keys are clean: read them off a clean copy.
        transformer = adapter_layout(transformer)
    return get_peft_model_state_dict(transformer, state_dict=state_dict, adapter_name=ADAPTER)


def adapter_layout(transformer):
    """The transformer's structure with its LoRA adapter on the meta device (no memory), without engine wrappers."""
    with init_empty_weights():
        layout = model_class(transformer).from_config(transformer.config)
        layout.add_adapter(transformer.peft_config[ADAPTER], adapter_name=ADAPTER)
    return layout


def lora_metadata(transformer) -> dict:
    """rank, alpha and targets saved beside the weights, so loaders scale the update as training did."""
    return transformer.peft_config[ADAPTER].to_dict()
