"""Experiment folders: a copy of `experiments/exp_template/` (question, hypothesis, method, config) per idea."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from blueberry_video.config import load_yaml
from blueberry_video.errors import ConfigError
from blueberry_video.models import family_for_model_dir, family_names

# The template lives in the repository, next to the experiments made from it, not inside the package.
TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "experiments" / "exp_template"
TEMPLATE_FAMILY = "cogvideox"  # the template's config trains the CogVideoX demo
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
OUTPUT_DIR_LINE = re.compile(r"^output_dir:.*$", re.MULTILINE)


def check_experiment_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name) or name == TEMPLATE_DIR.name:
        raise ConfigError(f"experiment name {name!r}: use up to 64 letters, digits, '-', '_' or '.', starting with a "
                          f"letter or digit (and not {TEMPLATE_DIR.name!r}), e.g. lr-sweep")


def config_family(config_path: Path, settings: dict) -> str:
    """The model family a config trains: its model folder's, else the one its file name names (the shipped
    recipe configs are named after their model: hunyuan-video_lora.yaml)."""
    model = settings.get("pretrained_model_name_or_path")
    if model and Path(model).is_dir():
        return family_for_model_dir(model)
    squashed = re.sub(r"[-_]", "", config_path.stem.lower())
    named = [name for name in family_names() if name.replace("_", "") in squashed]
    if len(named) != 1:
        raise ConfigError(f"{config_path}: cannot tell which model family it trains (it names no model folder "
                          f"here, and its file name names {'no' if not named else 'more than one'} family): pass "
                          f"--family ({', '.join(family_names())})")
    return named[0]


def new_experiment(name: str, base_dir: str | Path = "experiments", from_config: str | Path | None = None,
                   template: str | Path = TEMPLATE_DIR, family: str | None = None) -> Path:
    """Copy the template to `base_dir/name` with `{{name}}`, `{{family}}` and `{{recipe}}` filled in;
    `from_config` replaces its config.yaml, with output_dir set to the experiment's own outputs/<name>."""
    check_experiment_name(name)
    template, target = Path(template), Path(base_dir) / name
    if not (template / "README.md").is_file():
        raise ConfigError(f"experiment template not found at {template}: new-experiment works in a clone of the "
                          f"repository with the package installed from it (pip install -e .)")
    if target.exists():
        raise ConfigError(f"{target} already exists: pick another experiment name, or delete that folder first")
    config_text = None
    if from_config is not None:
        from_config = Path(from_config)
        settings = load_yaml(from_config)  # refuse a config the run would refuse, before anything is written
        family = family or config_family(from_config, settings)
        config_text = from_config.read_text(encoding="utf-8")
    elif family not in (None, TEMPLATE_FAMILY):
        config_text = _demo_config_text(family)
    family = family or TEMPLATE_FAMILY
    shutil.copytree(template, target)
    fills = {"{{name}}": name, "{{family}}": family, "{{recipe}}": f"recipes/train_{family}.py"}
    for path in target.rglob("*"):
        if path.is_file() and path.suffix in (".md", ".yaml"):
            text = path.read_text(encoding="utf-8")
            for placeholder, value in fills.items():
                text = text.replace(placeholder, value)
            path.write_text(text, encoding="utf-8")
    if config_text is not None:
        (target / "config.yaml").write_text(_with_own_output_dir(config_text, name), encoding="utf-8")
    return target


def _demo_config_text(family: str) -> str:
    """The template's config trains the CogVideoX demo; another family starts from its own demo's config,
    pointed at the tiny model and videos `blueberry-video demo --family NAME` builds."""
    from blueberry_video.demo import demo_config_path

    return (f"# Experiment config from the {family} demo's: the tiny model and sample videos that\n"
            f"# `blueberry-video demo --family {family}` builds (once). Point the two paths below at your model and\n"
            f"# data for a real run; recipes/configs/ holds the full-size configs.\n"
            f"pretrained_model_name_or_path: .blueberry/demo/tiny-{family}\n"
            "instance_data_root: .blueberry/demo/sample-videos\n\n" + _without_leading_comments(
                demo_config_path(family).read_text()))


def _without_leading_comments(text: str) -> str:
    """The demo config's own header speaks of the demo filling in the paths, which the experiment's config sets."""
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


def _with_own_output_dir(config_text: str, name: str) -> str:
    """Two experiments started from one config must not write into the same folder."""
    line = f"output_dir: outputs/{name}"
    if OUTPUT_DIR_LINE.search(config_text):
        return OUTPUT_DIR_LINE.sub(line, config_text, count=1)
    return config_text.rstrip("\n") + f"\n{line}\n"
