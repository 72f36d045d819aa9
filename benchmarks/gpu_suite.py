"""Every GPU measurement docs/performance.md asks for, in priority order, within one time limit.

    python benchmarks/gpu_suite.py --out DIR [--deadline-s 540] [--only NAME ... | --targets] [--list] [--tiny]
    python benchmarks/gpu_suite.py --table DIR      # the results as a markdown table, for docs/performance.md

A lent GPU comes with a few minutes of device time, so the first call should measure what matters most and
stop cleanly: each benchmark runs in its own process, with what is left of the deadline as its time limit, and
its status, JSON result and log tail land in DIR/summary.json at once (its whole log in DIR/suite.log), so
whatever finished comes back even when the time runs out. DIR holds three files whatever the entry count
(summary.json, suite.log, environment.json with the package versions and GPU), because a lent machine returns
only a few. A later call with `--only` takes the rest. `--tiny` swaps in the tiny presets at 9x96x160: a CPU
check that every entry still runs (those that need a GPU report their error).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# `python benchmarks/gpu_suite.py` puts benchmarks/ on sys.path, not the repo root its import check needs.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
COGVIDEOX_SHAPE = ("--frames", "49", "--height", "480", "--width", "720")
HUNYUAN_SHAPE = ("--frames", "33", "--height", "544", "--width", "960")
TINY_PRESETS = {"cogvideox-2b": "tiny-cogvideox", "cogvideox-5b": "tiny-cogvideox", "hunyuan-video": "tiny-hunyuan-video"}
TINY_SHAPE = {"--frames": "9", "--height": "96", "--width": "160"}


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # which figure of docs/performance.md it gives
    module: str  # benchmarks.<module>
    args: tuple[str, ...]
    # Skipped when this entry ran earlier in the same call and did not pass (its answer already says this one's).
    unless_failed: str | None = None

    def command(self, tiny: bool = False) -> list[str]:
        args = list(self.args)
        if tiny:
            for i in range(1, len(args)):
                flag = args[i - 1]
                args[i] = TINY_SHAPE[flag] if flag in TINY_SHAPE else TINY_PRESETS.get(args[i], args[i])
        return [sys.executable, "-m", f"benchmarks.{self.module}", *args, "--json"]

    def shown(self, tiny: bool = False) -> str:
        """The command as a person would type it."""
        return " ".join(["python", "-m", *self.command(tiny)[2:]])


def _train(preset, *flags, steps=10, warmup=3, frames=None):
    shape = HUNYUAN_SHAPE if preset == "hunyuan-video" else COGVIDEOX_SHAPE
    if frames is not None:
        shape = ("--frames", str(frames), *shape[2:])
    return ("--preset", preset, *shape, "--batch", "1", *flags, "--steps", str(steps), "--warmup", str(warmup))


# An 80 GB H100 leaves about 78.5 GiB to tensors after the CUDA context; train_step holds the allocator to it.
LIMIT_80GB = ("--memory-limit-gib", "78.5")
# train_step runs the recipes' allocator (expandable segments) unless told otherwise.
DEFAULT_ALLOCATOR = ("--allocator", "default")


def _hunyuan_frames(frames, *flags):
    """One HunyuanVideo LoRA step at this frame count: memory only."""
    return _train("hunyuan-video", "--mode", "lora", "--rank", "64", "--gradient-checkpointing", *flags, steps=1,
                  warmup=0, frames=frames)


# Most important first. Three H200 sessions and one H100 session (2026-11-26) and one session on both cards
# (2026-11-27; results in benchmarks/results/) measured every entry at least once but the first: HunyuanVideo runs
# 189 frames on an 80 GB H100 itself (77.86 GiB allocated, 78.43 reserved), and 193 ran out of memory on an H200
# held to that card's memory. What is left leads: 193 frames on the H100 itself.
SUITE = (
    Entry("hunyuan-193f-80gb", "HunyuanVideo at 193 frames held to 78.5 GiB (estimated 79.52 GiB allocated; out of "
          "memory on an H200 so held, asking 1.14 GiB with 77.83 allocated: expected not to fit an H100 either)",
          "train_step", _hunyuan_frames(193, *LIMIT_80GB)),
    Entry("hunyuan-189f-80gb", "HunyuanVideo at 189 frames held to 78.5 GiB, the most that fit an 80 GB card (on the "
          "H100 itself 77.86 GiB allocated, 78.43 reserved; estimated 78.41)", "train_step",
          _hunyuan_frames(189, *LIMIT_80GB)),
    Entry("hunyuan-181f-80gb", "HunyuanVideo at 181 frames held to 78.5 GiB (fit on an H200 so held: 75.64 GiB "
          "allocated, 78.16 reserved; estimated 76.18)", "train_step", _hunyuan_frames(181, *LIMIT_80GB)),
    Entry("hunyuan-185f-80gb", "HunyuanVideo at 185 frames held to 78.5 GiB (fit on the H100 itself and an H200 so "
          "held: 76.75 GiB allocated, 78.01 reserved; estimated 77.29); skipped when 181 did not fit", "train_step",
          _hunyuan_frames(185, *LIMIT_80GB), unless_failed="hunyuan-181f-80gb"),
    Entry("2b-full-8bit-compile-default-allocator", "the MFU run with torch's default allocator: set against "
          "2b-full-8bit-compile-mfu (expandable segments), the speed cost of the recipes' allocator", "train_step",
          _train("cogvideox-2b", "--mode", "full", "--8bit-adam", "--compile", *DEFAULT_ALLOCATOR, steps=5,
                 warmup=4)),
    Entry("2b-full-8bit-compile-mfu", "CogVideoX-2b full fine-tune MFU without recomputation, within 80 GB; "
          "where the step's time goes", "train_step",
          _train("cogvideox-2b", "--mode", "full", "--8bit-adam", "--compile", "--profile", steps=5, warmup=4)),
    Entry("hunyuan-33f-default-allocator", "HunyuanVideo LoRA at 33x544x960 with torch's default allocator: set "
          "against hunyuan-33f, the allocator's speed cost on the 13B model", "train_step",
          _train("hunyuan-video", "--mode", "lora", "--rank", "64", "--gradient-checkpointing", *DEFAULT_ALLOCATOR,
                 steps=3, warmup=2)),
    Entry("hunyuan-33f", "HunyuanVideo LoRA at 33x544x960 fits; MFU; attention kernel", "train_step",
          _train("hunyuan-video", "--mode", "lora", "--rank", "64", "--gradient-checkpointing", "--profile",
                 "--estimate", steps=3, warmup=2)),
    Entry("hunyuan-177f-80gb", "HunyuanVideo at 177 frames held to 78.5 GiB (ran on an H100: 74.52 GiB allocated, "
          "77.01 reserved, 106.5 s)", "train_step", _hunyuan_frames(177, *LIMIT_80GB)),
    Entry("hunyuan-33f-gc-0.65-80gb", "the least-recomputation HunyuanVideo run (73.8 GiB allocated, 83.4 reserved "
          "on the H200 with the default allocator) held to 78.5 GiB: does it still run, and as fast?", "train_step",
          _train("hunyuan-video", "--mode", "lora", "--rank", "64", "--gradient-checkpointing",
                 "--gradient-checkpointing-ratio", "0.65", *LIMIT_80GB, steps=3, warmup=2)),
    Entry("hunyuan-173f", "HunyuanVideo at 173 frames (memory only)", "train_step", _hunyuan_frames(173)),
    Entry("2b-full-8bit-mfu", "the same uncompiled: does 8-bit AdamW bring it under 80 GB? where the time goes",
          "train_step", _train("cogvideox-2b", "--mode", "full", "--8bit-adam", "--estimate", "--profile", steps=5,
                               warmup=3)),
    Entry("hunyuan-33f-gc-0.65", "HunyuanVideo LoRA with 39 of 60 blocks recomputing (the least within 74 GiB, "
          "estimated 73.65): the speed gained over hunyuan-33f", "train_step",
          _train("hunyuan-video", "--mode", "lora", "--rank", "64", "--gradient-checkpointing",
                 "--gradient-checkpointing-ratio", "0.65", "--estimate", steps=3, warmup=2)),
    Entry("2b-full-gc-0.1666", "CogVideoX-2b full fine-tune, torch's AdamW, 5 of 30 blocks recomputing (estimated "
          "72.84 GiB): MFU within 80 GB without 8-bit Adam", "train_step",
          _train("cogvideox-2b", "--mode", "full", "--gradient-checkpointing", "--gradient-checkpointing-ratio",
                 "0.1666", "--estimate", steps=5, warmup=3)),
    Entry("hunyuan-33f-compile", "HunyuanVideo LoRA at 33x544x960 with --compile: the compile gain", "train_step",
          _train("hunyuan-video", "--mode", "lora", "--rank", "64", "--gradient-checkpointing", "--compile",
                 steps=3, warmup=3)),
    Entry("5b-validation-untiled", "the 5b render decoded whole: what a 24 GB card would run out on",
          "validation_render", ("--preset", "cogvideox-5b", *COGVIDEOX_SHAPE, "--estimate")),
    Entry("hunyuan-validation-tiled", "HunyuanVideo's validation render (tiled decode) vs its estimate",
          "validation_render", ("--preset", "hunyuan-video", *HUNYUAN_SHAPE, "--vae-tiling", "--estimate")),
    Entry("hunyuan-33f-efficient", "HunyuanVideo with the memory-efficient SDPA kernel", "train_step",
          _train("hunyuan-video", "--mode", "lora", "--rank", "64", "--gradient-checkpointing", "--profile",
                 "--attention-backend", "_native_efficient", steps=3, warmup=2)),
    Entry("2b-loader", "loading a real-size cached sample from disk with 2 workers", "loader_throughput",
          ("--preset", "cogvideox-2b", *COGVIDEOX_SHAPE, "--from-disk", "--num-workers", "2")),
    Entry("2b-lora", "CogVideoX-2b LoRA r128 fits; peak vs estimate; attention kernel", "train_step",
          _train("cogvideox-2b", "--mode", "lora", "--rank", "128", "--gradient-checkpointing", "--profile",
                 "--estimate", steps=5, warmup=2)),
    Entry("2b-lora-diffusers-layout", "the diffusers example's layout at batch 1, measured the same way",
          "train_step", _train("cogvideox-2b", "--mode", "lora", "--rank", "128", "--resident-encoders",
                               "--estimate", steps=3, warmup=2)),
    Entry("5b-lora-24gb", "CogVideoX-5b LoRA within 24 GB with the memory options", "train_step",
          _train("cogvideox-5b", "--mode", "lora", "--rank", "64", "--gradient-checkpointing", "--8bit-adam",
                 "--layerwise-casting", "--estimate", steps=3, warmup=2)),
    Entry("2b-full-gc-8bit", "CogVideoX-2b full fine-tune with checkpointing and 8-bit AdamW", "train_step",
          _train("cogvideox-2b", "--mode", "full", "--gradient-checkpointing", "--8bit-adam", steps=5, warmup=3)),
    Entry("2b-full-gc-8bit-compile", "the same with --compile: the compile gain", "train_step",
          _train("cogvideox-2b", "--mode", "full", "--gradient-checkpointing", "--8bit-adam", "--compile",
                 steps=5, warmup=4)),
    Entry("2b-overhead", "our loop's overhead over a bare loop on the GPU (< 5 %)", "overhead",
          ("--preset", "cogvideox-2b", *COGVIDEOX_SHAPE, "--batch", "1", "--rounds", "2", "--steps", "4")),
    Entry("5b-validation-tiled", "the 5b config's validation render (tiled decode) vs its estimate",
          "validation_render", ("--preset", "cogvideox-5b", *COGVIDEOX_SHAPE, "--vae-tiling", "--estimate")),
    Entry("hunyuan-33f-cudnn", "HunyuanVideo with the cuDNN SDPA kernel (its attention is masked)", "train_step",
          _train("hunyuan-video", "--mode", "lora", "--rank", "64", "--gradient-checkpointing", "--profile",
                 "--attention-backend", "_native_cudnn", steps=3, warmup=2)),
    Entry("2b-full-mfu", "CogVideoX-2b full fine-tune, AdamW, no recomputation (82.7 GiB on the H200: over 80 GB)",
          "train_step", _train("cogvideox-2b", "--mode", "full", "--estimate", steps=5, warmup=3)),
)
ENTRIES = {entry.name: entry for entry in SUITE}
# The figures docs/performance.md's target table names, most important first: for a card with none yet (the
# targets name an H100, which has them since 2026-11-26 13:45 UTC).
TARGETS = ("2b-full-8bit-compile-mfu", "2b-full-8bit-mfu", "2b-lora", "2b-lora-diffusers-layout", "5b-lora-24gb",
           "hunyuan-33f", "hunyuan-177f-80gb", "hunyuan-181f-80gb", "hunyuan-185f-80gb", "hunyuan-189f-80gb",
           "2b-overhead")
MIN_SECONDS_TO_START = 45  # below this an entry is left for the next call rather than cut off
LOG_TAIL_CHARS = 3000


def run_entry(entry: Entry, out: Path, time_limit: float, tiny: bool) -> dict:
    command = entry.command(tiny)
    record = {"name": entry.name, "target": entry.target,
              "command": entry.shown(tiny),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=time_limit)
        stdout, log = done.stdout, done.stderr
    except subprocess.TimeoutExpired as expired:
        stdout, log, done = "", _text(expired.stderr), None
    record["seconds"] = round(time.monotonic() - start, 1)
    with open(out / "suite.log", "a") as suite_log:
        suite_log.write(f"\n===== {entry.name} ({record['started']}): {record['command']}\n{log}")
    record["log_tail"] = log[-LOG_TAIL_CHARS:]
    lines = stdout.strip().splitlines()
    if done is None:
        record["status"] = "timeout"
    elif done.returncode == 0 and lines:
        record.update(status="ok", result=json.loads(lines[-1]))
    else:
        record.update(status=f"failed (exit {done.returncode})", error=(log.strip().splitlines() or [""])[-1])
    return record


def _text(output) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def environment() -> dict:
    """What the figures were measured with: package versions and the device."""
    versions = {}
    for name in ("torch", "diffusers", "transformers", "accelerate", "peft", "bitsandbytes", "datasets"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    import torch

    # Fails here, in seconds, when a carried package is missing or clashes with the machine's, rather than in
    # every entry in turn.
    for module in {entry.module for entry in SUITE}:
        importlib.import_module(f"benchmarks.{module}")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": device, "torch_threads": torch.get_num_threads(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
            "matmul_bf16_tflops": matmul_tflops() if torch.cuda.is_available() else None, **versions}


def environment_in_a_child() -> dict:
    """environment() from a process of its own: measured here, the matrix-product test and the CUDA context would
    stay on the card through every entry (on the H100, 1 GiB the entries' runs did not have)."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_suite", "--environment"], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the environment check failed:\n{done.stderr[-LOG_TAIL_CHARS:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def matmul_tflops(n: int = 8192, repeats: int = 10) -> float:
    """This card's achieved bf16 matrix-product rate: the ceiling the MFU figures (taken against the datasheet
    peak) can be read against."""
    import torch

    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (start.elapsed_time(end) / 1e3) / 1e12


def run_suite(names: list[str], out: Path, deadline_s: float, tiny: bool) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    end = time.monotonic() + deadline_s
    env = environment_in_a_child()
    (out / "environment.json").write_text(json.dumps(env, indent=1))
    print(json.dumps(env), flush=True)
    records = []
    for name in names:
        left = end - time.monotonic()
        failed_first = failed_earlier(ENTRIES[name], records)
        if failed_first:
            records.append({"name": name, "target": ENTRIES[name].target,
                            "status": f"skipped ({failed_first} did not pass)"})
        elif left < MIN_SECONDS_TO_START:
            records.append({"name": name, "target": ENTRIES[name].target, "status": "not started (time)"})
        else:
            records.append(run_entry(ENTRIES[name], out, left, tiny))
        # Written after every entry: a call cut off at its limit still returns what finished.
        (out / "summary.json").write_text(json.dumps(records, indent=1))
        print(f"{name}: {records[-1]['status']}", flush=True)
    return records


def failed_earlier(entry: Entry, records: list[dict]) -> str | None:
    """The entry this one waits on, when it ran earlier in this call and did not pass; one not run this call
    (picked out with --only) holds nothing back."""
    earlier = next((r for r in records if r["name"] == entry.unless_failed), None)
    return entry.unless_failed if earlier is not None and earlier["status"] != "ok" else None


def _gib(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else ""


def _other_figures(record: dict) -> str:
    """What a row's kind reports beside time and memory, or why it has no figures."""
    result = record.get("result")
    if result is None:
        return record.get("error", "")[:120]
    if "overhead_ratio" in result:
        return f"overhead ratio {result['overhead_ratio']:.3f}, loader wait {result['loader_wait_fraction']:.1%}"
    if "samples_per_s" in result and "mb_per_s" in result:
        return f"{result['samples_per_s']:.1f} samples/s, {result['mb_per_s']:.0f} MB/s"
    if "achieved_tflops" in result:
        return "; ".join([f"{result['achieved_tflops']:.1f} TFLOP/s",
                          *filter(None, [result.get("time_summary"), _allocator(result)])])
    return ""


def _allocator(result: dict) -> str | None:
    """The allocator a training row ran (the A/B pairs differ in nothing else): what torch said it held, else the
    variable the run set, which is all there is where torch does not say (2.11, on the lent GPUs)."""
    if "allocator_settings" not in result:
        return None
    held = result["allocator_settings"] or (result.get("allocator_config") or "").partition("=")[2]
    return f"allocator {held or 'default'}"


def markdown_table(records: list[dict]) -> str:
    """One row per entry: the figures docs/performance.md records, then the command that gave each."""
    rows = ["| entry | device | seconds per step/render/batch | MFU | peak allocated GiB | peak reserved GiB "
            "| estimate GiB | attention kernel | other | status |", "|---|---|---|---|---|---|---|---|---|---|"]
    for record in records:
        result = record.get("result", {})
        mfu = result.get("mfu")
        kernels = result.get("attention_kernels") or []
        step = next((result[key] for key in ("step_time_s", "ours_step_s", "render_s", "batch_s") if result.get(key)),
                    None)
        rows.append("| " + " | ".join([
            f"`{record['name']}`", result.get("device", ""), f"{step:.3f}" if step else "",
            f"{mfu:.1%}" if mfu else "", _gib(result.get("peak_memory_gb")), _gib(result.get("peak_reserved_gb")),
            _gib(result.get("estimated_peak_memory_gb")), kernels[0] if kernels else "",
            _other_figures(record).replace("|", "/"), record["status"]]) + " |")
    commands = [f"- `{r['name']}` ({r.get('started', '')}): `{r['command']}`" for r in records if "command" in r]
    return "\n".join(rows + ["", *commands])


def print_tables(folder: Path, parser) -> None:
    """The table of folder/summary.json, or, for a session's folder, of each call's summary.json under a heading."""
    if (folder / "summary.json").is_file():
        print(markdown_table(json.loads((folder / "summary.json").read_text())))
        return
    calls = sorted(summary.parent for summary in folder.glob("*/summary.json"))
    if not calls:
        parser.error(f"--table {folder}: no {folder / 'summary.json'}, nor a summary.json in any of its sub-folders: "
                     f"give the folder a suite's --out wrote, or one holding such folders")
    for call in calls:
        print(f"## {call.name}\n\n{markdown_table(json.loads((call / 'summary.json').read_text()))}\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for the results (on a lent GPU: $OUT)")
    parser.add_argument("--deadline-s", type=float, default=540, help="stop starting entries after this many seconds")
    parser.add_argument("--only", nargs="+", choices=list(ENTRIES), metavar="NAME",
                        help="these entries, in this order (--list names them)")
    parser.add_argument("--targets", action="store_true",
                        help="only the entries that give the targets' figures, most important first (a new card)")
    parser.add_argument("--tiny", action="store_true", help="tiny presets at 9x96x160 (a CPU check)")
    parser.add_argument("--list", action="store_true", help="print the entries and their commands")
    parser.add_argument("--table", metavar="DIR",
                        help="print DIR/summary.json as a markdown table (or those of DIR's sub-folders: call1, ...)")
    parser.add_argument("--environment", action="store_true",
                        help="print the package versions, device and bf16 matrix rate as JSON (what the suite records)")
    args = parser.parse_args(argv)
    if args.environment:
        print(json.dumps(environment()))
        return None
    if args.list:
        for entry in SUITE:
            print(f"{entry.name}: {entry.target}\n    {entry.shown(args.tiny)}")
        return None
    if args.table:
        print_tables(Path(args.table), parser)
        return None
    if not args.out:
        parser.error("--out is required to run the suite")
    names = args.only or (list(TARGETS) if args.targets else list(ENTRIES))
    return run_suite(names, Path(args.out), args.deadline_s, args.tiny)


if __name__ == "__main__":
    main()
