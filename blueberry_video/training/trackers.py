"""Starting the trackers of --report_to, before the latent cache is built (a tracker that cannot start, such as
wandb without a login, fails in seconds, not after hours of encoding). Their files go under output_dir/logs with
the run's other records, not into the directory the job was started from, and a resumed run continues its wandb
run instead of opening a second one."""

from __future__ import annotations

import importlib.util
import inspect
import secrets
from pathlib import Path

from blueberry_video.errors import ConfigError

# The id of the run's wandb run, kept beside the tracker files so that a resume finds it (and
# --overwrite_output_dir, which removes logs/, forgets it).
WANDB_RUN_ID_FILE = "wandb_run_id"
# The trackers whose files and resume this module sets up, and the packages that provide each.
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}
SUPPORTED_TRACKERS = tuple(TRACKER_PACKAGES)


def trackers_to_start(report_to: str) -> list[str] | None:
    """`log_with` for the Accelerator. accelerate's own "all" starts every tracker package it finds installed
    (MLflow, Comet, Aim, ...), each writing where its defaults say, such as ./mlruns in the folder the job
    started from; ours means the trackers set up here. Only those installed: the config refuses an empty list."""
    if report_to == "none":
        return None
    names = SUPPORTED_TRACKERS if report_to == "all" else (report_to,)
    return [name for name in names if any(importlib.util.find_spec(package) for package in TRACKER_PACKAGES[name])]


def tracker_init_kwargs(config, logging_dir: Path, resume_step: int | None) -> dict:
    """`init_kwargs` for `Accelerator.init_trackers`; call on the main process only (it writes the run id).
    `resume_step`: the checkpoint's step when resuming, else None."""
    kwargs = {}
    if resume_step is not None:
        # The steps an interrupted attempt logged after its checkpoint are logged again: TensorBoard drops the
        # old ones, as metrics.jsonl does, instead of drawing both.
        kwargs["tensorboard"] = {"purge_step": resume_step + 1}
    if config.report_to not in ("wandb", "all") or importlib.util.find_spec("wandb") is None:
        return kwargs
    logging_dir = Path(logging_dir)
    logging_dir.mkdir(parents=True, exist_ok=True)
    id_file = logging_dir / WANDB_RUN_ID_FILE
    if resume_step is not None and id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = secrets.token_hex(4)  # wandb run ids: letters and digits
        id_file.write_text(run_id + "\n")
    kwargs["wandb"] = {"dir": str(logging_dir), "id": run_id, "resume": "allow", "name": Path(config.output_dir).name}
    return kwargs


def tracker_config(config, tracker_name: str) -> dict:
    """The run's settings as `tracker_name` records them: wandb takes unset ones as null and lists as lists (so its
    filters find them); TensorBoard's hparams take flat scalars only."""
    settings = config.to_dict()
    if tracker_name == "wandb":
        return settings
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in settings.items()}


def store_hparams_in_the_run_itself(writer, values: dict) -> None:
    """The settings as TensorBoard's hparams, written into the run's own folder. accelerate's
    store_init_configuration (and the writer's default) puts them in two time-named sub-folders, which TensorBoard
    lists as two more runs, without the losses; config.yaml already holds the hparams.yml accelerate would add."""
    # torch's SummaryWriter calls the sub-folder run_name, tensorboardX's name; "." is the run's own folder.
    keyword = "run_name" if "run_name" in inspect.signature(writer.add_hparams).parameters else "name"
    writer.add_hparams(values, metric_dict={}, **{keyword: "."})
    writer.flush()


def start_trackers(accelerator, config, resume_step: int | None) -> None:
    if config.report_to == "none":
        return
    main = accelerator.is_main_process
    init_kwargs = tracker_init_kwargs(config, accelerator.logging_dir, resume_step) if main else None
    try:
        accelerator.init_trackers(config.tracker_project_name, init_kwargs=init_kwargs)
        for tracker in accelerator.trackers:  # each in its own form, where accelerate gives all one dict
            if tracker.name == "tensorboard":
                store_hparams_in_the_run_itself(tracker.writer, tracker_config(config, tracker.name))
            else:
                tracker.store_init_configuration(tracker_config(config, tracker.name))
    except Exception as error:
        if type(error).__module__.startswith("wandb"):
            raise ConfigError(
                f"report_to={config.report_to}: wandb could not start a run ({error}). Log in first (`wandb login`, "
                f"or set WANDB_API_KEY), or log locally with WANDB_MODE=offline and `wandb sync` the run later "
                f"(its folder is under {accelerator.logging_dir}/wandb), or use --report_to tensorboard"
            ) from error
        raise
