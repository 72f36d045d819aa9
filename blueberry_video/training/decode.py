"""How validation decodes its videos: outside autocast, in the VAE's dtype. Its own module because the memory
estimate renders the same way and must not import the video writer (imageio-ffmpeg) with the trainer's
validation."""

from __future__ import annotations

import torch


def decode_without_autocast(vae: torch.nn.Module) -> None:
    """Make `vae.decode` run outside autocast, in the VAE's dtype, as diffusers' pipelines decode at inference.
    Validation renders under autocast (the training transformer holds float32 weights beside bf16 ones), and
    under CUDA's autocast the VAE's group norms run in float32: an untiled decode then holds a third more."""
    decode = type(vae).decode.__get__(vae)  # the class's: no wrapper around a wrapper when called again

    def decode_in_vae_dtype(latents, *args, **kwargs):
        with torch.autocast(latents.device.type, enabled=False):
            return decode(latents.to(vae.dtype), *args, **kwargs)

    vae.decode = decode_in_vae_dtype
