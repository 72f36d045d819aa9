"""Exception types a user can meet; each message names the file or setting and the fix."""

import hashlib
import json
import os
import re
import sys
import time
import warnings

from blueberry_video.launch_rank import is_first_process


class BlueberryError(Exception):
    """Base class for errors this toolkit raises on purpose."""


class ConfigError(BlueberryError, ValueError):
    """A setting is missing, unknown or has a value that cannot work."""


class ModelLayoutError(BlueberryError, FileNotFoundError):
    """A model directory does not have the diffusers layout a family needs."""


class LaunchError(BlueberryError, RuntimeError):
    """The process was launched in a way that would silently train wrongly."""


class OutOfMemoryHelp(BlueberryError, MemoryError):
    """The GPU ran out of memory; the message lists this recipe's memory options."""


class SettingWarning(UserWarning):
    """A setting that does nothing or is risky in this run; the run goes on."""


class RecordWarning(SettingWarning):
    """A run's record file holds a damaged part that is left out (a last line a crash cut short)."""


class StoppedBySignal(BlueberryError):
    """SIGTERM or Ctrl-C stopped work outside the training loop; the message says what was kept. The exit
    status is the shell's for that signal (143, 130), which schedulers read as "stopped", not "failed"."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_status = 128 + signum


def exit_on_error(entry_point, *args):
    """Run a script's entry point: the toolkit's own errors (a setting, a file, a launch to fix) print as one
    `error: ...` line on stderr and exit with status 1, where a traceback would bury the message under lines of
    code. BLUEBERRY_DEBUG=1 keeps the traceback. Under a multi-process launch a message is printed once per
    machine, however many of its processes meet it; one only some processes meet is printed too."""
    show_setting_warnings_plainly()
    try:
        return entry_point(*args)
    except Exception as error:
        said = error if isinstance(error, BlueberryError) else stop_within(error)
        if said is None or os.environ.get("BLUEBERRY_DEBUG", "") not in ("", "0"):
            raise
        message = f"error: {said}"
        if first_to_say(message):
            print(message, file=sys.stderr)
        tell_the_launcher(message)
        raise SystemExit(getattr(said, "exit_status", 1)) from None


def stop_within(error: BaseException) -> StoppedBySignal | None:
    """The Ctrl-C or SIGTERM that `error` is, or that a library turned into its own error (StoppedBySignal is an
    Exception, as a signal handler's must be to reach our handlers: diffusers reports one that came while it read
    weights as "Unable to load weights", imageio one that came while it read from ffmpeg as its own error)."""
    seen, chain = error, set()
    while seen is not None and id(seen) not in chain:
        if isinstance(seen, StoppedBySignal):
            return seen
        chain.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    return None


def show_setting_warnings_plainly() -> None:
    """A SettingWarning prints as `warning: ...`, as errors print, without the file, line and source line Python
    adds (which name the toolkit's code, not the user's setting); once per launch, by its first process."""
    if not is_first_process():
        warnings.filterwarnings("ignore", category=SettingWarning)
        return
    python_format = warnings.formatwarning
    if getattr(python_format, "plain_setting_warnings", False):
        return

    def formatted(message, category, filename, lineno, line=None):
        if issubclass(category, SettingWarning):
            return f"warning: {message}\n"
        return python_format(message, category, filename, lineno, line)

    formatted.plain_setting_warnings = True
    warnings.formatwarning = formatted


def first_to_say(message: str) -> bool:
    """False when another process of this launch on this machine has printed `message`: eight processes meeting
    one bad setting would print eight identical lines. The processes' shared folder is the launcher's attempt
    folder, the parent of each one's TORCHELASTIC_ERROR_FILE folder; creating a file named by the message there
    succeeds for one process only."""
    rank_folder = os.path.dirname(os.environ.get("TORCHELASTIC_ERROR_FILE", ""))
    attempt_folder = os.path.dirname(rank_folder)
    # Only the launcher's own layout (<attempt_N>/<local rank>/error.json): a file named by hand may lie in a
    # folder that outlives the launch, where a marker would silence the same error in every later run.
    if not (os.path.basename(rank_folder).isdigit() and re.fullmatch(r"attempt_\d+", os.path.basename(attempt_folder))):
        return True
    marker = os.path.join(attempt_folder, "said-" + hashlib.sha256(message.encode()).hexdigest()[:16])
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    except OSError:
        pass  # no shared folder to tell by: print
    return True


def tell_the_launcher(message: str) -> None:
    """Under torchrun or `accelerate launch` with several processes, hand the message to the launcher's report of
    the failed run: its "Root Cause" block then shows it, where it would show only "To enable traceback see: ..."
    and the other ranks' SIGTERM, which reads like the cause. The launcher names the file in
    TORCHELASTIC_ERROR_FILE and reads a plain-string message as is."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not error_file:
        return
    try:
        with open(error_file, "w") as handle:
            json.dump({"message": message, "timestamp": str(int(time.time()))}, handle)
    except OSError:
        pass  # the message is on stderr already


def out_of_memory_message(config, detail: str) -> str:
    from blueberry_video.training.cuda_allocator import allocator_setting

    options = []
    if not config.expandable_segments and allocator_setting() is None:
        # Costs nothing; on an 80 GB H100 it alone made 177-frame HunyuanVideo fit.
        options.append("--expandable_segments (the default, turned off here: the allocator loses less memory to "
                       "fragmentation)")
    if not config.gradient_checkpointing:
        options.append("--gradient_checkpointing (recompute activations: the biggest saving)")
    elif config.gradient_checkpointing_ratio < 1:
        options.append(f"a higher --gradient_checkpointing_ratio (now {config.gradient_checkpointing_ratio}; 1 "
                       "recomputes every block)")
    if not config.use_8bit_adam:
        options.append("--use_8bit_adam (8-bit optimizer states, needs bitsandbytes)")
    if config.training_mode == "full":
        options.append("--training_mode lora (train an adapter instead of every weight)")
    elif not config.layerwise_casting:
        options.append("--layerwise_casting (frozen weights stored in float8: about half their memory; not with FSDP "
                       "or ZeRO-3)")
    options.append(f"fewer frames or pixels: --max_num_frames {config.max_num_frames} / "
                   f"--height {config.height} --width {config.width}")
    if config.train_batch_size > 1:
        options.append(f"--train_batch_size 1 with --gradient_accumulation_steps {config.train_batch_size}")
    options.append("shard or offload across GPUs: accelerate launch --config_file "
                   "accelerate_configs/deepspeed_zero2_offload.yaml (or a ZeRO-3 / FSDP config)")
    lines = "\n".join(f"  - {option}" for option in options)
    return (f"out of GPU memory ({detail}). Options for this run, most effective first:\n{lines}\n"
            f"Try settings without a GPU first: blueberry-video estimate-memory "
            f"--config <your config> [flags] --budget-gib <GPU memory in GiB>")
