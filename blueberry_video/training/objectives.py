"""Diffusion training losses, as pure functions of tensors and a diffusers scheduler."""

from __future__ import annotations

import torch


def alphas_cumprod_at(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t of a DDPM-style diffusers scheduler for each timestep, float32, shaped [B, 1, 1, 1, 1]."""
    # Indexed before the cast: the scheduler keeps all of them in float64.
    return scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float().view(-1, 1, 1, 1, 1)


def ddpm_noisy_latents(latents, noise, alpha_bar) -> torch.Tensor:
    """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps: the schedulers' `add_noise`, on an alpha_bar looked up once per
    step for this and the loss (the scheduler moves and indexes its table in each call)."""
    return alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise


def cogvideox_loss(model_output, noisy_latents, latents, alpha_bar) -> torch.Tensor:
    """CogVideoX's objective: v-prediction turned into an x0 prediction, MSE weighted by 1 / (1 - alpha_bar_t).

    sqrt(a_t) x_t - sqrt(1 - a_t) v (the schedulers' `get_velocity`) is, for a v-prediction model, its
    estimate of the clean latents; the weight makes the loss equivalent to an epsilon/v loss per step.
    """
    predicted_latents = alpha_bar.sqrt() * noisy_latents.float() - (1 - alpha_bar).sqrt() * model_output.float()
    per_sample = ((predicted_latents - latents.float()) ** 2 / (1 - alpha_bar)).flatten(1).mean(dim=1)
    return per_sample.mean()


def flow_matching_loss(model_output, latents, noise) -> torch.Tensor:
    """Rectified-flow objective (x_t = (1 - s) x0 + s eps): the model predicts the velocity eps - x0."""
    target = noise.float() - latents.float()
    per_sample = ((model_output.float() - target) ** 2).flatten(1).mean(dim=1)
    return per_sample.mean()
