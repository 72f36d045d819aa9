"""Where one training step's time goes: attention, matrix products, the optimizer and the rest, and the rate the
attention and matrix kernels reached. The answer to "why is MFU what it is" (`train_step.py --profile`).

Time comes from torch's profiler: every kernel is charged to the operator that launched it (its self device
time; on CPU, the operator's own CPU time), and an operator belongs to the outermost kind named by it or the
operators enclosing it: inside `Optimizer.step` the optimizer, inside a scaled-dot-product call attention,
inside a matrix product or convolution a matrix product. FLOPs come from torch's FlopCounterMode over another step,
so they are the FLOPs the kernels executed, recomputation under gradient checkpointing included (which MFU,
counted from the model, leaves out).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from torch.utils import flop_counter

KINDS = ("attention", "matmul", "optimizer", "other")
# SDPA's aten operators name their backend (..._flash_attention, ..._cudnn_attention, ..._efficient_attention);
# flash-attn and xformers kernels behind diffusers' other backends carry these words too.
ATTENTION_WORDS = ("scaled_dot_product", "flash_attention", "flash_attn", "efficient_attention", "cudnn_attention",
                   "fmha", "flash_fwd", "flash_bwd")
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
              "aten::_scaled_mm", "aten::addmv", "aten::mv"}


def _sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# FlopCounterMode knows CUDA's SDPA kernels but not the CPU's: counted the same way.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops,
}


def op_kind(name: str) -> str | None:
    """The kind an operator's name says it is, or None when it says nothing."""
    lowered = name.lower()
    if lowered.startswith("optimizer.step"):
        return "optimizer"
    if any(word in lowered for word in ATTENTION_WORDS):
        return "attention"
    if name in MATMUL_OPS or "convolution" in lowered or lowered.startswith("aten::conv"):
        return "matmul"
    return None


def _kind_of_event(event, cache: dict) -> str:
    """The first kind named by the event or an enclosing one; the outermost enclosing kind wins, so the matrix
    products inside an optimizer step or a math attention count as the optimizer and attention."""
    chain = []
    node = event
    while node is not None and id(node) not in cache:
        chain.append(node)
        node = node.cpu_parent
    kind = cache.get(id(node)) if node is not None else None
    for link in reversed(chain):
        kind = kind or op_kind(link.name)
        cache[id(link)] = kind
    return kind or "other"


def time_by_kind(events, on_device: bool) -> tuple[dict[str, float], float]:
    """Seconds each kind ran and their total, from a profile's events. On a GPU: kernel time charged to the
    launching operator, and kernels no operator claimed count as "other". On CPU: operators' own CPU time."""
    seconds = defaultdict(float)
    cache: dict = {}
    device_total = 0.0
    for event in events:
        if event.device_type != DeviceType.CPU:  # a kernel, memcpy or memset on the device
            device_total += event.self_device_time_total / 1e6
            continue
        own = (event.self_device_time_total if on_device else event.self_cpu_time_total) / 1e6
        if own > 0:
            seconds[_kind_of_event(event, cache)] += own
    claimed = sum(seconds.values())
    total = max(device_total, claimed) if on_device else claimed
    seconds["other"] += total - claimed
    return {kind: seconds[kind] for kind in KINDS}, total


def attention_kernels(events) -> list[str]:
    """The attention operators and kernels that ran, busiest first."""
    busy = defaultdict(float)
    for event in events:
        if op_kind(event.name) == "attention":
            busy[event.name] += event.self_device_time_total + event.self_cpu_time_total
    return sorted(busy, key=busy.get, reverse=True)


def flops_by_kind(step, compiled: bool) -> dict[str, float]:
    """FLOPs the attention and matrix-product kernels of one call of `step()` execute. A compiled model runs
    eagerly for the count (the same products; FlopCounterMode does not see into compiled graphs)."""
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    with eager_if_compiled(compiled), counting_without_module_tracker(counter):
        step()
    flops = defaultdict(float)
    for op, count in counter.get_flop_counts()["Global"].items():
        flops[op_kind(str(op).replace(".", "::", 1)) or "matmul"] += count
    return dict(flops)


