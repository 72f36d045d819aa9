import pytest
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
from transformers import T5EncoderModel, T5Tokenizer

from blueberry_video.errors import ConfigError
from blueberry_video.models.cogvideox import CogVideoXFamily
from blueberry_video.models.presets import tiny_cogvideox_components
from blueberry_video.training.objectives import alphas_cumprod_at, cogvideox_loss, ddpm_noisy_latents
from blueberry_video.training.sampling import draw_latent_noise_and_timesteps
from tests.models.helpers import PROMPTS, cached_batch, generators
from tests.models.helpers import assert_generates_frames, assert_pipeline_is_the_preset, assert_training_reduces_loss


@pytest.fixture(scope="module")
def family(cogvideox_dir):
    return CogVideoXFamily(cogvideox_dir)


def test_tiny_pipeline_reloads_with_every_part_and_generates(cogvideox_dir, family):
    pipe = CogVideoXPipeline.from_pretrained(cogvideox_dir)
    expected = {
        "transformer": CogVideoXTransformer3DModel,
        "vae": AutoencoderKLCogVideoX,
        "text_encoder": T5EncoderModel,
        "tokenizer": T5Tokenizer,
        "scheduler": CogVideoXDPMScheduler,
    }
    assert_pipeline_is_the_preset(pipe, tiny_cogvideox_components(seed=0), expected)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert_generates_frames(pipe, family)


def test_encode_prompts_equals_the_pipeline(cogvideox_dir, family, encoders):
    ours = family.encode_prompts(encoders, PROMPTS)
    # Under no_grad, as the pipeline's __call__ runs it: with autograd on, SDPA picks another CPU kernel.
    with torch.no_grad():
        embeds, _ = CogVideoXPipeline.from_pretrained(cogvideox_dir).encode_prompt(
            PROMPTS, do_classifier_free_guidance=False, max_sequence_length=family.max_text_length
        )
    assert torch.equal(ours["prompt_embeds"], embeds)
    assert embeds.shape == (2, family.transformer_config["max_text_seq_length"], 32)
    dummy = family.dummy_text_conditioning(torch.Generator().manual_seed(0))
    assert dummy["prompt_embeds"].shape == embeds.shape[1:]


def test_encode_videos_equals_the_vae(family, encoders, videos):
    ours = family.encode_videos(encoders, videos)
    with torch.no_grad():
        dist = encoders.vae.encode(videos.permute(0, 2, 1, 3, 4)).latent_dist
    assert torch.equal(ours["latent_mean"], dist.mean)
    assert torch.equal(ours["latent_std"], dist.std)
    assert ours["latent_mean"].shape == (2, *family.latent_shape(9, 32, 32))


def reference_loss(transformer, scheduler, batch, seeds, scaling_factor) -> torch.Tensor:
    """v-prediction turned into x0: x0_pred = sqrt(a) x_t - sqrt(1 - a) v, MSE weighted by 1 / (1 - a)."""
    losses = []
    for i, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(seed)
        shape = batch["latent_mean"].shape[1:]
        x0 = batch["latent_mean"][i] + batch["latent_std"][i] * torch.randn(shape, generator=generator)
        eps = torch.randn(shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=generator)
        x0 = (x0 * scaling_factor).permute(1, 0, 2, 3)  # [F, C, H, W], as the transformer takes it
        eps = eps.permute(1, 0, 2, 3)
        alpha_bar = scheduler.alphas_cumprod[t].float()  # the scheduler keeps them in float64
        x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
        with torch.no_grad():
            v = transformer(
                hidden_states=x_t[None],
                encoder_hidden_states=batch["prompt_embeds"][i : i + 1],
                timestep=t,
                return_dict=False,
            )[0][0]
        x0_pred = alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * v
        losses.append(((x0_pred - x0) ** 2 / (1 - alpha_bar)).mean())
    return torch.stack(losses).mean()


def test_training_loss_equals_a_direct_computation(family, batch):
    transformer, scheduler = family.load_transformer(), family.load_training_scheduler()
    assert not transformer.config.use_rotary_positional_embeddings  # the reference passes no rotary embeddings
    seeds = [11, 12]
    with torch.no_grad():
        loss = family.training_loss(transformer, scheduler, batch, generators(seeds))
    scaling = family.read_config("vae")["scaling_factor"]
    expected = reference_loss(transformer, scheduler, batch, seeds, scaling)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)


