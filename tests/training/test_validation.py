"""Validation renders from prompts encoded up front, with the text encoders freed before denoising."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blueberry_video.config import TrainConfig
from blueberry_video.models import get_family_class
from blueberry_video.generate import encode_prompts_then_free_encoders
from blueberry_video.training.validation import generate_videos


@pytest.mark.parametrize("family_name, guidance_scale", [("cogvideox", 6.0), ("cogvideox", 1.0), ("hunyuan_video", 6.0)])
def test_prompts_encoded_up_front_render_what_the_pipeline_renders_from_text(family_name, guidance_scale, request):
    model_dir = request.getfixturevalue(f"tiny_{family_name}_dir")
    family = get_family_class(family_name)(model_dir)
    config = TrainConfig(pretrained_model_name_or_path=str(model_dir), dummy_data=True, max_num_frames=9, height=96,
                         width=160, num_inference_steps=2, guidance_scale=guidance_scale, num_validation_videos=2,
                         validation_prompt=["a red ball", "a blue cube"])
    transformer = family.load_transformer()
    prompt = "a blue cube"

    reference_pipe = family.build_pipeline(transformer, dtype=torch.float32)
    # Two videos of one prompt, asked for as the prompt twice: CogVideoXPipeline ignores num_videos_per_prompt.
    reference = reference_pipe(
        prompt=[prompt, prompt], num_videos_per_prompt=1, height=96, width=160, num_frames=9, num_inference_steps=2,
        guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(0), output_type="np",
        **family.generation_kwargs(9, 96, 160),
    ).frames

    pipe = family.build_pipeline(transformer, dtype=torch.float32)
    encoded = encode_prompts_then_free_encoders(pipe, family, {1: prompt}, 2, guidance_scale, torch.device("cpu"))
    assert all(part is None for name, part in pipe.components.items() if name.startswith("text_encoder"))
    videos = generate_videos(pipe, family, encoded[1], config, torch.Generator().manual_seed(0))

    assert videos.shape == reference.shape and videos.shape[0] == 2
    np.testing.assert_allclose(videos, reference, atol=1e-5)
    assert not np.allclose(videos[0], videos[1])  # two draws, not one video twice


@pytest.mark.parametrize("family_name", ["cogvideox", "hunyuan_video"])
def test_validation_denoises_under_autocast_and_decodes_outside_it(family_name, request, tmp_path,
                                                                   fresh_accelerate_state):
    # Under CUDA's autocast the VAE's group norms run in float32: an untiled decode would hold a third more.
    from accelerate import Accelerator

    from blueberry_video.training.validation import run_validation

    model_dir = request.getfixturevalue(f"tiny_{family_name}_dir")
    family = get_family_class(family_name)(model_dir)
    config = TrainConfig(pretrained_model_name_or_path=str(model_dir), dummy_data=True, max_num_frames=9, height=96,
                         width=160, num_inference_steps=1, validation_prompt=["a red ball"], output_dir=str(tmp_path))
    transformer = family.load_transformer(dtype=torch.bfloat16)
    autocast_during = {}

    def record(module, args):
        autocast_during[type(module).__name__] = torch.is_autocast_enabled("cpu")

    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        videos = run_validation(Accelerator(mixed_precision="bf16", cpu=True), family, transformer, config, step=1,
                                dtype=torch.bfloat16)
    finally:
        hook.remove()
    assert len(videos) == 1 and videos[0].is_file()
    assert autocast_during[type(transformer).__name__]
    decoders = {name: on for name, on in autocast_during.items() if name.endswith("Decoder3D")}
    assert decoders and not any(decoders.values()), autocast_during


@pytest.mark.parametrize("family_name, fps, validation_fps, saved_at", [
    ("cogvideox", 24.0, None, 24.0), ("cogvideox", 24.0, 10.0, 10.0),
    # consecutive source frames (no fps): the family's usual rate
    ("cogvideox", None, None, 8.0), ("hunyuan_video", None, None, 15.0)])
def test_validation_videos_play_at_the_rate_training_clips_were_sampled_at(family_name, fps, validation_fps, saved_at,
                                                                            request, tmp_path, fresh_accelerate_state):
    import imageio.v3 as iio
    from accelerate import Accelerator

    from blueberry_video.training.validation import run_validation

    model_dir = request.getfixturevalue(f"tiny_{family_name}_dir")
    family = get_family_class(family_name)(model_dir)
    config = TrainConfig(pretrained_model_name_or_path=str(model_dir), dummy_data=True, max_num_frames=9,
                         height=96, width=160, num_inference_steps=1, validation_prompt=["a red ball"],
                         output_dir=str(tmp_path), fps=fps, validation_fps=validation_fps)
    videos = run_validation(Accelerator(cpu=True), family, family.load_transformer(dtype=torch.float32), config,
                            step=1, dtype=torch.float32)
    assert iio.immeta(videos[0])["fps"] == saved_at


def test_generate_with_seed_plus_j_renders_validation_video_j_again(tiny_cogvideox_dir, tmp_path,
                                                                    fresh_accelerate_state):
    import imageio.v3 as iio
    from accelerate import Accelerator

    from blueberry_video.generate import generate
    from blueberry_video.training.validation import run_validation

    family = get_family_class("cogvideox")(tiny_cogvideox_dir)
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_cogvideox_dir), dummy_data=True, max_num_frames=9,
                         height=96, width=160, num_inference_steps=2, validation_prompt=["a red ball"], seed=5,
                         num_validation_videos=2, output_dir=str(tmp_path / "run"))
    videos = run_validation(Accelerator(cpu=True), family, family.load_transformer(dtype=torch.float32), config,
                            step=1, dtype=torch.float32)
    assert [v.name for v in videos] == ["step-000001-prompt0-0.mp4", "step-000001-prompt0-1.mp4"]
    again = generate("cogvideox", tiny_cogvideox_dir, "a red ball", tmp_path / "again.mp4", num_frames=9, height=96,
                     width=160, num_inference_steps=2, guidance_scale=config.guidance_scale, seed=6,
                     dtype=torch.float32)
    assert np.array_equal(iio.imread(again), iio.imread(videos[1]))
    assert not np.array_equal(iio.imread(videos[0]), iio.imread(videos[1]))


def test_a_lora_loaded_into_a_bf16_model_keeps_its_float32_weights_exactly(tiny_cogvideox_dir, tmp_path):
    # training's --init_lora_weights and generate's checkpoint-N: peft makes the adapter in the frozen weights'
    # dtype, where the file's values would be rounded to bf16
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from blueberry_video.training.lora import ADAPTER, add_lora

    family = get_family_class("cogvideox")(tiny_cogvideox_dir)
    source = family.load_transformer(dtype=torch.float32)
    add_lora(source, TrainConfig(rank=4, lora_alpha=4), family)
    state = {name: torch.randn_like(value) / 3 for name, value in
             get_peft_model_state_dict(source, adapter_name=ADAPTER).items()}
    save_file({f"transformer.{name}": value for name, value in state.items()}, tmp_path / "lora.safetensors")
    model = family.load_transformer(dtype=torch.bfloat16)
    add_lora(model, TrainConfig(rank=4, lora_alpha=4, init_lora_weights=str(tmp_path / "lora.safetensors")), family)
    loaded = get_peft_model_state_dict(model, adapter_name=ADAPTER)
    assert loaded.keys() == state.keys()
    for name, value in state.items():
        assert loaded[name].dtype == torch.float32 and torch.equal(loaded[name], value), name
