"""What the trainer does with each batch: keyed randomness, the training step, the per-step record.

`benchmarks/overhead.py` runs this same class against a bare PyTorch loop, so the overhead it reports is
the loop's own. Checkpoints, validation and epochs stay in the trainer: they happen every N steps.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from blueberry_video.errors import BlueberryError
from blueberry_video.training.sampling import sample_generators
from blueberry_video.training.step import training_step

# Not accelerate's logger: it puts [RANK 0] before messages only the first process says.
logger = logging.getLogger(__name__)


class TooManyBadStepsError(BlueberryError, RuntimeError):
    """The loss or gradients stayed non-finite for too many steps in a row."""


def timed_batches(batches):
    """Yields (batch, seconds spent waiting for it): the loader's share of a step, logged as `data_wait`."""
    iterator = iter(batches)
    while True:
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        yield batch, time.perf_counter() - start


def reduce_step_stats(accelerator, loss: torch.Tensor, stop_requested: bool) -> tuple[float, bool]:
    """(mean loss over processes, whether any process asked to stop) in one all-reduce and one host sync:
    a separate collective per flag would stall every step of a multi-GPU run again."""
    if accelerator.num_processes == 1:
        return float(loss), stop_requested
    stats = torch.stack([loss.detach().float().reshape(()).to(accelerator.device),
                         torch.tensor(float(stop_requested), device=accelerator.device)])
    loss_sum, stops = accelerator.reduce(stats, reduction="sum").tolist()
    return loss_sum / accelerator.num_processes, stops > 0


class BatchLoop:
    """Feeds micro-batches to `training_step`; at each accumulation boundary counts the step, checks it
    was finite, logs its record (metrics.jsonl, trackers, progress bar) and returns it."""

    def __init__(self, accelerator, family, transformer, noise_scheduler, params, optimizer, lr_scheduler, config,
                 *, metrics=None, progress=None, preemption=None, global_step: int = 0, bad_steps: int = 0):
        self.accelerator, self.family, self.transformer = accelerator, family, transformer
        self.noise_scheduler, self.params, self.optimizer, self.lr_scheduler = (
            noise_scheduler, params, optimizer, lr_scheduler)
        self.config, self.metrics, self.progress, self.preemption = config, metrics, progress, preemption
        self.global_step, self.bad_steps, self.bad_in_a_row = global_step, bad_steps, 0
        self.losses: list[float] = []
        self.stop_requested = False  # set on every process once any was asked to stop (SIGTERM)
        self._loss_sum, self._micro_batches, self._data_wait = 0.0, 0, 0.0
        self._step_start = time.perf_counter()
        self._unlogged: list[dict] = []  # the steps since the last logged one (logging_steps > 1)

    def run(self, batch, epoch: int, data_wait: float = 0.0) -> dict | None:
        """One micro-batch; the step's record at an accumulation boundary, else None."""
        accelerator, config = self.accelerator, self.config
        # Each sample's randomness is keyed by (seed, epoch, sample): independent of the process count.
        generators = sample_generators(config.seed, epoch, batch["sample_index"].tolist(), accelerator.device)
        outcome = training_step(accelerator, self.family, self.transformer, self.noise_scheduler, batch, generators,
                                self.params, self.optimizer, self.lr_scheduler, config.max_grad_norm)
        self._loss_sum += outcome.loss.float()
        self._micro_batches += 1
        self._data_wait += data_wait
        if not accelerator.sync_gradients:
            return None

        self.global_step += 1
        step_loss, self.stop_requested = reduce_step_stats(
            accelerator, self._loss_sum / self._micro_batches,
            self.preemption is not None and self.preemption.requested)
        finite = outcome.applied and math.isfinite(step_loss)
        if not finite and self._loss_scale_search(step_loss):
            self.bad_steps += 1
            if self.accelerator.is_main_process:
                logger.warning(f"step {self.global_step}: fp16 gradient overflow, update skipped; loss scale lowered "
                               f"to {self.accelerator.scaler.get_scale():g}")
        else:
            self._check_finite(finite)
        now = time.perf_counter()
        record = {"loss": step_loss, "lr": self.lr_scheduler.get_last_lr()[0], "step_time": now - self._step_start,
                  "data_wait": self._data_wait, "epoch": epoch}
        if outcome.grad_norm is not None:
            record["grad_norm"] = outcome.grad_norm
        if torch.cuda.is_available():
            record["max_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        self._step_start, self._loss_sum, self._micro_batches, self._data_wait = now, 0.0, 0, 0.0
        self.losses.append(step_loss)
        self._log(record)
        return record

    def restart_step_clock(self) -> None:
        """A checkpoint or validation between steps is not the next step's time (nor in the report's total)."""
        self._step_start = time.perf_counter()

    def _loss_scale_search(self, step_loss: float) -> bool:
        """Whether a skipped fp16 update is the GradScaler's own search for a loss scale whose gradients fit
        fp16 (it halves the scale on each overflow): expected, not a diverging run, so long as the loss is finite
        and the scale has not collapsed below 1."""
        scaler = self.accelerator.scaler
        return scaler is not None and math.isfinite(step_loss) and scaler.get_scale() >= 1.0

    def _check_finite(self, finite: bool) -> None:
        self.bad_in_a_row = 0 if finite else self.bad_in_a_row + 1
        if finite:
            return
        self.bad_steps += 1
        if self.accelerator.is_main_process:
            logger.warning(f"step {self.global_step}: non-finite loss/gradient, update skipped "
                           f"({self.bad_in_a_row} in a row)")
        if self.bad_in_a_row >= self.config.max_consecutive_bad_steps:
            raise TooManyBadStepsError(
                f"{self.bad_in_a_row} steps in a row had a non-finite loss or gradient (step {self.global_step}). "
                f"The last good checkpoint in {self.config.output_dir} is kept. Try a lower learning_rate, "
                f"mixed_precision=bf16 instead of fp16, or max_grad_norm=1.0."
            )

    def _log(self, record: dict) -> None:
        if self.progress is not None:
            # refresh=False: the bar redraws at its own interval, not on every step.
            self.progress.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
            self.progress.update(1)
        self._unlogged.append(record)
        if self.metrics is not None and self.accelerator.is_main_process:
            # From the first step on, metrics.jsonl exists (empty until logging_steps): output_dir then shows a run
            # that trained, which a new run must not start over (records_of_an_attempt_that_trained_nothing).
            self.metrics.open()
        if self.global_step % self.config.logging_steps == 0:
            self.flush_log()

    def flush_log(self) -> None:
        """Log the steps not logged yet as one record at the latest of them. The trainer calls it before each
        checkpoint and at the end, so that every step a checkpoint holds, and the run's last, are in the log."""
        if not self._unlogged:
            return
        record = interval_record(self._unlogged)
        self._unlogged = []
        if self.accelerator.trackers:
            self.accelerator.log(record, step=self.global_step)
        if self.metrics is not None and self.accelerator.is_main_process:
            self.metrics.append(self.global_step, record)


def interval_record(records: list[dict]) -> dict:
    """Several steps' records as one: the mean loss, step time and gradient norm over them (not one step's,
    which a logging interval would pick by chance), the latest learning rate and epoch, the highest memory, and
    how many steps it covers."""
    if len(records) == 1:
        return records[0]
    merged = dict(records[-1])
    for key in ("loss", "step_time", "data_wait", "grad_norm"):
        if key in merged:
            merged[key] = sum(r[key] for r in records) / len(records)
    if "max_memory_gb" in merged:
        merged["max_memory_gb"] = max(r["max_memory_gb"] for r in records)
    merged["logged_steps"] = len(records)
    return merged
