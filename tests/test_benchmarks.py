"""The benchmarks run on CPU with the tiny presets and report what they promise (no timing is asserted)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import loader_throughput, model_flops, overhead, precompute_throughput, train_step, validation_render
from benchmarks.common import benchmark_config, synthetic_batch
from tests.conftest import REPO_ROOT


def test_training_flops_follow_the_backward_rule():
    # trained weights: forward + activation and weight gradients (3x); frozen: forward + activation gradient (2x)
    assert model_flops.training_flops(trained_dense=10, frozen_dense=100, attention_forward=1000) == 30 + 200 + 3000
    assert model_flops.attention_forward_flops(batch=2, tokens=5, num_layers=3, hidden=8) == 4 * 2 * 3 * 25 * 8


def layer_by_layer_flops(model, forward) -> tuple[int, int]:
    """(trained, frozen) FLOPs of every Linear and convolution call in one forward, from forward hooks."""
    counts = {True: 0, False: 0}

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Linear):
            flops = 2 * inputs[0].numel() * module.out_features
        else:
            flops = 2 * output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
        counts[module.weight.requires_grad] += flops

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d))]
    handles = [layer.register_forward_hook(count) for layer in layers]
    try:
        with torch.no_grad():
            forward()
    finally:
        for handle in handles:
            handle.remove()
    return counts[True], counts[False]


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("family_name", ["cogvideox", "hunyuan_video"])
def test_dense_flops_are_counted_per_layer_not_assumed_per_parameter(family_name, mode, request, tmp_path):
    from blueberry_video.models import get_family_class
    from blueberry_video.training.lora import make_trainable
    from blueberry_video.training.sampling import sample_generators

    family = get_family_class(family_name)(request.getfixturevalue(f"tiny_{family_name}_dir"))
    transformer = family.load_transformer(dtype=torch.float32)
    make_trainable(transformer, benchmark_config(family, mode, 4, False, False), family)
    batch = synthetic_batch(family, 2, 9, 96, 160, "cpu")
    scheduler = family.load_training_scheduler()

    def forward():
        family.training_loss(transformer, scheduler, batch, sample_generators(0, 0, range(2), "cpu"))

    trained, frozen = model_flops.dense_forward_flops(transformer, forward)
    assert (trained, frozen) == layer_by_layer_flops(transformer, forward)
    assert (frozen == 0) == (mode == "full") and trained > 0
    # The shorthand 2*N*T per forward counts the per-sample modulation layers (and HunyuanVideo's text-stream
    # weights) once per token: more than the layers run.
    tokens = model_flops.attention_shape(family, transformer, batch, 9, 96, 160)["tokens_per_sample"]
    assert trained + frozen < 2 * 2 * tokens * sum(p.numel() for p in transformer.parameters())


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_train_step_benchmark_counts_the_flops_of_its_mode(mode):
    result = train_step.main(["--preset", "tiny-cogvideox", "--mode", mode, "--frames", "9", "--height", "96",
                              "--width", "160", "--batch", "2", "--rank", "4", "--steps", "1", "--warmup", "1",
                              "--json"])
    assert (result["trainable_params"] == result["params"]) == (mode == "full")
    assert (result["dense_forward_flops_frozen"] == 0) == (mode == "full")
    tokens = result["tokens_per_sample"]
    assert result["attention_forward_flops"] == 4 * 2 * result["layers"] * tokens**2 * result["hidden"]
    flops = result["achieved_tflops"] * 1e12 * result["step_time_s"]
    assert flops == pytest.approx(3 * result["dense_forward_flops_trained"] + 2 * result["dense_forward_flops_frozen"]
                                  + 3 * result["attention_forward_flops"], rel=1e-9)
    assert flops < result["model_flops_6nt"]


def test_model_flops_counts_a_real_size_model_without_running_it():
    result = model_flops.main(["--preset", "cogvideox-2b", "--mode", "full", "--json"])
    assert result["params"] > 1.6e9 and result["tokens_per_sample"] == 13 * 30 * 45 + 226
    # Built on the meta device: counted from shapes in seconds, no 7 GB of weights.
    assert result["model_flops"] == 3 * (result["dense_forward_flops_trained"] + result["attention_forward_flops"])
    assert result["overstated_by_6nt"] > 0


@pytest.mark.parametrize("preset", ["tiny-cogvideox", "tiny-hunyuan-video"])
def test_train_step_benchmark_reports_throughput_and_flops(preset):
    result = train_step.main(["--preset", preset, "--frames", "9", "--height", "96", "--width", "160", "--batch", "2",
                              "--rank", "4", "--steps", "2", "--warmup", "1", "--json"])
    assert result["trainable_params"] < result["params"]
    assert result["tokens_per_sample"] > 0 and result["achieved_tflops"] > 0
    assert result["samples_per_s"] == pytest.approx(2 / result["step_time_s"])
    assert result["mfu"] is None  # no GPU peak to compare against on CPU


def test_train_step_benchmark_with_float8_frozen_weights():
    result = train_step.main(["--preset", "tiny-cogvideox", "--frames", "9", "--height", "96", "--width", "160",
                              "--steps", "1", "--warmup", "1", "--layerwise-casting", "--json"])
    assert result["layerwise_casting"] and result["step_time_s"] > 0


def test_overhead_benchmark_reports_a_ratio_and_loader_wait():
    result = overhead.main(["--rounds", "1", "--steps", "2", "--json"])
    assert result["overhead_ratio"] == pytest.approx(result["ours_step_s"] / result["bare_step_s"])
    assert 0 <= result["loader_wait_fraction"] < 1


def test_precompute_benchmark_caches_every_video():
    result = precompute_throughput.main(["--num", "2", "--json"])
    assert result["videos"] == 2 and result["videos_per_s"] > 0


@pytest.mark.parametrize("cache_dtype", ["float32", "float16"])
def test_loader_benchmark_reads_samples_of_the_cached_shapes(cache_dtype, tiny_cogvideox_dir):
    from blueberry_video.models.cogvideox import CogVideoXFamily

    family = CogVideoXFamily(tiny_cogvideox_dir)
    result = loader_throughput.main(["--frames", "9", "--height", "96", "--width", "160", "--batch", "2",
                                     "--num-samples", "4", "--epochs", "2", "--cache-dtype", cache_dtype, "--json"])
    latent_values = math.prod(family.latent_shape(9, 96, 160))
    text_values = family.max_text_length * family.transformer_config["text_embed_dim"]
    # mean and std latents and the prompt embedding, read back as float32 whatever the cache stores, + the index
    assert result["sample_mb"] * 2**20 == (2 * latent_values + text_values) * 4 + 8
    assert result["samples_per_s"] == pytest.approx(2 / result["batch_s"])


def test_train_step_benchmark_names_the_attention_kernels_and_splits_the_step_by_kind():
    result = train_step.main(["--preset", "tiny-cogvideox", "--frames", "9", "--height", "96", "--width", "160",
                              "--steps", "1", "--warmup", "1", "--profile", "--json"])
    # on CPU, PyTorch's SDPA dispatches to its flash kernel for CPU; on Hopper the list shows flash or cuDNN
    assert any("_scaled_dot_product_flash_attention" in name for name in result["attention_kernels"])
    kinds = result["time_by_kind"]
    assert list(kinds) == ["attention", "matmul", "optimizer", "other"]
    assert all(kinds[kind]["seconds"] > 0 for kind in kinds)
    assert sum(k["seconds"] for k in kinds.values()) == pytest.approx(result["busy_s"])
    # FLOPs the kernels executed, counted for the CPU's attention kernel as for CUDA's
    assert kinds["attention"]["tflop"] > 0 and kinds["matmul"]["tflop"] > 0
    assert kinds["attention"]["tflops"] == pytest.approx(kinds["attention"]["tflop"] / kinds["attention"]["seconds"])
    assert result["time_summary"].startswith("attention ")


def test_a_failing_profile_keeps_the_measured_step(monkeypatch):
    # On a lent GPU the profile runs after the timed steps: its failure must not lose them.
    def broken(*args, **kwargs):
        raise RuntimeError("no kernels")

    monkeypatch.setattr(train_step, "profile_step", broken)
    result = train_step.main(["--preset", "tiny-cogvideox", "--frames", "9", "--height", "96", "--width", "160",
                              "--steps", "1", "--warmup", "1", "--profile", "--json"])
    assert result["profile_error"] == "RuntimeError: no kernels"
    assert result["step_time_s"] > 0 and result["achieved_tflops"] > 0


def test_a_flop_count_out_of_memory_keeps_the_profiles_times_and_kernels(monkeypatch):
    # On an 80 GB H100 the counted HunyuanVideo step ran out of memory where the real one used 35 GiB.
    from benchmarks import profiling

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 216.00 MiB.\nmore detail")

    monkeypatch.setattr(profiling, "flops_by_kind", out_of_memory)
    result = train_step.main(["--preset", "tiny-cogvideox", "--frames", "9", "--height", "96", "--width", "160",
                              "--steps", "1", "--warmup", "1", "--profile", "--json"])
    assert "profile_error" not in result
    assert result["flop_count_error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 216.00 MiB."
    assert any("scaled_dot_product" in name for name in result["attention_kernels"])
    assert result["time_by_kind"]["attention"]["seconds"] > 0
    assert result["time_by_kind"]["attention"]["tflops"] is None


def test_the_flop_count_keeps_no_gradient_that_the_step_itself_frees():
    # FlopCounterMode's module tracker holds each module's incoming gradients until all of its tensors have theirs.
    # Every block also takes the timestep embedding, whose gradient is complete only at the end, so the tracker
    # kept a hidden-state gradient per block through the backward pass (the counted HunyuanVideo step ran out of
    # memory on an 80 GB H100, failing on hidden-state-sized allocations).
    import weakref

    from torch.utils.checkpoint import checkpoint
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.profiling import flops_by_kind

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 8)

        def forward(self, hidden, temb):
            return torch.tanh(self.linear(hidden)) * temb + hidden * 0.5

    blocks, embed = torch.nn.ModuleList(Block() for _ in range(6)), torch.nn.Linear(8, 8)
    alive_when_the_last_arrives = []

    def step():
        temb = embed(torch.randn(1, 8))
        hidden = torch.randn(4, 8, requires_grad=True)
        inputs, earlier = [], []
        for block in blocks:
            inputs.append(hidden)
            hidden = checkpoint(block, hidden, temb, use_reentrant=False)
        for later in inputs[2:]:
            later.register_hook(lambda grad: earlier.append(weakref.ref(grad)))
        inputs[1].register_hook(lambda grad: alive_when_the_last_arrives.append(
            sum(ref() is not None for ref in earlier)))
        hidden.sum().backward()

    flops = flops_by_kind(step, compiled=False)
    step()
    with FlopCounterMode(display=False) as whole_counter:  # the tracker's way, for comparison
        step()
    assert alive_when_the_last_arrives == [0, 0, 4]
    # The same FLOPs as the whole FlopCounterMode counts, recomputation included.
    assert flops == {"matmul": whole_counter.get_total_flops()} and flops["matmul"] > 0


def test_profile_charges_each_kernel_to_the_outermost_kind_that_encloses_it():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from benchmarks.profiling import time_by_kind

    def op(name, parent=None, device_us=0.0, cpu_us=0.0):
        return SimpleNamespace(name=name, cpu_parent=parent, device_type=DeviceType.CPU,
                               self_device_time_total=device_us, self_cpu_time_total=cpu_us)

    step = op("Optimizer.step#AdamW.step")
    math_attention = op("aten::_scaled_dot_product_attention_math")
    linear = op("aten::linear")
    events = [
        step, op("aten::_fused_adamw_", step, device_us=5), op("aten::mm", step, device_us=1),  # optimizer's
        math_attention, op("aten::bmm", math_attention, device_us=7), op("aten::_softmax", math_attention, device_us=3),
        op("aten::_scaled_dot_product_cudnn_attention_backward", device_us=20),
        linear, op("aten::addmm", linear, device_us=40), op("aten::mm", device_us=10),
        op("aten::layer_norm", device_us=4), op("aten::gelu", device_us=2, cpu_us=99),
        # kernels on the device, one of which (8 us) no operator claimed
        *[SimpleNamespace(name="kernel", device_type=DeviceType.CUDA, self_device_time_total=us)
          for us in (6, 10, 20, 50, 6, 8)],
    ]
    seconds, total = time_by_kind(events, on_device=True)
    assert {k: round(v * 1e6) for k, v in seconds.items()} == {"attention": 30, "matmul": 50, "optimizer": 6,
                                                               "other": 6 + 8}
    assert round(total * 1e6) == 100
    seconds, total = time_by_kind(events, on_device=False)  # a CPU run: operators' own CPU time
    assert seconds["other"] == total == pytest.approx(99e-6)


def test_train_step_benchmark_reports_the_estimate_for_its_settings():
    base = ["--preset", "tiny-cogvideox", "--frames", "9", "--height", "96", "--width", "160", "--steps", "1",
            "--warmup", "1", "--estimate", "--json"]
    one = train_step.main(base)
    two = train_step.main([*base, "--batch", "2"])
    # The estimate runs in its own process with the benchmark's settings: a bigger batch holds more.
    assert 0 < one["estimated_peak_memory_gb"] < two["estimated_peak_memory_gb"]
    # The diffusers examples' layout: text encoder and VAE held on the device, and counted by the estimate.
    resident = train_step.main([*base, "--resident-encoders"])
    assert resident["resident_encoders"] == ["text_encoder", "vae"]
    assert resident["estimated_peak_memory_gb"] > one["estimated_peak_memory_gb"]


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO_ROOT / "benchmarks").glob("[a-z]*_*.py")))
def test_benchmark_scripts_run_by_path_from_anywhere(script, tmp_path):
    # The commands in the issue and docs/performance.md are `python benchmarks/<name>.py ...`.
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / script), "--help"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_training_benchmarks_and_the_estimate_need_no_ffmpeg():
    # The lent GPU machines lack imageio-ffmpeg, and its 68 MB wheel is over what can be carried there.
    code = ("import sys; sys.modules['imageio_ffmpeg'] = None; import benchmarks.train_step, benchmarks.overhead, "
            "benchmarks.loader_throughput, blueberry_video.training.memory_estimate")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("preset", ["tiny-cogvideox", "tiny-hunyuan-video"])
def test_validation_render_benchmark_renders_the_videos_it_estimates(preset):
    result = validation_render.main(["--preset", preset, "--estimate", "--json"])
    assert result["video_shape"] == [1, 9, 3, 96, 160]  # one video, as validation renders them
    assert result["estimated_peak_memory_gb"] > 0


def test_gpu_suite_keeps_each_entrys_result_and_error_and_tabulates_them(tmp_path):
    from benchmarks import gpu_suite

    records = gpu_suite.main(["--tiny", "--out", str(tmp_path), "--only", "2b-lora", "hunyuan-33f-cudnn"])
    assert [r["status"] for r in records] == ["ok", "failed (exit 1)"]
    assert records[0]["result"]["attention_kernels"]  # --profile came through
    assert "attention_backend=_native_cudnn" in records[1]["error"]  # this CPU has no cuDNN kernel
    assert json.loads((tmp_path / "summary.json").read_text()) == records
    # A lent machine returns at most 8 files: everything lands in three, whatever the entry count.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["environment.json", "suite.log", "summary.json"]
    assert "===== hunyuan-33f-cudnn" in (tmp_path / "suite.log").read_text()
    assert json.loads((tmp_path / "environment.json").read_text())["diffusers"]
    table = gpu_suite.markdown_table(records)
    assert "| `2b-lora` | cpu |" in table and "--preset tiny-cogvideox" in table

    # Out of time: what is left is reported as not started, not cut off half way.
    late = gpu_suite.main(["--tiny", "--out", str(tmp_path / "late"), "--deadline-s", "0", "--only", "2b-full-mfu"])
    assert late[0]["status"] == "not started (time)"


def test_gpu_suite_entries_run_with_the_recipes_allocator_unless_told_and_the_memory_limit_needs_cuda(
        tmp_path, no_allocator_setting):
    from benchmarks import gpu_suite

    [record] = gpu_suite.main(["--tiny", "--out", str(tmp_path), "--only", "hunyuan-33f-default-allocator"])
    assert record["status"] == "ok", record.get("log_tail")
    assert record["result"]["allocator_config"] is None
    assert "allocator default |" in gpu_suite.markdown_table([record])
    # torch 2.11 (the lent GPUs') does not say what its allocator holds: the row names the variable the run set.
    unsaid = {**record, "result": {**record["result"], "allocator_settings": None,
                                   "allocator_config": "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"}}
    assert "allocator expandable_segments:True |" in gpu_suite.markdown_table([unsaid])
    # Each A/B pair differs in the allocator alone; the entries set against them run what the recipes run.
    for default_allocator, recipes_allocator in [("2b-full-8bit-compile-default-allocator", "2b-full-8bit-compile-mfu"),
                                                 ("hunyuan-33f-default-allocator", "hunyuan-33f")]:
        flags = set(gpu_suite.ENTRIES[default_allocator].args) - {"--allocator", "default"}
        assert flags <= set(gpu_suite.ENTRIES[recipes_allocator].args)
        assert "--allocator" not in gpu_suite.ENTRIES[recipes_allocator].args
    expandable = gpu_suite.run_entry(gpu_suite.ENTRIES["hunyuan-177f-80gb"], tmp_path, 300, tiny=True)
    assert expandable["error"] == "--memory-limit-gib needs a CUDA device"


def test_train_step_benchmark_runs_the_recipes_allocator_and_keeps_the_users(no_allocator_setting):
    args = ["--preset", "tiny-cogvideox", "--frames", "9", "--height", "96", "--width", "160", "--steps", "1",
            "--warmup", "0", "--json"]
    result = train_step.main(args)
    assert result["allocator_config"] == "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
    assert result["allocator_settings"] == "expandable_segments:True"  # what the running allocator holds
    no_allocator_setting.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    assert train_step.main(args)["allocator_config"] == "PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:512"


def test_gpu_suite_skips_an_entry_whose_question_an_earlier_failure_answered(tmp_path):
    from benchmarks import gpu_suite

    # On this CPU the 80 GB entries fail (no CUDA to hold to a limit), as 181 frames would by running out of memory.
    records = gpu_suite.main(["--tiny", "--out", str(tmp_path), "--only", "hunyuan-181f-80gb", "hunyuan-185f-80gb"])
    assert [r["status"] for r in records] == ["failed (exit 1)", "skipped (hunyuan-181f-80gb did not pass)"]
    # Asked for alone, it runs: nothing this call says it would not fit.
    [alone] = gpu_suite.main(["--tiny", "--out", str(tmp_path / "alone"), "--only", "hunyuan-185f-80gb"])
    assert alone["error"] == "--memory-limit-gib needs a CUDA device"


def test_gpu_suite_entries_run_real_presets_at_the_target_shapes():
    from benchmarks import gpu_suite

    commands = {entry.name: " ".join(entry.command()) for entry in gpu_suite.SUITE}
    assert len(commands) == len(gpu_suite.SUITE)  # each entry once: a lent GPU's minutes are few
    assert "--preset cogvideox-2b --frames 49 --height 480 --width 720" in commands["2b-full-mfu"]
    assert "--preset hunyuan-video --frames 33 --height 544 --width 960" in commands["hunyuan-33f"]
    assert all("tiny" not in command for command in commands.values())
    assert set(gpu_suite.TARGETS) <= set(commands)  # --targets names real entries


@pytest.mark.parametrize("model_dir", ["tiny_cogvideox_dir", "tiny_hunyuan_video_dir"])
def test_pipeline_models_are_made_in_their_dtype_with_no_float32_copy_on_the_way(model_dir, request):
    # A float32 T5-XXL made and then cast passes 19 GB through the GPU and leaves it cached, which inflated
    # the measured peak of the benchmarks that hold the encoders.
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from blueberry_video.training.memory_estimate import models_from_configs

    class Float32Made(TorchDispatchMode):
        elements = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            made = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.dtype == torch.float32]
            self.elements += sum(t.numel() for t in made)
            return out

    model_dir = request.getfixturevalue(model_dir)
    with Float32Made() as float32_made:
        models = models_from_configs(model_dir, "cpu", torch.bfloat16)
    params = [p for model in models.values() for p in model.parameters()]
    assert {"vae", "text_encoder"} <= set(models) and {p.dtype for p in params} == {torch.bfloat16}
    assert float32_made.elements < 0.01 * sum(p.numel() for p in params)
    assert torch.get_default_dtype() == torch.float32


def test_a_failing_estimate_names_its_error():
    from benchmarks.common import memory_estimate

    with pytest.raises(RuntimeError, match="estimate-memory failed: .*--no_such_flag"):
        memory_estimate("cogvideox-2b", None, ["--no_such_flag", "1"])


@pytest.mark.parametrize("benchmark", [["model_flops", "--preset", "tiny-cogvideox"],
                                       ["loader_throughput", "--num-samples", "2", "--epochs", "2"]])
def test_json_output_is_one_json_document_on_stdout(benchmark):
    # DeepSpeed, imported by accelerate on first use, logs a warning to stdout: the log must not land in the JSON.
    module, *args = benchmark
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args, "--frames", "9", "--height", "96",
                           "--width", "160", "--json"], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["frames"] == 9 and result["torch_threads"] == 1  # the thread count it ran with


def test_overhead_benchmark_measures_the_shape_it_is_given_and_says_so(capsys):
    result = overhead.main(["--frames", "5", "--height", "64", "--width", "96", "--batch", "1", "--rounds", "1",
                            "--steps", "1"])
    assert {key: result[key] for key in ("preset", "frames", "height", "width", "batch")} == {
        "preset": "tiny-cogvideox", "frames": 5, "height": 64, "width": 96, "batch": 1}
    printed = capsys.readouterr().out
    assert "frames: 5\n" in printed and "height: 64\n" in printed and "width: 96\n" in printed


def test_the_printed_memory_figures_say_they_are_binary(capsys):
    from benchmarks.common import print_result

    result = {"peak_memory_gb": 7.84, "estimated_peak_memory_gb": None, "sample_mb": 1.5, "mb_per_s": 200.0}
    print_result(result, as_json=False)
    assert capsys.readouterr().out.splitlines() == ["          peak_memory_gb: 7.84 GiB",
                                                    "estimated_peak_memory_gb: None",
                                                    "               sample_mb: 1.5 MiB",
                                                    "                mb_per_s: 200 MiB/s"]
    print_result(result, as_json=True)  # the keys the results files and docs read stay
    assert json.loads(capsys.readouterr().out) == result


def test_gpu_suite_tables_a_session_folder_call_by_call_and_names_a_missing_summary(tmp_path, capsys):
    from benchmarks import gpu_suite

    for call, step in (("call1", 1.25), ("call2", 2.5)):
        (tmp_path / call).mkdir()
        (tmp_path / call / "summary.json").write_text(json.dumps([
            {"name": f"entry-{call}", "status": "ok", "result": {"device": "cpu", "step_time_s": step}}]))
    (tmp_path / "call3").mkdir()  # results saved by hand, no summary
    gpu_suite.main(["--table", str(tmp_path)])
    printed = capsys.readouterr().out
    assert printed.index("## call1") < printed.index("| `entry-call1` | cpu | 1.250 |") < printed.index("## call2")
    assert "| `entry-call2` | cpu | 2.500 |" in printed and "call3" not in printed
    gpu_suite.main(["--table", str(tmp_path / "call1")])
    assert "## " not in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_info:
        gpu_suite.main(["--table", str(tmp_path / "call3")])
    assert exit_info.value.code == 2
    assert f"error: --table {tmp_path / 'call3'}: no {tmp_path / 'call3' / 'summary.json'}" in capsys.readouterr().err


def test_gpu_suite_help_names_each_entry_once_at_most(capsys):
    from benchmarks import gpu_suite

    with pytest.raises(SystemExit):
        gpu_suite.main(["--help"])
    shown = capsys.readouterr().out
    assert "--only NAME [NAME ...]" in shown and "--list" in shown
    assert all(shown.count(name) <= 1 for name in gpu_suite.ENTRIES)
