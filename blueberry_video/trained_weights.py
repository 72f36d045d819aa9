"""What `generate --lora` and `--transformer` name, checked and resolved before the pipeline loads (seconds, where
loading real weights takes minutes): a path that is not there, a full fine-tune given as a LoRA or the reverse,
another family's or another model size's LoRA, and the training run the weights come from (its settings give
generation's defaults; a checkpoint-N adapter's rank and lora_alpha are in its run's config.yaml)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from accelerate import init_empty_weights
from accelerate.utils import SAFE_WEIGHTS_NAME
from safetensors import SafetensorError, safe_open

from blueberry_video.config import TrainConfig, load_yaml
from blueberry_video.errors import ConfigError, ModelLayoutError
from blueberry_video.models import family_names, get_family_class
from blueberry_video.training.checkpoints import LORA_FILE, STATE_FILE, checkpoint_steps
from blueberry_video.training.lora import LORA_FILE_NAMES
from blueberry_video.training.export import LORA_WEIGHTS
from blueberry_video.training.lora import lora_file_in_folder
from blueberry_video.training.records import RUN_CONFIG, RUN_INFO


@dataclass(frozen=True)
class TrainingRun:
    """A training run's output_dir, as generation reads it: its settings and the family it trained."""

    path: Path
    config: TrainConfig
    family: str | None

    @property
    def trained_video(self) -> dict:
        """The video settings the run trained (and saved validation videos) with; None where it set none."""
        return {"num_frames": self.config.max_num_frames, "height": self.config.height, "width": self.config.width,
                "fps": self.config.validation_fps or self.config.fps}


def find_run(path: Path) -> TrainingRun | None:
    """The run `path` belongs to: a run's output_dir, a file in it, its checkpoint-N folder, its transformer/, or a
    file in one of those; None for weights from elsewhere."""
    folder = path if path.is_dir() else path.parent
    candidates = [folder]
    checkpoint = re.fullmatch(r"checkpoint-(\d+)", folder.name)
    if folder.name == "transformer" or checkpoint:
        candidates.append(folder.parent)
    for run_dir in candidates:
        if (run_dir / RUN_INFO).is_file() and (run_dir / RUN_CONFIG).is_file():
            try:
                info = json.loads((run_dir / RUN_INFO).read_text())
                family, segments = info.get("family"), info.get("segments", [])
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
                raise ConfigError(f"{run_dir / RUN_INFO}: not a run's run_info.json ({error})") from error
            settings = load_yaml(run_dir / RUN_CONFIG)
            if checkpoint and run_dir != folder:
                settings = settings_at_step(settings, segments, int(checkpoint.group(1)))
            return TrainingRun(run_dir, TrainConfig(**settings), family)
    return None


def settings_at_step(settings: dict, segments: list[dict], step: int) -> dict:
    """The run's settings (config.yaml: those it continues with) as they were when it reached `step`: the changes
    of every resume from that step on undone, last first, as run_info.json records them."""
    settings = dict(settings)
    for segment in reversed(segments):
        if segment.get("from_step", 0) >= step:
            for name, (before, _) in segment.get("changed", {}).items():
                settings[name] = before
    return settings


@dataclass(frozen=True)
class LoraWeights:
    """The LoRA file `--lora` resolved to, and the run it comes from (None: from elsewhere)."""

    file: Path
    run: TrainingRun | None
    from_checkpoint: bool  # a checkpoint's adapter: peft's key names, its rank and lora_alpha in the run's config


def resolve_lora(family, given: str | Path) -> LoraWeights:
    """The LoRA file `--lora` names (a run's output_dir, a checkpoint-N folder, or a file), checked against the model
    from the run's records and the file's header, before any weight is read."""
    path = Path(given)
    if not path.exists():
        raise ConfigError(f"--lora {given}: no such file or folder (LoRAs are read from local paths); give a training "
                          f"run's output_dir, its {LORA_WEIGHTS}, or one of its checkpoint-N folders")
    file = lora_file_in(path) if path.is_dir() else path
    run = find_run(file)
    if run is not None and run.family and run.family != family.name:
        raise ConfigError(f"--lora {given}: a LoRA trained for {run.family} (from "
                          f"{run.config.pretrained_model_name_or_path}, says {run.path / RUN_INFO}), but --model "
                          f"{family.model_dir} is a {family.name} model; give --model the {run.family} base model it "
                          f"was trained from")
    layers, from_checkpoint = lora_layers(file)
    if from_checkpoint and run is None:
        raise ConfigError(f"--lora {file}: a training checkpoint's adapter, saved without its rank and lora_alpha: "
                          f"they are read from the run's {RUN_CONFIG} and {RUN_INFO}, not found in "
                          f"{file.parent.parent}; give the checkpoint inside its run's output_dir")
    check_lora_fits(family, file, layers)
    return LoraWeights(file, run, from_checkpoint)


