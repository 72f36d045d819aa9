"""Peak GPU memory of training, estimated on any machine (no GPU, no weights): the recipes' own training step
run on fake tensors.

torch's FakeTensorMode runs every operation for its shapes and dtypes only. Counting the bytes of every tensor
storage from its creation until it is freed gives the peak the caching allocator reports as
`torch.cuda.max_memory_allocated`. Not counted: scratch buffers kernels allocate inside themselves (a profiled
real step of the tiny models on CPU peaked 1-25 % above the estimate), the CUDA context and cuBLAS/cuDNN
workspaces (about 0.5-1 GiB outside PyTorch's allocator), and fragmentation (`max_memory_reserved` runs 1-3 GiB
above the allocated peak on an H200). Autocast is CPU autocast, except that what CUDA's autocast runs in float32
(layer and group norm, softmax, sums, powers: their outputs are among what a step without gradient checkpointing
saves for backward) runs in float32 here too; attention is the fused (flash-style) kernel, as on a GPU. Against
real-size runs on an H200 the estimate came within 1.1 % of `max_memory_allocated` (docs/performance.md).

The model is built on the meta device from its transformer/config.json: no weights are read, so a laptop can
answer "does this config fit a 24 GB card?" in seconds to minutes. Where the config validates, a validation
render (the family's pipeline with the VAE decode) is estimated the same way; its convolutions' internal
workspaces are not counted (on an H200 the tiled 5b render measured 0.3 % above its estimate).
"""

from __future__ import annotations

import contextlib
import functools
import json
import weakref
import dataclasses
from dataclasses import dataclass, field

import torch
import torch.utils.checkpoint
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from blueberry_video.data.latent_dataset import DummyLatentDataset
from blueberry_video.models.base import PRECISION_DTYPES
from blueberry_video.models.presets import default_dtype
from blueberry_video.training.checkpointing import enable_gradient_checkpointing, ratio_label, transformer_blocks
from blueberry_video.training.lora import make_trainable
from blueberry_video.training.optim import build_lr_scheduler, build_optimizer
from blueberry_video.training.sampling import sample_generators
from blueberry_video.training.step import training_step
from blueberry_video.training.decode import decode_without_autocast

GIB = 2**30
# The caching allocator hands out blocks in multiples of 512 bytes.
ALLOCATION_GRANULE = 512


class LiveBytes(TorchDispatchMode):
    """Bytes held by CPU tensor storages created under this mode (or handed to `track`), and their peak. The
    estimate's tensors are CPU tensors; CUDA ones are `GpuFloat32Ops`' probes, which a GPU would not hold."""

    def __init__(self):
        super().__init__()
        self._sizes = WeakIdKeyDictionary()
        self.current = 0
        self.peak = 0

    def track(self, tensor: torch.Tensor) -> None:
        if tensor.device.type != "cpu":
            return
        storage = tensor.untyped_storage()
        if storage in self._sizes:
            return
        size = -(-storage.nbytes() // ALLOCATION_GRANULE) * ALLOCATION_GRANULE
        self._sizes[storage] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, size)

    def _release(self, size: int) -> None:
        self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            # Fake tensors hold no values. The step reads one number (the gradient norm, to skip non-finite
            # updates): any finite value takes the path a healthy step takes.
            return 1.0
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.track(value)
        return out


class GpuFloat32Ops(TorchFunctionMode):
    """Under CPU autocast, runs in float32 each call that CUDA's autocast runs in float32 (layer and group norm,
    softmax, sums), as a GPU trains; CPU autocast keeps their outputs in bf16, and where those are saved for backward
    (no gradient checkpointing) the estimate fell 15-19 % short. torch's own CUDA rules decide: the call is made
    once more on fake CUDA copies of its arguments under CUDA autocast (forward only; a backward through fake CUDA
    tensors needs a GPU), and its result's dtype read. Fake CUDA tensors work in any torch build."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.is_autocast_enabled("cpu") and _has_cuda_autocast_rule(getattr(func, "__name__", "")):
            dtype = torch.get_autocast_dtype("cpu")
            if _cuda_autocast_result_dtype(func, args, kwargs, dtype) == torch.float32:
                with torch.autocast("cpu", enabled=False):
                    return func(*tree_map(_float32, args), **tree_map(_float32, kwargs))
        return func(*args, **kwargs)


def checkpoint_with_gpu_float32_ops(module, *args):
    """diffusers' gradient checkpointing, with `GpuFloat32Ops` active where the blocks are recomputed: that is
    inside backward, where the step's torch function modes are not."""
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False,
                                             context_fn=lambda: (contextlib.nullcontext(), GpuFloat32Ops()))


