"""CogVideoX (1.0 and 1.5; 2b and 5b): loading, encoding, the v-prediction objective and the pipeline."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

from blueberry_video.errors import ConfigError
from blueberry_video.models.base import (
    Encoders,
    ModelFamily,
    PromptLengths,
    VideoSettings,
    nearest_valid,
    unwrap_model,
    vae_latent_distribution,
)
from blueberry_video.training.objectives import alphas_cumprod_at, cogvideox_loss, ddpm_noisy_latents
from blueberry_video.training.sampling import draw_latent_noise_and_timesteps


class CogVideoXFamily(ModelFamily):
    name = "cogvideox"
    transformer_class = CogVideoXTransformer3DModel
    pipeline_class = CogVideoXPipeline
    required_subfolders = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    default_lora_target_modules = ("to_q", "to_k", "to_v", "to_out.0")
    block_class_names = ("CogVideoXBlock",)
    usual_video = VideoSettings(num_frames=49, height=480, width=720, fps=8)  # CogVideoX-2b/5b's
    # diffusers' CogVideoX attention processor calls torch's SDPA itself, without a mask.
    uses_attention_dispatch = False

    # --- geometry ---------------------------------------------------------------------------------

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)

    def _frames_valid(self, num_frames: int) -> bool:
        # CogVideoX 1.5 patches latent frames in pairs and is trained on 8k+1 frames (81 = 21 latent frames, padded
        # to 22 by repeating the first, as its pipeline does): (frames - 1) must divide by 4 x patch_size_t.
        p_t = self.transformer_config.get("patch_size_t") or 1
        return (num_frames - 1) % (self.temporal_compression * p_t) == 0

    def check_generation_frames(self, num_frames: int) -> None:
        # The VAE decodes latent frames in pairs, keeping the first frame whole only when the count is odd:
        # an even latent count comes back as 4x as many frames (13 frames -> 4 latents -> 16 frames).
        latent_frames = (num_frames - 1) // self.temporal_compression + 1
        p_t = self.transformer_config.get("patch_size_t")
        if p_t is None and latent_frames % 2 == 0:
            valid = lambda n: (n - 1) % (2 * self.temporal_compression) == 0  # noqa: E731
            raise ConfigError(
                f"num_frames={num_frames}: CogVideoX's VAE would return {4 * latent_frames} frames for it; generate "
                f"8k+1 frames, e.g. {nearest_valid(num_frames, valid)}"
            )

    def check_video_shape(self, num_frames: int, height: int, width: int) -> None:
        p_t = self.transformer_config.get("patch_size_t") or 1
        self._require_frames(num_frames, self._frames_valid, f"{self.temporal_compression * p_t}k+1")
        multiple = self.spatial_compression * self.transformer_config["patch_size"]
        self._require_pixel_multiple(height, width, multiple, "VAE downsampling x patch size")

    # --- loading ------------------------------------------------------------------------------------

    def load_training_scheduler(self):
        return CogVideoXDPMScheduler.from_pretrained(self.model_dir, subfolder="scheduler")

    def load_encoders(self, dtype: torch.dtype, device, vae_tiling: bool = False) -> Encoders:
        # The pipeline's own loader, minus the transformer: the cache then encodes exactly as it does.
        pipe = CogVideoXPipeline.from_pretrained(self.model_dir, transformer=None, dtype=dtype).to(device)
        if vae_tiling:
            pipe.vae.enable_tiling()
        return Encoders(vae=pipe.vae, text_modules={"pipeline": pipe})

    # --- the latent cache -----------------------------------------------------------------------------

    @torch.no_grad()
    def encode_videos(self, encoders: Encoders, videos: torch.Tensor) -> dict[str, torch.Tensor]:
        return vae_latent_distribution(encoders.vae, videos)

    def cache_key(self) -> dict:
        # The prompt length comes from the transformer's config, not the text encoder's.
        return {**super().cache_key(), "max_text_length": self.max_text_length}

    @property
    def max_text_length(self) -> int:
        return self.transformer_config.get("max_text_seq_length", 226)

    @torch.no_grad()
    def encode_prompts(self, encoders: Encoders, prompts: list[str]) -> dict[str, torch.Tensor]:
        pipe = encoders.text_modules["pipeline"]
        prompt_embeds, _ = pipe.encode_prompt(
            prompts,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_text_length,
            device=pipe.text_encoder.device,
        )
        return {"prompt_embeds": prompt_embeds}

    def prompt_lengths(self, encoders: Encoders, prompts: list[str]) -> list[PromptLengths]:
        # The tokenizer call of the pipeline's _get_t5_prompt_embeds, without its truncation: EOS counts too.
        tokenizer = encoders.text_modules["pipeline"].tokenizer
        counts = [len(ids) for ids in tokenizer(prompts, add_special_tokens=True).input_ids]
        return [PromptLengths("T5 text encoder", self.max_text_length, counts)]

    def dummy_text_conditioning(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        dim = self.transformer_config["text_embed_dim"]
        return {"prompt_embeds": torch.randn(self.max_text_length, dim, generator=generator)}

    # --- training ---------------------------------------------------------------------------------------

    def training_loss(self, transformer, scheduler, batch, generators):
        config = unwrap_model(transformer).config
        latents, noise, timesteps = draw_latent_noise_and_timesteps(
            batch["latent_mean"],
            batch["latent_std"],
            generators,
            num_train_timesteps=scheduler.config.num_train_timesteps,
        )
        scaling = self.vae_config.get("scaling_factor", 1.15258426)
        latents = (latents * scaling).permute(0, 2, 1, 3, 4)  # transformer takes [B, F, C, H, W]
        noise = noise.permute(0, 2, 1, 3, 4)
        if config.patch_size_t is not None and latents.shape[1] % config.patch_size_t:
            # 1.5 patches frames in pairs: repeat the first latent frame, as its pipeline pads.
            pad = config.patch_size_t - latents.shape[1] % config.patch_size_t
            latents = torch.cat([latents[:, :1].expand(-1, pad, -1, -1, -1), latents], dim=1)
            noise = torch.cat([noise[:, :1].expand(-1, pad, -1, -1, -1), noise], dim=1)

        alpha_bar = alphas_cumprod_at(scheduler, timesteps)
        noisy_latents = ddpm_noisy_latents(latents, noise, alpha_bar)
        height, width = (dim * self.spatial_compression for dim in latents.shape[-2:])
        rotary = (
            _rotary_embeddings(config, self.spatial_compression, height, width, latents.shape[1], latents.device)
            if config.use_rotary_positional_embeddings
            else None
        )
        extra = {}
        if config.ofs_embed_dim is not None:
            extra["ofs"] = latents.new_full((latents.shape[0],), 2.0)  # the value the 1.5 pipelines pass
        prompt_embeds = batch["prompt_embeds"].to(noisy_latents.dtype)
        model_output = transformer(
            hidden_states=noisy_latents,
            encoder_hidden_states=prompt_embeds,
            timestep=timesteps,
            image_rotary_emb=rotary,
            return_dict=False,
            **extra,
        )[0]
        return cogvideox_loss(model_output, noisy_latents, latents, alpha_bar)

    # --- inference ------------------------------------------------------------------------------------------

    def build_pipeline(self, transformer, dtype: torch.dtype):
        return CogVideoXPipeline.from_pretrained(self.model_dir, transformer=transformer, dtype=dtype)

    @torch.no_grad()
    def encode_prompt_for_pipeline(self, pipe, prompt: str, num_videos: int, guidance_scale: float, device) -> dict:
        prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(
            prompt,
            do_classifier_free_guidance=guidance_scale > 1,
            num_videos_per_prompt=num_videos,
            max_sequence_length=self.max_text_length,
            device=device,
        )
        return {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds}

    def pipeline_conditioning(self, conditioning: dict, guidance_scale: float) -> dict:
        embeds = conditioning["prompt_embeds"]
        return {"prompt_embeds": embeds, "negative_prompt_embeds": torch.empty_like(embeds) if guidance_scale > 1 else None}

    def generation_kwargs(self, num_frames: int, height: int, width: int) -> dict:
        return {"max_sequence_length": self.max_text_length}

    # --- tiny model -----------------------------------------------------------------------------------------

    @classmethod
    def save_tiny_pipeline(cls, out_dir, seed: int = 0) -> Path:
        from blueberry_video.models.presets import tiny_cogvideox_components

        pipe = CogVideoXPipeline(**tiny_cogvideox_components(seed))
        pipe.save_pretrained(out_dir, safe_serialization=True)
        return Path(out_dir)


@lru_cache(maxsize=8)
def _rotary_cached(config_items, spatial_compression, height, width, latent_frames, device_str):
    # The pipeline's own method, given the two attributes it reads, so training and inference agree.
    holder = SimpleNamespace(
        transformer=SimpleNamespace(config=SimpleNamespace(**dict(config_items))),
        vae_scale_factor_spatial=spatial_compression,
    )
    return CogVideoXPipeline._prepare_rotary_positional_embeddings(
        holder, height, width, latent_frames, torch.device(device_str)
    )


def _rotary_embeddings(config, spatial_compression, height, width, latent_frames, device):
    keys = ("attention_head_dim", "patch_size", "patch_size_t", "sample_width", "sample_height")
    items = tuple((k, config[k] if isinstance(config, dict) else getattr(config, k)) for k in keys)
    return _rotary_cached(items, spatial_compression, height, width, latent_frames, str(device))
