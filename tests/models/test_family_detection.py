"""A model directory holding another family's model is refused before any work, and the CLI verbs read the
family from the folder when --family is not given."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from blueberry_video.cli import main
from blueberry_video.errors import ModelLayoutError
from blueberry_video.models import family_for_model_dir, get_family_class
from blueberry_video.models.cogvideox import CogVideoXFamily
from blueberry_video.models.presets import REAL_SIZE_TRANSFORMERS, save_real_size_configs
from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "recipes"))
import train_cogvideox  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
ESTIMATE = ["--max_num_frames", "9", "--height", "96", "--width", "160", "--rank", "4", "--lora_alpha", "4"]


def estimate(capsys, *args) -> dict:
    main(["estimate-memory", "--json", *ESTIMATE, *args])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def unnamed_cogvideox_dir(tiny_cogvideox_dir, tmp_path_factory):
    """The tiny CogVideoX folder as a hand-made one would be: no class named for the pipeline or transformer."""
    root = tmp_path_factory.mktemp("unnamed") / "cogvideox"
    shutil.copytree(tiny_cogvideox_dir, root)
    index = json.loads((root / "model_index.json").read_text())
    del index["_class_name"], index["transformer"]
    (root / "model_index.json").write_text(json.dumps(index))
    config_file = root / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    del config["_class_name"]
    config_file.write_text(json.dumps(config))
    return root


def test_the_cogvideox_recipe_refuses_a_hunyuan_video_folder_before_the_cache(tiny_hunyuan_video_dir,
                                                                               sample_dataset_dir, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ModelLayoutError) as refused:
        train_cogvideox.main(["--pretrained_model_name_or_path", str(tiny_hunyuan_video_dir),
                              "--instance_data_root", str(sample_dataset_dir), "--output_dir", str(tmp_path / "out"),
                              "--cache_dir", str(cache), "--height", "96", "--width", "160",
                              "--max_num_frames", "9", "--mixed_precision", "no", "--max_train_steps", "1"])
    message = str(refused.value)
    assert str(tiny_hunyuan_video_dir / "transformer" / "config.json") in message
    assert "HunyuanVideoTransformer3DModel" in message and "CogVideoXTransformer3DModel" in message
    assert "recipes/train_hunyuan_video.py" in message and "--family hunyuan_video" in message
    assert not cache.exists()


def test_estimate_memory_without_family_estimates_the_folders_family(tiny_hunyuan_video_dir, capsys):
    model = ["--pretrained_model_name_or_path", str(tiny_hunyuan_video_dir)]
    inferred = estimate(capsys, *model)
    assert inferred == estimate(capsys, *model, "--family", "hunyuan_video")
    assert inferred["peak_gib"] > 0


def test_an_explicit_family_that_disagrees_with_the_folder_is_refused(tiny_hunyuan_video_dir, tiny_cogvideox_dir,
                                                                      tmp_path, capsys):
    with pytest.raises(ModelLayoutError, match="HunyuanVideoTransformer3DModel.*the cogvideox family"):
        estimate(capsys, "--family", "cogvideox", "--pretrained_model_name_or_path", str(tiny_hunyuan_video_dir))
    with pytest.raises(ModelLayoutError, match="CogVideoXTransformer3DModel.*the hunyuan_video family"):
        main(["generate", "--family", "hunyuan_video", "--model", str(tiny_cogvideox_dir), "--prompt", "a cat",
              "--out", str(tmp_path / "video.mp4"), "--num-frames", "9", "--height", "96", "--width", "160",
              "--steps", "1"])
    assert not (tmp_path / "video.mp4").exists()
    with pytest.raises(ModelLayoutError, match="--family hunyuan_video"):
        main(["train", "--family", "cogvideox", "--pretrained_model_name_or_path", str(tiny_hunyuan_video_dir),
              "--output_dir", str(tmp_path / "out"), "--dummy_data"])


def test_generate_without_family_uses_the_folders_family(tiny_hunyuan_video_dir, tmp_path):
    out = tmp_path / "video.mp4"
    main(["generate", "--model", str(tiny_hunyuan_video_dir), "--prompt", "a cat", "--out", str(out),
          "--num-frames", "9", "--height", "96", "--width", "160", "--steps", "1", "--guidance-scale", "1"])
    assert out.is_file()


@pytest.mark.parametrize("preset", sorted(REAL_SIZE_TRANSFORMERS))
def test_real_size_config_folders_name_their_family(preset, tmp_path):
    family_name = REAL_SIZE_TRANSFORMERS[preset][0]
    model_dir = save_real_size_configs(preset, tmp_path / preset)
    assert family_for_model_dir(model_dir) == family_name
    get_family_class(family_name)(model_dir)  # passes its own family's check


def test_a_folder_that_names_no_class_still_works(unnamed_cogvideox_dir, tiny_cogvideox_dir, capsys):
    assert family_for_model_dir(unnamed_cogvideox_dir) == "cogvideox"
    CogVideoXFamily(unnamed_cogvideox_dir)
    named = estimate(capsys, "--pretrained_model_name_or_path", str(tiny_cogvideox_dir))
    unnamed = estimate(capsys, "--pretrained_model_name_or_path", str(unnamed_cogvideox_dir))
    assert unnamed.pop("model") == str(unnamed_cogvideox_dir) and named.pop("model") == str(tiny_cogvideox_dir)
    assert unnamed == named


def test_a_transformer_no_family_trains_is_named(tiny_cogvideox_dir, tmp_path):
    root = tmp_path / "wan"
    shutil.copytree(tiny_cogvideox_dir, root)
    config_file = root / "transformer" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "_class_name": "WanTransformer3DModel"}))
    with pytest.raises(ModelLayoutError, match="WanTransformer3DModel, which no model family here trains"):
        family_for_model_dir(root)
    with pytest.raises(ModelLayoutError, match="WanTransformer3DModel, but the cogvideox family needs"):
        CogVideoXFamily(root)
