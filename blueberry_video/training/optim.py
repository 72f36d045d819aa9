"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import torch
from diffusers.optimization import get_scheduler

from blueberry_video.errors import ConfigError


# Where torch has fused AdamW kernels (since torch 2.4): its fastest path, one kernel for all tensors.
FUSED_ADAM_DEVICE_TYPES = ("cuda", "cpu", "xpu")


def build_optimizer(params, config, num_processes: int = 1, *, device: torch.device | str):
    """`device`: where the run trains. The trainer builds the optimizer before accelerate moves the model
    there, so the parameters' own device says nothing about which kernels the steps will run."""
    lr = config.learning_rate
    if config.scale_lr:
        lr *= config.train_batch_size * config.gradient_accumulation_steps * num_processes
    kwargs = dict(lr=lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon)
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as error:
            raise ConfigError("use_8bit_adam needs bitsandbytes: pip install bitsandbytes (or pip install -e '.[bnb]' "
                              "in a clone)") from error
        cls = bnb.optim.AdamW8bit if config.optimizer == "adamw" else bnb.optim.Adam8bit
        return cls(params, weight_decay=config.adam_weight_decay, **kwargs)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    fused = {"fused": True} if torch.device(device).type in FUSED_ADAM_DEVICE_TYPES else {}
    return cls(params, weight_decay=config.adam_weight_decay, **kwargs, **fused)


def build_lr_scheduler(optimizer, config, max_train_steps: int, num_processes: int = 1):
    # accelerate steps a prepared scheduler once per process per optimizer step.
    return get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * num_processes,
        num_training_steps=max_train_steps * num_processes,
        num_cycles=config.lr_num_cycles,
        power=config.lr_power,
    )


def warmup_outlasting_the_run(config, max_train_steps: int) -> str | None:
    """A warm-up as long as the run (a shipped config's 100 steps in a short trial run): the rate never reaches
    learning_rate, and nothing else would say so."""
    if config.lr_warmup_steps < max_train_steps or config.lr_scheduler == "constant":
        return None
    return (f"lr_warmup_steps={config.lr_warmup_steps} is as long as the run ({max_train_steps} steps) or longer: the "
            f"learning rate only rises, to {max_train_steps}/{config.lr_warmup_steps} of learning_rate="
            f"{config.learning_rate:g} at the last step; lower --lr_warmup_steps (a tenth of the run is usual)")
