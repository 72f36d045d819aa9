"""HunyuanVideo (text-to-video, 13B): loading, encoding, the flow-matching objective and the pipeline."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

from blueberry_video.models.base import (
    Encoders,
    ModelFamily,
    PromptLengths,
    VideoSettings,
    unwrap_model,
    vae_latent_distribution,
)
from blueberry_video.training.objectives import flow_matching_loss
from blueberry_video.training.sampling import draw_noise_and_sigmas, flow_sigma_sampler, shift_sigmas

# HunyuanVideoPipeline.check_inputs refuses any height or width that is not a multiple of 16, whatever the VAE
# and patch size allow; training sizes must pass it too, or validation fails after hours of training.
PIPELINE_PIXEL_MULTIPLE = 16
# HunyuanVideoPipeline.encode_prompt gives CLIP this many tokens, a constant in its code.
CLIP_MAX_TOKENS = 77


class HunyuanVideoFamily(ModelFamily):
    name = "hunyuan_video"
    transformer_class = HunyuanVideoTransformer3DModel
    pipeline_class = HunyuanVideoPipeline
    required_subfolders = (
        "transformer",
        "vae",
        "text_encoder",
        "tokenizer",
        "text_encoder_2",
        "tokenizer_2",
        "scheduler",
    )
    default_lora_target_modules = ("to_q", "to_k", "to_v", "to_out.0")
    block_class_names = ("HunyuanVideoTransformerBlock", "HunyuanVideoSingleTransformerBlock")
    uses_attention_dispatch = True
    attention_takes_mask = True  # the padding of the text tokens, masked as keys
    trains_with_flow_matching = True
    usual_video = VideoSettings(num_frames=61, height=320, width=512, fps=15)  # as diffusers' docs sample it

    def __init__(
        self,
        model_dir: str | Path,
        *,
        # SD3's logit-normal density (which HunyuanVideo's pre-training is reported to use): it favours the
        # mid-noise steps, where uniform spends as much on nearly-clean and nearly-pure-noise ones.
        weighting_scheme: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mode_scale: float = 1.29,
        # None: the `shift` of the model's scheduler_config.json (7.0 for the published model).
        flow_shift: float | None = None,
        # The published transformer is guidance-distilled: `guidance` embeds the CFG scale it should imitate.
        # Fine-tuning data are plain conditional samples, i.e. the unguided (scale 1) prediction; finetrainers and
        # musubi-tuner train at 1.0 too. Inference still uses the pipeline's 6.0.
        guidance_scale: float = 1.0,
        prompt_template: dict | None = None,
        max_sequence_length: int = 256,
    ):
        super().__init__(model_dir)
        self.sigma_sampler = flow_sigma_sampler(weighting_scheme, logit_mean, logit_std, mode_scale)
        self.flow_shift = flow_shift
        self.guidance_scale = guidance_scale
        self.prompt_template = prompt_template or DEFAULT_PROMPT_TEMPLATE
        self.max_sequence_length = max_sequence_length

    @classmethod
    def from_config(cls, config) -> "HunyuanVideoFamily":
        return cls(
            config.pretrained_model_name_or_path,
            weighting_scheme=config.weighting_scheme,
            logit_mean=config.logit_mean,
            logit_std=config.logit_std,
            mode_scale=config.mode_scale,
            flow_shift=config.flow_shift,
            guidance_scale=config.flow_guidance_scale,
        )

    # --- geometry ---------------------------------------------------------------------------------

    @property
    def spatial_compression(self) -> int:
        return self.vae_config.get("spatial_compression_ratio", 8)

    def _frames_valid(self, num_frames: int) -> bool:
        t = self.temporal_compression
        if (num_frames - 1) % t:
            return False
        return ((num_frames - 1) // t + 1) % self.transformer_config.get("patch_size_t", 1) == 0

    def check_video_shape(self, num_frames: int, height: int, width: int) -> None:
        patch_size_t = self.transformer_config.get("patch_size_t", 1)
        rule = f"{self.temporal_compression}k+1"
        if patch_size_t > 1:
            rule += f" with a latent frame count divisible by patch_size_t={patch_size_t}"
        self._require_frames(num_frames, self._frames_valid, rule)
        patch = self.spatial_compression * self.transformer_config.get("patch_size", 2)
        self._require_pixel_multiple(height, width, math.lcm(patch, PIPELINE_PIXEL_MULTIPLE),
                                     "VAE downsampling x patch size, and HunyuanVideoPipeline's own multiple of 16")

    # --- loading ------------------------------------------------------------------------------------

    def load_training_scheduler(self):
        return FlowMatchEulerDiscreteScheduler.from_pretrained(self.model_dir, subfolder="scheduler")

    def load_encoders(self, dtype: torch.dtype, device, vae_tiling: bool = False) -> Encoders:
        """`vae_tiling` encodes videos over 256 pixels tile by tile (and a batch one video at a time) to bound
        memory; tiles are blended at their seams, so those latents differ slightly from whole-video ones."""
        # The pipeline's own loader, minus the transformer: the cache then encodes exactly as it does.
        pipe = HunyuanVideoPipeline.from_pretrained(self.model_dir, transformer=None, dtype=dtype).to(device)
        if vae_tiling:
            pipe.vae.enable_tiling()
            pipe.vae.enable_slicing()
        self._check_crop_start(pipe.tokenizer)
        return Encoders(vae=pipe.vae, text_modules={"pipeline": pipe})

    def _check_crop_start(self, tokenizer) -> None:
        # The pipeline drops a fixed `crop_start` tokens (the system prompt) from every encoded prompt; a tokenizer
        # that splits the system prompt differently would silently keep some of it or drop the user's words.
        crop_start = self.prompt_template.get("crop_start")
        if crop_start is None:
            return  # the pipeline measures it itself
        system_tokens = len(tokenizer(self.prompt_template["template"].split("{}")[0]).input_ids)
        if system_tokens != crop_start:
            warnings.warn(
                f"{self.model_dir / 'tokenizer'}: the prompt template's system prompt is {system_tokens} tokens with "
                f"this tokenizer, but its crop_start is {crop_start}; pass prompt_template with "
                f"crop_start={system_tokens} so the cached embeddings hold exactly the user's prompt",
                stacklevel=2,
            )

    def cache_key(self) -> dict:
        return {
            **super().cache_key(),
            "prompt_template": dict(self.prompt_template),
            "max_sequence_length": self.max_sequence_length,
        }

    # --- the latent cache -----------------------------------------------------------------------------

    @torch.no_grad()
    def encode_videos(self, encoders: Encoders, videos: torch.Tensor) -> dict[str, torch.Tensor]:
        return vae_latent_distribution(encoders.vae, videos)

    @torch.no_grad()
    def encode_prompts(self, encoders: Encoders, prompts: list[str]) -> dict[str, torch.Tensor]:
        pipe = encoders.text_modules["pipeline"]
        prompt_embeds, pooled_prompt_embeds, prompt_attention_mask = pipe.encode_prompt(
            prompts,
            prompt_template=self.prompt_template,
            max_sequence_length=self.max_sequence_length,
            device=pipe.text_encoder.device,
        )
        return {
            "prompt_embeds": prompt_embeds,
            "prompt_attention_mask": prompt_attention_mask,
            "pooled_prompt_embeds": pooled_prompt_embeds,
        }

    def prompt_lengths(self, encoders: Encoders, prompts: list[str]) -> list[PromptLengths]:
        pipe = encoders.text_modules["pipeline"]
        # As the pipeline's _get_llama_prompt_embeds: the prompt inside the template, less the crop_start tokens of
        # the system prompt, against max_sequence_length.
        templated = [self.prompt_template["template"].format(prompt) for prompt in prompts]
        crop_start = self.prompt_template.get("crop_start")
        if crop_start is None:  # the pipeline's own measure: the template alone, less its "{}" and <|eot_id|>
            crop_start = len(pipe.tokenizer(self.prompt_template["template"]).input_ids) - 2
        llama = [len(ids) - crop_start for ids in pipe.tokenizer(templated).input_ids]
        # CLIP gives the pooled embedding; the pipeline passes it 77 tokens, whatever max_sequence_length says.
        clip = [len(ids) for ids in pipe.tokenizer_2(prompts).input_ids]
        return [PromptLengths("Llama text encoder", self.max_sequence_length, llama),
                PromptLengths("CLIP text encoder", CLIP_MAX_TOKENS, clip)]

    def dummy_text_conditioning(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        config = self.transformer_config
        length = self.max_sequence_length
        # The transformer attends to the first mask.sum() text tokens, so a real mask is a prefix of ones.
        prompt_tokens = int(torch.randint(1, length + 1, (1,), generator=generator))
        return {
            "prompt_embeds": torch.randn(length, config.get("text_embed_dim", 4096), generator=generator),
            "prompt_attention_mask": (torch.arange(length) < prompt_tokens).long(),
            "pooled_prompt_embeds": torch.randn(config.get("pooled_projection_dim", 768), generator=generator),
        }

    # --- training ---------------------------------------------------------------------------------------

    def training_loss(self, transformer, scheduler, batch, generators):
        latents, noise, sigmas = draw_noise_and_sigmas(
            batch["latent_mean"], batch["latent_std"], generators, self.sigma_sampler
        )
        shift = scheduler.config.shift if self.flow_shift is None else self.flow_shift
        sigmas = shift_sigmas(sigmas, shift)
        latents = latents * self.vae_config.get("scaling_factor", 0.476986)
        s = sigmas.view(-1, *([1] * (latents.dim() - 1)))
        noisy_latents = (1 - s) * latents + s * noise

        extra = {}
        if unwrap_model(transformer).config.guidance_embeds:
            # The pipeline's encoding of the scale: scale x 1000, like the timestep.
            extra["guidance"] = latents.new_full((latents.shape[0],), self.guidance_scale * 1000.0)
        model_output = transformer(
            hidden_states=noisy_latents,
            timestep=sigmas * scheduler.config.num_train_timesteps,
            encoder_hidden_states=batch["prompt_embeds"].to(noisy_latents.dtype),
            # The transformer counts the ones (a prefix) to find the prompt's length; it stays an integer tensor.
            encoder_attention_mask=batch["prompt_attention_mask"].to(noisy_latents.device),
            pooled_projections=batch["pooled_prompt_embeds"].to(noisy_latents.dtype),
            return_dict=False,
            **extra,
        )[0]
        return flow_matching_loss(model_output, latents, noise)

    # --- inference ------------------------------------------------------------------------------------------

    def build_pipeline(self, transformer, dtype: torch.dtype):
        return HunyuanVideoPipeline.from_pretrained(self.model_dir, transformer=transformer, dtype=dtype)

    @torch.no_grad()
    def encode_prompt_for_pipeline(self, pipe, prompt: str, num_videos: int, guidance_scale: float, device) -> dict:
        prompt_embeds, pooled_prompt_embeds, prompt_attention_mask = pipe.encode_prompt(
            prompt,
            prompt_template=self.prompt_template,
            num_videos_per_prompt=num_videos,
            max_sequence_length=self.max_sequence_length,
            device=device,
        )
        return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled_prompt_embeds,
                "prompt_attention_mask": prompt_attention_mask}

    def generation_kwargs(self, num_frames: int, height: int, width: int) -> dict:
        # The same text conditioning the cache holds, so validation sees what training saw.
        return {"prompt_template": self.prompt_template, "max_sequence_length": self.max_sequence_length}

    # --- tiny model -----------------------------------------------------------------------------------------

    @classmethod
    def save_tiny_pipeline(cls, out_dir, seed: int = 0) -> Path:
        from blueberry_video.models.presets import tiny_hunyuan_video_components

        pipe = HunyuanVideoPipeline(**tiny_hunyuan_video_components(seed))
        pipe.save_pretrained(out_dir, safe_serialization=True)
        return Path(out_dir)
