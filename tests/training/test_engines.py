"""The shipped accelerate/DeepSpeed configs, and the trainer under DeepSpeed, as far as a CPU can run them.

What runs here: every config goes through `accelerate launch`'s own parsing and environment set-up and into
the plugin it would build; FSDP's wrap classes resolve on both tiny transformers; 1-process DeepSpeed
ZeRO-2 / ZeRO-2 offload / ZeRO-3 train the recipe, checkpoint, resume and export (ZeRO-3 with every weight
really partitioned). What cannot: FSDP sharding and multi-process DeepSpeed (shared/notes/accelerate-on-cpu.md).
The first DeepSpeed run on a machine compiles DeepSpeed's CPU ops (shared-memory comm, CPU Adam) once.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.utils import DistributedType, patch_environment
from safetensors.torch import load_file

from blueberry_video.errors import ConfigError
from tests.conftest import REPO_ROOT
from tests.training.helpers import free_port, launcher_environment

RECIPE = str(REPO_ROOT / "recipes" / "train_cogvideox.py")
CONFIG_DIR = REPO_ROOT / "accelerate_configs"
DEEPSPEED_DIR = REPO_ROOT / "deepspeed_configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
MACHINE_KEYS = {"num_machines", "num_processes", "machine_rank", "main_process_ip", "main_process_port"}
SHAPE = ["--height", "96", "--width", "160", "--max_num_frames", "9"]


def read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture
def restore_environ():
    """accelerate's plugins write some of their settings back into os.environ."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def fsdp_plugin(config_file: Path):
    from accelerate.utils import FullyShardedDataParallelPlugin

    _, env = launcher_environment(config_file)
    with patch_environment(**env):
        return FullyShardedDataParallelPlugin()


# --- the config files ---------------------------------------------------------------------------------------


def test_every_kind_of_config_is_there():
    names = {p.stem for p in CONFIGS}
    singles = {"multi_gpu_ddp", "fsdp_full_shard", "fsdp_shard_grad_op", "fsdp2_full_shard", "fsdp2_shard_grad_op",
               "deepspeed_zero2", "deepspeed_zero2_offload", "deepspeed_zero3"}
    multi = {"multi_node_" + n.removeprefix("multi_gpu_") for n in singles}
    assert names == singles | multi | {"single_gpu", "cpu_test"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_says_when_to_pick_it_and_accelerate_launch_accepts_it(path, restore_environ, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file

    assert re.match(r"# Pick .{20,}", path.read_text().splitlines()[0]), "first line: when to pick this config"
    config = load_config_from_file(str(path))  # refuses unknown keys
    monkeypatch.chdir(REPO_ROOT)  # where the configs' deepspeed_configs/ paths are relative to
    args, env = launcher_environment(path)
    launcher = {DistributedType.DEEPSPEED: "use_deepspeed", DistributedType.FSDP: "use_fsdp",
                DistributedType.MULTI_GPU: "multi_gpu"}.get(config.distributed_type)
    assert [flag for flag in ("use_deepspeed", "use_fsdp", "multi_gpu") if getattr(args, flag)] == (
        [launcher] if launcher else [])
    assert args.num_processes == read_yaml(path)["num_processes"]
    if path.stem.startswith("multi_node_"):
        assert args.num_machines > 1
    if config.distributed_type == DistributedType.DEEPSPEED:
        from accelerate.utils import DeepSpeedPlugin

        assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
        with patch_environment(**env):
            plugin = DeepSpeedPlugin()  # loads the JSON; refuses accelerate-side settings it would ignore
        assert plugin.zero_stage == (3 if "zero3" in path.stem else 2)
        assert plugin.zero3_init_flag is False
        assert plugin.is_auto("train_micro_batch_size_per_gpu") and plugin.is_auto("gradient_clipping")
    if config.distributed_type == DistributedType.FSDP:
        assert env["ACCELERATE_USE_FSDP"] == "true"
        plugin = fsdp_plugin(path)
        assert plugin.fsdp_version == (2 if "fsdp2" in path.stem else 1)
        assert plugin.transformer_cls_names_to_wrap == [
            "CogVideoXBlock", "HunyuanVideoTransformerBlock", "HunyuanVideoSingleTransformerBlock"]


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem.startswith("multi_node_")], ids=lambda p: p.stem)
def test_multi_node_config_is_its_single_node_config_plus_marked_machine_settings(path):
    single_name = path.stem.removeprefix("multi_node_")
    single = read_yaml(CONFIG_DIR / f"{'multi_gpu_ddp' if single_name == 'ddp' else single_name}.yaml")
    multi = read_yaml(path)
    edited = {line.split(":")[0] for line in path.read_text().splitlines() if "# EDIT" in line}
    assert edited == MACHINE_KEYS
    assert multi["num_processes"] % multi["num_machines"] == 0
    if multi["distributed_type"] == "DEEPSPEED":
        assert multi["deepspeed_config"].pop("deepspeed_multinode_launcher") == "standard"  # no pdsh hostfile
    assert without_machine_settings(multi) == without_machine_settings(single)


