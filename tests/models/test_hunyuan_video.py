import math
import warnings

import pytest
import torch
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
)
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
from transformers import CLIPTextModel, CLIPTokenizer, LlamaModel, PreTrainedTokenizerFast

from blueberry_video.config import TrainConfig
from blueberry_video.errors import ConfigError
from blueberry_video.models.hunyuan_video import HunyuanVideoFamily
from blueberry_video.models.presets import build_real_size_transformer, tiny_hunyuan_video_components
from blueberry_video.training.sampling import draw_noise_and_sigmas, shift_sigmas
from tests.models.helpers import PROMPTS, generators
from tests.models.helpers import assert_generates_frames, assert_pipeline_is_the_preset, assert_training_reduces_loss


@pytest.fixture(scope="module")
def family(hunyuan_dir):
    return HunyuanVideoFamily(hunyuan_dir)


def test_tiny_pipeline_reloads_with_every_part_and_generates(hunyuan_dir, family):
    pipe = HunyuanVideoPipeline.from_pretrained(hunyuan_dir)
    expected = {
        "transformer": HunyuanVideoTransformer3DModel,
        "vae": AutoencoderKLHunyuanVideo,
        "text_encoder": LlamaModel,
        "tokenizer": PreTrainedTokenizerFast,
        "text_encoder_2": CLIPTextModel,
        "tokenizer_2": CLIPTokenizer,
        "scheduler": FlowMatchEulerDiscreteScheduler,
    }
    assert_pipeline_is_the_preset(pipe, tiny_hunyuan_video_components(seed=0), expected)
    assert pipe.scheduler.config.shift == 7.0
    assert_generates_frames(pipe, family)


def test_tiny_tokenizer_crops_exactly_the_system_prompt(family, encoders):
    tokenizer = encoders.text_modules["pipeline"].tokenizer
    template, crop_start = DEFAULT_PROMPT_TEMPLATE["template"], DEFAULT_PROMPT_TEMPLATE["crop_start"]
    assert len(tokenizer(template.split("{}")[0]).input_ids) == crop_start
    end_of_turn = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    for prompt in PROMPTS:
        kept = tokenizer(template.format(prompt)).input_ids[crop_start:]
        assert kept == tokenizer(prompt, add_special_tokens=False).input_ids + [end_of_turn]


def test_a_crop_start_that_does_not_fit_the_tokenizer_is_reported(hunyuan_dir, family):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        family.load_encoders(torch.float32, "cpu")
    assert not [w for w in caught if "crop_start" in str(w.message)]

    wrong = HunyuanVideoFamily(hunyuan_dir, prompt_template={**DEFAULT_PROMPT_TEMPLATE, "crop_start": 90})
    with pytest.warns(UserWarning, match="crop_start=95"):
        wrong.load_encoders(torch.float32, "cpu")


def test_encode_prompts_equals_the_pipeline(hunyuan_dir, family, encoders):
    ours = family.encode_prompts(encoders, PROMPTS)
    # Under no_grad, as the pipeline's __call__ runs it: with autograd on, SDPA may pick another CPU kernel.
    with torch.no_grad():
        embeds, pooled, mask = HunyuanVideoPipeline.from_pretrained(hunyuan_dir).encode_prompt(PROMPTS)
    assert torch.equal(ours["prompt_embeds"], embeds)
    assert torch.equal(ours["pooled_prompt_embeds"], pooled)
    assert torch.equal(ours["prompt_attention_mask"], mask)
    assert embeds.shape == (2, 256, 32) and pooled.shape == (2, 16)
    assert mask.sum(dim=1)[0] < mask.sum(dim=1)[1]


def test_dummy_text_conditioning_has_one_prompts_shapes(family, batch):
    dummy = family.dummy_text_conditioning(torch.Generator().manual_seed(0))
    for name in ("prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds"):
        assert dummy[name].shape == batch[name].shape[1:], name
        assert dummy[name].dtype == batch[name].dtype, name
    mask = dummy["prompt_attention_mask"]
    assert mask.sum() >= 1 and torch.equal(mask, (torch.arange(len(mask)) < mask.sum()).long())


