"""Model families (one module each) and the registry the recipes and CLI look them up in."""

from __future__ import annotations

import importlib

from blueberry_video.errors import ConfigError

# name -> "module:Class"; imported lazily so that one family's imports never slow down another's.
_FAMILIES = {
    "cogvideox": "blueberry_video.models.cogvideox:CogVideoXFamily",
    "hunyuan_video": "blueberry_video.models.hunyuan_video:HunyuanVideoFamily",
}


def family_names() -> list[str]:
    return sorted(_FAMILIES)


def get_family_class(name: str):
    if name not in _FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; choose one of {', '.join(family_names())}")
    module_name, class_name = _FAMILIES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_family(name: str, model_dir):
    return get_family_class(name)(model_dir)