def without_machine_settings(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in MACHINE_KEYS}


@pytest.mark.parametrize("name", ["zero2", "zero2_offload", "zero3"])
def test_deepspeed_json_takes_the_recipe_settings(name):
    config = json.loads((DEEPSPEED_DIR / f"{name}.json").read_text())
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert config[key] == "auto", key
    assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"
    # No optimizer or scheduler section: the recipe's AdamW and diffusers schedule run inside DeepSpeed.
    assert "optimizer" not in config and "scheduler" not in config
    zero = config["zero_optimization"]
    assert zero["stage"] == (3 if name == "zero3" else 2)
    if name == "zero3":
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # the export gathers the weights
    if name == "zero2_offload":
        assert zero["offload_optimizer"]["device"] == "cpu"


def test_every_deepspeed_config_file_named_exists():
    named = {read_yaml(p)["deepspeed_config"]["deepspeed_config_file"] for p in CONFIGS
             if read_yaml(p)["distributed_type"] == "DEEPSPEED"}
    assert named == {f"deepspeed_configs/{n}.json" for n in ("zero2", "zero2_offload", "zero3")}
    assert all((REPO_ROOT / n).is_file() for n in named)


SLURM_SCRIPT = REPO_ROOT / "recipes" / "slurm" / "train_multinode.sbatch"


def run_slurm_script(tmp_path: Path, args: list[str], recipe_args: str | None = None) -> list[str]:
    """The script as node 1 of 2 runs it, with stand-ins for SLURM's srun and scontrol: the arguments its
    `accelerate` gets, recorded by a stand-in."""
    bin_dir, received = tmp_path / "bin", tmp_path / "accelerate_args.json"
    bin_dir.mkdir(exist_ok=True)
    stand_ins = {"srun": '#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\nexec "$@"\n',
                 # a long host list: a reader of its first line alone would break the pipe (SIGPIPE, pipefail)
                 "scontrol": "#!/bin/bash\nprintf 'node-a\\nnode-b\\n'\nseq -f 'node-%g' 200000\n",
                 "accelerate": f"#!{sys.executable}\nimport json, sys\nopen({str(received)!r}, 'w').write("
                               "json.dumps(sys.argv[1:]))\n"}
    for name, text in stand_ins.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "accelerate_configs").mkdir(exist_ok=True)  # what `a*` would expand to
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node-[a-b]",
           "SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NAME": "blueberry-video"}
    env.pop("RECIPE_ARGS", None)
    if recipe_args is not None:
        env["RECIPE_ARGS"] = recipe_args
    subprocess.run(["bash", str(SLURM_SCRIPT), *args], cwd=tmp_path, env=env, check=True, capture_output=True)
    return json.loads(received.read_text())


def test_slurm_script_parses_and_launches_one_accelerate_per_node(tmp_path):
    subprocess.run(["bash", "-n", str(SLURM_SCRIPT)], check=True)
    launch = ["launch", "--config_file", "accelerate_configs/multi_node_ddp.yaml", "--num_machines", "2",
              "--machine_rank", "1", "--num_processes", "16", "--main_process_ip", "node-a",
              "--main_process_port", "29500", "recipes/train_cogvideox.py"]
    prompt, resume = ["--validation_prompt", "a cat * walks; then $HOME"], ["--resume_from_checkpoint", "latest"]
    assert run_slurm_script(tmp_path, ["--rank", "8", *prompt], recipe_args="--config a* --output_dir /runs/x") == [
        *launch, "--config", "a*", "--output_dir", "/runs/x", "--rank", "8", *prompt, *resume]
    # Arguments alone: the script's example RECIPE_ARGS stays out (its --output_dir would beat the config's).
    assert run_slurm_script(tmp_path, prompt) == [*launch, *prompt, *resume]
    assert "--config" in run_slurm_script(tmp_path, [])


