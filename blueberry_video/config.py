"""Training configuration: one typed dataclass, read from YAML and overridden by command-line flags.

Flag and key names follow diffusers' `examples/cogvideo/train_cogvideox_lora.py` where the concept is
the same, so a command written for that script mostly works here. Unknown keys and flags are errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import re
import sys
import types
import warnings
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from blueberry_video.errors import ConfigError, SettingWarning
from blueberry_video.foreign_flags import INSTEAD, instead_hint
from blueberry_video.training.trackers import trackers_to_start


def checkpoint_folder(output_dir, resume_from_checkpoint: str) -> Path:
    """The checkpoint `--resume_from_checkpoint` names: a path, or (as in diffusers' examples) a checkpoint-N
    folder of output_dir."""
    given = Path(resume_from_checkpoint)
    if given.is_dir() or given.is_absolute():
        return given
    return Path(output_dir) / given


def _opt(default, help: str, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    # model
    pretrained_model_name_or_path: str | None = _opt(None, "local model directory in the diffusers layout")
    training_mode: str = _opt("lora", "train a LoRA adapter or the full transformer", ["lora", "full"])
    # data
    instance_data_root: str | None = _opt(None, "dataset folder: videos plus metadata.json/.jsonl/.csv or prompts.txt+videos.txt")
    caption_column: str | None = _opt(None, "caption column (or prompts file name for the .txt layout)")
    video_column: str | None = _opt(None, "video column (or videos file name for the .txt layout)")
    id_token: str | None = _opt(None, "token prefixed to every caption")
    height: int = _opt(480, "frame height in pixels")
    width: int = _opt(720, "frame width in pixels")
    max_num_frames: int = _opt(49, "frames per training clip")
    fps: float | None = _opt(None, "sample source frames at this rate (None: consecutive frames)")
    spread_frames: bool = _opt(False, "spread each clip over its whole video (between the skipped frames): every "
                               "n-th frame, n as large as fits max_num_frames, as diffusers' CogVideoX script does; "
                               "a clip's speed then depends on its video's length (not with fps)")
    skip_frames_start: int = _opt(0, "source frames skipped at the start of each video")
    skip_frames_end: int = _opt(0, "source frames skipped at the end of each video")
    crop: str = _opt("center", "how frames are cropped to height x width (random: one crop per video, drawn when "
                     "the latent cache is built, not per epoch)", ["center", "random"])
    short_video: str = _opt("skip", "videos with too few frames: skip them, loop them, or pad with the last frame", ["skip", "loop", "pad"])
    dataset_repeats: int = _opt(1, "times each video is repeated per epoch")
    cache_dir: str | None = _opt(None, "latent cache folder (default: <instance_data_root>/.latent_cache)")
    cache_dtype: str = _opt("float32", "dtype latents and text embeddings are stored in", ["float32", "float16"])
    vae_tiling: bool = _opt(False, "VAE works tile by tile: the cache encode and the validation decode (less memory, a little slower)")
    strict_data: bool = _opt(False, "refuse to train if any video or caption is unusable (default: False, skip it)")
    dummy_data: bool = _opt(False, "train on random latents of the right shapes: no videos, no cache (hardware/loop check)")
    num_dummy_samples: int = _opt(8, "size of the dummy dataset")
    dataloader_num_workers: int = _opt(0, "DataLoader worker processes")
    # LoRA
    rank: int = _opt(128, "LoRA rank")
    lora_alpha: float = _opt(128, "LoRA alpha (the update is scaled by lora_alpha / rank)")
    lora_dropout: float = _opt(0.0, "dropout on the LoRA branch")
    lora_target_modules: list | None = _opt(None, "module names LoRA adapts, comma-separated on the command line "
                                            "(default: the family's attention projections)")
    init_lora_weights: str | None = _opt(None, "start from an existing LoRA (.safetensors file or folder)")
    # precision and memory
    mixed_precision: str = _opt("bf16", "autocast precision; frozen weights are stored in it", ["no", "fp16", "bf16"])
    gradient_checkpointing: bool = _opt(False, "recompute activations in the backward pass to save memory")
    gradient_checkpointing_ratio: float = _opt(1.0, "share of the transformer blocks that recompute under "
                                               "gradient_checkpointing (the first ones; the rest keep their "
                                               "activations: faster, more memory; estimate-memory "
                                               "--min-checkpointing finds the lowest that fits)")
    allow_tf32: bool = _opt(False, "allow TF32 matmuls on Ampere and newer GPUs")
    nccl_timeout: int = _opt(1800, "seconds a process waits for the others in a collective before the run is "
                                   "stopped (torch's NCCL default is 600, as in cogvideox-factory: the main process alone "
                                   "writes checkpoints and the export, which for a large full fine-tune on slow "
                                   "storage takes longer)")
    expandable_segments: bool = _opt(True, "CUDA allocator grows segments in place (PYTORCH_CUDA_ALLOC_CONF="
                                     "expandable_segments:True): less memory lost to fragmentation; a "
                                     "PYTORCH_CUDA_ALLOC_CONF you set yourself wins")
    layerwise_casting: bool = _opt(False, "LoRA only: store frozen transformer weights in float8, upcast layer by layer to compute (about half their memory)")
    compile: bool = _opt(False, "torch.compile each transformer block (slow first steps, faster after)")
    attention_backend: str = _opt("native", "diffusers attention backend (HunyuanVideo): native lets torch SDPA pick; "
                                  "_native_cudnn, _native_efficient, flash_varlen (flash-attn), xformers, ...")
    # optimisation
    optimizer: str = _opt("adamw", "optimizer", ["adamw", "adam"])
    use_8bit_adam: bool = _opt(False, "8-bit AdamW from bitsandbytes")
    learning_rate: float = _opt(1e-4, "peak learning rate")
    scale_lr: bool = _opt(False, "multiply the learning rate by batch size x accumulation x processes")
    lr_scheduler: str = _opt("constant", "schedule from diffusers.optimization.get_scheduler", ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"])
    lr_warmup_steps: int = _opt(0, "warm-up steps")
    lr_num_cycles: int = _opt(1, "cycles for cosine_with_restarts")
    lr_power: float = _opt(1.0, "power for polynomial")
    adam_beta1: float = _opt(0.9, "Adam beta1")
    adam_beta2: float = _opt(0.95, "Adam beta2")
    adam_weight_decay: float = _opt(1e-4, "weight decay")
    adam_epsilon: float = _opt(1e-8, "Adam epsilon")
    max_grad_norm: float = _opt(1.0, "gradient clipping norm (0: off)")
    train_batch_size: int = _opt(1, "clips per process per micro-batch")
    gradient_accumulation_steps: int = _opt(1, "micro-batches per optimizer step")
    max_train_steps: int | None = _opt(None, "optimizer steps (overrides num_train_epochs)")
    num_train_epochs: int = _opt(1, "epochs, when max_train_steps is not set")
    seed: int = _opt(42, "seed for data order, noise and timesteps; validation video j of each prompt is "
                         "rendered from seed + j")
    max_consecutive_bad_steps: int = _opt(5, "stop after this many non-finite losses/gradients in a row")
    # flow-matching families (HunyuanVideo): how training noise levels are drawn
    weighting_scheme: str = _opt("logit_normal", "density of training noise levels (flow matching)", ["uniform", "logit_normal", "mode"])
    logit_mean: float = _opt(0.0, "mean of the logit-normal density")
    logit_std: float = _opt(1.0, "std of the logit-normal density")
    mode_scale: float = _opt(1.29, "scale of the 'mode' density")
    flow_shift: float | None = _opt(None, "sigma shift (default: the model scheduler's `shift`)")
    flow_guidance_scale: float = _opt(1.0, "guidance-embedding value during training (guidance-distilled HunyuanVideo)")
    # checkpoints
    output_dir: str = _opt("outputs/run", "where checkpoints, weights, videos and logs go")
    overwrite_output_dir: bool = _opt(False, "start a new run in a non-empty output_dir: first remove what an earlier run wrote there (checkpoint-*, metrics.jsonl, logs/, validation/, weights, plots, model card, config.yaml, run_info.json); other files stay")
    checkpointing_steps: int = _opt(500, "save a resumable checkpoint every N steps (0: only at the end)")
    checkpoints_total_limit: int | None = _opt(None, "keep only the newest N checkpoints")
    resume_from_checkpoint: str | None = _opt(None, "'latest' or a checkpoint folder")
    # validation and logging
    validation_prompt: list | None = _opt(None, "prompts for validation videos (on the command line, separate with ':::')")
    validation_steps: int | None = _opt(None, "validate every N steps")
    validation_epochs: int | None = _opt(None, "validate every N epochs")
    num_validation_videos: int = _opt(1, "videos per validation prompt")
    num_inference_steps: int = _opt(50, "denoising steps for validation videos")
    guidance_scale: float = _opt(6.0, "classifier-free guidance scale for validation videos")
    validation_fps: float | None = _opt(None, "frame rate of the saved validation .mp4 files (default: fps, the rate "
                                              "training clips were sampled at, so motion plays at its speed; else the "
                                              "model family's usual: 8 for CogVideoX, 15 for HunyuanVideo)")
    report_to: str = _opt("none", "trackers (all: tensorboard and wandb, those installed)",
                          ["none", "tensorboard", "wandb", "all"])
    tracker_project_name: str = _opt("blueberry-video", "tracker project/run group name")
    logging_steps: int = _opt(1, "log metrics every N steps")

    def resolved_validation_fps(self, family) -> float:
        return self.validation_fps or self.fps or family.usual_video.fps

    @property
    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir)
        if self.instance_data_root:
            return Path(self.instance_data_root) / ".latent_cache"
        return Path(self.output_dir) / "latent_cache"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _base_type(annotation):
    hint = typing.get_type_hints(TrainConfig)[annotation]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return args[0]
    return hint


def _suggest(name) -> str:
    close = difflib.get_close_matches(str(name), FIELDS, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def nearest_flag_hint(flag: str, known) -> str:
    """` (did you mean --x?)` for the known flag nearest `flag`, dashes and underscores taken as the same (the
    blueberry-video verbs' own flags have dashes, the training settings underscores); "" when none is near."""
    spelled = {option.replace("_", "-"): option for option in known}
    close = difflib.get_close_matches(flag.replace("_", "-"), spelled, n=1, cutoff=0.7)
    return f" (did you mean {spelled[close[0]]}?)" if close else ""


def training_flags() -> list[str]:
    """Every flag parse_config takes."""
    return ["--config", *(f"--{name}" for name in FIELDS),
            *(f"--no-{name}" for name in FIELDS if _base_type(name) is bool)]  # only on/off settings have --no-


KIND_IN_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}


def _coerce(name: str, value, source: str):
    """Check a YAML value's type against the field's, converting ints to floats where a float is wanted."""
    kind = _base_type(name)
    if value is None:
        # `height:` with nothing after it reads as None; only settings that may be unset accept that.
        if type(None) in typing.get_args(typing.get_type_hints(TrainConfig)[name]):
            return None
        raise ConfigError(f"{source}: {name} has no value; give {KIND_IN_WORDS.get(kind, kind.__name__)} or remove the "
                          f"line to use the default ({FIELDS[name].default!r})")
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        # YAML 1.1 reads `1e-4` (no dot) as a string, and that is how learning rates are usually written.
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
    if kind is list:
        if isinstance(value, str):
            return [part.strip() for part in value.split(":::" if name == "validation_prompt" else ",") if part.strip()]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
    elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value.lower() if FIELDS[name].metadata["choices"] else value  # the choices are lower case
    # YAML 1.1 reads unquoted no/yes/off/on as booleans: `mixed_precision: no` arrives as False.
    hint = ""
    if kind is str and isinstance(value, bool):
        choices = FIELDS[name].metadata["choices"]
        hint = ("; YAML reads unquoted yes/no/on/off/true/false as a boolean: put the value in quotes"
                + (f", one of {', '.join(repr(c) for c in choices)}" if choices else ""))
    raise ConfigError(f"{source}: {name}={value!r} should be of type "
                      f"{'list of strings' if kind is list else kind.__name__}{hint}")


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of setting: value")
    # All of them at once, as unknown flags are: a run with each found by the one before is minutes per typo.
    if unknown := [f"{key!r}{instead_hint(f'--{key}') or _suggest(key)}" for key in data if key not in FIELDS]:
        raise ConfigError(f"{path}: unknown setting{'s' if len(unknown) > 1 else ''} {'; '.join(unknown)}")
    return {key: _coerce(key, value, str(path)) for key, value in data.items()}


# A flag's value that unsets a setting the YAML file set (`--max_train_steps none` to train by epochs).
UNSET = "none"
UNSET_WORDS = ("none", "null")


class _Unset:
    """What a flag's type returns for `none`: distinct from argparse's None, which means "flag not given"."""

    def __repr__(self):
        return UNSET


_UNSET_VALUE = _Unset()


def _may_be_unset(name: str) -> bool:
    return type(None) in typing.get_args(typing.get_type_hints(TrainConfig)[name])


def _flag_type(kind, may_be_unset: bool):
    if not may_be_unset:
        return kind

    def convert(text: str):
        return _UNSET_VALUE if text.lower() in UNSET_WORDS else kind(text)

    convert.__name__ = kind.__name__  # argparse names it in "invalid int value"
    return convert


def _lowercase(text: str) -> str:
    return text.lower()


_lowercase.__name__ = "str"  # argparse names it in "invalid str value"


class _SettingsParser(argparse.ArgumentParser):
    """A flag's bad value is reported as one line, like every other setting error, not after the 60-line usage
    summary argparse prints first."""

    def error(self, message):
        if found := re.match(r"argument (--[\w.]+)/--no-[\w.]+: ignored explicit argument (.*)", message):
            flag, value = found.group(1), found.group(2).strip("'")  # --gradient_checkpointing=true
            raise ConfigError(f"{flag}={value}: give on/off settings no value ({flag} turns it on, --no-{flag[2:]} "
                              f"off)")
        raise ConfigError(f"{message}; see --help")


def build_parser(description: str = "") -> argparse.ArgumentParser:
    parser = _SettingsParser(
        description=description, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"A setting whose default is None can be unset again by a flag: --NAME {UNSET} (e.g. --fps {UNSET} "
               f"for consecutive frames, --max_train_steps {UNSET} to train num_train_epochs).")
    parser.add_argument("--config", help="YAML file of settings; flags given here override it")
    for name, f in FIELDS.items():
        kind = _base_type(name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        # A help text that says what its default means already (a folder derived from another setting) says it once.
        said = "(default:" in f.metadata["help"]
        help_text = (f.metadata["help"] if said else f"{f.metadata['help']} (default: {default})").replace("%", "%%")
        if kind is bool:
            parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            # Choices are lower case, and so taken in any case: diffusers' README writes --optimizer Adam.
            flag_kind = _lowercase if f.metadata["choices"] else str if kind is list else kind
            parser.add_argument(f"--{name}", type=_flag_type(flag_kind, _may_be_unset(name)),
                                default=None, choices=f.metadata["choices"], help=help_text)
    return parser


def _stray_value_message(value: str, argv: list[str]) -> str:
    flags_before = [token for token in argv[:argv.index(value)] if token.startswith("--")]
    if flags_before and flags_before[-1] == "--lora_target_modules":
        return (f"unexpected value {value!r} on the command line: --lora_target_modules takes its module names "
                f"comma-separated, in one value (--lora_target_modules to_q,to_k,to_v,to_out.0)")
    return (f"unexpected value {value!r} on the command line: put a value with spaces in quotes "
            f"(--validation_prompt \"a red cat\"), and give on/off settings no value "
            f"(--gradient_checkpointing, --no-gradient_checkpointing)")


def _looks_like_a_flag(token: str) -> bool:
    """-x and --x, but not a negative number (the value of an unknown flag before it)."""
    try:
        float(token)
    except ValueError:
        return token.startswith("-")
    return False


def unknown_flags_message(flags: list[str], known, see: str = "--help", also: str | None = None,
                          foreign: dict[str, str] = INSTEAD) -> str:
    """Every unknown flag at once (one run per flag is slow to learn from), each with what to use instead where
    it is a flag of diffusers' or finetrainers' scripts, else the nearest spelling among `known`; and `also`, a bad
    value given with them (argparse stops at it), which would otherwise come one run later."""
    described = []
    for flag in dict.fromkeys(flags):
        described.append(f"{flag}{instead_hint(flag, foreign) or nearest_flag_hint(flag, known)}")
    said = f"unknown flag {described[0]}" if len(described) == 1 else \
        f"{len(described)} unknown flags: {'; '.join(described)}"
    return f"{said}{f'; and {also}' if also else ''}; see {see}"


def bad_value_message(argv: list[str]) -> str | None:
    """argparse's complaint about the value of a training flag in `argv` (`--optimizer prodigy`, `--rank abc`), with
    no "see --help"; None where the values are fine. Unknown flags are left to the caller."""
    try:
        build_parser().parse_known_args(argv)
    except ConfigError as error:
        return str(error).removesuffix("; see --help")
    return None


def config_file_in(argv: list[str]) -> str | None:
    """The --config file a command line names (parse_config has checked the line)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--config")
    return parser.parse_known_args(argv)[0].config


def parse_config(argv: list[str] | None = None, description: str = "", defaults: dict | None = None) -> TrainConfig:
    """Defaults < `defaults` (the recipe's) < YAML file < flags."""
    parser = build_parser(description)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, unknown = parser.parse_known_args(argv)
    except ConfigError:
        # argparse stops at the first bad value; unknown flags beside it (diffusers' `--optimizer prodigy
        # --push_to_hub`) are named with it.
        known = {"-h", "--help", *training_flags()}
        if flags := [token.split("=")[0] for token in argv if _looks_like_a_flag(token) and
                     token.split("=")[0] not in known]:
            raise ConfigError(unknown_flags_message(flags, training_flags(), also=bad_value_message(argv))) from None
        raise
    if unknown and not unknown[0].startswith("-"):
        raise ConfigError(_stray_value_message(unknown[0], argv))
    if flags := [token.split("=")[0] for token in unknown if _looks_like_a_flag(token)]:
        raise ConfigError(unknown_flags_message(flags, training_flags()))
    values = dict(defaults or {})
    if args.config:
        values.update(load_yaml(args.config))
    unset_by_flag = set()
    for name in FIELDS:
        value = getattr(args, name)
        if value is _UNSET_VALUE:
            values[name] = None
            unset_by_flag.add(name)
        elif value is not None:
            values[name] = _coerce(name, value, f"--{name}")
            if values[name] == []:  # `--validation_prompt ""` unsets the YAML's prompts as `none` does
                unset_by_flag.add(name)
    config = TrainConfig(**values)
    validate(config, unset_by_flag)
    return config


def _check_schedule_settings(config) -> None:
    """diffusers' get_scheduler drops what a schedule does not use, without a word: a warm-up asked of
    `constant` (a diffusers example command's defaults) would silently not happen."""
    if config.lr_warmup_steps and config.lr_scheduler == "constant":
        raise ConfigError(f"lr_warmup_steps={config.lr_warmup_steps} does nothing with lr_scheduler=constant: use "
                          "--lr_scheduler constant_with_warmup, or --lr_warmup_steps 0")
    if config.lr_num_cycles != 1 and config.lr_scheduler != "cosine_with_restarts":
        raise ConfigError(f"lr_num_cycles={config.lr_num_cycles} only applies to lr_scheduler=cosine_with_restarts "
                          f"(this run: {config.lr_scheduler}); choose that schedule, or drop lr_num_cycles")
    if config.lr_power != 1.0 and config.lr_scheduler != "polynomial":
        raise ConfigError(f"lr_power={config.lr_power} only applies to lr_scheduler=polynomial (this run: "
                          f"{config.lr_scheduler}); choose that schedule, or drop lr_power")


def validate(config: TrainConfig, unset_by_flag: set[str] = frozenset()) -> None:
    """Checks that need no model or data: types, ranges and combinations. `unset_by_flag`: the settings a flag set
    to none or empty (`--validation_prompt none` over a YAML's prompt is meant: its validation_steps are not warned
    about)."""
    if config.max_train_steps is not None and config.num_train_epochs != FIELDS["num_train_epochs"].default:
        warnings.warn(f"num_train_epochs={config.num_train_epochs} has no effect: max_train_steps="
                      f"{config.max_train_steps} sets the run's length (--max_train_steps none to train by epochs)",
                      SettingWarning, stacklevel=3)
    if not config.validation_prompt and "validation_prompt" not in unset_by_flag and (asked := [
            f"{name}={getattr(config, name)}" for name in (
            "validation_steps", "validation_epochs") if getattr(config, name)]):
        warnings.warn(f"{' and '.join(asked)} has no effect without validation_prompt: no validation videos are "
                      "rendered (--validation_prompt \"a prompt:::another\" to render them)", SettingWarning, stacklevel=3)
    if config.init_lora_weights and config.training_mode != "lora":
        raise ConfigError(f"init_lora_weights={config.init_lora_weights} only applies with training_mode=lora (a "
                          f"full fine-tune starts from the base model's weights): drop --init_lora_weights, or train "
                          f"--training_mode lora")
    if config.mixed_precision == "fp16":
        warnings.warn("mixed_precision=fp16: fp16 training of video transformers often produces NaN losses; "
                      "bf16 is the safe choice", SettingWarning, stacklevel=3)
    if spaced := [name for name in config.lora_target_modules or [] if len(name.split()) > 1]:
        raise ConfigError(f"lora_target_modules: {spaced[0]!r} is not a module name: separate the names with commas "
                          f"(to_q,to_k,to_v,to_out.0; in YAML, a list or one comma-separated string)")
    if config.nccl_timeout > 7 * 24 * 3600:  # torch's store takes milliseconds in a C++ integer
        raise ConfigError(f"nccl_timeout={config.nccl_timeout}: at most 604800 s (a week)")
    if sized := [prompt for prompt in config.validation_prompt or [] if "@@@" in prompt]:
        raise ConfigError(f"validation_prompt={sized[0]!r}: '@@@' (finetrainers' size suffix) would be read as part of "
                          f"the prompt; validation renders at the training shape (max_num_frames, height, width): "
                          f"leave out the @@@ and what follows")
    for name, f in FIELDS.items():
        choices = f.metadata["choices"]
        value = getattr(config, name)
        if choices and value not in choices:
            raise ConfigError(f"{name}={value!r}: choose one of {', '.join(choices)}")
    from diffusers.models.attention_dispatch import AttentionBackendName  # here: diffusers is slow to import

    backends = [backend.value for backend in AttentionBackendName]
    if config.attention_backend not in backends:
        close = difflib.get_close_matches(config.attention_backend, backends, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"attention_backend={config.attention_backend!r} is not a diffusers attention backend{hint}; "
                          f"choose one of {', '.join(backends)}")
    positive = ["height", "width", "max_num_frames", "train_batch_size", "gradient_accumulation_steps", "rank",
                "num_train_epochs", "dataset_repeats", "num_validation_videos", "num_inference_steps",
                "num_dummy_samples", "logging_steps", "max_consecutive_bad_steps", "nccl_timeout"]
    for name in positive:
        if getattr(config, name) < 1:
            raise ConfigError(f"{name}={getattr(config, name)}: must be at least 1")
    for name in ("max_train_steps", "validation_steps", "validation_epochs", "checkpoints_total_limit"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ConfigError(f"{name}={value}: must be at least 1, or left unset")
    if config.learning_rate <= 0:
        raise ConfigError(f"learning_rate={config.learning_rate}: must be positive, e.g. 1e-4 for LoRA")
    for name in ("checkpointing_steps", "lr_warmup_steps"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name}={getattr(config, name)}: must be >= 0")
    for name in ("max_grad_norm", "adam_weight_decay", "dataloader_num_workers", "skip_frames_start",
                 "skip_frames_end"):
        if getattr(config, name) < 0:  # a negative clipping norm would turn every gradient around
            raise ConfigError(f"{name}={getattr(config, name)}: must be >= 0")
    if config.lora_alpha <= 0:
        raise ConfigError(f"lora_alpha={config.lora_alpha}: must be positive (the update is scaled by lora_alpha / "
                          "rank; 0 would train nothing), e.g. equal to rank")
    if not 0 <= config.seed < 2**32:
        raise ConfigError(f"seed={config.seed}: must be in [0, 2**32)")
    _check_schedule_settings(config)
    for name in ("lora_dropout", "adam_beta1", "adam_beta2"):
        if not 0 <= getattr(config, name) < 1:
            raise ConfigError(f"{name}={getattr(config, name)}: must be in [0, 1)")
    if not 0 <= config.gradient_checkpointing_ratio <= 1:
        raise ConfigError(f"gradient_checkpointing_ratio={config.gradient_checkpointing_ratio}: must be in [0, 1] "
                          "(the share of transformer blocks that recompute their activations)")
    if config.gradient_checkpointing_ratio < 1 and not config.gradient_checkpointing:
        raise ConfigError(f"gradient_checkpointing_ratio={config.gradient_checkpointing_ratio} only applies with "
                          "gradient_checkpointing: add --gradient_checkpointing, or drop the ratio")
    if config.report_to != "none" and not trackers_to_start(config.report_to):
        # accelerate would only warn, and the run would log nowhere.
        wanted = "tensorboard or wandb" if config.report_to == "all" else config.report_to
        raise ConfigError(f"report_to={config.report_to}: the {wanted} package is not installed; "
                          f"pip install {wanted.replace(' or ', ' / ')}, or --report_to none")
    if config.validation_fps is not None and config.validation_fps <= 0:
        raise ConfigError(f"validation_fps={config.validation_fps}: must be positive, or unset to save at fps")
    if config.fps is not None and config.fps <= 0:
        raise ConfigError(f"fps={config.fps}: must be positive, or unset to take consecutive frames")
    if config.spread_frames and config.fps is not None:
        raise ConfigError(f"spread_frames and fps={config.fps:g} both choose which frames a clip takes (spread over "
                          f"the whole video, or at that rate): set one of them (--fps {UNSET} unsets fps, "
                          f"--no-spread_frames spread_frames)")
    if not config.pretrained_model_name_or_path:
        raise ConfigError("pretrained_model_name_or_path is required: a local model directory in the diffusers layout")
    if not config.dummy_data and not config.instance_data_root:
        raise ConfigError("instance_data_root is required (the dataset folder), unless dummy_data is set")
    if config.instance_data_root and not config.dummy_data and not Path(config.instance_data_root).is_dir():
        relative = "" if Path(config.instance_data_root).is_absolute() else f" (read from {Path.cwd()}, where the run starts)"
        raise ConfigError(f"instance_data_root={config.instance_data_root}: folder not found{relative}")
    if config.resume_from_checkpoint not in (None, "latest") and not checkpoint_folder(
            config.output_dir, config.resume_from_checkpoint).is_dir():
        raise ConfigError(f"resume_from_checkpoint={config.resume_from_checkpoint}: folder not found, neither as "
                          f"given nor in output_dir={config.output_dir}; use 'latest', a checkpoint-N folder of "
                          f"output_dir, or a checkpoint's path")
