"""The no-setup demo: tiny random model + synthetic videos, created if absent, then a short LoRA run."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from blueberry_video.config import parse_config
from blueberry_video.data.sample_videos import create_sample_videos
from blueberry_video.models import get_family_class

DEMO_CONFIGS = {"cogvideox": "demo_cogvideox.yaml", "hunyuan_video": "demo_hunyuan_video.yaml"}


def demo_config_path(family_name: str) -> Path:
    return Path(str(resources.files("blueberry_video") / "configs" / DEMO_CONFIGS[family_name]))


def prepare_demo_inputs(family_name: str, workdir: Path) -> tuple[Path, Path]:
    """The tiny model and the sample videos under `workdir`, built only if they are not there yet."""
    model_dir = workdir / f"tiny-{family_name}"
    if not (model_dir / "model_index.json").exists():
        print(f"building the tiny {family_name} model in {model_dir}")
        get_family_class(family_name).save_tiny_pipeline(model_dir)
    data_dir = workdir / "sample-videos"
    if not (data_dir / "metadata.json").exists():
        print(f"writing sample videos to {data_dir}")
        create_sample_videos(data_dir, num=4)
    return model_dir, data_dir


def run_demo(family_name: str = "cogvideox", workdir: str | Path = ".blueberry/demo", extra_args: list[str] = ()):
    from blueberry_video.training.trainer import train

    workdir = Path(workdir)
    model_dir, data_dir = prepare_demo_inputs(family_name, workdir)
    output_dir = workdir / f"run-{family_name}"
    argv = ["--config", str(demo_config_path(family_name)),
            "--pretrained_model_name_or_path", str(model_dir),
            "--instance_data_root", str(data_dir),
            "--output_dir", str(output_dir),
            "--overwrite_output_dir", *extra_args]
    config = parse_config(argv)
    result = train(config, get_family_class(family_name).from_config(config))
    print(f"\ndemo finished: {result.global_step} steps, loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}")
    print(f"  weights:    {result.weights}")
    print(f"  videos:     {', '.join(str(v) for v in result.validation_videos)}")
    print(f"  loss plot:  {output_dir / 'loss.png'}")
    print(f"  model card: {output_dir / 'README.md'}")
    return result
