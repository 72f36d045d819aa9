"""Compare runs: a Markdown table of whether each finished, the settings that differ and the loss they reached,
plus one plot."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from blueberry_video.config import checkpoint_folder
from blueberry_video.errors import BlueberryError
from blueberry_video.training.checkpoints import checkpoint_steps
from blueberry_video.training.records import BOOKKEEPING_SETTINGS, MetricsLog, plot_losses, seconds_of

# Where a run keeps its files and logs and how it was started or continued, not what it trained: every run has its
# own output_dir (the first column says which run a row is), and the status column says which run continued which.
IGNORED_SETTINGS = (*BOOKKEEPING_SETTINGS, "checkpoints_total_limit", "cache_dir", "report_to",
                    "tracker_project_name")
FINISHED = "finished"
RESULT_COLUMNS = ("steps", "final loss", "min loss", "mean of last 10", "training time")


class RunRecordsError(BlueberryError, FileNotFoundError):
    """A folder given as a run lacks the records a training run writes."""


@dataclass
class RunSummary:
    label: str
    path: Path
    settings: dict  # config.yaml plus run_info.json's family, processes, git commit and versions
    records: list[dict]  # metrics.jsonl

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.records if "loss" in r]

    @property
    def finished(self) -> bool:
        """The run wrote final_metrics.json (after its weights) at its last logged step: not stopped since, by a
        resume to more steps that did not finish."""
        final = self.path / "final_metrics.json"
        last_step = max((r["step"] for r in self.records), default=0)
        return final.is_file() and json.loads(final.read_text()).get("steps", 0) >= last_step

    @property
    def resumed_from(self) -> Path | None:
        """The checkpoint in another output_dir that this run continued (`--resume_from_checkpoint PATH`)."""
        value = self.settings.get("resume_from_checkpoint")
        if value in (None, "latest"):
            return None
        path = checkpoint_folder(self.path, value)
        return None if path.parent.resolve() == self.path.resolve() else path

    def results(self) -> dict[str, str]:
        finite = [loss for loss in self.losses if math.isfinite(loss)]
        last = self.losses[-10:]
        return {
            "steps": str(max((r["step"] for r in self.records), default=0)),
            "final loss": f"{self.losses[-1]:.4f}" if self.losses else "-",
            "min loss": f"{min(finite):.4f}" if finite else "-",
            "mean of last 10": f"{sum(last) / len(last):.4f}" if last else "-",
            # Step times include the validation and checkpoints in between.
            "training time": f"{seconds_of(self.records):.1f} s",
        }


def _read_run_settings(run_dir: Path) -> dict:
    settings = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    info_path = run_dir / "run_info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        settings.update(family=info.get("family"), num_processes=info.get("num_processes"),
                        git_commit=(info.get("git_commit") or "")[:10] or None)
        settings.update({f"version {name}": version for name, version in info.get("versions", {}).items()})
    return settings


def read_run(run_dir: str | Path, label: str | None = None) -> RunSummary:
    """A run's records. One that stopped before its first logged step (no metrics.jsonl yet) has none: its row
    says so, and the other runs of a sweep are still compared."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise RunRecordsError(f"{run_dir}: a file; give the folder of the training run (its output_dir, "
                              f"{run_dir.parent})")
    if not run_dir.is_dir():
        raise RunRecordsError(f"{run_dir}: no such folder; give the output_dir of a training run")
    if not (run_dir / "config.yaml").is_file():
        raise RunRecordsError(f"{run_dir}: no config.yaml. Give the output_dir of a training run; a run writes "
                              f"config.yaml when it starts and metrics.jsonl from its first logged step")
    return RunSummary(label or run_dir.name, run_dir, _read_run_settings(run_dir), MetricsLog(run_dir).read())


def _format(value) -> str:
    if isinstance(value, list):
        # Prompts may hold commas: joined as the flags take them (--validation_prompt "a:::b").
        joiner = " ::: " if any(isinstance(v, str) for v in value) else ", "
        return _format(joiner.join(str(v) for v in value) or "[]")
    return "-" if value is None else str(value).replace("|", "\\|")


def run_statuses(runs: list[RunSummary]) -> list[str]:
    """Per run: finished, or the step it stopped at (SIGTERM, a time limit, a kill), and which of `runs`
    continued it in another output_dir or which checkpoint it continued itself."""
    by_dir = {run.path.resolve(): run for run in runs}
    statuses = []
    for run in runs:
        if run.finished:
            status = FINISHED
        elif found := checkpoint_steps(run.path):
            status = f"stopped at step {found[-1][0]}"
        elif not run.records:
            status = "no step logged (stopped before its first, or starting)"
        else:
            status = "stopped, no checkpoint"
        for other in runs:
            if other.resumed_from is not None and other.resumed_from.parent.resolve() == run.path.resolve():
                status += f", resumed in {other.label}"
        if run.resumed_from is not None:
            source = by_dir.get(run.resumed_from.parent.resolve())
            status += f", resumed from {f'{source.label}/{run.resumed_from.name}' if source else run.resumed_from}"
        statuses.append(status)
    return statuses


@dataclass
class Report:
    runs: list[RunSummary]
    differing: list[str]  # setting names whose values are not the same in every run
    statuses: list[str]  # run_statuses(runs)

    @property
    def table(self) -> str:
        header = ["run", "status", *self.differing, *RESULT_COLUMNS]
        rows = []
        for run, status in zip(self.runs, self.statuses):
            results = run.results()
            rows.append([run.label, _format(status), *(_format(run.settings.get(name)) for name in self.differing),
                         *(results[column] for column in RESULT_COLUMNS)])
        lines = ["| " + " | ".join(row) + " |" for row in [header, ["---"] * len(header), *rows]]
        return "\n".join(lines)

    def save_plot(self, path: str | Path) -> Path:
        return plot_losses({run.label if status == FINISHED else f"{run.label} ({status})": run.records
                            for run, status in zip(self.runs, self.statuses)}, path)

    def write_markdown(self, path: str | Path, plot: str | Path | None = None) -> Path:
        path = Path(path)
        notes = []
        if len(self.runs) > 1:
            notes.append("Settings that are the same in every run are left out; each run's config.yaml has them all.")
        if any(status != FINISHED for status in self.statuses):
            notes.append("A run stopped at step N (or still running) has no final weights: its losses end there. "
                         "`--resume_from_checkpoint latest` with the same output_dir continues it from checkpoint-N.")
        note = " ".join(notes)
        text = f"# Run comparison\n\n{self.table}\n\n{note}\n"
        if plot is not None:
            text += f"\n![training loss of every run]({Path(os.path.relpath(plot, path.parent)).as_posix()})\n"
        path.write_text(text)
        return path


def compare_runs(run_dirs: list[str | Path]) -> Report:
    """Read each run's records; runs are labelled by folder name, or by the path given where names repeat."""
    seen: dict[Path, str | Path] = {}
    for run_dir in run_dirs:
        if (same := seen.setdefault(Path(run_dir).resolve(), run_dir)) is not run_dir:
            raise RunRecordsError(f"{run_dir} and {same} are the same run folder: give each run once")
    names = [Path(d).name for d in run_dirs]
    runs = [read_run(d, label=Path(d).name if names.count(Path(d).name) == 1 else str(d)) for d in run_dirs]
    keys = list(dict.fromkeys(key for run in runs for key in run.settings))
    differing = [key for key in keys if key not in IGNORED_SETTINGS
                 and len({json.dumps(run.settings.get(key), sort_keys=True) for run in runs}) > 1]
    return Report(runs, differing, run_statuses(runs))