@functools.cache
def _has_cuda_autocast_rule(name: str) -> bool:
    packet = getattr(torch.ops.aten, name, None) if name else None
    if not isinstance(packet, torch._ops.OpOverloadPacket):
        return False
    return any(_has_autocast_cuda_kernel(getattr(packet, overload).name()) for overload in packet.overloads())


def _has_autocast_cuda_kernel(name: str) -> bool:
    operator, _, overload = name.partition(".")
    try:
        torch._C._dispatch_find_schema_or_throw(operator, overload)
    except RuntimeError:  # TorchScript's own overloads (aten::__getitem__.t) are unknown to the dispatcher
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(name, "AutocastCUDA")


_CUDA_AUTOCAST_RESULT_DTYPES: dict = {}


def _cuda_autocast_result_dtype(func, args, kwargs, dtype: torch.dtype) -> torch.dtype | None:
    # Autocast decides by the operation and its arguments' dtypes alone, not their shapes: one probe per kind of
    # call serves the thousands of calls in a step.
    key = (func, dtype, *(leaf.dtype if isinstance(leaf, torch.Tensor) else leaf if isinstance(leaf, torch.dtype)
                          else None for leaf in tree_flatten((args, kwargs))[0]))
    if key not in _CUDA_AUTOCAST_RESULT_DTYPES:
        _CUDA_AUTOCAST_RESULT_DTYPES[key] = _probe_cuda_autocast_result_dtype(func, args, kwargs, dtype)
    return _CUDA_AUTOCAST_RESULT_DTYPES[key]


def _probe_cuda_autocast_result_dtype(func, args, kwargs, dtype: torch.dtype) -> torch.dtype | None:
    def on_cuda(value):
        if isinstance(value, torch.Tensor):
            return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="cuda")
        return value

    with FakeTensorMode():  # of its own: the probe also runs beside real CPU tensors (tests compare with a real step)
        return _result_dtype_under_cuda_autocast(func, tree_map(on_cuda, args), tree_map(on_cuda, kwargs), dtype)


def _result_dtype_under_cuda_autocast(func, args, kwargs, dtype: torch.dtype) -> torch.dtype | None:
    # The switches below torch.autocast("cuda"), which turns itself off where CUDA is not available.
    enabled, previous_dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        with torch.no_grad():
            result = func(*args, **kwargs)
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", enabled)
        torch.set_autocast_dtype("cuda", previous_dtype)
    first = next((value for value in tree_flatten(result)[0] if isinstance(value, torch.Tensor)), None)
    return None if first is None else first.dtype


