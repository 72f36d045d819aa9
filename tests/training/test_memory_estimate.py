"""The memory estimate: the real training step on fake tensors, checked against a profiler's count of a real
step's allocations and against what each memory option must change."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator
from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import Action, MemoryProfile

from blueberry_video.cli import main
from blueberry_video.config import TrainConfig
from blueberry_video.data.latent_dataset import DummyLatentDataset
from blueberry_video.models import get_family_class
from blueberry_video.training.checkpointing import enable_gradient_checkpointing
from blueberry_video.training.lora import make_trainable
from blueberry_video.training.memory_estimate import (ALLOCATION_GRANULE, GIB, GpuFloat32Ops,
                                                       checkpoint_with_gpu_float32_ops, estimate_training_memory)
from blueberry_video.training.optim import build_lr_scheduler, build_optimizer
from blueberry_video.training.sampling import sample_generators
from blueberry_video.training.step import training_step

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
SHAPE = dict(max_num_frames=17, height=96, width=160)


def tiny_config(model_dir, **overrides) -> TrainConfig:
    return TrainConfig(pretrained_model_name_or_path=str(model_dir), rank=16, lora_alpha=16, dummy_data=True,
                       **{**SHAPE, **overrides})


def model_dir_of(family_name, request):
    return request.getfixturevalue({"cogvideox": "tiny_cogvideox_dir", "hunyuan_video": "tiny_hunyuan_video_dir"}[family_name])


def measured_step_peak(family, config) -> int:
    """Peak bytes of a real second training step on CPU, from the profiler's memory timeline (tensors alive
    before it, such as weights and optimizer state, included). As in the estimate, what CUDA's autocast runs in
    float32 runs in float32 (CPU autocast keeps it in bf16), so that both count the same step."""
    accelerator = Accelerator(mixed_precision="bf16", cpu=True)
    transformer = family.load_transformer(dtype=torch.bfloat16 if config.training_mode == "lora" else torch.float32)
    params = make_trainable(transformer, config, family)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(transformer, family.block_class_names, config.gradient_checkpointing_ratio,
                                      checkpoint_with_gpu_float32_ops)
    optimizer = build_optimizer(params, config, device="cpu")
    lr_scheduler = build_lr_scheduler(optimizer, config, 2)
    noise_scheduler = family.load_training_scheduler()
    item = DummyLatentDataset(family, 1, config.max_num_frames, config.height, config.width)[0]
    batch = {name: value[None] for name, value in item.items()}

    def step(index):
        with GpuFloat32Ops():
            training_step(accelerator, family, transformer, noise_scheduler, batch,
                          sample_generators(0, index, [0], "cpu"), params, optimizer, lr_scheduler, 1.0)

    step(0)
    # CPU kernels' scratch buffers grow with the thread count: measured at CI's 2 threads, whatever this machine
    # has (under OMP_NUM_THREADS=1 the measured peak was 2.8 % lower).
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            step(1)
    finally:
        torch.set_num_threads(threads)
    live, current, peak = {}, 0, 0
    for _, action, (key, _), size in MemoryProfile(prof.profiler.kineto_results).timeline:
        # Rounded up to the CUDA caching allocator's blocks, as the estimate counts: the CPU allocator's exact
        # sizes would put these tiny steps, with hundreds of small tensors, a few percent lower.
        size = -(-size // ALLOCATION_GRANULE) * ALLOCATION_GRANULE
        if action in (Action.PREEXISTING, Action.CREATE):
            live[key] = size
            current += size
        elif action == Action.DESTROY:
            current -= live.pop(key, size)
        peak = max(peak, current)
    return peak


@pytest.mark.parametrize("family_name, options", [
    ("cogvideox", {}),
    ("cogvideox", {"gradient_checkpointing": True}),
    ("cogvideox", {"gradient_checkpointing": True, "gradient_checkpointing_ratio": 0.5}),
    ("cogvideox", {"training_mode": "full"}),
    ("hunyuan_video", {}),
])
def test_the_estimate_is_close_to_a_profiled_real_step(family_name, options, request):
    family = get_family_class(family_name)(model_dir_of(family_name, request))
    config = tiny_config(family.model_dir, **options)
    estimated = estimate_training_memory(family, config).peak_bytes
    measured = measured_step_peak(family, config)
    # The estimate sees every tensor an operation returns, not the scratch buffers kernels allocate inside
    # (on CPU: 10-25 % of these tiny steps' peaks). It must never claim more than is used.
    assert 0.7 * measured <= estimated <= 1.02 * measured, (estimated, measured)


def test_weights_and_optimizer_state_are_counted_exactly(tiny_cogvideox_dir):
    family = get_family_class("cogvideox")(tiny_cogvideox_dir)
    config = tiny_config(tiny_cogvideox_dir)
    estimate = estimate_training_memory(family, config)

    transformer = family.load_transformer(dtype=torch.bfloat16)
    params = make_trainable(transformer, config, family)

    def granules(tensor):
        return -(-tensor.numel() * tensor.element_size() // ALLOCATION_GRANULE) * ALLOCATION_GRANULE

    assert estimate.weights_bytes == sum(granules(t) for t in [*transformer.parameters(), *transformer.buffers()])
    assert estimate.trainable_params == sum(p.numel() for p in params) > 0
    # AdamW: two float32 moments per trained weight, and a step counter per tensor.
    moments = sum(2 * granules(p.float()) for p in params)
    assert moments <= estimate.optimizer_bytes <= moments + len(params) * ALLOCATION_GRANULE


def test_each_memory_option_moves_the_estimate_the_way_it_should(tiny_cogvideox_dir):
    family = get_family_class("cogvideox")(tiny_cogvideox_dir)
    base = estimate_training_memory(family, tiny_config(tiny_cogvideox_dir))
    checkpointed = estimate_training_memory(family, tiny_config(tiny_cogvideox_dir, gradient_checkpointing=True))
    full = estimate_training_memory(family, tiny_config(tiny_cogvideox_dir, training_mode="full"))
    float8 = estimate_training_memory(family, tiny_config(tiny_cogvideox_dir, layerwise_casting=True))
    longer = estimate_training_memory(family, tiny_config(tiny_cogvideox_dir, max_num_frames=33))
    batch2 = estimate_training_memory(family, tiny_config(tiny_cogvideox_dir, train_batch_size=2))

    assert checkpointed.step_peak_extra_bytes < 0.8 * base.step_peak_extra_bytes
    assert checkpointed.weights_bytes == base.weights_bytes
    assert full.trainable_params == full.total_params and full.optimizer_bytes >= 8 * full.trainable_params
    assert full.peak_bytes > base.peak_bytes
    assert float8.weights_bytes < base.weights_bytes and float8.trainable_params == base.trainable_params
    assert longer.peak_bytes > base.peak_bytes and longer.batch_bytes > base.batch_bytes
    assert batch2.batch_bytes == pytest.approx(2 * base.batch_bytes, rel=0.05)
    assert batch2.step_peak_extra_bytes > 1.5 * base.step_peak_extra_bytes


def run_cli(args, capsys) -> dict:
    main(["estimate-memory", "--json", *args])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_says_whether_a_config_fits_and_finds_the_most_frames(tiny_cogvideox_dir, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(f"pretrained_model_name_or_path: {tiny_cogvideox_dir}\nheight: 96\nwidth: 160\n"
                      "max_num_frames: 17\nrank: 16\nlora_alpha: 16\n")
    at_17 = run_cli(["--config", str(config)], capsys)
    assert at_17["num_frames"] == 17 and at_17["fits"] is None
    budget = at_17["total_gib"] + 1 / GIB  # one byte to spare
    assert run_cli(["--config", str(config), "--budget-gib", str(budget)], capsys)["fits"] is True
    at_21 = run_cli(["--config", str(config), "--max_num_frames", "21", "--budget-gib", str(budget)], capsys)
    assert at_21["fits"] is False and at_21["total_gib"] > at_17["total_gib"]

    found = run_cli(["--config", str(config), "--budget-gib", str(budget), "--max-frames"], capsys)
    assert found["num_frames"] == 17

    with_encoders = run_cli(["--config", str(config), "--count-encoders"], capsys)
    assert set(with_encoders["validation_weights_gib"]) == {"text_encoder", "vae"}
    assert with_encoders["total_gib"] == pytest.approx(at_17["total_gib"] + sum(with_encoders["validation_weights_gib"].values()))


def test_real_size_preset_needs_no_weights(capsys):
    result = run_cli(["--preset", "cogvideox-2b", "--rank", "128", "--lora_alpha", "128", "--gradient_checkpointing",
                      "--budget-gib", "80"], capsys)
    # CogVideoX-2b's transformer has 1.69B parameters; its T5-XXL text encoder 4.76B (bf16: 8.9 GiB).
    assert 1.68e9 < result["total_params"] - result["trainable_params"] < 1.70e9
    assert 8.8 < result["validation_weights_gib"]["text_encoder"] < 8.95
    assert result["weights_gib"] > 3.1 and result["fits"] is True


def test_the_callers_accelerate_state_survives_an_estimate(tiny_cogvideox_dir):
    accelerator = Accelerator(mixed_precision="no", cpu=True)  # e.g. a notebook that trained first
    family = get_family_class("cogvideox")(tiny_cogvideox_dir)
    assert estimate_training_memory(family, tiny_config(tiny_cogvideox_dir, mixed_precision="bf16")).peak_bytes > 0
    assert accelerator.state.mixed_precision == "no"
    assert Accelerator(mixed_precision="no", cpu=True).mixed_precision == "no"  # accelerate would refuse a change


@pytest.mark.parametrize("family_name", ["cogvideox", "hunyuan_video"])
def test_validation_is_estimated_where_the_config_validates(family_name, request):
    family = get_family_class(family_name)(model_dir_of(family_name, request))
    silent = estimate_training_memory(family, tiny_config(family.model_dir))
    assert silent.validation_peak_bytes is None and silent.total_bytes() == silent.peak_bytes

    one = estimate_training_memory(family, tiny_config(family.model_dir, validation_prompt=["a cat"],
                                                       num_inference_steps=2))
    two = estimate_training_memory(family, tiny_config(family.model_dir, validation_prompt=["a cat"],
                                                       num_inference_steps=2, num_validation_videos=2))
    vae = one.validation_weights_bytes["vae"]
    text_encoders = sum(v for k, v in one.validation_weights_bytes.items() if k.startswith("text_encoder"))
    resident = one.weights_bytes + one.optimizer_bytes + one.batch_bytes
    # The encoders' turn beside the training state, then the render: the VAE, the denoising, the decode.
    assert one.validation_peak_bytes >= resident + text_encoders
    assert one.validation_peak_bytes > resident + vae
    assert two.validation_peak_bytes == one.validation_peak_bytes  # validation renders one video at a time
    assert one.total_bytes() == max(one.peak_bytes, one.validation_peak_bytes)


def test_what_cuda_autocast_runs_in_float32_runs_in_float32_under_cpu_autocast():
    # CPU autocast keeps norms and softmax in bf16; on a GPU they run (and are saved for backward) in float32,
    # which an estimate without gradient checkpointing must count. torch's CUDA rules decide, not a list of ours.
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), GpuFloat32Ops():
        assert torch.nn.functional.layer_norm(x, (8,)).dtype == torch.float32
        assert torch.nn.functional.group_norm(x[None], 2).dtype == torch.float32
        assert x.softmax(-1).dtype == torch.float32 and x.float().pow(2).to(torch.bfloat16).pow(2).dtype == torch.float32
        assert (x @ x.T).dtype == torch.bfloat16  # matrix products stay in bf16, as on a GPU
        assert torch.nn.functional.gelu(x).dtype == torch.bfloat16  # no CUDA rule: the input's dtype
    with GpuFloat32Ops():  # without autocast nothing changes
        assert torch.nn.functional.layer_norm(x, (8,)).dtype == torch.bfloat16
