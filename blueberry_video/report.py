"""Compare finished runs: a Markdown table of the settings that differ and the loss they reached, plus one plot."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from blueberry_video.errors import BlueberryError
from blueberry_video.training.records import MetricsLog, plot_losses

# Every run has its own output_dir; the table's first column already says which run a row is.
IGNORED_SETTINGS = ("output_dir",)
RESULT_COLUMNS = ("steps", "final loss", "min loss", "mean of last 10", "wall time")


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

    def results(self) -> dict[str, str]:
        finite = [loss for loss in self.losses if math.isfinite(loss)]
        last = self.losses[-10:]
        return {
            "steps": str(max((r["step"] for r in self.records), default=0)),
            "final loss": f"{self.losses[-1]:.4f}" if self.losses else "-",
            "min loss": f"{min(finite):.4f}" if finite else "-",
            "mean of last 10": f"{sum(last) / len(last):.4f}" if last else "-",
            # Step times include the validation and checkpoints in between; with logging_steps > 1 only
            # the logged steps are in metrics.jsonl, so this undercounts.
            "wall time": f"{sum(r.get('step_time', 0.0) for r in self.records):.1f} s",
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
    run_dir = Path(run_dir)
    for name in ("metrics.jsonl", "config.yaml"):
        if not (run_dir / name).is_file():
            raise RunRecordsError(f"{run_dir}: no {name}. Give the output_dir of a training run; a run writes "
                                  f"config.yaml when it starts and metrics.jsonl from its first logged step")
    return RunSummary(label or run_dir.name, run_dir, _read_run_settings(run_dir), MetricsLog(run_dir).read())


def _format(value) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "[]"
    return "-" if value is None else str(value).replace("|", "\\|")


@dataclass
class Report:
    runs: list[RunSummary]
    differing: list[str]  # setting names whose values are not the same in every run

    @property
    def table(self) -> str:
        header = ["run", *self.differing, *RESULT_COLUMNS]
        rows = []
        for run in self.runs:
            results = run.results()
            rows.append([run.label, *(_format(run.settings.get(name)) for name in self.differing),
                         *(results[column] for column in RESULT_COLUMNS)])
        lines = ["| " + " | ".join(row) + " |" for row in [header, ["---"] * len(header), *rows]]
        return "\n".join(lines)

    def save_plot(self, path: str | Path) -> Path:
        return plot_losses({run.label: run.records for run in self.runs}, path)

    def write_markdown(self, path: str | Path, plot: str | Path | None = None) -> Path:
        path = Path(path)
        note = ("Settings that are the same in every run are left out; each run's config.yaml has them all."
                if len(self.runs) > 1 else "")
        text = f"# Run comparison\n\n{self.table}\n\n{note}\n"
        if plot is not None:
            text += f"\n![training loss of every run]({Path(os.path.relpath(plot, path.parent)).as_posix()})\n"
        path.write_text(text)
        return path


def compare_runs(run_dirs: list[str | Path]) -> Report:
    """Read each run's records; runs are labelled by folder name, or by the path given where names repeat."""
    names = [Path(d).name for d in run_dirs]
    runs = [read_run(d, label=Path(d).name if names.count(Path(d).name) == 1 else str(d)) for d in run_dirs]
    keys = list(dict.fromkeys(key for run in runs for key in run.settings))
    differing = [key for key in keys if key not in IGNORED_SETTINGS
                 and len({json.dumps(run.settings.get(key), sort_keys=True) for run in runs}) > 1]
    return Report(runs, differing)
