"""The benchmarks refuse arguments they cannot measure with argparse's usage and error line, before any model is
built, and the shapes they accept are the ones the families take."""

from __future__ import annotations

import argparse
import importlib

import pytest

from benchmarks import train_step, validation_render
from benchmarks.common import frame_count, pixel_size

TINY = ["--preset", "tiny-cogvideox"]
REFUSED = [
    ("train_step", [*TINY, "--batch", "0"], "argument --batch: 0: must be at least 1"),
    ("train_step", [*TINY, "--steps", "0"], "argument --steps: 0: must be at least 1"),
    ("train_step", [*TINY, "--rank", "0"], "argument --rank: 0: must be at least 1"),
    ("train_step", [*TINY, "--warmup", "-1"], "argument --warmup: -1: must be at least 0"),
    ("train_step", [*TINY, "--frames", "15"], ("argument --frames: 15 frames: the VAE makes one latent frame of "
                                               "every 4 after the first, so it takes 4k+1 frames; use 13 or 17")),
    ("train_step", [*TINY, "--height", "100"], "argument --height: 100: must be a positive multiple of 16"),
    ("train_step", [*TINY, "--width", "8"], ("argument --width: 8: must be a positive multiple of 16 (VAE "
                                             "downsampling x patch size); use 16")),
    ("train_step", [*TINY, "--gradient-checkpointing", "--gradient-checkpointing-ratio", "1.5"],
     "argument --gradient-checkpointing-ratio: 1.5: must be from 0 to 1"),
    ("train_step", [*TINY, "--gradient-checkpointing", "--gradient-checkpointing-ratio", "-0.5"],
     "argument --gradient-checkpointing-ratio: -0.5: must be from 0 to 1"),
    ("train_step", [*TINY, "--gradient-checkpointing-ratio", "0.5"],
     "--gradient-checkpointing-ratio needs --gradient-checkpointing"),
    ("model_flops", [*TINY, "--batch", "0"], "argument --batch: 0: must be at least 1"),
    ("overhead", ["--rounds", "0"], "argument --rounds: 0: must be at least 1"),
    ("overhead", ["--steps", "0"], "argument --steps: 0: must be at least 1"),
    ("overhead", ["--preset", "cogvideox-3b"], "argument --preset: invalid choice: 'cogvideox-3b'"),
    ("overhead", ["--frames", "10"], "argument --frames: 10 frames"),
    ("overhead", ["--height", "100"], "argument --height: 100: must be a positive multiple of 16"),
    ("loader_throughput", ["--preset", "cogvideox-3b"], "argument --preset: invalid choice: 'cogvideox-3b'"),
    ("loader_throughput", ["--batch", "4", "--num-samples", "2"],
     "--batch 4 is more than --num-samples 2: no whole batch to time"),
    ("loader_throughput", ["--epochs", "1"], "argument --epochs: 1: must be at least 2"),
    ("precompute_throughput", ["--num", "0"], "argument --num: 0: must be at least 1"),
    ("precompute_throughput", ["--frames", "12"], "argument --frames: 12 frames"),
    ("validation_render", ["--steps", "0"], "argument --steps: 0: must be at least 1"),
    ("validation_render", ["--frames", "13"], ("argument --frames: CogVideoX's pipeline would render 13 frames as "
                                               "16 (its VAE decodes latent frames in pairs); use 9 or 17")),
    ("decode_throughput", ["--repeats", "0"], "argument --repeats: 0: must be at least 1"),
]


@pytest.mark.parametrize(("benchmark", "argv", "message"), REFUSED,
                         ids=[f"{name} {' '.join(argv)}" for name, argv, _ in REFUSED])
def test_a_bad_argument_is_an_argparse_error(benchmark, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"benchmarks.{benchmark}").main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and f"error: {message}" in err


def test_warmup_may_be_zero_and_a_ratio_comes_with_checkpointing():
    args = train_step.parse_args([*TINY, "--warmup", "0", "--gradient-checkpointing",
                                  "--gradient-checkpointing-ratio", "0"])
    assert args.warmup == 0 and args.gradient_checkpointing_ratio == 0.0
    assert train_step.parse_args(TINY).gradient_checkpointing_ratio == 1.0


def test_every_gpu_suite_entry_passes_the_benchmarks_checks():
    from benchmarks import gpu_suite

    for entry in gpu_suite.SUITE:
        parse_args = importlib.import_module(f"benchmarks.{entry.module}").parse_args
        for tiny in (False, True):
            parse_args(entry.command(tiny)[3:])  # the arguments after `python -m benchmarks.<module>`


def family_takes(family, frames: int, height: int, width: int) -> bool:
    from blueberry_video.errors import ConfigError

    try:
        family.check_video_shape(frames, height, width)
        return True
    except ConfigError:
        return False


def parses(parse, argument) -> bool:
    """Whether an argparse type takes `argument`, or a parser the argument list."""
    try:
        parse(argument)
        return True
    except (ValueError, argparse.ArgumentTypeError, SystemExit):
        return False


@pytest.fixture(scope="module")
def preset_families(tiny_cogvideox_dir, tiny_hunyuan_video_dir, tmp_path_factory):
    from blueberry_video.models import get_family_class
    from blueberry_video.models.presets import (
        REAL_SIZE_TRANSFORMERS,
        save_real_size_configs,
    )

    families = {"tiny-cogvideox": get_family_class("cogvideox")(tiny_cogvideox_dir),
                "tiny-hunyuan-video": get_family_class("hunyuan_video")(tiny_hunyuan_video_dir)}
    for preset, (family_name, _) in REAL_SIZE_TRANSFORMERS.items():
        model_dir = save_real_size_configs(preset, tmp_path_factory.mktemp(preset))
        families[preset] = get_family_class(family_name)(model_dir)
    return families


def test_the_shapes_parsed_are_the_ones_every_preset_takes(preset_families):
    for preset, family in preset_families.items():
        for frames in range(70):
            assert parses(frame_count, str(frames)) == family_takes(family, frames, 96, 160), (preset, frames)
        for pixels in range(1, 200):
            assert parses(pixel_size, str(pixels)) == family_takes(family, 9, pixels, 160), (preset, pixels)


def test_validation_render_takes_the_frame_counts_the_pipeline_returns_as_asked(preset_families):
    from blueberry_video.errors import ConfigError

    for preset, family in preset_families.items():
        for frames in range(1, 70):
            try:
                family.check_video_shape(frames, 96, 160)
                family.check_generation_frames(frames)
                rendered_as_asked = True
            except ConfigError:
                rendered_as_asked = False
            argv = ["--preset", preset, "--frames", str(frames)]
            assert parses(validation_render.parse_args, argv) == rendered_as_asked, (preset, frames)