def test_slurm_log_goes_to_a_folder_a_fresh_clone_has():
    """SLURM opens --output before the script runs: a folder the script would make is not there yet."""
    log = re.search(r"^#SBATCH --output=(\S+)", SLURM_SCRIPT.read_text(), re.MULTILINE).group(1)
    assert (REPO_ROOT / Path(log).parent).is_dir() and not Path(log).is_absolute()


# --- FSDP: what can be checked without sharding -------------------------------------------------------------


FSDP_CONFIGS = [p for p in CONFIGS if read_yaml(p)["distributed_type"] == "FSDP"]


@pytest.fixture(scope="module")
def tiny_transformers(tiny_cogvideox_dir, tiny_hunyuan_video_dir):
    from blueberry_video.models.cogvideox import CogVideoXFamily
    from blueberry_video.models.hunyuan_video import HunyuanVideoFamily

    return [(family, family(model_dir).load_transformer()) for family, model_dir in
            ((CogVideoXFamily, tiny_cogvideox_dir), (HunyuanVideoFamily, tiny_hunyuan_video_dir))]


@pytest.mark.parametrize("path", FSDP_CONFIGS, ids=lambda p: p.stem)
def test_fsdp_wraps_each_transformer_block_of_both_tiny_models(path, tiny_transformers, restore_environ):
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from blueberry_video.training.accelerator import fsdp_wrap_classes_in

    for family, model in tiny_transformers:
        plugin = fsdp_plugin(path)
        plugin.transformer_cls_names_to_wrap = fsdp_wrap_classes_in(model, plugin.transformer_cls_names_to_wrap)
        assert plugin.transformer_cls_names_to_wrap == list(family.block_class_names)
        # accelerate's own resolution, as `prepare` runs it
        if plugin.fsdp_version == 2:
            policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
        else:
            plugin.set_auto_wrap_policy(model)
            policy = functools.partial(plugin.auto_wrap_policy, recurse=False, nonwrapped_numel=0)
        wrapped = [type(m).__name__ for m in model.modules() if policy(m)]
        blocks = [type(m).__name__ for m in model.modules() if type(m).__name__ in family.block_class_names]
        assert wrapped == blocks and len(blocks) >= 2, family.name


def test_accelerate_alone_refuses_a_wrap_class_the_model_lacks(tiny_transformers, restore_environ):
    """Why the trainer filters the list: one config names both families' blocks."""
    plugin = fsdp_plugin(CONFIG_DIR / "fsdp_full_shard.yaml")
    with pytest.raises(ValueError, match="Could not find the transformer layer class"):
        plugin.set_auto_wrap_policy(tiny_transformers[0][1])


def test_a_wrap_list_without_the_models_blocks_is_a_config_error(tiny_transformers):
    from blueberry_video.training.accelerator import fsdp_wrap_classes_in

    with pytest.raises(ConfigError, match="CogVideoXBlock"):
        fsdp_wrap_classes_in(tiny_transformers[0][1], ["LlamaDecoderLayer"])
    assert fsdp_wrap_classes_in(tiny_transformers[0][1], None) is None  # accelerate uses _no_split_modules


# --- engine-specific behaviour, on stand-in accelerators ----------------------------------------------------


def stand_in_accelerator(distributed_type, num_processes=2, zero_stage=None):
    registered = []
    return SimpleNamespace(
        distributed_type=distributed_type, num_processes=num_processes, registered=registered,
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage)),
        register_save_state_pre_hook=registered.append, register_load_state_pre_hook=registered.append,
    )


