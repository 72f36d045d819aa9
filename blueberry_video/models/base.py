"""The per-family interface: everything that differs between CogVideoX, HunyuanVideo, ... lives behind it.

The training loop, the latent cache, validation and export only talk to a `ModelFamily`.
Adding a family means one new module implementing this class and one entry in `models/__init__.py`'s `_FAMILIES`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from blueberry_video.errors import ConfigError, ModelLayoutError
from blueberry_video.file_digests import content_digest, sampled_digest
from blueberry_video.launch_rank import is_first_process


@dataclass
class Encoders:
    """The frozen parts used once, to build the latent cache: the VAE and the text encoder(s)."""

    vae: torch.nn.Module
    text_modules: dict[str, Any] = field(default_factory=dict)  # text_encoder, tokenizer, ... by pipeline name


@dataclass(frozen=True)
class PromptLengths:
    """How many tokens of one text encoder each prompt takes, counted as the pipeline counts them against
    its `limit`: the pipeline cuts longer prompts to the limit."""

    encoder: str  # as a message names it, e.g. "T5 text encoder"
    limit: int
    counts: list[int]


# The dtype each mixed_precision setting computes in (and stores frozen weights in, where it can).
PRECISION_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "no": torch.float32}


@dataclass(frozen=True)
class VideoSettings:
    num_frames: int
    height: int
    width: int
    fps: float


class ModelFamily(ABC):
    """How one model family loads, encodes, computes its training loss and builds its pipeline."""

    name: ClassVar[str]
    transformer_class: ClassVar[type]
    pipeline_class: ClassVar[type]
    # Sub-folders a model directory must have (diffusers layout).
    required_subfolders: ClassVar[tuple[str, ...]]
    # peft target modules used when the user names none: the attention projections.
    default_lora_target_modules: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")
    # Block class names, for FSDP auto-wrap and for `torch.compile` of blocks.
    block_class_names: ClassVar[tuple[str, ...]] = ()
    # Whether the transformer's attention goes through diffusers' attention dispatcher (so that
    # `attention_backend` reaches it), and whether it passes a mask there (not every backend takes one).
    uses_attention_dispatch: ClassVar[bool] = False
    attention_takes_mask: ClassVar[bool] = False
    # Whether the objective is flow matching, which reads the weighting_scheme / flow_shift settings.
    trains_with_flow_matching: ClassVar[bool] = False
    # The video `generate` makes without a training run to take its shape and frame rate from: the family's
    # published models' usual.
    usual_video: ClassVar[VideoSettings]

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        self.check_layout()

    @classmethod
    def from_config(cls, config) -> "ModelFamily":
        """The family for a training config; families with objective options read them here."""
        return cls(config.pretrained_model_name_or_path)

    def check_layout(self) -> None:
        if not self.model_dir.is_dir():
            looks_like_hub_id = (not self.model_dir.is_absolute() and len(self.model_dir.parts) == 2
                                 and not str(self.model_dir).startswith("."))
            download = (f" Weights are not downloaded here: fetch them once, e.g. `huggingface-cli download "
                        f"{self.model_dir} --local-dir /models/{self.model_dir.name}`, and give that folder."
                        if looks_like_hub_id else "")
            raise ModelLayoutError(
                f"{self.model_dir}: model directory not found.{download} The model (--pretrained_model_name_or_path, "
                f"or generate's --model) must be a local directory in the diffusers layout; a tiny random one for "
                f"trying things: `blueberry-video make-tiny-model --family {self.name} DIR`."
            )
        self.check_transformer_class()
        missing = [sub for sub in self.required_subfolders if not (self.model_dir / sub).is_dir()]
        if missing:
            raise ModelLayoutError(
                f"{self.model_dir}: missing sub-folder(s) {', '.join(missing)}. A {self.name} model directory "
                f"needs {', '.join(self.required_subfolders)} (the layout `save_pretrained` of "
                f"{self.pipeline_class.__name__} writes)."
            )

    def check_transformer_class(self) -> None:
        """Refuse a directory holding another family's model, from its configs alone: otherwise the other
        family's VAE and text encoders fill the latent cache, and diffusers fails only at the first training step.
        A folder whose configs name no class (hand-made) passes."""
        from blueberry_video.models import declared_transformer_class, family_for_transformer_class

        declared = declared_transformer_class(self.model_dir)
        expected = self.transformer_class.__name__
        if declared is None or declared[0] == expected:
            return
        found, path = declared
        other = family_for_transformer_class(found)
        point = f"--pretrained_model_name_or_path (--model) at a {self.name} model directory"
        if other is None:
            fix = f"Point {point}."
        else:
            fix = (f"For this {other} model use recipes/train_{other}.py, or blueberry-video with `--family {other}` "
                   f"or no --family (it is then read from the folder); to use {self.name}, point {point}.")
        raise ModelLayoutError(f"{path}: the transformer is a {found}, but the {self.name} family needs a {expected}. "
                               f"{fix}")

    def read_config(self, subfolder: str) -> dict:
        """A component's config.json (or scheduler_config.json) without loading its weights.

        Read once per family object: the loss reads the VAE's config every step, and disk I/O has no place
        in the training step.
        """
        cache = self.__dict__.setdefault("_configs", {})
        if subfolder not in cache:
            folder = self.model_dir / subfolder
            files = [folder / name for name in ("config.json", "scheduler_config.json") if (folder / name).is_file()]
            if not files:
                raise ModelLayoutError(f"{folder}: no config.json or scheduler_config.json")
            cache[subfolder] = json.loads(files[0].read_text())
        return cache[subfolder]

    @property
    def transformer_config(self) -> dict:
        return self.read_config("transformer")

    # --- geometry -------------------------------------------------------------------------------

    @property
    def vae_config(self) -> dict:
        return self.read_config("vae")

    @property
    @abstractmethod
    def spatial_compression(self) -> int:
        """Pixels per latent pixel along height and width."""

    @property
    def temporal_compression(self) -> int:
        return self.vae_config.get("temporal_compression_ratio", 4)

    @abstractmethod
    def check_video_shape(self, num_frames: int, height: int, width: int) -> None:
        """Raise ConfigError naming the setting and the nearest valid value if the VAE/patching cannot take it."""

    def check_generation_frames(self, num_frames: int) -> None:
        """Raise ConfigError if the pipeline would not return `num_frames` frames for this request."""

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(channels, frames, height, width) of the VAE latent for a video of this size."""
        s = self.spatial_compression
        frames = (num_frames - 1) // self.temporal_compression + 1
        return (self.vae_config["latent_channels"], frames, height // s, width // s)

    def _require_frames(self, num_frames: int, is_valid, rule: str) -> None:
        if not is_valid(num_frames):
            raise ConfigError(
                f"max_num_frames={num_frames}: this {self.name} model's VAE takes {rule} frames; "
                f"use {nearest_valid(num_frames, is_valid)}"
            )

    @staticmethod
    def _require_pixel_multiple(height: int, width: int, multiple: int, why: str) -> None:
        for setting, value in (("height", height), ("width", width)):
            if value % multiple:
                raise ConfigError(
                    f"{setting}={value}: must be a multiple of {multiple} ({why}); "
                    f"use {nearest_valid(value, lambda v: v % multiple == 0)}"
                )

    # --- loading ---------------------------------------------------------------------------------

    def load_transformer(self, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        return self.transformer_class.from_pretrained(self.model_dir, subfolder="transformer", dtype=dtype)

    @abstractmethod
    def load_training_scheduler(self):
        """The noise scheduler whose schedule defines the training objective."""

    @abstractmethod
    def load_encoders(self, dtype: torch.dtype, device: torch.device | str, vae_tiling: bool = False) -> Encoders:
        """The VAE and text encoder(s), frozen, in eval mode, on `device`; `vae_tiling` for large videos."""

    # --- the latent cache ------------------------------------------------------------------------

    def _encoder_files(self) -> dict[str, list[Path]]:
        """The files of each folder the cache depends on: the encoders' configs, tokenizers and weights. Not the
        transformer and scheduler, which encode nothing."""
        return {sub: sorted(path for path in (self.model_dir / sub).rglob("*") if path.is_file())
                for sub in self.required_subfolders if sub not in ("transformer", "scheduler")}

    def cache_key(self) -> dict:
        """Everything in the model directory that changes what the cache holds: the encoder files, each by name,
        size, modification time (an edit in place) and a digest of 1 MiB sampled through it (other weights of the
        same size where times are normalised, as in some archives and images), so that checking reads little. Not
        where the directory is: the same files at another path (a mount, a copy that kept their times) give the
        same cache; a copy that did not keep them is told by `encoder_digests`."""
        key = {"family": self.name}
        for sub, files in self._encoder_files().items():
            key[sub] = [(str(path.relative_to(self.model_dir / sub)), path.stat().st_size, path.stat().st_mtime_ns,
                         sampled_digest(path)) for path in files]
        return key

    def encoder_digests(self) -> dict[str, str]:
        """The whole-content digest of each encoder file, by its path in the model folder (a T5-XXL is read in
        about 10 s): what tells a copy of the model that did not keep the modification times (cp -r to a node's
        local disk) from weights rewritten in place."""
        files = [path for files in self._encoder_files().values() for path in files]
        sizes = [path.stat().st_size for path in files]
        digests = {}
        # Shown where it takes a while (a HunyuanVideo's 17 GB from network storage: a minute or more)
        with tqdm(total=sum(sizes), unit="B", unit_scale=True, desc="digests of the encoder files",
                  disable=sum(sizes) < 2**30 or not is_first_process()) as progress:
            for path, size in zip(files, sizes):
                digests[str(path.relative_to(self.model_dir))] = content_digest(path)
                progress.update(size)
        return digests

    @abstractmethod
    @torch.no_grad()
    def encode_videos(self, encoders: Encoders, videos: torch.Tensor) -> dict[str, torch.Tensor]:
        """videos [B, F, C, H, W] in [-1, 1] -> {"latent_mean", "latent_std"}, each [B, C, F', H', W']."""

    @abstractmethod
    @torch.no_grad()
    def encode_prompts(self, encoders: Encoders, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Text conditioning exactly as the family's pipeline computes it, batched along dim 0."""

    @abstractmethod
    def prompt_lengths(self, encoders: Encoders, prompts: list[str]) -> list[PromptLengths]:
        """For each text encoder `encode_prompts` uses: its token limit and each prompt's token count, so the
        latent cache can report the captions it cut."""

    @abstractmethod
    def dummy_text_conditioning(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Random conditioning with the shapes `encode_prompts` returns for one prompt (no batch dim)."""

    # --- training ---------------------------------------------------------------------------------

    @abstractmethod
    def training_loss(
        self,
        transformer: torch.nn.Module,
        scheduler,
        batch: dict[str, torch.Tensor],
        generators: list[torch.Generator],
    ) -> torch.Tensor:
        """The family's diffusion loss for a batch from the cache; `generators[i]` draws sample i's randomness."""

    # --- inference ---------------------------------------------------------------------------------

    @abstractmethod
    def build_pipeline(self, transformer: torch.nn.Module, dtype: torch.dtype):
        """The diffusers pipeline around `transformer`, other parts loaded from the model directory."""

    @abstractmethod
    def encode_prompt_for_pipeline(self, pipe, prompt: str, num_videos: int, guidance_scale: float, device) -> dict:
        """`prompt` encoded by the pipeline's text encoder(s) on `device`, as keyword arguments for its __call__
        (for `num_videos` videos), so that validation and `generate` can free the text encoders before denoising."""

    def pipeline_conditioning(self, conditioning: dict, guidance_scale: float) -> dict:
        """The pipeline's keyword arguments for text conditioning of the cache's shapes (batched): how the
        memory estimate renders a validation video without text encoders. Families that encode a negative
        prompt for guidance add its stand-in."""
        return dict(conditioning)

    @abstractmethod
    def generation_kwargs(self, num_frames: int, height: int, width: int) -> dict:
        """Extra keyword arguments the pipeline's __call__ needs for this model (e.g. max_sequence_length)."""

    # --- tiny models -------------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def save_tiny_pipeline(cls, out_dir: str | Path, seed: int = 0) -> Path:
        """Build a randomly initialised CPU-sized pipeline and save it in the diffusers layout."""


def nearest_valid(value: int, is_valid) -> int:
    """The closest integer to `value` for which `is_valid` holds (ties go up)."""
    for delta in range(0, 10_000):
        for candidate in (value + delta, value - delta):
            if candidate > 0 and is_valid(candidate):
                return candidate
    raise ConfigError(f"no valid value near {value}")


def unwrap_model(module):
    """The model inside DDP / compile wrappers, for reading its config."""
    while hasattr(module, "module"):
        module = module.module
    return getattr(module, "_orig_mod", module)


def model_class(module) -> type:
    """The diffusers class of `module`, to build another of: FSDP2 swaps in a generated subclass (FSDP<Name>)."""
    from torch.distributed.fsdp import FSDPModule

    return next(cls for cls in type(module).__mro__ if not issubclass(cls, FSDPModule))


def vae_latent_distribution(vae, videos: torch.Tensor) -> dict[str, torch.Tensor]:
    """videos [B, F, C, H, W] in [-1, 1] -> the VAE posterior's {"latent_mean", "latent_std"}, [B, C, F', H', W']."""
    pixels = videos.to(vae.device, vae.dtype).permute(0, 2, 1, 3, 4)  # the video VAEs take [B, C, F, H, W]
    dist = vae.encode(pixels).latent_dist
    return {"latent_mean": dist.mean, "latent_std": dist.std}