def earlier_export_note(exported: Path) -> str | None:
    """A line for weights exported at a run's finish (its LoRA file or transformer/) that a later checkpoint of the
    same run postdates: the run was resumed past its finish and has not finished again, so they are the earlier
    finish's weights. None otherwise (weights elsewhere, a checkpoint's, or the latest)."""
    run_dir = exported.parent
    if exported.name not in (LORA_WEIGHTS, "transformer") or not (run_dir / RUN_INFO).is_file():
        return None
    checkpoints = checkpoint_steps(run_dir)
    # A finish saves its last checkpoint before it exports: a newer checkpoint comes from a later attempt.
    if not checkpoints or (checkpoints[-1][1] / STATE_FILE).stat().st_mtime <= exported.stat().st_mtime:
        return None
    step, latest = checkpoints[-1]
    flag = "--lora" if exported.name == LORA_WEIGHTS else "--transformer"
    return (f"{exported} is older than {latest.name}: the run was resumed past its finish and has not finished "
            f"again, so these are the earlier finish's weights; step {step}'s: {flag} {latest}")


def lora_file_in(folder: Path) -> Path:
    """The exported LoRA of a run's output_dir, or the adapter of one of its checkpoint-N folders."""
    if (found := lora_file_in_folder(folder)) is not None:
        return found
    if (folder / "model_index.json").is_file():
        raise ConfigError(f"--lora {folder}: this is a whole pipeline (model_index.json), not a LoRA; give it as "
                          f"--model")
    if (folder / "transformer").is_dir() or (folder / "config.json").is_file():
        raise ConfigError(f"--lora {folder}: this is a full fine-tune (a whole transformer, no {LORA_WEIGHTS}); use "
                          f"--transformer {folder}")
    if (folder / STATE_FILE).is_file() and (folder / SAFE_WEIGHTS_NAME).is_file():
        raise ConfigError(f"--lora {folder}: this is a full fine-tune's checkpoint (the whole transformer, no "
                          f"{LORA_FILE}); use --transformer {folder}")
    if (folder / STATE_FILE).is_file():
        raise ConfigError(f"--lora {folder}: this checkpoint holds no {LORA_FILE}: it was saved under DeepSpeed or "
                          f"FSDP, whose engines write the model in their own format; generate from the run's final "
                          f"output: --lora or --transformer {folder.parent}")
    if checkpoints := checkpoint_steps(folder):
        raise ConfigError(f"--lora {folder}: no {LORA_WEIGHTS} (the run has not finished, or stopped early); give one "
                          f"of its checkpoints, e.g. --lora {checkpoints[-1][1]}")
    raise ConfigError(f"--lora {folder}: no {LORA_WEIGHTS} in it; give a training run's "
                      f"output_dir, a checkpoint-N folder or a LoRA .safetensors file")


def lora_layers(file: Path) -> tuple[dict[str, list[int]], bool]:
    """({adapted layer: its lora_A's shape}, whether the keys are peft's own, as training checkpoints save them),
    from the file's header. Formats of other trainers give no layers: diffusers converts those it knows."""
    if file.suffix != ".safetensors":
        return {}, False
    try:
        with safe_open(file, framework="pt") as weights:
            shapes = {name: weights.get_slice(name).get_shape() for name in weights.keys()}
    except (SafetensorError, OSError) as error:
        raise ConfigError(f"--lora {file}: not a readable .safetensors file ({error})") from error
    if not any("lora" in name for name in shapes):
        raise ConfigError(f"--lora {file}: it holds no LoRA weights (no lora_A/lora_B tensors); a full fine-tune's "
                          f"transformer is given as --transformer DIR")
    exported = {name.removeprefix("transformer."): shape for name, shape in shapes.items()
                if name.startswith("transformer.")}
    from_checkpoint = not exported and any(".lora_A." in name for name in shapes)
    layers = {name.split(".lora_A.")[0]: shape for name, shape in (exported or shapes).items() if ".lora_A." in name}
    return (layers if exported or from_checkpoint else {}), from_checkpoint