def test_encode_videos_equals_the_vae(family, encoders, videos):
    ours = family.encode_videos(encoders, videos)
    with torch.no_grad():
        dist = encoders.vae.encode(videos.permute(0, 2, 1, 3, 4)).latent_dist
    assert torch.equal(ours["latent_mean"], dist.mean)
    assert torch.equal(ours["latent_std"], dist.std)
    assert ours["latent_mean"].shape == (2, *family.latent_shape(9, 32, 32))


def reference_sigma(generator, scheme: str, logit_mean=0.0, logit_std=1.0, mode_scale=1.29) -> torch.Tensor:
    """The SD3 paper's timestep densities, written out."""
    if scheme == "logit_normal":
        return torch.sigmoid(torch.normal(logit_mean, logit_std, (1,), generator=generator))[0]
    u = torch.rand(1, generator=generator)[0]
    if scheme == "mode":
        return 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def reference_loss(transformer, batch, seeds, scheme, shift, guidance_scale, scaling_factor) -> torch.Tensor:
    """Rectified flow, one sample at a time: x_t = (1 - s) x0 + s eps, target eps - x0, t = 1000 s."""
    losses = []
    for i, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(seed)
        shape = batch["latent_mean"].shape[1:]
        x0 = batch["latent_mean"][i] + batch["latent_std"][i] * torch.randn(shape, generator=generator)
        eps = torch.randn(shape, generator=generator)
        sigma = reference_sigma(generator, scheme)
        sigma = shift * sigma / (1 + (shift - 1) * sigma)
        x0 = x0 * scaling_factor
        with torch.no_grad():
            velocity = transformer(
                hidden_states=((1 - sigma) * x0 + sigma * eps)[None],
                timestep=(sigma * 1000).reshape(1),
                encoder_hidden_states=batch["prompt_embeds"][i : i + 1],
                encoder_attention_mask=batch["prompt_attention_mask"][i : i + 1],
                pooled_projections=batch["pooled_prompt_embeds"][i : i + 1],
                guidance=torch.tensor([guidance_scale * 1000.0]),
                return_dict=False,
            )[0][0]
        losses.append(((velocity - (eps - x0)) ** 2).mean())
    return torch.stack(losses).mean()


@pytest.mark.parametrize(
    "scheme, flow_shift, guidance_scale",
    [("logit_normal", None, 1.0), ("uniform", 1.0, 6.0), ("mode", 3.0, 1.0)],
)
def test_training_loss_equals_a_direct_computation(hunyuan_dir, batch, scheme, flow_shift, guidance_scale):
    family = HunyuanVideoFamily(
        hunyuan_dir, weighting_scheme=scheme, flow_shift=flow_shift, guidance_scale=guidance_scale
    )
    transformer, scheduler = family.load_transformer(), family.load_training_scheduler()
    seeds = [11, 12]
    with torch.no_grad():
        loss = family.training_loss(transformer, scheduler, batch, generators(seeds))
    shift = 7.0 if flow_shift is None else flow_shift  # None: the scheduler config's shift
    scaling = family.read_config("vae")["scaling_factor"]
    expected = reference_loss(transformer, batch, seeds, scheme, shift, guidance_scale, scaling)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("scheme", ["uniform", "logit_normal", "mode"])
def test_weighting_schemes_draw_sigmas_in_range_and_the_shift_raises_them(hunyuan_dir, scheme):
    sampler = HunyuanVideoFamily(hunyuan_dir, weighting_scheme=scheme).sigma_sampler
    generator = torch.Generator().manual_seed(0)
    sigmas = torch.stack([sampler(generator) for _ in range(2000)])
    assert ((sigmas > 0) & (sigmas < 1)).all()
    assert abs(sigmas.mean().item() - 0.5) < 0.03  # all three densities are symmetric about 1/2
    if scheme != "uniform":
        assert sigmas.std() < 0.27  # they concentrate on the middle; uniform's std is 0.289

    shifted = shift_sigmas(sigmas, 7.0)
    assert ((shifted > sigmas) & (shifted < 1)).all()
    assert shifted.mean() > sigmas.mean() + 0.2
    # The shift is monotone, so it maps the median to shift m / (1 + (shift - 1) m).
    median = sigmas.median()
    assert torch.isclose(shifted.median(), 7 * median / (1 + 6 * median))
    assert torch.equal(shift_sigmas(sigmas, 1.0), sigmas)


