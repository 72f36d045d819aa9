"""Experiment folders: a copy of `experiments/exp_template/` (question, hypothesis, method, config) per idea."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from blueberry_video.config import load_yaml
from blueberry_video.errors import ConfigError

# The template lives in the repository, next to the experiments made from it, not inside the package.
TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "experiments" / "exp_template"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_experiment_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name) or name == TEMPLATE_DIR.name:
        raise ConfigError(f"experiment name {name!r}: use up to 64 letters, digits, '-', '_' or '.', starting with a "
                          f"letter or digit (and not {TEMPLATE_DIR.name!r}), e.g. lr-sweep")


def new_experiment(name: str, base_dir: str | Path = "experiments", from_config: str | Path | None = None,
                   template: str | Path = TEMPLATE_DIR) -> Path:
    """Copy the template to `base_dir/name` with `{{name}}` filled in; `from_config` replaces its config.yaml."""
    check_experiment_name(name)
    template, target = Path(template), Path(base_dir) / name
    if not (template / "README.md").is_file():
        raise ConfigError(f"experiment template not found at {template}: new-experiment works in a clone of the "
                          f"repository with the package installed from it (pip install -e .)")
    if target.exists():
        raise ConfigError(f"{target} already exists: pick another experiment name, or delete that folder first")
    if from_config is not None:
        load_yaml(from_config)  # refuse a config the run would refuse, before anything is written
    shutil.copytree(template, target)
    for path in target.rglob("*"):
        if path.is_file() and path.suffix in (".md", ".yaml"):
            path.write_text(path.read_text(encoding="utf-8").replace("{{name}}", name), encoding="utf-8")
    if from_config is not None:
        shutil.copyfile(from_config, target / "config.yaml")
    return target
