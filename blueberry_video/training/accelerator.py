"""Building the Accelerator from the config, fitting DeepSpeed and FSDP to the recipe, and refusing launches
that would silently train wrongly."""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import sys
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import (DataLoaderConfiguration, DistributedType, InitProcessGroupKwargs, ProjectConfiguration,
                               set_seed)
from accelerate.utils.dataclasses import get_module_class_from_name

from blueberry_video.errors import ConfigError, LaunchError
from blueberry_video.models.base import PRECISION_DTYPES
from blueberry_video.training.cuda_allocator import use_expandable_segments
from blueberry_video.training.export import LORA_WEIGHTS
from blueberry_video.training.run_folder import LEFTOVER_FOLDERS, LOCK_FILE, SET_ASIDE_FOLDERS
from blueberry_video.training.records import MODEL_CARD_BESIDE_README, MODEL_CARD_MARK
from blueberry_video.training.trackers import WANDB_RUN_ID_FILE, trackers_to_start

logger = logging.getLogger(__name__)


def build_accelerator(config) -> Accelerator:
    # Before the Accelerator: it is what first puts memory on the GPU.
    use_expandable_segments(config.expandable_segments)
    trackers = trackers_to_start(config.report_to)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=trackers,
        project_config=ProjectConfiguration(
            project_dir=config.output_dir, logging_dir=str(Path(config.output_dir) / "logs")
        ),
        # Data order depends only on (seed, epoch), whatever the number of processes: resume and
        # DDP-vs-single-process runs then see the same samples in the same steps.
        # Pinned host memory (set in the trainer's DataLoader) lets batches copy to the GPU without blocking.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed,
                                                  non_blocking=torch.cuda.is_available()),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=config.nccl_timeout))],
    )
    check_launch(accelerator)
    warn_of_the_launchers_mixed_precision(accelerator, config)
    if accelerator.device.type == "cpu" and config.mixed_precision == "fp16":
        # accelerate runs fp16 on the CPU without autocast, so the float16 frozen weights meet float32 inputs.
        raise ConfigError("mixed_precision=fp16 needs a GPU, and this run is on the CPU: use --mixed_precision no "
                          "(or bf16)")
    check_layerwise_casting(accelerator, config)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        configure_deepspeed(accelerator, config)
    set_seed(config.seed)
    if config.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    return accelerator


def process_group_timeout_s() -> float | None:
    """The timeout torch's process group holds (read back from it, whatever set it); None where none is held."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return None
    group = dist.distributed_c10d._get_default_group()
    device = torch.device("cuda" if torch.device("cuda") in group._device_types else "cpu")
    options = getattr(group._get_backend(device), "options", None)
    return options._timeout.total_seconds() if options is not None else None


def release_process_group() -> None:
    """End a multi-process run's process group before the interpreter exits. Left to the interpreter's
    teardown, a rank of a finished CPU (gloo) run now and then aborted with "terminate called without an active
    exception" (a group's thread destroyed while still running), turning a good run's exit status into a
    failure; NCCL warns about the same."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def launched_world_size() -> int:
    """The number of processes the launcher (torchrun, `accelerate launch`) started, 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def leave_without_teardown_after_a_multi_process_run() -> None:
    """End a finished command's process: its process group is destroyed (release_process_group); a rank of a
    multi-process run then runs Python's exit handlers (trackers, logging, temporary folders, child processes) and
    leaves without the interpreter's teardown. There, even with the process group destroyed, a rank of a finished
    CPU (gloo) run now and then aborted ("terminate called without an active exception", no Python frame left:
    some C++ object's thread destroyed late; 4 of 121 two-process runs of a launch loop on 2026-11-26, and one CI
    run), and the launcher then reports the finished run as failed, which a scheduler chaining jobs reads as "do
    not continue". A run that raised does not come here."""
    release_process_group()
    if launched_world_size() <= 1:
        return
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def check_layerwise_casting(accelerator: Accelerator, config) -> None:
    """float8 storage of frozen weights is for one GPU's memory; the engines that shard the weights gather them
    in one dtype and fail on float8 (on CPU processes FSDP1 refuses mixed dtypes when it wraps the model, FSDP2
    and ZeRO-3 fail gathering float8 weights), and they already split the weights over the GPUs."""
    if not config.layerwise_casting:
        return
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP or (kind == DistributedType.DEEPSPEED
                                        and accelerator.state.deepspeed_plugin.zero_stage == 3):
        raise ConfigError(
            f"layerwise_casting (float8 storage of the frozen weights) does not run under {engine_name(accelerator)}, "
            f"which shards the weights already. Drop --layerwise_casting, or keep it with DDP or DeepSpeed ZeRO-2 "
            f"(accelerate_configs/multi_gpu_ddp.yaml, deepspeed_zero2.yaml)."
        )


