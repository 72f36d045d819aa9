"""Per-sample randomness keyed by (seed, step, sample index).

Each sample's latent draw, noise and timestep come from its own generator, so a run's result does not
depend on how many processes share a batch, nor on whether it was interrupted and resumed.
"""

from __future__ import annotations

import hashlib

import torch

from blueberry_video.errors import ConfigError


def sample_seed(seed: int, step: int, sample_index: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{step}:{sample_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def sample_generators(seed: int, step: int, sample_indices, device) -> list[torch.Generator]:
    return [
        torch.Generator(device=device).manual_seed(sample_seed(seed, step, int(index)))
        for index in sample_indices
    ]


def draw_training_sample(latent_mean, latent_std, generators, draw_noise_level):
    """Per sample i, from generators[i] in this order: a latent from the cached VAE distribution
    (mean + std * eps), the diffusion noise, and a noise level `draw_noise_level(generator)`."""
    shape = latent_mean.shape[1:]
    draw_device = generators[0].device
    # Drawn straight into batch tensors: this runs every step, and per-sample stacking was a visible share
    # of a small model's step (benchmarks/overhead.py).
    eps = torch.empty((len(generators), *shape), device=draw_device)
    noise = torch.empty_like(eps)
    levels = []
    for i, generator in enumerate(generators):
        torch.randn(shape, generator=generator, device=draw_device, out=eps[i])
        torch.randn(shape, generator=generator, device=draw_device, out=noise[i])
        levels.append(draw_noise_level(generator).reshape(()))
    device = latent_mean.device
    latents = torch.addcmul(latent_mean.float(), latent_std.float(), eps.to(device))
    return latents, noise.to(device), torch.stack(levels).to(device)


def draw_latent_noise_and_timesteps(latent_mean, latent_std, generators, num_train_timesteps: int):
    """Latents, noise and integer timesteps in [0, num_train_timesteps), for DDPM-style objectives."""
    def timestep(generator):
        return torch.randint(0, num_train_timesteps, (1,), generator=generator, device=generator.device)

    latents, noise, timesteps = draw_training_sample(latent_mean, latent_std, generators, timestep)
    return latents, noise, timesteps.long()


def draw_noise_and_sigmas(latent_mean, latent_std, generators, sigma_sampler):
    """Latents, noise and flow-matching sigmas in (0, 1) drawn by `sigma_sampler(generator)`."""
    latents, noise, sigmas = draw_training_sample(latent_mean, latent_std, generators, sigma_sampler)
    return latents, noise, sigmas.float()


# The timestep densities diffusers' flow-matching examples offer (SD3 paper, section 3.1).
FLOW_WEIGHTING_SCHEMES = ("uniform", "logit_normal", "mode")


def flow_sigma_sampler(
    weighting_scheme: str, logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29
):
    """A `sigma_sampler` for `draw_noise_and_sigmas`: one sigma from diffusers' density, from the sample's generator."""
    if weighting_scheme not in FLOW_WEIGHTING_SCHEMES:
        raise ConfigError(
            f"weighting_scheme={weighting_scheme!r}: unknown; choose one of {', '.join(FLOW_WEIGHTING_SCHEMES)}"
        )

    def sample(generator: torch.Generator) -> torch.Tensor:
        # Imported here: diffusers.training_utils takes seconds to import and only training needs it.
        from diffusers.training_utils import compute_density_for_timestep_sampling

        return compute_density_for_timestep_sampling(
            weighting_scheme, 1, logit_mean, logit_std, mode_scale, device=generator.device, generator=generator
        )[0]

    return sample


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler's static timestep shift: shift > 1 moves sigmas towards 1 (more noise)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)
