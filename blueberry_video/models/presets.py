"""Model sizes: the tiny CPU models the tests and demo build, and the real-size transformer configs.

Real-size presets build the transformer only, with random weights, for memory and speed benchmarks;
their configs follow the published checkpoints' `transformer/config.json`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

# Published transformer configs (values that differ from the diffusers class defaults).
REAL_SIZE_TRANSFORMERS = {
    "cogvideox-2b": (
        "cogvideox",
        dict(num_attention_heads=30, num_layers=30, use_rotary_positional_embeddings=False),
    ),
    "cogvideox-5b": (
        "cogvideox",
        dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True),
    ),
    "hunyuan-video": ("hunyuan_video", dict()),  # the diffusers defaults are the 13B model's config
}

# CogVideoX's training noise schedule (the published scheduler_config.json of CogVideoX-2b).
COGVIDEOX_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    snr_shift_scale=3.0,
    timestep_spacing="trailing",
    set_alpha_to_one=True,
    clip_sample=False,
)


def build_real_size_transformer(preset: str, dtype: torch.dtype = torch.bfloat16, device="cpu"):
    """A randomly initialised transformer with a published checkpoint's shape (no download)."""
    from blueberry_video.models import get_family_class

    if preset not in REAL_SIZE_TRANSFORMERS:
        raise KeyError(f"unknown preset {preset!r}; choose one of {', '.join(REAL_SIZE_TRANSFORMERS)}")
    family_name, overrides = REAL_SIZE_TRANSFORMERS[preset]
    cls = get_family_class(family_name).transformer_class
    # Made in `dtype` from the start: made in float32 and cast, HunyuanVideo would pass through 52 GB on the
    # GPU and leave that much freed-but-cached memory to fragment the measured run.
    with torch.device(device), default_dtype(dtype):
        return cls(**overrides).to(dtype)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# Published text encoder configs (values that differ from the transformers class defaults), so that a
# config-only preset directory says how much validation loads beside the transformer.
REAL_SIZE_TEXT_ENCODERS = {
    "cogvideox": {
        "text_encoder": ("T5EncoderModel", "T5Config", dict(  # google/t5-v1_1-xxl
            vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
            feed_forward_proj="gated-gelu")),
    },
    "hunyuan_video": {
        "text_encoder": ("LlamaModel", "LlamaConfig", dict(  # the LLaVA-Llama-3-8B text model
            vocab_size=128320, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0)),
        "text_encoder_2": ("CLIPTextModel", "CLIPTextConfig", dict(  # openai/clip-vit-large-patch14
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu")),
    },
}


def save_real_size_configs(preset: str, out_dir: str | Path) -> Path:
    """A model directory in the diffusers layout holding a real-size preset's configs and no weights: enough
    for the benchmarks and the memory estimate, which build the models themselves."""
    import diffusers
    import transformers

    from blueberry_video.models import get_family_class

    family_name, _ = REAL_SIZE_TRANSFORMERS[preset]
    cls = get_family_class(family_name)
    out_dir = Path(out_dir)
    index = {"_class_name": cls.pipeline_class.__name__}
    transformer = build_real_size_transformer(preset, device="meta")
    transformer.save_config(out_dir / "transformer")
    index["transformer"] = ["diffusers", type(transformer).__name__]
    vae_class = {"cogvideox": diffusers.AutoencoderKLCogVideoX,
                 "hunyuan_video": diffusers.AutoencoderKLHunyuanVideo}[family_name]
    with torch.device("meta"):
        vae_class().save_config(out_dir / "vae")  # the class defaults are the released VAEs
    index["vae"] = ["diffusers", vae_class.__name__]
    if family_name == "cogvideox":
        scheduler = diffusers.CogVideoXDPMScheduler(**COGVIDEOX_SCHEDULER)
    else:
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0)
    scheduler.save_config(out_dir / "scheduler")
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
    for name, (model_class, config_class, values) in REAL_SIZE_TEXT_ENCODERS[family_name].items():
        getattr(transformers, config_class)(**values).save_pretrained(out_dir / name)
        index[name] = ["transformers", model_class]
    for sub in cls.required_subfolders:
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2))
    return out_dir


def sharpen_posterior(vae, log_variance: float = -10.0) -> None:
    """Give a random VAE a trained VAE's narrow posterior (std ~0.007): otherwise each latent draw is mostly
    noise, and a tiny model trained on one video cannot show a falling loss."""
    # The posterior's last layer: quant_conv where the VAE has one (HunyuanVideo's), else the encoder's conv_out.
    conv = getattr(vae, "quant_conv", None) or vae.encoder.conv_out
    conv = getattr(conv, "conv", conv)
    latent_channels = conv.out_channels // 2
    with torch.no_grad():
        conv.weight[latent_channels:] = 0.0
        conv.bias[latent_channels:] = log_variance


def tiny_cogvideox_components(seed: int = 0) -> dict:
    """A CogVideoX pipeline's parts at toy size: 8x spatial / 4x temporal VAE, 2-block transformer."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from blueberry_video.models.tiny_tokenizers import tiny_t5_tokenizer

    torch.manual_seed(seed)
    tokenizer = tiny_t5_tokenizer()
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_ff=64,
            d_kv=8,
            num_heads=4,
            num_layers=2,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        time_embed_dim=16,
        text_embed_dim=32,
        num_layers=2,
        sample_width=20,
        sample_height=12,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=32,
    )
    sharpen_posterior(vae)
    scheduler = CogVideoXDPMScheduler(**COGVIDEOX_SCHEDULER)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler)


def tiny_hunyuan_video_components(seed: int = 0) -> dict:
    """A HunyuanVideo pipeline's parts at toy size: 8x spatial / 4x temporal VAE, 1 dual + 1 single block.

    Shapes follow the published model where it matters: patch 2 (so frames are 16-pixel multiples, as the
    pipeline checks), guidance embedding on, text_embed_dim = the Llama hidden size, pooled_projection_dim = the
    CLIP hidden size (the pipeline feeds CLIP's `pooler_output`), and a Llama deep enough that the pipeline's
    "third hidden state from the end" is a transformer layer's output, not the token embeddings.
    """
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    from blueberry_video.models.tiny_tokenizers import tiny_clip_tokenizer, tiny_llama_tokenizer

    torch.manual_seed(seed)
    tokenizer = tiny_llama_tokenizer()
    text_encoder = LlamaModel(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,  # the pipeline encodes crop_start (95) + max_sequence_length (256) tokens
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    tokenizer_2 = tiny_clip_tokenizer()
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer_2),
            hidden_size=16,
            intermediate_size=32,
            projection_dim=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            # CLIP pools at the first eos; with the real id (not the legacy 2) it finds the tokenizer's eos.
            bos_token_id=tokenizer_2.bos_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            pad_token_id=tokenizer_2.pad_token_id,
        )
    )
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
    )
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=2,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=32,
        pooled_projection_dim=16,
        rope_axes_dim=(4, 6, 6),  # (frames, height, width); sums to attention_head_dim
    )
    sharpen_posterior(vae)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)  # the published scheduler_config.json
    return dict(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        tokenizer_2=tokenizer_2,
        text_encoder_2=text_encoder_2,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