def configure_deepspeed(accelerator: Accelerator, config) -> None:
    """Make a DeepSpeed JSON's `"auto"` entries follow the recipe, refuse what DeepSpeed would silently change,
    and keep the frozen models whole under ZeRO-3."""
    plugin = accelerator.state.deepspeed_plugin
    ds_config = plugin.deepspeed_config
    offloaded = ds_config["zero_optimization"].get("offload_optimizer", {}).get("device", "none") != "none"
    if offloaded and config.use_8bit_adam and ds_config.get("zero_force_ds_cpu_optimizer", True):
        raise ConfigError(
            "use_8bit_adam with a DeepSpeed config that offloads the optimizer (offload_optimizer in the JSON): "
            "accelerate replaces the optimizer by DeepSpeed's CPU Adam there, and an 8-bit AdamW would silently "
            "become Adam with L2 weight decay. Pass --no-use_8bit_adam: the optimizer state is in CPU RAM anyway."
        )
    # accelerate fills an "auto" gradient_clipping with 1.0 whatever the recipe says; DeepSpeed clips inside
    # `backward`, so this is the only place max_grad_norm can reach it (0 turns clipping off in both).
    if plugin.is_auto("gradient_clipping"):
        plugin.deepspeed_config["gradient_clipping"] = float(config.max_grad_norm or 0.0)
    # While a ZeRO-3 config is registered with transformers, every transformers model it loads (the text
    # encoders of the latent cache and of the validation pipeline) is partitioned at load, even with
    # zero3_init_flag off, and then fails outside the DeepSpeed engine ("'weight' must be 2-D"). Only the
    # transformer handed to `prepare` is to be sharded; diffusers loads it whole either way.
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def engine_name(accelerator: Accelerator) -> str:
    """How the run spreads the model, for run_info.json: e.g. MULTI_GPU, FSDP2, DEEPSPEED ZeRO-3."""
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return f"FSDP{accelerator.state.fsdp_plugin.fsdp_version}"
    if kind == DistributedType.DEEPSPEED:
        return f"DEEPSPEED ZeRO-{accelerator.state.deepspeed_plugin.zero_stage}"
    return kind.value