def test_the_training_config_sets_the_objective(hunyuan_dir):
    config = TrainConfig(
        pretrained_model_name_or_path=str(hunyuan_dir),
        weighting_scheme="mode",
        mode_scale=0.5,
        flow_shift=2.0,
        flow_guidance_scale=3.0,
    )
    family = HunyuanVideoFamily.from_config(config)
    assert (family.flow_shift, family.guidance_scale) == (2.0, 3.0)
    drawn = family.sigma_sampler(torch.Generator().manual_seed(3))
    torch.testing.assert_close(drawn, reference_sigma(torch.Generator().manual_seed(3), "mode", mode_scale=0.5))


def test_logit_normal_parameters_move_the_density(hunyuan_dir):
    sampler = HunyuanVideoFamily(hunyuan_dir, logit_mean=1.0, logit_std=0.5).sigma_sampler
    generator = torch.Generator().manual_seed(0)
    sigmas = torch.stack([sampler(generator) for _ in range(2000)])
    assert abs(torch.logit(sigmas).mean().item() - 1.0) < 0.05
    assert abs(torch.logit(sigmas).std().item() - 0.5) < 0.05


def test_draws_do_not_depend_on_the_batch_split(family, batch):
    seeds = [5, 6]
    together = draw_noise_and_sigmas(batch["latent_mean"], batch["latent_std"], generators(seeds), family.sigma_sampler)
    for i, seed in enumerate(seeds):
        alone = draw_noise_and_sigmas(
            batch["latent_mean"][i : i + 1], batch["latent_std"][i : i + 1], generators([seed]), family.sigma_sampler
        )
        for joint, single in zip(together, alone):
            assert torch.equal(joint[i : i + 1], single)

    transformer, scheduler = family.load_transformer(), family.load_training_scheduler()
    with torch.no_grad():
        loss = family.training_loss(transformer, scheduler, batch, generators(seeds))
        halves = [
            family.training_loss(
                transformer, scheduler, {name: value[i : i + 1] for name, value in batch.items()}, generators([seed])
            )
            for i, seed in enumerate(seeds)
        ]
    torch.testing.assert_close(loss, torch.stack(halves).mean(), rtol=1e-5, atol=0)


def test_geometry_errors_name_the_setting_and_a_valid_value(hunyuan_dir, family):
    family.check_video_shape(9, 32, 48)
    assert family.latent_shape(9, 32, 48) == (4, 3, 4, 6)
    with pytest.raises(ConfigError, match=r"max_num_frames=8: .*4k\+1 frames; use 9"):
        family.check_video_shape(8, 32, 32)
    with pytest.raises(ConfigError, match="height=40: must be a multiple of 16.*use 48"):
        family.check_video_shape(9, 40, 32)
    with pytest.raises(ConfigError, match="width=20: must be a multiple of 16.*use 16"):
        family.check_video_shape(9, 32, 20)
    with pytest.raises(ConfigError, match="weighting_scheme='cosmap'.*uniform, logit_normal, mode"):
        HunyuanVideoFamily(hunyuan_dir, weighting_scheme="cosmap")


def test_training_on_one_sample_reduces_the_loss(family, batch):
    assert_training_reduces_loss(family, {name: value[1:] for name, value in batch.items()})


def test_real_size_preset_builds_on_the_meta_device():
    transformer = build_real_size_transformer("hunyuan-video", device="meta")
    assert isinstance(transformer, HunyuanVideoTransformer3DModel)
    assert transformer.config.guidance_embeds and transformer.config.text_embed_dim == 4096
    assert all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in transformer.parameters())
    assert 12.5e9 < sum(p.numel() for p in transformer.parameters()) < 13.2e9
    assert torch.get_default_dtype() == torch.float32  # it is made in bf16, and the default is put back