@pytest.mark.parametrize("distributed_type", [DistributedType.FSDP, DistributedType.DEEPSPEED])
def test_lora_checkpoint_hooks_stay_out_of_engines_that_save_the_model_themselves(distributed_type):
    from blueberry_video.training.checkpoints import register_lora_checkpoint_hooks

    engine, ddp = stand_in_accelerator(distributed_type), stand_in_accelerator(DistributedType.MULTI_GPU)
    register_lora_checkpoint_hooks(engine, "lora", family=None)  # nothing is saved here: no family needed
    register_lora_checkpoint_hooks(ddp, "lora", family=None)
    assert engine.registered == [] and len(ddp.registered) == 2


@pytest.mark.parametrize("max_grad_norm, expected", [(0.25, 0.25), (0.0, 0.0)])
def test_deepspeed_clips_at_the_recipes_max_grad_norm(max_grad_norm, expected, restore_environ):
    """accelerate would fill an "auto" gradient_clipping with 1.0 whatever the recipe says."""
    from accelerate.utils import DeepSpeedPlugin

    from blueberry_video.training.accelerator import configure_deepspeed

    plugin = DeepSpeedPlugin(hf_ds_config=str(DEEPSPEED_DIR / "zero2.json"))
    accelerator = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin))
    configure_deepspeed(accelerator, SimpleNamespace(max_grad_norm=max_grad_norm, use_8bit_adam=False))
    assert plugin.deepspeed_config["gradient_clipping"] == expected


def test_8bit_adam_is_refused_where_deepspeed_would_replace_it(restore_environ):
    from accelerate.utils import DeepSpeedPlugin

    from blueberry_video.training.accelerator import configure_deepspeed

    plugin = DeepSpeedPlugin(hf_ds_config=str(DEEPSPEED_DIR / "zero2_offload.json"))
    accelerator = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin))
    with pytest.raises(ConfigError, match="use_8bit_adam"):
        configure_deepspeed(accelerator, SimpleNamespace(max_grad_norm=1.0, use_8bit_adam=True))


# --- DeepSpeed runs of the recipe (one process: what runs on CPU) ------------------------------------------


def deepspeed_launch(config_file, args, timeout=900):
    env = dict(os.environ)
    env.pop("ACCELERATE_USE_CPU", None)  # DeepSpeed finds the CPU itself; this would turn the run into plain DDP
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
               "--num_processes", "1", "--main_process_port", str(free_port()), RECIPE, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                          check=False)


def lora_args(model_dir, data_dir, output_dir, cache_dir, *extra):
    # Accumulation, a warm-up + cosine schedule and clipping that bites (gradient norms are ~0.5): all must reach
    # DeepSpeed for its run to equal a plain one.
    return ["--pretrained_model_name_or_path", str(model_dir), "--instance_data_root", str(data_dir),
            "--output_dir", str(output_dir), "--cache_dir", str(cache_dir), *SHAPE, "--mixed_precision", "no",
            "--rank", "8", "--learning_rate", "1e-3", "--gradient_accumulation_steps", "2",
            "--lr_scheduler", "cosine", "--lr_warmup_steps", "2", "--max_grad_norm", "0.01",
            "--max_train_steps", "4", "--checkpointing_steps", "2", "--seed", "5", *extra]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="module")
def plain_lora(tiny_cogvideox_dir, sample_dataset_dir, cache_dir, tmp_path_factory):
    """The same LoRA run without any engine: what every DeepSpeed run must reproduce."""
    sys.path.insert(0, str(REPO_ROOT / "recipes"))
    import train_cogvideox

    out = tmp_path_factory.mktemp("plain") / "run"
    train_cogvideox.main(lora_args(tiny_cogvideox_dir, sample_dataset_dir, out, cache_dir))
    return load_file(out / "pytorch_lora_weights.safetensors")


