"""Checks the model-family tests share: what the cache would hold, fixed generators, the learning check."""

from __future__ import annotations

import torch

from blueberry_video.training.sampling import sample_generators

PROMPTS = ["a cat", "a red circle moving left to right over a blue background"]


def cached_batch(family, encoders, videos) -> dict[str, torch.Tensor]:
    """What the latent cache would hold for `videos` captioned with PROMPTS."""
    return {**family.encode_videos(encoders, videos), **family.encode_prompts(encoders, PROMPTS[: len(videos)])}


def generators(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def held_out_loss(family, transformer, scheduler, sample: dict) -> float:
    """The loss on 8 fixed draws of one sample: a low-noise measure of how well the model fits it."""
    batch = {name: value.expand(8, *value.shape[1:]) for name, value in sample.items()}
    with torch.no_grad():
        return family.training_loss(transformer, scheduler, batch, sample_generators(1234, 0, range(8), "cpu")).item()


def assert_training_reduces_loss(family, sample: dict, steps: int = 30) -> None:
    """Train on one sample with fresh draws every step, as the trainer does; the held-out loss must fall."""
    torch.manual_seed(0)
    transformer = family.load_transformer()
    transformer.train()
    scheduler = family.load_training_scheduler()
    optimizer = torch.optim.Adam(transformer.parameters(), lr=1e-3)
    before = held_out_loss(family, transformer, scheduler, sample)
    for step in range(steps):
        loss = family.training_loss(transformer, scheduler, sample, sample_generators(0, step, [0], "cpu"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out_loss(family, transformer, scheduler, sample)
    assert after < 0.7 * before, f"held-out loss {before:.4f} -> {after:.4f} after {steps} steps"
