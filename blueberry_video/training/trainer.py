"""The training run every recipe shares, top to bottom:

config -> accelerator -> data (latent cache) -> trainable transformer -> optimizer -> loop
(checkpoints, validation, metrics) -> exported weights, model card and loss plot.

Everything model-specific goes through the `ModelFamily` the recipe passes in.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from blueberry_video.data.cache import CacheSettings, precompute_latent_cache
from blueberry_video.data.latent_dataset import DummyLatentDataset, LatentCacheDataset
from blueberry_video.errors import ConfigError, OutOfMemoryHelp, SettingWarning, out_of_memory_message
from blueberry_video.training.accelerator import (
    build_accelerator,
    check_output_dir,
    check_output_dir_is_not_a_file,
    clear_earlier_run,
    engine_name,
    fit_fsdp_wrap_classes,
    process_group_timeout_s,
    release_process_group,
    transformer_load_dtype,
    weight_dtype,
)
from blueberry_video.training.attention import apply_attention_backend, check_attention_backend
from blueberry_video.training.checkpoints import (
    load_checkpoint,
    read_checkpoint_state,
    register_lora_checkpoint_hooks,
    resolve_resume_path,
    save_checkpoint,
)
from blueberry_video.training.export import export_trained_weights
from blueberry_video.training.loop import BatchLoop, TooManyBadStepsError, timed_batches  # noqa: F401 (re-exported)
from blueberry_video.training.lora import make_trainable
from blueberry_video.training.optim import build_lr_scheduler, build_optimizer, warmup_outlasting_the_run
from blueberry_video.training.preemption import PreemptionWatch
from blueberry_video.training.preflight import (
    check_init_lora_weights,
    check_objective_settings,
    check_resume_engine,
    resumed_config,
    warn_of_a_config_for_another_family,
)
from blueberry_video.training.records import (
    MetricsLog,
    batch_in_words,
    plot_losses,
    processes_in_words,
    write_final_metrics,
    write_model_card,
    write_run_info,
)
from blueberry_video.training.resume_position import (
    batches_to_skip,
    position_units,
    rescale_lr_schedule,
    steps_to_finish_the_epochs,
)
from blueberry_video.training.run_folder import hold_output_dir, remove_leftovers, set_aside_later_checkpoints
from blueberry_video.training.step import compile_blocks
from blueberry_video.training.trackers import start_trackers
from blueberry_video.training.validation import run_validation

# Not accelerate's logger: it puts [RANK 0] before messages only the first process says.
logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    weights: Path
    validation_videos: list[Path] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    bad_steps: int = 0
    stopped_early: bool = False  # preempted (SIGTERM) or stop_after_step: resume with --resume_from_checkpoint latest
    transformer: torch.nn.Module | None = None  # the trained model, unwrapped, still on its device


def build_dataset(config, family, accelerator, dtype: torch.dtype):
    """The training items: the latent cache (built on first use), or random stand-ins with `dummy_data`."""
    if config.dummy_data:
        return DummyLatentDataset(family, config.num_dummy_samples, config.max_num_frames, config.height,
                                  config.width, seed=config.seed), config.num_dummy_samples
    report = precompute_latent_cache(family, config.instance_data_root, config.resolved_cache_dir,
                                     CacheSettings.from_config(config, dtype),
                                     accelerator=accelerator, strict=config.strict_data)
    if accelerator.is_main_process:
        print(report.summary())
    return LatentCacheDataset(report.path, repeats=config.dataset_repeats), report.num_cached


def run_recipe(family_class, argv=None, description: str = "") -> TrainResult:
    """What a recipe script does: settings from YAML and flags, the family's parts, the shared run."""
    from blueberry_video.config import config_file_in, parse_config

    argv = sys.argv[1:] if argv is None else list(argv)
    config = parse_config(argv, description=description)
    warn_of_a_config_for_another_family(config_file_in(argv), family_class.name)
    try:
        result = train(config, family_class.from_config(config))
    except torch.OutOfMemoryError as error:
        raise OutOfMemoryHelp(out_of_memory_message(config, str(error).splitlines()[0])) from error
    # Only after a finished run: a rank that failed must not wait here on a group its peers still use.
    release_process_group()
    return result


def train(config, family, stop_after_step: int | None = None) -> TrainResult:
    """Run the whole training; `stop_after_step` ends early with a checkpoint, as a preempted job would."""
    check_output_dir_is_not_a_file(config.output_dir)
    # Found (or refused) before any work; None: a new run, `latest` included before its first checkpoint.
    resume_path = resolve_resume_path(config.output_dir, config.resume_from_checkpoint)
    config = resumed_config(config, family, resume_path)
    check_init_lora_weights(config, family)
    check_objective_settings(config, family)
    resume_requested = config.resume_from_checkpoint is not None
    check_output_dir(config, resume_requested)
    accelerator = build_accelerator(config)
    with hold_output_dir(accelerator, config.output_dir):
        return _train_holding_output_dir(config, family, accelerator, resume_path, stop_after_step)


