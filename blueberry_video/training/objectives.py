"""Diffusion training losses, as pure functions of tensors and a diffusers scheduler."""

from __future__ import annotations

import torch


def cogvideox_loss(model_output, noisy_latents, latents, timesteps, scheduler) -> torch.Tensor:
    """CogVideoX's objective: v-prediction turned into an x0 prediction, MSE weighted by 1 / (1 - alpha_bar_t).

    `scheduler.get_velocity(v, x_t, t)` = sqrt(a_t) x_t - sqrt(1 - a_t) v, which for a v-prediction model is
    its estimate of the clean latents; the weight makes the loss equivalent to an epsilon/v loss per step.
    """
    model_output = model_output.float()
    noisy_latents = noisy_latents.float()
    predicted_latents = scheduler.get_velocity(model_output, noisy_latents, timesteps)
    alphas_cumprod = scheduler.alphas_cumprod.to(latents.device, torch.float32)[timesteps]
    weights = (1.0 / (1.0 - alphas_cumprod)).view(-1, *([1] * (latents.dim() - 1)))
    per_sample = (weights * (predicted_latents - latents.float()) ** 2).flatten(1).mean(dim=1)
    return per_sample.mean()


def flow_matching_loss(model_output, latents, noise) -> torch.Tensor:
    """Rectified-flow objective (x_t = (1 - s) x0 + s eps): the model predicts the velocity eps - x0."""
    target = noise.float() - latents.float()
    per_sample = ((model_output.float() - target) ** 2).flatten(1).mean(dim=1)
    return per_sample.mean()