def counting_without_module_tracker(counter: flop_counter.FlopCounterMode):
    """Count into `counter`'s "Global" totals, leaving out the ModuleTracker that FlopCounterMode enters to charge
    FLOPs to modules. The tracker hooks every module's inputs and outputs, and each hook holds the gradients that
    arrive until all of that module's tensors have theirs. Every block of these transformers also takes the
    timestep embedding, whose gradient is complete only at the end of the backward pass, so the tracker keeps a
    hidden-state gradient per block to the end (shown on CPU in tests/test_benchmarks.py), which fits the H100's
    failure: the counted HunyuanVideo step ran out of memory at 71.7 GiB where the step peaks at 35.1. The
    counting mode alone holds nothing. Its class is private to torch, so the whole FlopCounterMode stands in where
    it is missing."""
    counting_mode = getattr(flop_counter, "_FlopCounterMode", None)
    return counting_mode(counter) if counting_mode is not None else counter


def eager_if_compiled(compiled: bool):
    """Compiled blocks run eagerly inside: FlopCounterMode and module hooks see no further than a compiled graph."""
    return torch.compiler.set_stance("force_eager") if compiled else contextlib.nullcontext()


def profile_step(step, device: torch.device, compiled: bool = False) -> dict:
    """Profile one call of `step()` and count its FLOPs in another: per kind, seconds, share of the profiled
    step and TFLOP/s; the attention kernels that ran; and the share of the step no kernel ran (on a GPU: launch
    gaps, host work, synchronisation; on CPU: Python and the framework between operators)."""
    on_device = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_device else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        step()
        if on_device:
            torch.cuda.synchronize(device)
        profiled_wall = time.perf_counter() - start
    events = prof.events()
    seconds, busy = time_by_kind(events, on_device)
    flops, count_error = {}, None
    try:
        if on_device:
            torch.cuda.empty_cache()  # the profiled step's cached blocks, fragmented, would only stand in the way
        flops = flops_by_kind(step, compiled)
    except torch.OutOfMemoryError as error:
        # The counted step can need more memory than the real one (a compiled model is counted eagerly). The
        # times and kernels stand.
        count_error = f"OutOfMemoryError: {str(error).splitlines()[0][:200]}"
    kinds = {}
    for kind in KINDS:
        rate = flops.get(kind, 0.0) / seconds[kind] / 1e12 if seconds[kind] > 0 and flops.get(kind) else None
        kinds[kind] = {"seconds": seconds[kind], "share": seconds[kind] / profiled_wall,
                       "tflop": flops.get(kind, 0.0) / 1e12, "tflops": rate}
    # Shares of the profiled step itself: the profiler slows the host, so the median step is no denominator.
    breakdown = {"time_by_kind": kinds, "busy_s": busy, "idle_share": max(0.0, 1 - busy / profiled_wall),
                 "profiled_step_s": profiled_wall, "profiled_on": device.type,
                 "attention_kernels": attention_kernels(events)}
    if count_error:
        breakdown["flop_count_error"] = count_error
    return {"time_summary": summary_line(breakdown), **breakdown}


def summary_line(breakdown: dict) -> str:
    """`attention 52% (410 TFLOP/s), matmul 31% (640 TFLOP/s), optimizer 3%, other 9%, device idle 5%`."""
    parts = []
    for kind, figures in breakdown["time_by_kind"].items():
        rate = f" ({figures['tflops']:.3g} TFLOP/s)" if figures["tflops"] else ""
        parts.append(f"{kind} {figures['share']:.0%}{rate}")
    idle = "device idle" if breakdown["profiled_on"] == "cuda" else "outside operators"
    return ", ".join(parts + [f"{idle} {breakdown['idle_share']:.0%}"])
