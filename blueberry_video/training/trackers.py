"""Starting the trackers of --report_to: their files go under output_dir/logs with the run's other records, not
into the directory the job was started from, and a resumed run continues its wandb run instead of opening a
second one."""

from __future__ import annotations

import importlib.util
import secrets
from pathlib import Path

# The id of the run's wandb run, kept beside the tracker files so that a resume finds it (and
# --overwrite_output_dir, which removes logs/, forgets it).
WANDB_RUN_ID_FILE = "wandb_run_id"


def tracker_init_kwargs(config, logging_dir: Path, resuming: bool) -> dict:
    """`init_kwargs` for `Accelerator.init_trackers`; call on the main process only (it writes the run id)."""
    if config.report_to not in ("wandb", "all") or importlib.util.find_spec("wandb") is None:
        return {}
    logging_dir = Path(logging_dir)
    logging_dir.mkdir(parents=True, exist_ok=True)
    id_file = logging_dir / WANDB_RUN_ID_FILE
    if resuming and id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = secrets.token_hex(4)  # wandb run ids: letters and digits
        id_file.write_text(run_id + "\n")
    return {"wandb": {"dir": str(logging_dir), "id": run_id, "resume": "allow", "name": Path(config.output_dir).name}}
