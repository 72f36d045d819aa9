"""The benchmarks run on CPU with the tiny presets and report what they promise (no timing is asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from benchmarks import loader_throughput, overhead, precompute_throughput, train_step, validation_render
from benchmarks.common import training_flops
from tests.conftest import REPO_ROOT


def test_flops_formula_counts_dense_and_attention_terms():
    n, n_lora, tokens, layers, hidden = 1000, 10, 50, 2, 8
    attention = 12 * layers * tokens**2 * hidden
    assert training_flops(0, n, tokens, layers, hidden) == 6 * n * tokens + attention  # full fine-tune
    assert training_flops(n, n_lora, tokens, layers, hidden) == 4 * n * tokens + 6 * n_lora * tokens + attention


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_train_step_benchmark_counts_the_flops_of_its_mode(mode):
    result = train_step.main(["--preset", "tiny-cogvideox", "--mode", mode, "--frames", "9", "--height", "96",
                              "--width", "160", "--batch", "2", "--rank", "4", "--steps", "1", "--warmup", "1",
                              "--json"])
    n, trainable, tokens = result["params"], result["trainable_params"], result["tokens_per_sample"]
    dense = 6 * n * tokens if mode == "full" else 4 * (n - trainable) * tokens + 6 * trainable * tokens
    attention = 12 * result["layers"] * tokens**2 * result["hidden"]
    assert (trainable == n) == (mode == "full")
    flops = result["achieved_tflops"] * 1e12 * result["step_time_s"]
    assert flops == pytest.approx(2 * (dense + attention), rel=1e-9)


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


def test_train_step_benchmark_names_the_attention_kernels_that_ran():
    result = train_step.main(["--preset", "tiny-cogvideox", "--frames", "9", "--height", "96", "--width", "160",
                              "--steps", "1", "--warmup", "1", "--profile", "--json"])
    # on CPU, PyTorch's SDPA dispatches to its flash kernel for CPU; on Hopper the list shows flash or cuDNN
    assert any("_scaled_dot_product_flash_attention" in name for name in result["attention_kernels"])


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
    one = validation_render.main(["--preset", preset, "--estimate", "--json"])
    two = validation_render.main(["--preset", preset, "--videos", "2", "--estimate", "--json"])
    assert one["video_shape"] == [1, 9, 3, 96, 160] and two["video_shape"][0] == 2
    assert 0 < one["estimated_peak_memory_gb"] < two["estimated_peak_memory_gb"]


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


def test_gpu_suite_entries_run_real_presets_at_the_target_shapes():
    from benchmarks import gpu_suite

    commands = {entry.name: " ".join(entry.command()) for entry in gpu_suite.SUITE}
    assert "--preset cogvideox-2b --frames 49 --height 480 --width 720" in commands["2b-full-mfu"]
    assert "--preset hunyuan-video --frames 33 --height 544 --width 960" in commands["hunyuan-33f"]
    assert all("tiny" not in command for command in commands.values())


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
