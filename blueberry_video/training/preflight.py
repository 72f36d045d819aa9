"""Checks of a run's settings against the files it will read, before the latent cache and the weights: the LoRA
it starts from and the run it resumes. A mismatch found here costs seconds; found when the weights load, it
costs the whole cache build first.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

import yaml
from safetensors import safe_open

from blueberry_video.errors import ConfigError, SettingWarning
from blueberry_video.models import family_named_by_file
from blueberry_video.training.checkpoints import checkpoint_step
from blueberry_video.training.lora import lora_file, lora_targets
from blueberry_video.training.records import ENGINES_IN_WORDS

logger = logging.getLogger(__name__)

# The checkpoint's tensors are shaped by these: resumed with other values, it cannot load.
SHAPING_SETTINGS = ("training_mode", "rank", "lora_target_modules", "optimizer", "use_8bit_adam")
# The checkpoint's optimizer and schedule state restore these: a new value would be silently ignored.
# The flow-matching objective's settings (training/sampling.py): a DDPM family's run would ignore them.
FLOW_MATCHING_SETTINGS = ("weighting_scheme", "logit_mean", "logit_std", "mode_scale", "flow_shift",
                          "flow_guidance_scale")
# The run's length, which a decaying learning-rate schedule is laid out over.
SCHEDULE_LENGTH_SETTINGS = ("max_train_steps", "num_train_epochs")
CONSTANT_SCHEDULES = ("constant", "constant_with_warmup")
RESTORED_SETTINGS = ("learning_rate", "scale_lr", "lr_scheduler", "lr_warmup_steps", "lr_num_cycles", "lr_power",
                     "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon")


def resumed_config(config, family, checkpoint: Path | None):
    """The settings to resume `checkpoint` (None: a new run) with. Settings that shape the checkpoint must match
    the run's own (config.yaml beside the checkpoint); those its restored state would override keep the run's
    values, with a warning, so that the model card and config.yaml say what the optimizer really does."""
    saved_file = checkpoint.parent / "config.yaml" if checkpoint else None
    if saved_file is None or not saved_file.is_file():
        return config
    saved = yaml.safe_load(saved_file.read_text()) or {}
    def effective(name, value):
        # Unset target modules are the family's defaults, in any order.
        return sorted(lora_targets(value, family)) if name == "lora_target_modules" else value

    clashes = [name for name in SHAPING_SETTINGS
               if name in saved and effective(name, saved[name]) != effective(name, getattr(config, name))]
    if clashes:
        was = ", ".join(f"{name}={saved[name]!r}" for name in clashes)
        now = ", ".join(f"{name}={getattr(config, name)!r}" for name in clashes)
        raise ConfigError(f"resume_from_checkpoint: {checkpoint} was trained with {was} ({saved_file}), this run "
                          f"has {now}: its saved weights and optimizer state are shaped by those and load only into a "
                          f"run with them. Resume with its "
                          f"settings, or start a new run from its weights with --init_lora_weights (LoRA)")
    warn_schedule_length_change(config, saved, checkpoint)
    kept = {name: saved[name] for name in RESTORED_SETTINGS if name in saved and saved[name] != getattr(config, name)}
    if kept:
        logger.warning("resuming %s: its restored optimizer and schedule keep %s; the new value(s) %s are ignored "
                       "(start a new run to change them)", checkpoint,
                       ", ".join(f"{name}={value!r}" for name, value in kept.items()),
                       ", ".join(f"{name}={getattr(config, name)!r}" for name in kept))
    return dataclasses.replace(config, **kept)


SHARDING_ENGINES = ("FSDP", "DEEPSPEED")


def check_resume_engine(saved_state: dict, checkpoint: Path, engine: str, num_processes: int) -> None:
    """DeepSpeed and FSDP save the model and optimizer in layouts of their own, which only the engine that wrote
    them loads: refused here, before the cache and the model load, instead of failing inside accelerate's
    load_state. One process and DDP share a layout, so a resume may pass between them. DeepSpeed's ZeRO
    optimizer state is split by process count and loads only into as many processes."""
    saved = saved_state.get("engine")  # checkpoints written before it was recorded say nothing
    saved_processes = saved_state.get("num_processes", num_processes)
    if saved == engine and engine.startswith("DEEPSPEED") and saved_processes != num_processes:
        raise ConfigError(f"resume_from_checkpoint={checkpoint}: written by {saved_processes} processes under "
                          f"{engine}, but this launch has {num_processes}; DeepSpeed splits the optimizer state "
                          f"over the processes and loads it only into as many. Resume with {saved_processes} "
                          "processes in all (--num_processes, over every machine), as the run started")
    if saved is None or saved == engine or not any(name.startswith(SHARDING_ENGINES) for name in (saved, engine)):
        return
    raise ConfigError(f"resume_from_checkpoint={checkpoint}: written under {ENGINES_IN_WORDS.get(saved, saved)}, but "
                      f"this launch runs {ENGINES_IN_WORDS.get(engine, engine)}; DeepSpeed and FSDP save and load checkpoints in layouts of their own: "
                      "resume under the engine that wrote it (the accelerate config the run started with; "
                      "run_info.json names its engine)")


def warn_schedule_length_change(config, saved: dict, checkpoint: Path) -> None:
    """A resume with another length of run reads the restored step against the new length: a decaying learning
    rate jumps (extending a cosine run at its end restarts it near half the peak). Allowed, since extending a run
    is what people do, but said; and a length the checkpoint has already reached trains nothing."""
    step = checkpoint_step(checkpoint)
    if config.max_train_steps is not None and config.max_train_steps <= step:
        logger.warning("resuming %s at step %d with max_train_steps=%d: nothing is left to train; the weights are "
                       "exported as the checkpoint holds them", checkpoint, step, config.max_train_steps)
    changed = [name for name in SCHEDULE_LENGTH_SETTINGS if name in saved and saved[name] != getattr(config, name)]
    # The restored schedule keeps its own kind and warm-up, which does not depend on the length: a run still warming
    # up goes on rising as it would have.
    scheduler, warmup = (saved.get(name, getattr(config, name)) for name in ("lr_scheduler", "lr_warmup_steps"))
    if changed and scheduler not in CONSTANT_SCHEDULES and step >= warmup:
        logger.warning("resuming %s with %s (was %s): the %s learning-rate schedule is laid out over the new length, "
                       "so the rate jumps at step %d; for a schedule that decays smoothly to the new end, start a new "
                       "run from the checkpoint's weights", checkpoint,
                       ", ".join(f"{name}={getattr(config, name)}" for name in changed),
                       ", ".join(str(saved[name]) for name in changed), scheduler, step)


def check_init_lora_weights(config, family) -> None:
    """The LoRA to start from has this run's rank and adapts the same kinds of layers (read from the file's
    header: no tensor is loaded)."""
    if not config.init_lora_weights:  # (a full fine-tune given one is refused by the config's validate)
        return
    file = lora_file(config.init_lora_weights)
    with safe_open(file, framework="pt") as weights:
        shapes = {name: weights.get_slice(name).get_shape() for name in weights.keys()}
    # lora_A maps the layer's input to `rank` features: its weight is [rank, in_features].
    ranks = sorted({shape[0] for name, shape in shapes.items() if ".lora_A." in name})
    if ranks and ranks != [config.rank]:
        found = ", ".join(map(str, ranks))
        raise ConfigError(f"init_lora_weights={file}: its adapter has rank {found}, this run's rank is {config.rank}; "
                          f"pass --rank {ranks[0]} (and the lora_alpha it was trained with)")
    targets = set(lora_targets(config.lora_target_modules, family))
    adapted = {name.split(".lora_A.")[0] for name in shapes if ".lora_A." in name}
    foreign = sorted({name for name in adapted if not any(name == t or name.endswith(f".{t}") for t in targets)})
    if foreign:
        raise ConfigError(f"init_lora_weights={file}: it adapts layers this run does not ({foreign[0]}, "
                          f"{len(foreign)} in all); this run's lora_target_modules are {sorted(targets)}: set "
                          f"lora_target_modules to the ones it was trained with")


def warn_of_a_config_for_another_family(config_file, family_name: str) -> None:
    """A recipe config chosen for the other family (the other recipe's file) trains with settings picked for that
    model: its frame rate, resolution, rank and schedule. Said, not refused: a config may be reused on purpose."""
    named = family_named_by_file(config_file) if config_file else None
    if named is not None and named != family_name:
        warnings.warn(f"--config {config_file} is named for {named}, and this run is of {family_name}: its settings "
                      f"(frame rate, resolution, rank, schedule) were chosen for {named}. For {named} use "
                      f"recipes/train_{named}.py; for {family_name}, a config made for it (recipes/configs/)",
                      SettingWarning, stacklevel=2)


def check_objective_settings(config, family) -> None:
    """Flow-matching settings given to a family that does not train with flow matching are refused: the run would
    ignore them, while config.yaml and `report` would show them as what the run differed in."""
    if family.trains_with_flow_matching:
        return
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    unused = [name for name in FLOW_MATCHING_SETTINGS if getattr(config, name) != defaults[name]]
    if unused:
        given = ", ".join(f"{name}={getattr(config, name)!r}" for name in unused)
        raise ConfigError(f"{given}: settings of the flow-matching objective, which {family.name} does not train "
                          f"with (it samples DDPM timesteps and predicts v), so they would have no effect; drop them")
