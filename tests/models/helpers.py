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


def assert_pipeline_is_the_preset(pipe, fresh: dict, expected_classes: dict) -> None:
    """Every component of the reloaded `pipe` has its class, and the weights and tokenisation the preset builds."""
    for name, cls in expected_classes.items():
        assert isinstance(pipe.components[name], cls), f"{name}: {type(pipe.components[name]).__name__}"
    text = PROMPTS[1] + ",\tCafé 12 ZEBRAS!"
    for name, built in fresh.items():
        if isinstance(built, torch.nn.Module):
            saved, made = pipe.components[name].state_dict(), built.state_dict()
            assert saved.keys() == made.keys(), name
            assert all(torch.equal(saved[key], made[key]) for key in saved), name
        elif name.startswith("tokenizer"):
            assert pipe.components[name](text).input_ids == built(text).input_ids, name


def assert_generates_frames(pipe, family, num_frames: int = 9, height: int = 32, width: int = 48) -> None:
    frames = pipe(
        prompt=PROMPTS[0],
        height=height,
        width=width,
        num_frames=num_frames,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **family.generation_kwargs(num_frames, height, width),
    ).frames
    assert frames.shape == (1, num_frames, height, width, 3)
    assert (frames >= 0).all() and (frames <= 1).all()