def _train_holding_output_dir(config, family, accelerator, resume_path: Path | None, stop_after_step) -> TrainResult:
    resume_requested = config.resume_from_checkpoint is not None
    saved_state = read_checkpoint_state(resume_path) if resume_path else None
    resume_step = saved_state["global_step"] if saved_state else None
    engine = engine_name(accelerator)
    if saved_state:
        check_resume_engine(saved_state, resume_path, engine, accelerator.num_processes)
    clear_earlier_run(accelerator, config, resuming=resume_path is not None)
    if accelerator.is_main_process:
        remove_leftovers(config.output_dir)
        if resume_path is not None:
            set_aside_later_checkpoints(config.output_dir, resume_path, resume_step)
    accelerator.wait_for_everyone()
    start_trackers(accelerator, config, resume_step)
    output_dir = Path(config.output_dir)
    family.check_video_shape(config.max_num_frames, config.height, config.width)
    if config.validation_prompt:
        try:
            family.check_generation_frames(config.max_num_frames)
        except ConfigError as error:
            if accelerator.is_main_process:
                logger.warning(f"validation videos: {error}")
    dtype = weight_dtype(accelerator)
    check_attention_backend(family, config.attention_backend, accelerator.device, dtype)

    dataset, num_videos = build_dataset(config, family, accelerator, dtype)
    global_batch = config.train_batch_size * accelerator.num_processes
    if len(dataset) < global_batch:
        raise ConfigError(f"the dataset has {len(dataset)} item(s), fewer than train_batch_size x processes = "
                          f"{global_batch}; lower train_batch_size or raise dataset_repeats")

    transformer = family.load_transformer(dtype=transformer_load_dtype(accelerator, config.training_mode))
    params = make_trainable(transformer, config, family)
    apply_attention_backend(transformer, config.attention_backend)
    if config.compile:
        compile_blocks(transformer, family.block_class_names)
    optimizer = build_optimizer(params, config, accelerator.num_processes, device=accelerator.device)
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=config.train_batch_size, shuffle=True, drop_last=True,
        num_workers=config.dataloader_num_workers, pin_memory=torch.cuda.is_available(),
    )
    updates_per_epoch = math.ceil(len(dataloader) / accelerator.num_processes / config.gradient_accumulation_steps)
    units = position_units(config, accelerator.num_processes)
    if config.max_train_steps:
        max_train_steps = config.max_train_steps
    else:
        max_train_steps = config.num_train_epochs * updates_per_epoch
        saved_units = saved_state.get("samples_per_batch") if saved_state else None
        if saved_units not in (None, units["samples_per_batch"]):
            max_train_steps = steps_to_finish_the_epochs(saved_state, units["samples_per_batch"], updates_per_epoch,
                                                         config.gradient_accumulation_steps, config.num_train_epochs)
    lr_scheduler = build_lr_scheduler(optimizer, config, max_train_steps, accelerator.num_processes)
    if warning := warmup_outlasting_the_run(config, max_train_steps):
        warnings.warn(warning, SettingWarning, stacklevel=2)
    register_lora_checkpoint_hooks(accelerator, config.training_mode, family)
    fit_fsdp_wrap_classes(accelerator, transformer)
    transformer, optimizer, dataloader, lr_scheduler = accelerator.prepare(transformer, optimizer, dataloader, lr_scheduler)
    # FSDP2 replaces the parameters with sharded ones: clip (and check) those the prepared model trains.
    params = [p for p in transformer.parameters() if p.requires_grad]
    noise_scheduler = family.load_training_scheduler()

    state = {"global_step": 0, "epoch": 0, "batches_in_epoch": 0, "bad_steps": 0}
    metrics = MetricsLog(output_dir)
    if resume_path:
        load_checkpoint(accelerator, resume_path, optimizer)
        state = dict(saved_state)  # read before any work, for the engine check and the run's length
        rescale_lr_schedule(lr_scheduler, state, accelerator.num_processes)
        state["batches_in_epoch"] = batches_to_skip(state, units["samples_per_batch"])
        if accelerator.is_main_process:
            metrics.truncate_after(state["global_step"])
            print(f"resumed from {resume_path} at step {state['global_step']}")
    elif resume_requested and accelerator.is_main_process:
        metrics.truncate_after(0)  # no checkpoint: from step 0, so an attempt's lines before its first one go
    if accelerator.is_main_process:  # a resumed run records the settings it continues with
        write_run_info(output_dir, config, family.name, accelerator.num_processes, engine, resume_path,
                       state["global_step"], timeout_s=process_group_timeout_s())
        # The launch as it came out: `accelerate launch --cpu --num_processes 2` starts one process, silently.
        print(f"training on {processes_in_words(accelerator.num_processes, engine)}: "
              f"{batch_in_words(config, accelerator.num_processes)}, {max_train_steps} steps")
        if config.compile:  # else the bar sits at 0 % for a minute or more, unexplained
            print("compile: torch.compile compiles the transformer blocks during the first step (a minute or more; "
                  "that step's step_time includes it)")

    # The checkpoints this run writes say in which units their position is, and which engine wrote them.
    state.update(units, engine=engine)
    videos, last_validated, stop_early = [], None, False
    # SIGTERM and Ctrl-C, from the first step to the end of the run: one during the export or the final
    # validation lets the export finish and skips the rest, instead of killing the run half-written.
    preemption = PreemptionWatch()
    try:
        with ExitStack() as cleanup:  # bar and metrics file are released even if training raises
            progress = cleanup.enter_context(tqdm(total=max_train_steps, initial=state["global_step"],
                                                  desc="training", disable=not accelerator.is_main_process))
            cleanup.callback(metrics.close)
            loop = BatchLoop(accelerator, family, transformer, noise_scheduler, params, optimizer, lr_scheduler,
                             config, metrics=metrics, progress=progress, preemption=preemption,
                             global_step=state["global_step"], bad_steps=state["bad_steps"])
            # A resumed run's epochs may differ in length from the saved run's: a run of so many steps takes
            # epochs until they are done, one of so many epochs stops after its last.
            epochs = (itertools.count(state["epoch"]) if config.max_train_steps
                      else range(state["epoch"], config.num_train_epochs))
            for epoch in epochs:
                if loop.global_step >= max_train_steps or stop_early:
                    break
                dataloader.set_epoch(epoch)
                skip = state["batches_in_epoch"] if epoch == state["epoch"] else 0
                batches = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
                batches_in_epoch = skip
                for batch, data_wait in timed_batches(batches):
                    batches_in_epoch += 1
                    if loop.run(batch, epoch, data_wait) is None:
                        continue  # accumulating
                    global_step = loop.global_step
                    state.update(global_step=global_step, epoch=epoch, batches_in_epoch=batches_in_epoch,
                                 bad_steps=loop.bad_steps)
                    if config.checkpointing_steps and global_step % config.checkpointing_steps == 0:
                        loop.flush_log()  # a resume keeps the log up to its checkpoint's step
                        save_checkpoint(accelerator, output_dir, global_step, state,
                                        config.checkpoints_total_limit)
                    if config.validation_steps and global_step % config.validation_steps == 0:
                        videos += run_validation(accelerator, family, transformer, config, global_step, dtype)
                        last_validated = global_step
                    loop.restart_step_clock()
                    stop_early = global_step == stop_after_step or loop.stop_requested
                    if global_step >= max_train_steps or stop_early:
                        break
                else:
                    if config.validation_epochs and (epoch + 1) % config.validation_epochs == 0:
                        videos += run_validation(accelerator, family, transformer, config, loop.global_step, dtype)
                        last_validated = loop.global_step
                        loop.restart_step_clock()

            loop.flush_log()
        global_step, losses, state["bad_steps"] = loop.global_step, loop.losses, loop.bad_steps
        accelerator.wait_for_everyone()
        if not config.checkpointing_steps or global_step % config.checkpointing_steps:
            save_checkpoint(accelerator, output_dir, global_step, state, config.checkpoints_total_limit)
        if stop_early and global_step < max_train_steps:
            if accelerator.is_main_process:
                print(f"stopped at step {global_step} with a checkpoint; continue with "
                      "--resume_from_checkpoint latest")
            accelerator.end_training()
            return TrainResult(output_dir, global_step, output_dir / f"checkpoint-{global_step}", videos, losses,
                               state["bad_steps"], True, accelerator.unwrap_model(transformer))
        weights = export_trained_weights(accelerator, family, transformer, output_dir, config.training_mode,
                                         torch.float32 if config.training_mode == "lora" else dtype)
        # One answer for every process, so that none waits alone in a validation the others skip.
        requested = torch.tensor([preemption.requested], device=accelerator.device)
        stop_requested = accelerator.gather(requested).any().item()
        if stop_requested and accelerator.is_main_process:
            print("stop requested after the last step: the weights are exported, the final validation is skipped")
        if last_validated != global_step and not stop_requested:
            videos += run_validation(accelerator, family, transformer, config, global_step, dtype)
        if accelerator.is_main_process:
            records = metrics.read()
            plot_losses({output_dir.name: records}, output_dir / "loss.png")
            write_final_metrics(output_dir, records, state["bad_steps"])
            write_model_card(output_dir, config, family, num_videos, global_step, accelerator.num_processes)
        accelerator.end_training()
        return TrainResult(output_dir, global_step, weights, videos, losses, state["bad_steps"], False,
                           accelerator.unwrap_model(transformer))
    finally:
        preemption.close()