def test_noising_and_loss_equal_the_schedulers_own_formulas(family):
    # The loss computes the coefficients once per step; they must stay the scheduler's add_noise/get_velocity.
    scheduler = family.load_training_scheduler()
    gen = torch.Generator().manual_seed(3)
    latents, noise, output = (torch.randn(2, 3, 4, 6, 8, generator=gen) for _ in range(3))
    timesteps = torch.tensor([17, 903])
    alpha_bar = alphas_cumprod_at(scheduler, timesteps)
    noisy = ddpm_noisy_latents(latents, noise, alpha_bar)
    torch.testing.assert_close(noisy, scheduler.add_noise(latents, noise, timesteps))
    x0 = scheduler.get_velocity(output, noisy, timesteps)
    weights = 1 / (1 - scheduler.alphas_cumprod[timesteps].float())
    expected = (weights * ((x0 - latents) ** 2).flatten(1).mean(1)).mean()
    torch.testing.assert_close(cogvideox_loss(output, noisy, latents, alpha_bar), expected)


def test_draws_do_not_depend_on_the_batch_split(family, batch):
    seeds = [5, 6]
    mean, std = batch["latent_mean"], batch["latent_std"]
    together = draw_latent_noise_and_timesteps(mean, std, generators(seeds), num_train_timesteps=1000)
    for i, seed in enumerate(seeds):
        alone = draw_latent_noise_and_timesteps(
            mean[i : i + 1], std[i : i + 1], generators([seed]), num_train_timesteps=1000
        )
        for joint, single in zip(together, alone):
            assert torch.equal(joint[i : i + 1], single)


def test_geometry_errors_name_the_setting_and_a_valid_value(family):
    family.check_video_shape(9, 32, 48)
    assert family.latent_shape(9, 32, 48) == (4, 3, 4, 6)
    with pytest.raises(ConfigError, match=r"max_num_frames=10: .*4k\+1 frames; use 9"):
        family.check_video_shape(10, 32, 32)
    with pytest.raises(ConfigError, match="height=40: must be a multiple of 16.*use 48"):
        family.check_video_shape(9, 40, 32)
    with pytest.raises(ConfigError, match="width=20: must be a multiple of 16.*use 16"):
        family.check_video_shape(9, 32, 20)


def test_training_on_one_sample_reduces_the_loss(family, batch):
    assert_training_reduces_loss(family, {name: value[1:] for name, value in batch.items()})


@pytest.fixture(scope="module")
def cogvideox_15_dir(cogvideox_dir, tmp_path_factory):
    """The tiny pipeline with a CogVideoX 1.5-style transformer: frames patched in pairs, rotary positions, ofs."""
    import shutil

    root = tmp_path_factory.mktemp("tiny-cogvideox-1.5")
    shutil.copytree(cogvideox_dir, root, dirs_exist_ok=True)
    config = CogVideoXTransformer3DModel.load_config(cogvideox_dir / "transformer")
    config.update(patch_size_t=2, use_rotary_positional_embeddings=True, ofs_embed_dim=16, patch_bias=False)
    torch.manual_seed(0)
    CogVideoXTransformer3DModel.from_config(config).save_pretrained(root / "transformer")
    return root


def test_cogvideox_15_frame_rule_and_training_loss(cogvideox_15_dir, videos):
    family = CogVideoXFamily(cogvideox_15_dir)
    family.check_video_shape(81, 96, 160)  # the 1.5 models' own clip length
    family.check_video_shape(9, 96, 160)
    with pytest.raises(ConfigError, match="8k\\+1.*use 17"):
        family.check_video_shape(13, 96, 160)
    encoders = family.load_encoders(torch.float32, "cpu")
    batch = cached_batch(family, encoders, videos)  # 9 frames: 3 latent frames, padded to 4 for the pairs
    transformer = family.load_transformer()
    loss = family.training_loss(transformer, family.load_training_scheduler(), batch, generators([0, 1]))
    loss.backward()
    assert torch.isfinite(loss)
    assert transformer.patch_embed.proj.weight.grad.abs().sum() > 0
    assert_training_reduces_loss(family, {k: v[:1] for k, v in batch.items()})