def fit_fsdp_wrap_classes(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Let one FSDP config list every family's block classes: keep those this transformer has.

    accelerate refuses a `fsdp_transformer_layer_cls_to_wrap` class that the model lacks, so a list naming
    CogVideoX's and HunyuanVideo's blocks would fail for both models without this.
    """
    if accelerator.distributed_type == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        plugin.transformer_cls_names_to_wrap = fsdp_wrap_classes_in(model, plugin.transformer_cls_names_to_wrap)


def fsdp_wrap_classes_in(model: torch.nn.Module, names: list[str] | None) -> list[str] | None:
    """The listed block class names found in `model`; None (no list) lets accelerate use `_no_split_modules`."""
    if not names:
        return names
    present = [name for name in names if get_module_class_from_name(model, name) is not None]
    if not present:
        raise ConfigError(
            f"fsdp_transformer_layer_cls_to_wrap={','.join(names)}: {type(model).__name__} has none of these classes; "
            f"add its block class to the list in your accelerate config (its _no_split_modules: "
            f"{', '.join(getattr(model, '_no_split_modules', None) or ['none'])})"
        )
    return present


# What `accelerate launch --config_file` asks for, and the DistributedType that delivers it.
REQUESTED_ENGINES = {"ACCELERATE_USE_DEEPSPEED": DistributedType.DEEPSPEED, "ACCELERATE_USE_FSDP": DistributedType.FSDP}


def _launch_asked_for(variable: str) -> bool:
    return os.environ.get(variable, "false").lower() == "true"  # as accelerate's own state reads these


def _set_up_in_words(accelerator: Accelerator) -> str:
    """What accelerate set up, as a person would say it (its own name for one plain process is "NO")."""
    if accelerator.distributed_type == DistributedType.NO:
        return f"one plain process on {accelerator.device.type.upper()}"
    return f"{accelerator.distributed_type.value} with {accelerator.num_processes} processes"


def check_launch(accelerator: Accelerator) -> None:
    """Refuse the launches that would silently train otherwise than asked: N copies each training alone, or
    a DeepSpeed/FSDP config that accelerate quietly turned into plain DDP or a single process."""
    for variable, engine in REQUESTED_ENGINES.items():
        if _launch_asked_for(variable) and accelerator.distributed_type != engine:
            raise LaunchError(
                f"the launch asked for {engine.value} ({variable}=true) but accelerate set up "
                f"{_set_up_in_words(accelerator)}: the run would not "
                f"shard as configured. accelerate runs FSDP only on GPUs and DeepSpeed without GPUs with one process "
                f"only; ACCELERATE_USE_CPU=1 turns both off. On a CPU machine use accelerate_configs/cpu_test.yaml "
                f"(DDP) or a DeepSpeed config with --num_processes 1."
            )
    if engine_name(accelerator) == "FSDP1" and accelerator.num_processes == 1:
        # torch turns FSDP1 on one process into NO_SHARD, whose state dict then misses the root unit's weights:
        # the first checkpoint would fail ("FSDP assumes patch_embed.proj.weight is in the state_dict").
        raise LaunchError(
            "an FSDP1 config launched with one process: torch runs FSDP1 there as NO_SHARD, which shards nothing and "
            "fails at the first checkpoint. Launch it with --num_processes 2 or more; on one GPU leave out the "
            "engine config and use the memory options (--gradient_checkpointing, --use_8bit_adam), or "
            "accelerate_configs/deepspeed_zero2_offload.yaml with --num_processes 1 to keep the optimizer state in "
            "CPU memory"
        )
    world_size = launched_world_size()
    if world_size > 1 and accelerator.num_processes == 1:
        hint = (
            "DeepSpeed without GPUs runs one process: launch with --num_processes 1, or use DDP "
            "(accelerate_configs/cpu_test.yaml)"
            if _launch_asked_for("ACCELERATE_USE_DEEPSPEED")
            else f"on a machine without GPUs, launch with `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
                 f"--num_processes {world_size} ...` (or `ACCELERATE_USE_CPU=1 torchrun ...`); `accelerate launch "
                 f"--cpu --num_processes N` starts one process"
        )
        raise LaunchError(
            f"WORLD_SIZE={world_size} but this process works alone (accelerate found no distributed backend): "
            f"every process would do all the work (train on, or encode, all the data) and write the same outputs. "
            f"{hint}."
        )
    if accelerator.num_processes == 1 and world_size <= 1 and _plain_cpu_launch_for_several():
        raise LaunchError(
            "the launch asked for several processes on the CPU (`accelerate launch --cpu` with --num_processes or "
            "--num_machines above 1), but accelerate's plain launcher starts one process there (it expects mpirun "
            "with --mpirun_hostfile): this run would train alone, otherwise than asked. For several CPU processes: "
            "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...`; for one, leave out "
            "--num_processes (and unset MASTER_ADDR if your shell exports it)"
        )


def _plain_cpu_launch_for_several() -> bool:
    # What `accelerate launch --cpu --num_processes N` (N > 1) leaves in the one process it starts: the CPU flag,
    # its OpenMP settings, and the rendezvous address it sets only for several processes (or machines).
    return (_launch_asked_for("ACCELERATE_USE_CPU") and os.environ.get("KMP_BLOCKTIME") == "1"
            and "MASTER_ADDR" in os.environ)


def warn_of_the_launchers_mixed_precision(accelerator: Accelerator, config) -> None:
    """`accelerate launch --mixed_precision X` (or X in its config file, `accelerate config`'s default one included)
    reaches the recipe as ACCELERATE_MIXED_PRECISION, which the recipe's own setting overrides: diffusers' scripts
    default to it, so a user coming from them would train in another precision than they asked for. "no" is also
    what the launcher exports when nothing is set, so only another precision than the run's is told."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launched not in ("", "no", config.mixed_precision) and accelerator.is_main_process:
        if launched not in ("fp16", "bf16"):
            fix = "the recipes train in no, fp16 or bf16"
        elif launched == "fp16" and accelerator.device.type == "cpu":
            fix = "fp16 needs a GPU, and this run is on the CPU"
        else:
            fix = f"to train in {launched}, give the recipe --mixed_precision {launched}"
        logger.warning("accelerate launch asked for mixed_precision=%s (its --mixed_precision flag or config file) but "
                       "this run uses the recipe's mixed_precision=%s (its YAML, its --mixed_precision after the "
                       "script, else bf16): %s", launched, config.mixed_precision, fix)


def autocast(accelerator: Accelerator):
    """`accelerator.autocast()`, made to work under DeepSpeed too.

    DeepSpeed's bf16/fp16 modes convert the model's weights but not the inputs the family builds in fp32, and
    accelerate's autocast is a no-op there: the first layer would fail with "mat1 and mat2 must have the same
    dtype". torch's autocast (what DeepSpeed's own `torch_autocast` option does) casts per operation instead.
    """
    if accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.mixed_precision in ("bf16", "fp16"):
        return torch.autocast(accelerator.device.type, dtype=weight_dtype(accelerator))
    return accelerator.autocast()


def weight_dtype(accelerator: Accelerator) -> torch.dtype:
    """The autocast precision: what the encoders run in, and frozen weights are stored in where they can be."""
    return PRECISION_DTYPES.get(accelerator.mixed_precision, torch.float32)


def transformer_load_dtype(accelerator: Accelerator, training_mode: str) -> torch.dtype:
    """The dtype the transformer is loaded in. A full fine-tune trains float32 master weights; LoRA keeps the
    frozen weights in the autocast precision (half their memory) beside its float32 adapter, except under
    FSDP1: it flattens each block's weights, frozen and trained, into one tensor of a single dtype ("Must
    flatten tensors with uniform dtype"), so there they stay float32, sharded, and FSDP's mixed precision
    casts them for compute."""
    fsdp1 = (accelerator.distributed_type == DistributedType.FSDP
             and accelerator.state.fsdp_plugin.fsdp_version == 1)
    return weight_dtype(accelerator) if training_mode == "lora" and not fsdp1 else torch.float32


# What a run writes before its first step: the trackers' files (started before the latent cache is built) and,
# once the model is ready, its settings. An attempt stopped before then (a tracker that could not start, a bad
# video, out of memory in the first step) left nothing else, so the run started again once that is fixed
# starts over them instead of being refused as an earlier run.
START_RECORDS = frozenset({"logs", "config.yaml", "run_info.json"})


def records_of_an_attempt_that_trained_nothing(config) -> list[str] | None:
    """The names in output_dir that an attempt stopped before its first step left ([] for none: an empty
    output_dir, or one holding only the latent cache, which is kept and reused, or the user's own README.md and
    hidden files, as a clone of a Hub repository to push the result to has); None when output_dir holds anything
    else. config.yaml counts only beside run_info.json: alone it may be the user's."""
    out = Path(config.output_dir)
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")} if out.is_dir() else set()
    if "README.md" in names and not is_run_output(out / "README.md"):
        names.remove("README.md")  # the card goes beside it
    cache = config.resolved_cache_dir.resolve()
    names -= {name for name in names if cache.is_relative_to((out / name).resolve())}
    if not names <= START_RECORDS or ("config.yaml" in names and "run_info.json" not in names):
        return None
    if "logs" in names and not _written_by_trackers(out / "logs"):
        return None  # a logs folder of the user's
    return sorted(names)


def _written_by_trackers(folder: Path) -> bool:
    """Whether every file under `folder` is one the trackers write: TensorBoard's event files and the settings
    accelerate stores beside them, wandb's folder and the run id kept for it (trackers.py)."""
    return folder.is_dir() and not folder.is_symlink() and all(
        path.name.startswith("events.out.tfevents.") or path.name in ("hparams.yml", WANDB_RUN_ID_FILE)
        or "wandb" in path.relative_to(folder).parts[:-1]
        for path in folder.rglob("*") if not path.is_dir())


def check_output_dir_is_not_a_file(output_dir) -> None:
    """First of all checks: a resume looks for checkpoints in it."""
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise ConfigError(f"output_dir={output_dir} is a file, not a folder: pick another --output_dir")


def check_output_dir(config, resuming: bool) -> None:
    """Refuse to mix a new run's files into an earlier run's, before anything is written."""
    out = Path(config.output_dir)
    check_output_dir_is_not_a_file(out)
    if out.exists() and any(not p.name.startswith(".") for p in out.iterdir()) and not resuming \
            and not config.overwrite_output_dir and records_of_an_attempt_that_trained_nothing(config) is None:
        raise ConfigError(
            f"output_dir={out} is not empty: a new run would mix its checkpoints and videos with an earlier run's. "
            f"Resume it with --resume_from_checkpoint latest, pick another --output_dir, or pass --overwrite_output_dir."
        )


# What a training run writes into its output_dir: trainer.py and records.py (config.yaml, run_info.json,
# metrics.jsonl, loss.png, final_metrics.json, the model card), export.py (the weights), validation.py (videos) and
# the trackers' logging_dir (build_accelerator). --overwrite_output_dir removes these and nothing else.
RUN_OUTPUT_NAMES = frozenset({"config.yaml", "run_info.json", "metrics.jsonl", "loss.png", "final_metrics.json",
                              "README.md", MODEL_CARD_BESIDE_README, LORA_WEIGHTS, "transformer", "validation", "logs"})
# checkpoint-N and the checkpoint-N.tmp a killed save leaves (checkpoints.py); the tempfile folder export.py
# writes the weights in before moving them into place, left behind if the export was killed; the checkpoints a
# resume from an earlier one set aside (run_folder.py).
RUN_OUTPUT_PATTERN = re.compile(rf"checkpoint-\d+|{LEFTOVER_FOLDERS.pattern}|{SET_ASIDE_FOLDERS.pattern}")


def is_run_output(path: Path) -> bool:
    if path.name in ("README.md", MODEL_CARD_BESIDE_README):  # the model card, not a user's notes
        return path.is_file() and MODEL_CARD_MARK in path.read_text(errors="replace")
    return path.name in RUN_OUTPUT_NAMES or RUN_OUTPUT_PATTERN.fullmatch(path.name) is not None


def remove_run_outputs(output_dir: Path, keep: Path | None = None) -> tuple[list[str], list[str]]:
    """Delete an earlier run's outputs from `output_dir`, except `keep` and what holds it; returns the names
    removed and the names left."""
    removed, left = [], []
    for path in sorted(output_dir.iterdir()) if output_dir.is_dir() else []:
        if path.name == LOCK_FILE:  # held by this run
            continue
        if (keep is not None and keep.resolve().is_relative_to(path.resolve())) or not is_run_output(path):
            left.append(path.name)
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path.name)
    return removed, left


def clear_earlier_run(accelerator: Accelerator, config, resuming: bool) -> None:
    """--overwrite_output_dir starts a new run from a clean output_dir: an earlier run's checkpoints would be
    what `--resume_from_checkpoint latest` finds (and, having higher steps, outlive the new ones under
    checkpoints_total_limit), and its metrics lines, videos and plots would mix into the new run's records.
    Without it, only what an attempt stopped before its first step left is cleared (check_output_dir let the
    run through for it).

    Once, on the main process, before the run writes anything; the others wait so that none writes first.
    """
    if resuming:
        return
    if not config.overwrite_output_dir:
        if accelerator.is_main_process and (names := records_of_an_attempt_that_trained_nothing(config)):
            remove_run_outputs(Path(config.output_dir), keep=config.resolved_cache_dir)
            logger.warning("output_dir=%s held only %s from an earlier attempt that stopped before its first step: "
                           "starting over them", config.output_dir, ", ".join(names))
        accelerator.wait_for_everyone()
        return
    if accelerator.is_main_process:
        output_dir = Path(config.output_dir)
        # Without instance_data_root the latent cache is output_dir/latent_cache; it is keyed by the data and
        # settings, so the new run reuses it instead of mixing with it.
        removed, left = remove_run_outputs(output_dir, keep=config.resolved_cache_dir)
        if removed:
            logger.warning("overwrite_output_dir: removed the earlier run's %s from %s", ", ".join(removed),
                           output_dir)
        if left:
            logger.warning("overwrite_output_dir: left %s in %s untouched (not written by a training run, or "
                           "the latent cache)", ", ".join(left), output_dir)
    accelerator.wait_for_everyone()