def _float32(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.float()
    return value


@dataclass
class MemoryEstimate:
    num_frames: int
    height: int
    width: int
    batch_size: int
    total_params: int
    trainable_params: int
    weights_bytes: int  # parameters and buffers, as training holds them
    optimizer_bytes: int  # optimizer state after the first update
    batch_bytes: int  # one micro-batch of cached latents and text embeddings
    peak_bytes: int  # the most held at once over two optimizer steps
    # What validation additionally loads beside the training transformer (text encoders, VAE), by sub-folder.
    validation_weights_bytes: dict[str, int] = field(default_factory=dict)
    # Where the config validates: the most held while the text encoders encode the prompts (beside the training
    # state), and while the pipeline renders (training state + VAE + denoising + decode).
    validation_encoders_bytes: int | None = None
    validation_render_bytes: int | None = None

    @property
    def validation_peak_bytes(self) -> int | None:
        if self.validation_render_bytes is None:
            return None
        return max(self.validation_encoders_bytes, self.validation_render_bytes)

    @property
    def step_peak_extra_bytes(self) -> int:
        """Gradients, activations and temporaries at the peak."""
        return self.peak_bytes - self.weights_bytes - self.optimizer_bytes - self.batch_bytes

    def total_bytes(self, count_encoders: bool = False) -> int:
        """The run's peak: training, or validation where that is higher; with `count_encoders`, the text
        encoders and VAE are counted as kept on the GPU throughout (as the diffusers example scripts keep them)."""
        training = self.peak_bytes + (sum(self.validation_weights_bytes.values()) if count_encoders else 0)
        return max(training, self.validation_peak_bytes or 0)

    def as_dict(self) -> dict:
        result = {key: value for key, value in self.__dict__.items() if not key.endswith("_bytes")}
        for key in ("weights", "optimizer", "batch", "peak", "step_peak_extra", "validation_peak",
                    "validation_encoders", "validation_render"):
            value = getattr(self, f"{key}_bytes")
            result[f"{key}_gib"] = None if value is None else value / GIB
        result["validation_weights_gib"] = {k: v / GIB for k, v in self.validation_weights_bytes.items()}
        return result

    def summary(self) -> str:
        rows = [
            ("weights (frozen + trained)", self.weights_bytes),
            ("optimizer state", self.optimizer_bytes),
            ("cached batch", self.batch_bytes),
            ("gradients + activations at the peak", self.step_peak_extra_bytes),
            ("estimated peak (max_memory_allocated)", self.peak_bytes),
        ]
        lines = [f"training step, {self.batch_size} x {self.num_frames}x{self.height}x{self.width}, "
                 f"{_count(self.trainable_params)} of {_count(self.total_params)} parameters trained:"]
        lines += [f"  {name:<40}{format_bytes(size):>11}" for name, size in rows]
        if self.validation_peak_bytes is not None:
            lines.append(f"  {'validation peak (+ VAE, render, decode)':<40}{format_bytes(self.validation_peak_bytes):>11}")
        if self.validation_weights_bytes:
            parts = ", ".join(f"{name} {format_bytes(size)}" for name, size in self.validation_weights_bytes.items())
            lines.append(f"  validation loads {parts} (the text encoders only while they encode the prompts); "
                         f"--vae_tiling bounds the decode")
        lines.append("  on the card, add about 0.5-1 GiB for the CUDA context and 0.5-2.5 GiB the allocator reserves "
                     "beyond this (with expandable segments, the default, the reserve shrinks as the card fills: on an "
                     "80 GB H100 HunyuanVideo at 189 frames allocated 77.86 GiB and reserved 78.43)")
        return "\n".join(lines)


def _count(params: int) -> str:
    """5.56B, 132.1M, or the number itself for a tiny test model's."""
    if params >= 1e9:
        return f"{params / 1e9:.2f}B"
    return f"{params / 1e6:,.1f}M" if params >= 1e6 else f"{params:,}"


def format_bytes(size: int) -> str:
    return f"{size / GIB:.2f} GiB" if abs(size) >= GIB else f"{size / 2**20:.1f} MiB"


def meta_transformer(family, dtype: torch.dtype) -> torch.nn.Module:
    """The family's transformer from its config.json, on the meta device (no weights read or allocated)."""
    with torch.device("meta"):
        model = family.transformer_class.from_config(family.transformer_config)
    # As `from_pretrained(dtype=...)` leaves it: parameters and saved buffers in `dtype`; buffers computed at
    # construction (CogVideoX's float64 positional table) as built.
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None and param.is_floating_point():
                module._parameters[name] = torch.nn.Parameter(param.to(dtype), requires_grad=param.requires_grad)
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_floating_point() and name not in module._non_persistent_buffers_set:
                module._buffers[name] = buffer.to(dtype)
    return model


def estimate_training_memory(family, config, num_frames: int | None = None, height: int | None = None,
                             width: int | None = None, batch_size: int | None = None) -> MemoryEstimate:
    """Estimate one process's peak memory for training `config` (LoRA or full, gradient checkpointing, 8-bit
    Adam, layerwise casting, gradient accumulation as set there) at the given clip size and micro-batch
    (default: the config's). One GPU; DDP adds one more copy of the trained weights' gradients per GPU (its
    communication buckets), and sharded engines (FSDP, ZeRO) hold less.

    Runs under an Accelerator of its own (CPU, the config's precision); a caller's accelerate state is set
    aside meanwhile and restored after.
    """
    with _own_accelerate_state():
        return _estimate(family, config, num_frames, height, width, batch_size)


@contextlib.contextmanager
def _own_accelerate_state():
    """accelerate keeps one state per process and refuses a second Accelerator with other settings; the estimate
    needs its own (CPU, the config's precision), whatever the caller (a notebook, a test, a training run) set up.
    The shared state dicts are put aside, emptied, and refilled in place on the way out."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    shared = [cls._shared_state for cls in (PartialState, AcceleratorState, GradientState)]
    saved = [dict(state) for state in shared]
    for state in shared:
        state.clear()
    try:
        yield
    finally:
        for state, contents in zip(shared, saved):
            state.clear()
            state.update(contents)


def _estimate(family, config, num_frames, height, width, batch_size) -> MemoryEstimate:
    from accelerate import Accelerator

    num_frames = num_frames or config.max_num_frames
    height, width = height or config.height, width or config.width
    batch_size = batch_size or config.train_batch_size
    family.check_video_shape(num_frames, height, width)
    # fp16 and bf16 take the same bytes; CPU autocast only knows bf16.
    precision = "bf16" if config.mixed_precision == "fp16" else config.mixed_precision
    dtype = PRECISION_DTYPES[precision]
    transformer = meta_transformer(family, dtype if config.training_mode == "lora" else torch.float32)
    make_trainable(transformer, config, family)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(transformer, family.block_class_names, config.gradient_checkpointing_ratio,
                                      checkpoint_with_gpu_float32_ops)
    total_params = sum(p.numel() for p in transformer.parameters())

    accelerator = Accelerator(mixed_precision=precision, cpu=True,
                              gradient_accumulation_steps=config.gradient_accumulation_steps)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    live = LiveBytes()
    # Real values, drawn outside fake mode: the item's text length is drawn from a generator.
    item = DummyLatentDataset(family, 1, num_frames, height, width)[0]
    with fake_mode:
        _replace_with_fake_tensors(transformer)
        batch = {name: torch.empty((batch_size, *value.shape), dtype=value.dtype) for name, value in item.items()}
    for tensor in [*transformer.parameters(), *transformer.buffers()]:
        live.track(tensor)
    weights_bytes = live.current
    for tensor in batch.values():
        live.track(tensor)
    batch_bytes = live.current - weights_bytes
    params = [p for p in transformer.parameters() if p.requires_grad]  # the fake ones now
    # Built outside fake mode: optimizers and schedulers compute constants (bitsandbytes' quantisation map,
    # sigma tables) from real values at construction.
    optimizer = build_optimizer(params, config, device="cuda")  # the GPU run's optimizer (fused AdamW)
    lr_scheduler = build_lr_scheduler(optimizer, config, 2)
    noise_scheduler = family.load_training_scheduler()

    optimizer_bytes = 0
    with fake_mode, _module_conversion_allowed(), GpuFloat32Ops(), live:
        for update in range(2):
            for micro_step in range(config.gradient_accumulation_steps):
                step = update * config.gradient_accumulation_steps + micro_step
                generators = sample_generators(config.seed, step, range(batch_size), "cpu")
                training_step(accelerator, family, transformer, noise_scheduler, batch, generators, params,
                              optimizer, lr_scheduler, config.max_grad_norm)
            if update == 0:
                optimizer_bytes = live.current - weights_bytes - batch_bytes
    training_peak = live.peak
    pipeline_models = models_from_configs(family.model_dir, "meta", dtype)
    encoder_bytes = {name: _bytes_of(model) for name, model in pipeline_models.items()}
    encoders_turn = render = None
    if config.validation_prompt and "vae" in pipeline_models:
        # The text encoders' turn comes first, before the VAE is moved to the GPU.
        text_encoders = sum(size for name, size in encoder_bytes.items() if name.startswith("text_encoder"))
        encoders_turn = live.current + text_encoders
        scheduler = type(noise_scheduler).from_config(noise_scheduler.config)  # the pipeline sets its timesteps
        text = family.dummy_text_conditioning(torch.Generator().manual_seed(config.seed))
        render = _validation_render_peak(family, config, transformer, pipeline_models["vae"], scheduler, text,
                                         dtype, num_frames, height, width, fake_mode, live)
    return MemoryEstimate(
        num_frames=num_frames, height=height, width=width, batch_size=batch_size,
        total_params=total_params, trainable_params=sum(p.numel() for p in params),
        weights_bytes=weights_bytes, optimizer_bytes=optimizer_bytes, batch_bytes=batch_bytes,
        peak_bytes=training_peak, validation_weights_bytes=encoder_bytes,
        validation_encoders_bytes=encoders_turn, validation_render_bytes=render,
    )


def _validation_render_peak(family, config, transformer, vae, scheduler, text, dtype, num_frames, height, width,
                            fake_mode, live: LiveBytes) -> int:
    """The peak while the family's pipeline renders one validation video around the training
    transformer (training state still held), from cached-shape conditioning: the text encoders are gone by
    then. Two denoising steps hold what fifty do."""
    with fake_mode:
        _replace_with_fake_tensors(vae)
    for tensor in [*vae.parameters(), *vae.buffers()]:
        live.track(tensor)
    if config.vae_tiling:
        vae.enable_tiling()
    live.peak = live.current
    was_training = transformer.training
    transformer.eval()
    with fake_mode, _module_conversion_allowed(), GpuFloat32Ops(), live, torch.autocast(
            "cpu", dtype=dtype, enabled=dtype != torch.float32):
        render_without_text_encoders(family, transformer, vae, scheduler, text, config.guidance_scale, num_frames,
                                     height, width, num_inference_steps=2)
    transformer.train(was_training)
    return live.peak


@torch.no_grad()
def render_without_text_encoders(family, transformer, vae, scheduler, text_conditioning: dict,
                                 guidance_scale: float, num_frames: int, height: int, width: int,
                                 num_inference_steps: int) -> torch.Tensor:
    """What validation holds once the prompts are encoded: the family's pipeline around `transformer` and `vae`,
    with no text encoders, rendering one video (validation renders them one at a time; decoded, as a tensor) from
    text conditioning of the shapes in `text_conditioning` (`family.dummy_text_conditioning`'s; the values do not
    matter)."""
    import inspect

    components = {name: None for name in inspect.signature(family.pipeline_class.__init__).parameters if name != "self"}
    pipe = family.pipeline_class(**{**components, "transformer": transformer, "vae": vae, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    decode_without_autocast(vae)  # as the trainer's validation decodes
    device, dtype = vae.device, vae.dtype
    batched = {name: (torch.zeros((1, *value.shape), dtype=dtype, device=device) if value.is_floating_point()
                      else torch.ones((1, *value.shape), dtype=value.dtype, device=device))
               for name, value in text_conditioning.items()}
    return pipe(**family.pipeline_conditioning(batched, guidance_scale), num_videos_per_prompt=1,
                num_frames=num_frames, height=height, width=width, num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale, output_type="pt",
                **family.generation_kwargs(num_frames, height, width)).frames


def largest_frames_within(family, config, budget_bytes: int, search_limit: int = 257, count_encoders: bool = False,
                          height: int | None = None, width: int | None = None,
                          batch_size: int | None = None) -> tuple[int, MemoryEstimate] | tuple[None, None]:
    """The most frames per clip whose estimated peak fits `budget_bytes` (bisection over the frame counts the
    family accepts, up to `search_limit`), with that estimate; (None, None) when not even the fewest fit."""
    from blueberry_video.errors import ConfigError

    height, width = height or config.height, width or config.width
    candidates = []
    for frames in range(1, search_limit + 1):
        try:
            family.check_video_shape(frames, height, width)
            candidates.append(frames)
        except ConfigError:
            continue
    best = (None, None)
    low, high = 0, len(candidates) - 1
    while low <= high:  # the peak grows with the frame count
        middle = (low + high) // 2
        estimate = estimate_training_memory(family, config, candidates[middle], height, width, batch_size)
        if estimate.total_bytes(count_encoders) <= budget_bytes:
            best, low = (candidates[middle], estimate), middle + 1
        else:
            high = middle - 1
    return best


def least_checkpointing_within(family, config, budget_bytes: int, count_encoders: bool = False
                               ) -> tuple[str, int, int, MemoryEstimate] | tuple[None, None, int, None]:
    """The lowest `gradient_checkpointing_ratio` whose estimated peak fits `budget_bytes` (bisection over how many
    blocks recompute: the peak falls as more do): (ratio, blocks recomputing, blocks, its estimate), or
    (None, None, blocks, None) when not even recomputing every block fits."""
    num_blocks = len(transformer_blocks(meta_transformer(family, torch.bfloat16), family.block_class_names))

    def estimate_with(recomputing: int) -> tuple[str, MemoryEstimate | None]:
        ratio = ratio_label(recomputing, num_blocks)
        trial = dataclasses.replace(config, gradient_checkpointing=True, gradient_checkpointing_ratio=float(ratio))
        estimate = estimate_training_memory(family, trial)  # a minute per trial at HunyuanVideo's size
        return ratio, estimate if estimate.total_bytes(count_encoders) <= budget_bytes else None

    # Every block recomputing first: where that does not fit, no search is needed.
    ratio, estimate = estimate_with(num_blocks)
    if estimate is None:
        return None, None, num_blocks, None
    best = (ratio, num_blocks, num_blocks, estimate)
    low, high = 0, num_blocks - 1
    while low <= high:
        middle = (low + high) // 2
        ratio, estimate = estimate_with(middle)
        if estimate is not None:
            best, high = (ratio, middle, num_blocks, estimate), middle - 1
        else:
            low = middle + 1
    return best


def _replace_with_fake_tensors(model: torch.nn.Module) -> None:
    """Swap each meta parameter and buffer for a fake one of the same shape, dtype and requires_grad
    (a parameter shared by several modules stays shared)."""
    made: dict[int, torch.Tensor] = {}

    def fake_like(tensor, as_parameter: bool):
        if id(tensor) not in made:
            empty = torch.empty(tensor.shape, dtype=tensor.dtype)
            made[id(tensor)] = torch.nn.Parameter(empty, requires_grad=tensor.requires_grad) if as_parameter else empty
        return made[id(tensor)]

    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                module._parameters[name] = fake_like(param, as_parameter=True)
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = fake_like(buffer, as_parameter=False)


@contextlib.contextmanager
def _module_conversion_allowed():
    """Let `module.to(dtype)` run on fake parameters (diffusers' layerwise casting does it around every forward).

    nn.Module converts a real parameter by replacing its data (`param.data = converted`), but swaps a fake
    one in place, which torch refuses while autograd holds it for the backward pass. Fake ones are given the
    real ones' path; the storage autograd holds stays alive, and counted, as it would on a GPU.
    """
    original = torch.utils.swap_tensors

    def replace_data(t1, t2):
        t1.data = t2.data

    torch.utils.swap_tensors = replace_data
    try:
        yield
    finally:
        torch.utils.swap_tensors = original


def _bytes_of(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def models_from_configs(model_dir, device, dtype: torch.dtype | None = None) -> dict[str, torch.nn.Module]:
    """The pipeline's models other than the transformer (text encoders, VAE), built from their config.json with
    random weights on `device` (the meta device: no memory), by the classes model_index.json names."""
    import diffusers
    import transformers

    index_file = model_dir / "model_index.json"
    if not index_file.is_file():
        return {}
    models = {}
    for name, entry in json.loads(index_file.read_text()).items():
        if name == "transformer" or not isinstance(entry, list) or not (model_dir / name / "config.json").is_file():
            continue
        library = {"diffusers": diffusers, "transformers": transformers}.get(entry[0])
        model_class = getattr(library, entry[1], None) if library else None
        if model_class is None:
            continue
        # Made in `dtype` from the start, as the presets' transformers are: no float32 copy passes through the
        # device to leave freed-but-cached memory behind.
        with torch.device(device), default_dtype(dtype or torch.get_default_dtype()):
            if library is transformers:
                models[name] = model_class(model_class.config_class.from_pretrained(model_dir / name))
            else:
                models[name] = model_class.from_config(model_class.load_config(model_dir / name))
        if dtype is not None:
            models[name].to(dtype)
    return models
