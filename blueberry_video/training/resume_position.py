"""A run resumed on another number of processes or with another batch size continues where it stopped.

A checkpoint counts its place in the epoch in batches of one process, and accelerate steps the learning-rate
schedule once per process per optimizer step: both are in the units of the run that saved it. Read in another
run's units, the schedule jumps (two processes read a one-process count as half the steps) and the rest of the
epoch is skipped or repeated. Here both are converted, from the units the checkpoint records.
"""

from __future__ import annotations

import logging

from blueberry_video.launch_rank import is_first_process
from blueberry_video.training.records import process_count

logger = logging.getLogger(__name__)


def position_units(config, num_processes: int) -> dict:
    """What a checkpoint records beside its position, so that a resume can convert it."""
    return {"num_processes": num_processes, "samples_per_batch": config.train_batch_size * num_processes}


def batches_to_skip(state: dict, samples_per_batch: int) -> int:
    """Batches of this run (per process) that cover the samples the checkpointed run took in its epoch; older
    checkpoints, which record no units, are taken to be in this run's."""
    saved_units = state.get("samples_per_batch", samples_per_batch)
    if saved_units == samples_per_batch:
        return state["batches_in_epoch"]
    seen = state["batches_in_epoch"] * saved_units
    skip, repeated = divmod(seen, samples_per_batch)
    if is_first_process():
        logger.warning("resuming with %d samples per batch across processes instead of %d: %d samples of epoch %d "
                       "were taken, so %d batch(es) are skipped%s", samples_per_batch, saved_units, seen,
                       state["epoch"], skip, f" and {repeated} sample(s) are seen again" if repeated else "")
    return skip


def rescale_lr_schedule(lr_scheduler, state: dict, num_processes: int) -> None:
    """Put a prepared scheduler saved by a run of another number of processes at this run's count for the same
    optimizer step, and the optimizer's rates with it."""
    saved_processes = state.get("num_processes", num_processes)
    if saved_processes == num_processes:
        return
    inner = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's AcceleratedScheduler wraps it
    inner.last_epoch = state["global_step"] * num_processes
    rates = [base * rule(inner.last_epoch) for base, rule in zip(inner.base_lrs, inner.lr_lambdas)]
    for group, rate in zip(inner.optimizer.param_groups, rates):
        group["lr"] = rate
    inner._last_lr = rates
    if is_first_process():
        logger.warning("resuming on %s, saved on %s: the learning-rate schedule is set to step %d of this run "
                       "(lr %.3g)", process_count(num_processes), process_count(saved_processes), state["global_step"],
                       rates[0])


def steps_to_finish_the_epochs(saved_state: dict, samples_per_batch: int, updates_per_epoch: int,
                               gradient_accumulation_steps: int, num_train_epochs: int) -> int:
    """The optimizer step a run of `num_train_epochs` ends at, resumed from `saved_state` in this run's units:
    the steps taken, the rest of the saved epoch, then the whole epochs left. Counted from epochs alone, a run
    resumed with a smaller batch (longer epochs) would end early, one with a larger batch late."""
    skipped_updates = -(-batches_to_skip(saved_state, samples_per_batch) // gradient_accumulation_steps)
    rest_of_epoch = max(0, updates_per_epoch - skipped_updates)
    whole_epochs_left = max(0, num_train_epochs - saved_state["epoch"] - 1)
    return saved_state["global_step"] + rest_of_epoch + whole_epochs_left * updates_per_epoch