def check_lora_fits(family, file: Path, layers: dict[str, list[int]]) -> None:
    """Every layer the LoRA adapts is in this model's transformer and has the input size its lora_A was trained on
    (diffusers would fail on another family's LoRA only after loading the pipeline)."""
    if not layers:
        return
    modules = dict(transformer_layout(family.transformer_class, family.transformer_config).named_modules())
    foreign = sorted(name for name in layers if name not in modules)
    if foreign:
        owner = family_with_layers(foreign)
        whose = (f"a LoRA for a larger {family.name} model (more blocks)" if owner == family.name
                 else f"a LoRA for {owner}" if owner else "a LoRA for another model")
        raise ConfigError(f"--lora {file}: it adapts layers this {family.name} model does not have ({foreign[0]}; "
                          f"{len(foreign)} of {len(layers)}): {whose}; give --model the base model it was trained from")
    for name, shape in sorted(layers.items()):
        in_features = getattr(modules[name], "in_features", None)
        if in_features is not None and len(shape) == 2 and shape[1] != in_features:
            raise ConfigError(f"--lora {file}: its {name} was trained on {shape[1]} input features, this model's has "
                              f"{in_features}: a LoRA for another size of {family.name} model; give --model the base "
                              f"model it was trained from")


def transformer_layout(transformer_class, config: dict | None = None):
    """The transformer's modules on the meta device (no memory, no weights); the class's default size without
    `config`."""
    with init_empty_weights():
        return transformer_class.from_config(config) if config else transformer_class()


def family_with_layers(layer_names) -> str | None:
    """The family whose transformer has layers of these names, block numbers aside."""
    def shape_of(name):
        return re.sub(r"(?<=\.)\d+(?=\.|$)", "N", name)

    wanted = {shape_of(name) for name in layer_names}
    for name in family_names():
        layout = transformer_layout(get_family_class(name).transformer_class)
        if wanted <= {shape_of(module) for module, _ in layout.named_modules()}:
            return name
    return None


def resolve_transformer(family, given: str | Path) -> Path:
    """The folder of the fine-tuned transformer `--transformer` names (a full fine-tune's output_dir, its
    transformer/ or one of its checkpoint-N folders), checked before any weight is read."""
    path = Path(given)
    if not path.exists():
        raise ModelLayoutError(f"--transformer {given}: no such folder; give a full fine-tune's output_dir or its "
                               f"transformer/")
    folder = path / "transformer" if (path / "transformer").is_dir() else path
    if path.suffix == ".safetensors" or any((folder / name).is_file() for name in LORA_FILE_NAMES):
        raise ModelLayoutError(f"--transformer {given}: this is a LoRA, not a full fine-tune; use --lora {given}")
    if (path / STATE_FILE).is_file():
        # accelerate's saved state: one process's (DDP included) holds the whole model in one file, which
        # generate reads with the base model's transformer config; DeepSpeed and FSDP shard it their own way.
        if not (path / SAFE_WEIGHTS_NAME).is_file():
            raise ModelLayoutError(f"--transformer {given}: a full fine-tune's checkpoint saved sharded (DeepSpeed or "
                                   f"FSDP), which generate does not read; give the run's output_dir once the run "
                                   f"finishes (its transformer/ is exported then), or resume the run from this "
                                   f"checkpoint to a finish")
        return path
    if folder == path and not (folder / "config.json").is_file() and (checkpoints := checkpoint_steps(path)):
        raise ModelLayoutError(f"--transformer {given}: the run has not finished, so it has no transformer/ yet; "
                               f"give one of its checkpoints, e.g. --transformer {checkpoints[-1][1]}")
    check_transformer_folder(family, folder)
    return folder


def check_transformer_folder(family, folder: Path) -> None:
    """A fine-tuned transformer of another family would fail deep in diffusers' loading, or load with warnings."""
    config = folder / "config.json"
    if not config.is_file():
        raise ModelLayoutError(f"--transformer {folder}: no config.json; give the run's output_dir or its transformer/")
    found = json.loads(config.read_text()).get("_class_name")
    if found and found != family.transformer_class.__name__:
        raise ModelLayoutError(f"{config}: the transformer is a {found}, but {family.name} needs a "
                               f"{family.transformer_class.__name__}; give --model the base model it was trained from")
