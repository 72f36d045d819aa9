"""The `blueberry-video` command: tiny models, sample videos, the latent cache, the demo, generation."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from blueberry_video.errors import ConfigError, exit_on_error
from blueberry_video.models import DEFAULT_FAMILY, family_names

# For the verbs that are given a model directory: without --family, the folder says.
FAMILY_FROM_MODEL_HELP = (f"model family (default: the one whose transformer class the model folder's configs name; "
                          f"{DEFAULT_FAMILY} if they name none)")

# precompute and estimate-memory read a training config but log nothing: its tracker need not be installed.
LOGS_NOTHING = ["--report_to", "none"]


def _family_name(args, model_dir) -> str:
    """--family as given (the family then refuses a folder holding another family's model), else the folder's."""
    from blueberry_video.models import family_for_model_dir

    return args.family or family_for_model_dir(model_dir)


def _make_tiny_model(args):
    from blueberry_video.models import get_family_class

    path = get_family_class(args.family).save_tiny_pipeline(args.out_dir, seed=args.seed)
    print(f"tiny {args.family} pipeline saved to {path}")


def _create_sample_videos(args):
    from blueberry_video.data.sample_videos import create_sample_videos

    metadata = create_sample_videos(args.out_dir, num=args.num, num_frames=args.num_frames, height=args.height,
                                    width=args.width, fps=args.fps, seed=args.seed)
    print(f"{args.num} videos written; captions in {metadata}")


# precompute's own flags, as the training settings they stand for (its --dtype is mixed_precision's dtype).
PRECOMPUTE_FLAGS = {"model": "pretrained_model_name_or_path", "data": "instance_data_root", "out": "cache_dir",
                    "height": "height", "width": "width", "num_frames": "max_num_frames", "fps": "fps",
                    "skip_frames_start": "skip_frames_start", "skip_frames_end": "skip_frames_end", "crop": "crop",
                    "short_video": "short_video", "caption_column": "caption_column",
                    "video_column": "video_column", "id_token": "id_token", "cache_dtype": "cache_dtype"}
PRECISION_OF_DTYPE = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}


def _precompute(args, extra):
    """Build the latent cache exactly as training with the same config and flags would: same settings, so the
    same cache (training finds it and reads no video)."""
    import torch
    from accelerate import Accelerator

    from blueberry_video.config import parse_config
    from blueberry_video.data.cache import CacheSettings, precompute_latent_cache
    from blueberry_video.models import load_family
    from blueberry_video.training.accelerator import (
        check_launch,
        leave_without_teardown_after_a_multi_process_run,
        weight_dtype,
    )
    from blueberry_video.training.cuda_allocator import use_expandable_segments

    argv = ["--config", args.config] if args.config else []
    given_as_settings = {token.split("=")[0] for token in extra if token.startswith("--")}
    for flag, setting in PRECOMPUTE_FLAGS.items():
        if getattr(args, flag) is not None:
            if f"--{setting}" in given_as_settings:  # which one would win is not for the user to guess
                raise ConfigError(f"--{flag.replace('_', '-')} and --{setting} both given: they are the same "
                                  f"setting; give one")
            argv += [f"--{setting}", str(getattr(args, flag))]
    if args.dtype:
        argv += ["--mixed_precision", PRECISION_OF_DTYPE[args.dtype]]
    argv += ["--vae_tiling"] * args.vae_tiling + ["--strict_data"] * args.strict + ["--spread_frames"] * args.spread_frames
    config = parse_config(argv + extra + LOGS_NOTHING)
    use_expandable_segments(config.expandable_segments)  # the VAE encode runs the training run's allocator
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    check_launch(accelerator)
    family = load_family(_family_name(args, config.pretrained_model_name_or_path), config.pretrained_model_name_or_path)
    family.check_video_shape(config.max_num_frames, config.height, config.width)
    report = precompute_latent_cache(family, config.instance_data_root, config.resolved_cache_dir,
                                     CacheSettings.from_config(config, weight_dtype(accelerator)),
                                     accelerator=accelerator, strict=config.strict_data,
                                     device=accelerator.device if torch.cuda.is_available() else "cpu",
                                     chunk_size=args.chunk_size)
    if accelerator.is_main_process:
        print(report.summary())
    # As a finished training run ends (print_train_result).
    leave_without_teardown_after_a_multi_process_run()


def _demo(args, extra):
    from blueberry_video.demo import run_demo

    run_demo(args.family, args.workdir, extra)


def _generate(args):
    import torch

    from blueberry_video.generate import generate

    path = generate(_family_name(args, args.model), args.model, args.prompt, args.out, lora=args.lora,
                    transformer_dir=args.transformer, num_frames=args.num_frames, height=args.height, width=args.width,
                    num_inference_steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed,
                    fps=args.fps, lora_scale=args.lora_scale, vae_tiling=args.vae_tiling,
                    dtype=getattr(torch, args.dtype) if args.dtype else None, attention_backend=args.attention_backend)
    print(f"video written to {path}")


def _train(args, extra):
    from blueberry_video.config import parse_config
    from blueberry_video.models import family_for_model_dir, get_family_class
    from blueberry_video.training.trainer import run_recipe

    argv = (["--config", args.config] if args.config else []) + extra
    # Without --family the config is read here for its model directory; the recipe parses it again (and warns).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        family_name = args.family or family_for_model_dir(parse_config(argv).pretrained_model_name_or_path)
    print_train_result(run_recipe(get_family_class(family_name), argv))


def print_train_result(result) -> None:
    """The line a training run ends with (this verb's and the recipes'), from the main process only; then a rank
    of a multi-process run ends its process (see leave_without_teardown_after_a_multi_process_run)."""
    from accelerate import PartialState

    from blueberry_video.training.accelerator import leave_without_teardown_after_a_multi_process_run

    if PartialState().is_main_process and result.stopped_early:
        print(f"{result.global_step} steps, stopped before the last: no weights exported; {result.weights} holds "
              "them")
    elif PartialState().is_main_process:
        print(f"{result.global_step} steps; outputs in {result.output_dir}")
    leave_without_teardown_after_a_multi_process_run()


def _estimate_memory(args, extra):
    import dataclasses
    import tempfile

    from blueberry_video.config import config_file_in, parse_config
    from blueberry_video.models.presets import REAL_SIZE_TRANSFORMERS, save_real_size_configs
    from blueberry_video.training.preflight import warn_of_a_config_for_another_family

    defaults = {"dummy_data": True}  # the estimate reads no data
    if args.preset and "--pretrained_model_name_or_path" in {flag.split("=")[0] for flag in extra}:
        raise ConfigError(f"--preset {args.preset} and --pretrained_model_name_or_path both name the model to "
                          "estimate: give one")
    if args.preset and args.family and args.family != REAL_SIZE_TRANSFORMERS[args.preset][0]:
        raise ConfigError(f"--preset {args.preset} is a {REAL_SIZE_TRANSFORMERS[args.preset][0]} model, not "
                          f"{args.family}: drop --family (the preset sets it)")
    with tempfile.TemporaryDirectory(prefix="blueberry-preset-") as preset_dir:
        if args.preset:
            defaults["pretrained_model_name_or_path"] = str(save_real_size_configs(args.preset, preset_dir))
        try:
            config = parse_config(extra + LOGS_NOTHING, defaults=defaults)
        except ConfigError as error:
            if str(error).startswith("pretrained_model_name_or_path is required"):
                raise ConfigError("estimate-memory needs a model: --preset cogvideox-2b | cogvideox-5b | "
                                  "hunyuan-video (a published size, no files needed), or "
                                  "--pretrained_model_name_or_path DIR") from error
            raise
        model = f"{args.preset} (the published configs; no weights read)" if args.preset else \
            config.pretrained_model_name_or_path
        if args.preset and config.pretrained_model_name_or_path != defaults["pretrained_model_name_or_path"]:
            # A config made from the demo's names the tiny model: the preset asked for is what is estimated.
            print(f"note: the --config file names the model {config.pretrained_model_name_or_path}; --preset "
                  f"{args.preset} is estimated instead", file=sys.stderr)
            config = dataclasses.replace(config, pretrained_model_name_or_path=defaults["pretrained_model_name_or_path"])
        # The preset's folder names its transformer class, so the preset sets the family too.
        family_name = _family_name(args, config.pretrained_model_name_or_path)
        warn_of_a_config_for_another_family(config_file_in(extra), family_name)
        _print_memory_estimate(args, config, family_name, model)


def _print_memory_estimate(args, config, family_name, model):
    import json

    from blueberry_video.models import get_family_class
    from blueberry_video.training.memory_estimate import (
        GIB,
        estimate_training_memory,
        format_bytes,
        largest_frames_within,
        least_checkpointing_within,
    )
    from blueberry_video.training.preflight import check_objective_settings

    family = get_family_class(family_name).from_config(config)
    check_objective_settings(config, family)  # what training would refuse is not estimated
    budget = args.budget_gib * GIB if args.budget_gib else None
    if args.max_frames and args.min_checkpointing:
        raise SystemExit("--max-frames and --min-checkpointing search different things: give one")
    searched = {}
    if args.min_checkpointing:
        if budget is None:
            raise SystemExit("--min-checkpointing needs --budget-gib (the memory to fit in)")
        ratio, recomputed, blocks, estimate = least_checkpointing_within(family, config, budget,
                                                                        count_encoders=args.count_encoders)
        if ratio is None:
            raise SystemExit(f"even with all {blocks} blocks recomputing, the estimate is over {args.budget_gib} GiB "
                             f"at {config.max_num_frames}x{config.height}x{config.width}")
        searched = {"gradient_checkpointing_ratio": float(ratio), "recomputed_blocks": recomputed, "blocks": blocks}
    elif args.max_frames:
        if budget is None:
            raise SystemExit("--max-frames needs --budget-gib (the memory to fit in)")
        frames, estimate = largest_frames_within(family, config, budget, count_encoders=args.count_encoders)
        if frames is None:
            raise SystemExit(f"not even the fewest frames fit in {args.budget_gib} GiB at {config.height}x{config.width}")
    else:
        estimate = estimate_training_memory(family, config)
    total = estimate.total_bytes(args.count_encoders)
    if args.json:
        print(json.dumps({"model": args.preset or str(model), **estimate.as_dict(), **searched,
                          "count_encoders": args.count_encoders, "total_gib": total / GIB,
                          "budget_gib": args.budget_gib, "fits": None if budget is None else total <= budget}))
        return
    print(f"model: {model}")
    print(estimate.summary())
    if args.count_encoders:
        print(f"  with the text encoders and VAE resident: {format_bytes(total)}")
    if args.min_checkpointing and recomputed == 0:
        print(f"fits in {args.budget_gib} GiB with no block recomputing: --no-gradient_checkpointing is enough")
    elif args.min_checkpointing:
        print(f"least recomputation within {args.budget_gib} GiB: {recomputed} of {blocks} blocks "
              f"(--gradient_checkpointing --gradient_checkpointing_ratio {ratio})")
    elif args.max_frames:
        print(f"largest clip within {args.budget_gib} GiB: {estimate.num_frames} frames")
    elif budget is not None:
        print(f"{'fits' if total <= budget else 'does NOT fit'} in {args.budget_gib} GiB (estimated {format_bytes(total)})")


def _new_experiment(args):
    from blueberry_video.experiments import new_experiment

    path = new_experiment(args.name, base_dir=args.dir, from_config=args.from_config, family=args.family)
    print(f"experiment created in {path}: write the question and hypothesis in {path / 'README.md'}, "
          f"then run it as its 'How to run' says")


def _make_parent_folder(flag: str, path: Path) -> None:
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder: give a file name in it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{flag} {path}: cannot make its folder {path.parent} ({error.strerror or error}); give a "
                          "path in a folder you can write") from error


def _report(args):
    from blueberry_video.report import compare_runs

    out, plot = Path(args.out), Path(args.plot)
    if out.resolve() == plot.resolve():
        raise ConfigError(f"--out and --plot are the same file ({out}): the table would overwrite the plot; give "
                          "the plot a .png name of its own")
    report = compare_runs(args.run_dirs)
    for flag, path in (("--out", out), ("--plot", plot)):  # both folders, before either file is written
        _make_parent_folder(flag, path)
    print(report.table)
    report.save_plot(args.plot)
    report.write_markdown(args.out, plot=args.plot)
    print(f"\ntable written to {args.out}, loss plot to {args.plot}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blueberry-video", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    about = "build a tiny random pipeline in the diffusers layout (for tests and trying things on a CPU)"
    p = verbs.add_parser("make-tiny-model", help=about, description=about)
    p.add_argument("out_dir", help="folder to write (transformer/, vae/, text_encoder/, tokenizer/, scheduler/, ...)")
    p.add_argument("--family", choices=family_names(), default=DEFAULT_FAMILY, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    p.set_defaults(run=_make_tiny_model)

    about = "write synthetic .mp4 videos with captions (metadata.json)"
    p = verbs.add_parser("create-sample-videos", help=about, description=about)
    p.add_argument("out_dir", help="folder for videos/*.mp4 and metadata.json")
    p.add_argument("--num", type=int, default=8, help="number of videos (default: %(default)s)")
    p.add_argument("--num-frames", type=int, default=49, help="frames per video (default: %(default)s)")
    p.add_argument("--height", type=int, default=96, help="frame height in pixels, even (default: %(default)s)")
    p.add_argument("--width", type=int, default=160, help="frame width in pixels, even (default: %(default)s)")
    p.add_argument("--fps", type=float, default=8, help="frame rate written to the files (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shapes, colours and motion (default: %(default)s)")
    p.set_defaults(run=_create_sample_videos)

    p = verbs.add_parser("precompute", help="encode a dataset into the latent cache ahead of training (accelerate "
                                            "launch for several processes); takes the training config and flags, "
                                            "so the cache is the one training with them reads")
    p.add_argument("--family", choices=family_names(), help=FAMILY_FROM_MODEL_HELP)
    p.add_argument("--config", help="the training's YAML file: its data, frame and precision settings")
    p.add_argument("--model", help="model directory (diffusers layout): --pretrained_model_name_or_path")
    p.add_argument("--data", help="dataset folder: --instance_data_root")
    p.add_argument("--out", help="cache folder: --cache_dir (default <dataset>/.latent_cache, where training looks)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--num-frames", type=int, help="--max_num_frames")
    p.add_argument("--fps", type=float)
    p.add_argument("--skip-frames-start", type=int)
    p.add_argument("--skip-frames-end", type=int)
    p.add_argument("--crop", choices=["center", "random"])
    p.add_argument("--short-video", choices=["skip", "loop", "pad"])
    p.add_argument("--caption-column")
    p.add_argument("--video-column")
    p.add_argument("--id-token")
    p.add_argument("--dtype", choices=list(PRECISION_OF_DTYPE),
                   help="what the encoders run in: the training's mixed_precision (bf16 by default)")
    p.add_argument("--cache-dtype", choices=["float32", "float16"])
    p.add_argument("--spread-frames", action="store_true",
                   help="--spread_frames: spread each clip over its whole video instead of consecutive frames")
    p.add_argument("--vae-tiling", action="store_true")
    p.add_argument("--strict", action="store_true", help="fail, naming every unusable video, instead of skipping them")
    # Videos per unit of resumable work; hidden because only tests need to change it.
    p.add_argument("--chunk-size", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(run=_precompute, takes_extra=True)

    about = ("tiny model + sample videos + a short LoRA run, on CPU, no downloads; extra flags go to the training "
             "config (e.g. --max_train_steps 20)")
    p = verbs.add_parser("demo", help=about, description=about)
    p.add_argument("--family", choices=family_names(), default=DEFAULT_FAMILY, help="(default: %(default)s)")
    p.add_argument("--workdir", default=".blueberry/demo",
                   help="folder for the tiny model, the videos and the run (default: %(default)s)")
    p.set_defaults(run=_demo, takes_extra=True)

    about = "generate a video with a base model plus a LoRA or fine-tuned transformer"
    p = verbs.add_parser("generate", help=about, description=(
        f"{about}. Video settings not given are the ones of the training run that --lora or --transformer comes "
        f"from (its config.yaml), else the family's usual: CogVideoX 49 frames at 480x720, 8 fps; HunyuanVideo 61 "
        f"frames at 320x512, 15 fps."))
    p.add_argument("--family", choices=family_names(), help=FAMILY_FROM_MODEL_HELP)
    p.add_argument("--model", required=True,
                   help="base model directory (diffusers layout) the weights were trained from")
    p.add_argument("--prompt", required=True, help="what the video shows")
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--lora", help="trained LoRA: a run's output_dir, one of its checkpoint-N folders, or a "
                                  ".safetensors file (default: none, the base model)")
    p.add_argument("--lora-scale", type=float, default=1.0, help="strength of the LoRA (default: %(default)s)")
    p.add_argument("--transformer", help="fine-tuned transformer: a full fine-tune's output_dir, its transformer/ "
                                         "or a checkpoint-N folder (default: the base model's)")
    p.add_argument("--num-frames", type=int, help="frames to generate (default: the run's max_num_frames, else the "
                                                  "family's usual)")
    p.add_argument("--height", type=int, help="frame height in pixels (default: the run's, else the family's usual)")
    p.add_argument("--width", type=int, help="frame width in pixels (default: the run's, else the family's usual)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the run's validation num_inference_steps, "
                                             "else 50)")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale (HunyuanVideo: its guidance "
                                                        "embedding) (default: the run's validation guidance_scale, "
                                                        "else 6.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise; the run's seed + J renders its "
                                                        "validation video step-N-promptI-J.mp4 again, whatever the "
                                                        "prompt I (default: %(default)s)")
    p.add_argument("--fps", type=float, help="frame rate of the .mp4 (default: the run's validation_fps or fps, else "
                                             "the family's usual)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="weights' dtype (default: the run's mixed_precision, else bfloat16 on a GPU, float32 on "
                        "the CPU)")
    p.add_argument("--vae-tiling", action=argparse.BooleanOptionalAction,
                   help="decode tile by tile: less memory for large videos (default: as the run's validation did, "
                        "else off)")
    p.add_argument("--attention-backend", default="native",
                   help="diffusers attention backend for the transformer (HunyuanVideo), as in training "
                        "(default: %(default)s)")
    p.set_defaults(run=_generate)

    about = ("train in one process from a config (an experiment's config.yaml); any training flag overrides it "
             "(python recipes/train_cogvideox.py --help lists them all). Several GPUs: accelerate launch "
             "recipes/train_<family>.py")
    p = verbs.add_parser("train", allow_abbrev=False, help=about, description=about)
    p.add_argument("--family", choices=family_names(), help=FAMILY_FROM_MODEL_HELP)
    p.add_argument("--config", help="YAML file of training settings")
    p.set_defaults(run=_train, takes_extra=True)

    about = ("estimate a training run's peak GPU memory on any machine (no GPU, no weights read): takes the training "
             "config and flags (--config X.yaml, --gradient_checkpointing, --rank 64, ...: python "
             "recipes/train_cogvideox.py --help lists them), and a model: --preset for a published size, or "
             "--pretrained_model_name_or_path DIR")
    p = verbs.add_parser("estimate-memory", allow_abbrev=False, help=about, description=about)
    p.add_argument("--family", choices=family_names(), help=FAMILY_FROM_MODEL_HELP)
    p.add_argument("--preset", choices=["cogvideox-2b", "cogvideox-5b", "hunyuan-video"],
                   help="a published model's size, without its files (sets the family and model directory)")
    p.add_argument("--budget-gib", type=float,
                   help="allocated GPU memory to fit in, says whether it fits: a card's size less about 3 GiB for the "
                        "CUDA context and the allocator's reserve (76 for an 80 GB card; HunyuanVideo at 189 "
                        "frames, estimated 78.4, ran on an 80 GB H100, so 78.5 finds its edge)")
    p.add_argument("--max-frames", action="store_true", help="search the most frames per clip (up to 257) that fit the budget")
    p.add_argument("--min-checkpointing", action="store_true",
                   help="search the lowest --gradient_checkpointing_ratio (fewest blocks recomputing, fastest) that "
                        "fits the budget")
    p.add_argument("--count-encoders", action="store_true",
                   help="count the text encoders and VAE as kept on the GPU (the diffusers example scripts' layout)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.set_defaults(run=_estimate_memory, takes_extra=True)

    p = verbs.add_parser("new-experiment", help="copy experiments/exp_template to a new experiment folder")
    p.add_argument("name", help="folder name, e.g. lr-sweep")
    p.add_argument("--from", dest="from_config", help="start from this config instead of the template's")
    p.add_argument("--dir", default="experiments", help="folder the experiment goes in")
    p.add_argument("--family", choices=family_names(),
                   help="model family its commands train (default: the --from config's model folder's, else the one "
                        "its file name names, which --family may not contradict; cogvideox for the template)")
    p.set_defaults(run=_new_experiment)

    p = verbs.add_parser("report", help="compare runs: the settings that differ, their losses, one loss plot")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="output_dir of a training run")
    p.add_argument("--out", default="report.md", help="Markdown file for the table (default: %(default)s)")
    p.add_argument("--plot", default="report.png", help="PNG of all loss curves (default: %(default)s)")
    p.set_defaults(run=_report)
    return parser


def main(argv=None):
    """The `blueberry-video` command. Run as the command (argv None: sys.argv), the toolkit's own errors print as
    one line (`exit_on_error`); called with argv, from Python or a test, they raise."""
    if argv is None:
        try:
            result = exit_on_error(run_verb, sys.argv[1:])
            sys.stdout.flush()  # here, where a closed pipe is caught, not as Python exits
            return result
        except BrokenPipeError:  # `... --json | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error as Python flushes
            raise SystemExit(0) from None
    return run_verb(argv)


def run_verb(argv):
    parser = build_parser()
    check_unknown_flags_first(parser, argv)
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "takes_extra", False):
        return args.run(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.run(args)


def check_unknown_flags_first(parser, argv: list[str]) -> None:
    """A verb's unknown flags, all named (with the nearest or what to use instead) before argparse's own
    complaints: `--output_path o.mp4` is what a user meant by --out, and "--out is required" would not tell them."""
    verbs = parser._subparsers._group_actions[0].choices
    if not argv or argv[0] not in verbs:
        return
    verb_parser = verbs[argv[0]]
    required = [action for action in verb_parser._actions if action.required]
    for action in required:
        action.required = False
    try:
        _, extra = verb_parser.parse_known_args(argv[1:])
    finally:
        for action in required:
            action.required = True
    check_flags(extra, verb_parser, bool(verb_parser.get_default("takes_extra")))


def check_flags(extra: list[str], verb_parser, takes_training_flags: bool) -> None:
    """An unknown flag is named with the nearest known one, looking at this verb's own flags (dashes:
    --max-frames) and, where the verb takes them, the training settings (underscores: --max_num_frames), so that a
    slip between the two spellings is pointed out rather than suggesting the wrong command's flag."""
    from blueberry_video.config import bad_value_message, training_flags, unknown_flags_message

    own = [option for option in verb_parser._option_string_actions if option.startswith("--")]
    known = own + (training_flags() if takes_training_flags else [])
    if unknown := [flag for flag in (token.split("=")[0] for token in extra) if flag.startswith("--") and
                   flag not in known]:
        verb = verb_parser.prog.split()[-1]
        raise ConfigError(unknown_flags_message(unknown, known, f"blueberry-video {verb} --help",
                                                also=bad_value_message(extra) if takes_training_flags else None,
                                                foreign=foreign_flags_of(verb, takes_training_flags)))


def foreign_flags_of(verb: str, takes_training_flags: bool) -> dict[str, str]:
    """The other tools' flags a verb says what to use instead of: the training scripts' where it takes training
    settings (their advice names those settings), the pipelines' for generate, none elsewhere."""
    from blueberry_video.foreign_flags import GENERATE_INSTEAD, INSTEAD

    if verb == "generate":
        return GENERATE_INSTEAD
    return INSTEAD if takes_training_flags else {}


if __name__ == "__main__":
    sys.exit(main())
