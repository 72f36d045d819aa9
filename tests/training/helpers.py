"""Helpers shared by the recipe tests of every family, and by the multi-process ones."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from tests.conftest import REPO_ROOT

RECIPE = str(REPO_ROOT / "recipes" / "train_cogvideox.py")


def transformer_output_after_fresh_lora_load(pipeline_class: str, model_dir, lora_dir, inputs: dict, workdir):
    """In a new Python process: the base pipeline's transformer output, before and after `load_lora_weights`."""
    torch.save(inputs, workdir / "inputs.pt")
    script = textwrap.dedent(f"""
        import torch
        import diffusers
        inputs = torch.load({str(workdir / 'inputs.pt')!r}, weights_only=True)
        pipe = diffusers.{pipeline_class}.from_pretrained({str(model_dir)!r})
        with torch.no_grad():
            base = pipe.transformer(**inputs, return_dict=False)[0]
            pipe.load_lora_weights({str(lora_dir)!r})
            loaded = pipe.transformer(**inputs, return_dict=False)[0]
        torch.save({{"base": base, "loaded": loaded}}, {str(workdir / 'out.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=workdir)
    out = torch.load(workdir / "out.pt", weights_only=True)
    return out["base"], out["loaded"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_args(model_dir, data_dir, output_dir, cache_dir, *extra):
    return ["--pretrained_model_name_or_path", str(model_dir), "--instance_data_root", str(data_dir),
            "--output_dir", str(output_dir), "--cache_dir", str(cache_dir), "--height", "96", "--width", "160",
            "--max_num_frames", "9", "--mixed_precision", "no", "--rank", "8", "--learning_rate", "1e-3",
            "--max_train_steps", "4", "--checkpointing_steps", "2", "--seed", "3", *extra]


def launch(args, num_processes=2, cpu_backend=True, extra_launch=(), timeout=600):
    env = dict(os.environ)
    env.pop("ACCELERATE_USE_CPU", None)
    if cpu_backend:
        env["ACCELERATE_USE_CPU"] = "1"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), *extra_launch, RECIPE, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def launcher_environment(config_file: Path, *flags: str):
    """What `accelerate launch --config_file ...` decides and exports, without starting any process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import (
        prepare_deepspeed_cmd_env,
        prepare_multi_gpu_env,
        prepare_simple_launcher_cmd_env,
    )

    argv = ["--config_file", str(config_file), "--main_process_port", str(free_port()), *flags, "train.py"]
    args, defaults, mixed_precision_from_config = _validate_launch_command(launch_command_parser().parse_args(argv))
    if args.use_deepspeed:  # as launch_command does
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return args, prepare_deepspeed_cmd_env(args)[1]
    if args.use_fsdp or args.multi_gpu:
        return args, prepare_multi_gpu_env(args)
    return args, prepare_simple_launcher_cmd_env(args)[1]
