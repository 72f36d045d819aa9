"""Experiment folders: a copy of `experiments/exp_template/` (question, hypothesis, method, config) per idea."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import yaml

from blueberry_video.config import FIELDS, load_yaml
from blueberry_video.errors import ConfigError
from blueberry_video.models import family_for_model_dir, family_named_by_file, family_names

# The template lives in the repository, next to the experiments made from it, not inside the package.
REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DIR = REPO_ROOT / "experiments" / "exp_template"
TEMPLATE_FAMILY = "cogvideox"  # the template's config trains the CogVideoX demo
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
OUTPUT_DIR_LINE = re.compile(r"^output_dir:.*$", re.MULTILINE)


def check_experiment_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name) or name == TEMPLATE_DIR.name:
        raise ConfigError(f"experiment name {name!r}: use up to 64 letters, digits, '-', '_' or '.', starting with a "
                          f"letter or digit (and not {TEMPLATE_DIR.name!r}), e.g. lr-sweep")


def named_family(config_path: Path, settings: dict) -> tuple[str, str] | None:
    """The model family a config says it trains, and what says so: its model folder's transformer class, else
    its file name (the shipped recipe configs are named after their model: hunyuan-video_lora.yaml)."""
    model = settings.get("pretrained_model_name_or_path")
    if model and Path(model).is_dir() and (family := family_for_model_dir(model, default=None)):
        return family, f"its model folder {model}"
    if family := family_named_by_file(config_path):
        return family, "its file name"
    return None


def command_path(folder: Path) -> str:
    """The experiment folder as its commands name it. They run from the repository root (they name recipes/ and
    the demo's .blueberry/), so relative to it where the folder lies inside, else absolute."""
    folder = folder.resolve()
    return shlex.quote(str(folder.relative_to(REPO_ROOT) if folder.is_relative_to(REPO_ROOT) else folder))


def new_experiment(name: str, base_dir: str | Path = "experiments", from_config: str | Path | None = None,
                   template: str | Path = TEMPLATE_DIR, family: str | None = None) -> Path:
    """Copy the template to `base_dir/name` with its `{{placeholders}}` filled in; `from_config` (`--from`)
    replaces its config.yaml, with output_dir set to the experiment's own baseline run, outputs/<name>/baseline."""
    check_experiment_name(name)
    template, target = Path(template), Path(base_dir) / name
    if not (template / "README.md").is_file():
        raise ConfigError(f"experiment template not found at {template}: new-experiment works in a clone of the "
                          f"repository with the package installed from it (pip install -e .)")
    if target.exists():
        raise ConfigError(f"{target} already exists: pick another experiment name, or delete that folder first")
    if from_config is not None:
        family = _family_of(Path(from_config), family)
    family = family or TEMPLATE_FAMILY
    fills = {"{{name}}": name, "{{family}}": family, "{{recipe}}": f"recipes/train_{family}.py",
             "{{dir}}": command_path(target)}
    shutil.copytree(template, target)
    for path in target.rglob("*"):
        if path.is_file() and path.suffix in (".md", ".yaml"):
            text = path.read_text(encoding="utf-8")
            for placeholder, value in fills.items():
                text = text.replace(placeholder, value)
            path.write_text(text, encoding="utf-8")
    config = target / "config.yaml"
    if from_config is not None:
        config.write_text(_with_own_output_dir(Path(from_config).read_text(encoding="utf-8"), name), encoding="utf-8")
    elif family != TEMPLATE_FAMILY:
        header = _leading_comments(config.read_text(encoding="utf-8"))
        config.write_text(header + "\n" + _with_own_output_dir(_demo_settings(family), name), encoding="utf-8")
    return target


def _family_of(from_config: Path, family: str | None) -> str:
    """The family a `--from` config trains: the one it names, or --family where it names none; both, disagreeing,
    would train one model with settings chosen for the other."""
    if not from_config.is_file():
        raise ConfigError(f"--from {from_config}: file not found")
    # load_yaml refuses a config the run would refuse, before anything is written.
    named = named_family(from_config, load_yaml(from_config))
    if named is None and family is None:
        raise ConfigError(f"{from_config}: cannot tell which model family it trains (neither a model folder here nor "
                          f"its file name names one): pass --family ({', '.join(family_names())})")
    if named is not None and family not in (None, named[0]):
        raise ConfigError(f"--from {from_config} trains {named[0]} ({named[1]} says so), not --family {family}: leave "
                          f"out --family to train {named[0]}, or start from a {family} config (recipes/configs/)")
    return family or named[0]


def _demo_settings(family: str) -> str:
    """The template's config trains the CogVideoX demo; another family's is made here from its demo's settings,
    on the tiny model and videos `blueberry-video demo --family NAME` builds, with every other setting of
    blueberry_video/config.py commented out at its default, as the template lists them."""
    from blueberry_video.demo import demo_config_path

    settings = {"pretrained_model_name_or_path": f".blueberry/demo/tiny-{family}",
                "instance_data_root": ".blueberry/demo/sample-videos",
                **yaml.safe_load(demo_config_path(family).read_text())}  # as written there: lora_alpha 16, not 16.0
    lines = []
    for name, setting in FIELDS.items():
        if name in settings:
            lines.append(_yaml_line(name, settings[name]))
        elif name != "output_dir":  # the experiment's own, added after
            about = " | ".join(setting.metadata["choices"] or ()) or setting.metadata["help"]
            lines.append(f"# {_yaml_line(name, setting.default):<40} # {re.split(r' [(]|; ', about)[0]}")
    return "\n".join(lines) + "\n"


def _yaml_line(name: str, value) -> str:
    as_item = yaml.safe_dump([value], default_flow_style=True, width=1000).strip()  # [value], on one line
    return f"{name}: {as_item[1:-1]}"


def _leading_comments(text: str) -> str:
    """The template config's header: what the config is and the commands that run it."""
    lines = text.splitlines(keepends=True)
    return "".join(lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))])


def _with_own_output_dir(config_text: str, name: str) -> str:
    """Two experiments started from one config must not write into the same folder; the config's own run is the
    baseline its README's commands name."""
    line = f"output_dir: outputs/{name}/baseline"
    if OUTPUT_DIR_LINE.search(config_text):
        return OUTPUT_DIR_LINE.sub(line, config_text, count=1)
    return config_text.rstrip("\n") + f"\n{line}\n"
