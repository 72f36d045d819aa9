"""Model families (one module each) and the registry the recipes and CLI look them up in."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

from blueberry_video.errors import ConfigError, ModelLayoutError

# name -> "module:Class"; imported lazily so that one family's imports never slow down another's.
_FAMILIES = {
    "cogvideox": "blueberry_video.models.cogvideox:CogVideoXFamily",
    "hunyuan_video": "blueberry_video.models.hunyuan_video:HunyuanVideoFamily",
}

# What the CLI verbs assume when neither --family nor the model directory says.
DEFAULT_FAMILY = "cogvideox"


def family_names() -> list[str]:
    return sorted(_FAMILIES)


def get_family_class(name: str):
    if name not in _FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; choose one of {', '.join(family_names())}")
    module_name, class_name = _FAMILIES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_family(name: str, model_dir):
    return get_family_class(name)(model_dir)


def declared_transformer_class(model_dir) -> tuple[str, Path] | None:
    """(class name, file it is read from) of the transformer a diffusers model directory declares, or None where
    it declares none (a hand-made folder, or no folder at all)."""
    model_dir = Path(model_dir)
    for path, read in (
        (model_dir / "transformer" / "config.json", lambda config: config.get("_class_name")),
        # model_index.json names each component as [library, class].
        (model_dir / "model_index.json", lambda index: (index.get("transformer") or [None, None])[1]),
    ):
        if not path.is_file():
            continue
        try:
            class_name = read(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, IndexError, TypeError) as error:
            raise ModelLayoutError(f"{path}: not a diffusers config ({error}); re-save the model with "
                                   "`save_pretrained` or fix the file") from error
        if class_name:
            return class_name, path
    return None


def family_for_transformer_class(class_name: str) -> str | None:
    """The family whose transformer is `class_name`, or None if no family trains it."""
    for name in family_names():
        if get_family_class(name).transformer_class.__name__ == class_name:
            return name
    return None


def family_named_by_file(path) -> str | None:
    """The one family a file's name names (the shipped recipe configs are named after their model:
    hunyuan-video_lora.yaml is hunyuan_video's), else None."""
    squashed = re.sub(r"[-_]", "", Path(path).stem.lower())
    named = [name for name in family_names() if name.replace("_", "") in squashed]
    return named[0] if len(named) == 1 else None


def family_for_model_dir(model_dir, default: str = DEFAULT_FAMILY) -> str:
    """The family of the model in `model_dir`, from its transformer's class name; `default` where there is no
    folder or it names no class. A class no family trains is an error: guessing would train the wrong objective."""
    declared = declared_transformer_class(model_dir) if model_dir else None
    if declared is None:
        return default
    class_name, path = declared
    name = family_for_transformer_class(class_name)
    if name is None:
        trained = ", ".join(f"{get_family_class(n).transformer_class.__name__} ({n})" for n in family_names())
        raise ModelLayoutError(f"{path}: the transformer is a {class_name}, which no model family here trains "
                               f"(they train {trained}); point the model directory at one of those")
    return name