@pytest.fixture(scope="module")
def zero3_all_partitioned(tmp_path_factory):
    """deepspeed_zero3.yaml, but with every weight partitioned: the tiny model's tensors are all under the
    shipped stage3_param_persistence_threshold, and would otherwise stay whole on every process."""
    root = tmp_path_factory.mktemp("zero3")
    ds = json.loads((DEEPSPEED_DIR / "zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (root / "zero3.json").write_text(json.dumps(ds))
    config = read_yaml(CONFIG_DIR / "deepspeed_zero3.yaml")
    config["deepspeed_config"]["deepspeed_config_file"] = str(root / "zero3.json")
    (root / "deepspeed_zero3.yaml").write_text(yaml.safe_dump(config))
    return root / "deepspeed_zero3.yaml"


def assert_same_lora(a: dict, b: dict):
    assert a.keys() == b.keys() and a
    for name, tensor in a.items():
        torch.testing.assert_close(tensor, b[name], rtol=1e-5, atol=1e-6)


def deepspeed_checkpoint_module(checkpoint: Path) -> dict:
    (states,) = (checkpoint / "pytorch_model").glob("*model_states.pt")
    return torch.load(states, weights_only=False, map_location="cpu")["module"]


def logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_zero2_lora_equals_plain_training(tiny_cogvideox_dir, sample_dataset_dir, cache_dir, plain_lora, tmp_path):
    out = tmp_path / "zero2"
    run = deepspeed_launch(CONFIG_DIR / "deepspeed_zero2.yaml",
                           lora_args(tiny_cogvideox_dir, sample_dataset_dir, out, cache_dir))
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((out / "run_info.json").read_text())["num_processes"] == 1
    assert logged_steps(out) == [1, 2, 3, 4]
    for step in (2, 4):  # DeepSpeed's own layout inside our atomic checkpoint folders
        checkpoint = out / f"checkpoint-{step}"
        assert {p.name for p in checkpoint.iterdir()} >= {"training_state.json", "pytorch_model", "scheduler.bin",
                                                           "random_states_0.pkl"}
        assert json.loads((checkpoint / "training_state.json").read_text())["global_step"] == step
        # the adapter only: DeepSpeed was told to leave the frozen transformer out
        assert all(".lora_" in key for key in deepspeed_checkpoint_module(checkpoint))
    assert_same_lora(load_file(out / "pytorch_lora_weights.safetensors"), plain_lora)


@pytest.mark.slow
def test_zero2_offload_lora_equals_plain_training(tiny_cogvideox_dir, sample_dataset_dir, cache_dir, plain_lora,
                                                  tmp_path):
    # DeepSpeed swaps the recipe's AdamW for its CPU Adam here; the schedule must still reach it.
    out = tmp_path / "offload"
    run = deepspeed_launch(CONFIG_DIR / "deepspeed_zero2_offload.yaml",
                           lora_args(tiny_cogvideox_dir, sample_dataset_dir, out, cache_dir,
                                     "--checkpointing_steps", "0"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "checkpoint-4" / "pytorch_model").is_dir()
    assert_same_lora(load_file(out / "pytorch_lora_weights.safetensors"), plain_lora)


@pytest.mark.slow
def test_zero3_lora_exports_the_gathered_adapter_and_resumes(tiny_cogvideox_dir, sample_dataset_dir, cache_dir,
                                                             plain_lora, zero3_all_partitioned, tmp_path):
    from tests.training.helpers import transformer_output_after_fresh_lora_load
    from tests.training.test_train_cogvideox import transformer_inputs

    out = tmp_path / "zero3"
    args = lora_args(tiny_cogvideox_dir, sample_dataset_dir, out, cache_dir)
    run = deepspeed_launch(zero3_all_partitioned, args)
    assert run.returncode == 0, run.stderr[-3000:]
    partitioned = deepspeed_checkpoint_module(out / "checkpoint-2")
    assert partitioned and all(t.numel() == 0 for t in partitioned.values())  # the weights really were sharded
    exported = load_file(out / "pytorch_lora_weights.safetensors")
    assert_same_lora(exported, plain_lora)  # ... and gathered whole for the export

    base, loaded = transformer_output_after_fresh_lora_load("CogVideoXPipeline", tiny_cogvideox_dir, out,
                                                            transformer_inputs(), tmp_path)
    assert (loaded - base).abs().max() > 1e-4

    # A killed run: only checkpoint-2 survived. Resuming must end where the whole run did.
    shutil.rmtree(out / "checkpoint-4")
    (out / "pytorch_lora_weights.safetensors").unlink()
    resumed = deepspeed_launch(zero3_all_partitioned, [*args, "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {out / 'checkpoint-2'} at step 2" in resumed.stdout
    assert logged_steps(out) == [1, 2, 3, 4]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    torch.testing.assert_close(load_file(out / "pytorch_lora_weights.safetensors"), exported, rtol=0, atol=1e-7)


@pytest.mark.slow
def test_zero3_full_finetune_in_bf16_exports_a_loadable_transformer(tiny_cogvideox_dir, one_video_dataset_dir,
                                                                     zero3_all_partitioned, tmp_path):
    """bf16 under DeepSpeed (weights converted, inputs not), validation under ZeRO-3, the gathered full export."""
    from diffusers import CogVideoXTransformer3DModel

    out = tmp_path / "full"
    run = deepspeed_launch(zero3_all_partitioned, [
        "--pretrained_model_name_or_path", str(tiny_cogvideox_dir), "--instance_data_root", str(one_video_dataset_dir),
        "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), *SHAPE, "--mixed_precision", "bf16",
        "--training_mode", "full", "--learning_rate", "1e-3", "--max_train_steps", "2", "--checkpointing_steps", "0",
        "--validation_prompt", "a red circle", "--num_inference_steps", "2"])
    assert run.returncode == 0, run.stderr[-3000:]
    assert logged_steps(out) == [1, 2]
    assert all(t.numel() == 0 for t in deepspeed_checkpoint_module(out / "checkpoint-2").values())
    assert [p.name for p in (out / "validation").glob("*.mp4")] == ["step-000002-prompt0-0.mp4"]
    saved = load_file(out / "transformer" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}  # the run's weight dtype
    trained = CogVideoXTransformer3DModel.from_pretrained(out / "transformer").state_dict()
    base = CogVideoXTransformer3DModel.from_pretrained(tiny_cogvideox_dir, subfolder="transformer").state_dict()
    assert trained.keys() == base.keys() == saved.keys()
    for name, tensor in trained.items():
        assert tensor.shape == base[name].shape and torch.isfinite(tensor).all(), name
        torch.testing.assert_close(tensor, saved[name].float(), rtol=0, atol=0)
    changed = [name for name in trained if not torch.equal(trained[name], base[name].bfloat16().float())]
    assert len(changed) > len(trained) // 2


@pytest.mark.parametrize("flags, refused", [(("--cpu",), False), (("--cpu", "--num_processes", "2"), True)])
def test_a_plain_cpu_launch_is_refused_only_where_it_asked_for_several_processes(flags, refused, restore_environ):
    from blueberry_video.errors import LaunchError
    from blueberry_video.training.accelerator import check_launch

    _, env = launcher_environment(CONFIG_DIR / "single_gpu.yaml", *flags)  # what the one process it starts gets
    alone = SimpleNamespace(num_processes=1, distributed_type=DistributedType.NO)
    os.environ.pop("MASTER_ADDR", None)
    with patch_environment(**env):
        if refused:
            with pytest.raises(LaunchError, match="starts one process there"):
                check_launch(alone)
        else:
            check_launch(alone)


def test_an_fsdp_launch_that_accelerate_turned_into_one_plain_process_is_refused_in_words(restore_environ):
    from blueberry_video.errors import LaunchError
    from blueberry_video.training.accelerator import check_launch

    alone = SimpleNamespace(num_processes=1, distributed_type=DistributedType.NO, device=torch.device("cpu"))
    with patch_environment(ACCELERATE_USE_FSDP="true"):
        with pytest.raises(LaunchError, match=r"asked for FSDP \(ACCELERATE_USE_FSDP=true\) but accelerate set up "
                                              r"one plain process on CPU: the run would not shard"):
            check_launch(alone)


@pytest.mark.slow
def test_cpu_test_config_runs_two_ddp_processes(tiny_cogvideox_dir, sample_dataset_dir, cache_dir, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, ACCELERATE_USE_CPU="1")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG_DIR / "cpu_test.yaml"),
               RECIPE, *lora_args(tiny_cogvideox_dir, sample_dataset_dir, out, cache_dir, "--max_train_steps", "1",
                                  "--gradient_accumulation_steps", "1", "--checkpointing_steps", "0")]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((out / "run_info.json").read_text())["num_processes"] == 2
    assert logged_steps(out) == [1]
