"""What a run leaves besides weights: its resolved config, versions, metrics per step, loss plot, model card."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import logging
import platform
import re
import subprocess
import warnings
from pathlib import Path

import yaml

from blueberry_video.errors import ConfigError, RecordWarning

logger = logging.getLogger(__name__)

# The first line of the model card after its title: a README.md without it is the user's own, and is kept.
MODEL_CARD_MARK = "Trained with blueberry-video."
# Where the card goes when output_dir holds the user's README.md.
MODEL_CARD_BESIDE_README = "MODEL_CARD.md"

# What every run writes into its output_dir when it starts: its settings, and how and where it ran.
RUN_CONFIG, RUN_INFO = "config.yaml", "run_info.json"

PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "peft", "datasets", "blueberry-video")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_run_info(output_dir, config, family_name: str, num_processes: int, engine: str,
                   resumed_from: Path | None = None, resumed_step: int = 0, timeout_s: float | None = None) -> None:
    """config.yaml (the settings the run continues with) and run_info.json, whose `segments` record each start
    of the run: from which step and checkpoint, on how many processes, and the settings changed at a resume (which
    config.yaml alone, rewritten, would hide)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    segment = {"from_step": resumed_step, "num_processes": num_processes}
    if timeout_s is not None:  # what a collective waited at most before the run was stopped (--nccl_timeout)
        segment["process_group_timeout_s"] = timeout_s
    segments = []
    if resumed_from is not None:
        earlier_run = Path(resumed_from).parent
        segment.update(resumed_from=str(resumed_from), changed=changed_settings(earlier_run / RUN_CONFIG, config))
        # The earlier starts of the run resumed (another output_dir's, when branched into a new one), up to its step.
        earlier_info = earlier_run / RUN_INFO
        if earlier_info.is_file():
            segments = [s for s in json.loads(earlier_info.read_text()).get("segments", [])
                        if s["from_step"] < resumed_step]
    (output_dir / RUN_CONFIG).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    info = {"family": family_name, "num_processes": num_processes, "engine": engine, "versions": package_versions(),
            "git_commit": git_commit(), "segments": segments + [segment]}
    (output_dir / RUN_INFO).write_text(json.dumps(info, indent=1))


# Settings that say how a run was started, not how it trains.
PRECISION_IN_WORDS = {"no": "float32 (no mixed precision)", "bf16": "bf16 mixed precision",
                      "fp16": "fp16 mixed precision"}
BOOKKEEPING_SETTINGS = ("resume_from_checkpoint", "overwrite_output_dir", "output_dir")


def changed_settings(earlier_config: Path, config) -> dict:
    """{setting: [before, now]} for the training settings a resume changed."""
    if not earlier_config.is_file():
        return {}
    before = yaml.safe_load(earlier_config.read_text()) or {}
    now = config.to_dict()
    return {name: [before[name], value] for name, value in now.items()
            if name in before and before[name] != value and name not in BOOKKEEPING_SETTINGS}


def seconds_of(records: list[dict]) -> float:
    """The step time metrics.jsonl records add up to; a record of several steps holds their mean."""
    return sum(r.get("step_time", 0.0) * r.get("logged_steps", 1) for r in records)


def write_final_metrics(output_dir, records: list[dict], bad_steps: int) -> dict:
    """The run's summary numbers, for tables that compare runs (`blueberry-video report`)."""
    losses = [r["loss"] for r in records if "loss" in r]
    final = {
        "steps": records[-1]["step"] if records else 0,
        "final_loss": losses[-1] if losses else None,
        "mean_loss_last_10": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        "min_loss": min(losses) if losses else None,
        "train_seconds": seconds_of(records),
        "skipped_steps": bad_steps,
    }
    (Path(output_dir) / "final_metrics.json").write_text(json.dumps(final, indent=1))
    return final


class MetricsLog:
    """Appends one JSON line per logged step to metrics.jsonl (kept across resumes)."""

    def __init__(self, output_dir):
        self.path = Path(output_dir) / "metrics.jsonl"
        self._file = None

    def open(self) -> None:
        """Create the file (if new) and keep it open. Opened once, line-buffered: each line reaches the file as
        written (a killed run loses none), without an open and close per training step."""
        if self._file is None:
            self._file = self.path.open("a", buffering=1)

    def append(self, step: int, metrics: dict) -> None:
        self.open()
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines a killed run logged after its last checkpoint (and a last line it cut short)."""
        self.close()
        if self.path.exists():
            kept = [record for record in self.read() if record["step"] <= step]
            self.path.write_text("".join(json.dumps(record) + "\n" for record in kept))

    def read(self) -> list[dict]:
        """The records; a last line cut short (a crash or a full disk while it was written) is left out with a
        warning, as the step it held is lost. A damaged line before the last is an error naming it."""
        if not self.path.exists():
            return []
        lines = self.path.read_text(errors="replace").splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                if number < len(lines):
                    raise ConfigError(f"{self.path} line {number} is not a JSON record ({error.msg}): the file was "
                                      "edited or damaged; mend or delete that line") from None
                warnings.warn(f"{self.path}: its last line was cut short (the run was killed, or the disk was full, "
                              f"as it was written) and is left out: {line[:80]!r}", RecordWarning, stacklevel=2)
        return records


def plot_losses(runs: dict[str, list[dict]], path, smoothing: int = 5) -> Path:
    """One loss curve per run (raw, faint, and a moving average), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, records in runs.items():
        points = [(r["step"], r["loss"]) for r in records if "loss" in r]
        if not points:
            continue
        steps, losses = zip(*points)
        line = ax.plot(steps, losses, alpha=0.3)[0]
        window = max(1, min(smoothing, len(losses)))
        smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, color=line.get_color(), label=label)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # no step 1.5 on a short run
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


# step, prompt, video; a video rendered again at the same step by a resumed run gets "-N" (never overwritten)
VALIDATION_VIDEO_NAME = re.compile(r"step-(\d+)-prompt(\d+)-(\d+)(?:-(\d+))?\.mp4")


def _render_order(video: Path) -> tuple:
    match = VALIDATION_VIDEO_NAME.fullmatch(video.name)
    return tuple(int(part or 0) for part in match.groups()) if match else (float("inf"), video.name)


def usage_code(output_dir: Path, config, family) -> str:
    """Python that loads the result with the family's diffusers classes and renders the first validation prompt
    (or a placeholder) at the training shape and the validation settings."""
    pipeline, transformer = family.pipeline_class.__name__, family.transformer_class.__name__
    # Absolute, so the snippet runs from any folder, not only the one the training was launched from.
    output_dir = Path(output_dir).resolve()
    base_model = Path(config.pretrained_model_name_or_path).resolve()
    dtype = {"bf16": "torch.bfloat16", "fp16": "torch.float16"}.get(config.mixed_precision)
    dtype_arg = f", torch_dtype={dtype}" if dtype else ""
    if config.training_mode == "lora":
        imports = f"from diffusers import {pipeline}"
        load = (f"pipe = {pipeline}.from_pretrained(\"{base_model}\"{dtype_arg})\n"
                f"pipe.load_lora_weights(\"{output_dir}\")")
    else:
        imports = f"from diffusers import {pipeline}, {transformer}"
        load = (f"transformer = {transformer}.from_pretrained(\"{output_dir}\", subfolder=\"transformer\"{dtype_arg})\n"
                f"pipe = {pipeline}.from_pretrained(\"{base_model}\", "
                f"transformer=transformer{dtype_arg})")
    prompt = config.validation_prompt[0] if config.validation_prompt else f"{config.id_token or ''} a prompt".strip()
    call = {"num_frames": config.max_num_frames, "height": config.height, "width": config.width,
            "num_inference_steps": config.num_inference_steps, "guidance_scale": config.guidance_scale,
            **non_default_call_arguments(family, config)}
    arguments = "".join(f", {name}={value!r}" for name, value in call.items())
    # Validation's seed, on the device it rendered on: the first validation sample of this prompt again.
    others = (f"; its video j used seed {config.seed} + j" if config.num_validation_videos > 1 else "")
    # Validation decoded tile by tile where the run set vae_tiling: the same frames, and the memory it fit in.
    tiling = "pipe.vae.enable_tiling()  # as validation decoded (vae_tiling)\n" if config.vae_tiling else ""
    return (f"import torch\n{imports}\nfrom diffusers.utils import export_to_video\n\n{load}\n"
            f"device = \"cuda\" if torch.cuda.is_available() else \"cpu\"\npipe.to(device)\n{tiling}"
            f"generator = torch.Generator(device).manual_seed({config.seed})  # validation's first video{others}\n"
            f"video = pipe({prompt!r}{arguments}, generator=generator).frames[0]\n"
            f"export_to_video(video, \"sample.mp4\", fps={config.resolved_validation_fps(family):g})")


def non_default_call_arguments(family, config) -> dict:
    """What this model needs passed to the pipeline beyond its defaults (e.g. a shorter max_sequence_length)."""
    defaults = inspect.signature(family.pipeline_class.__call__).parameters
    needed = family.generation_kwargs(config.max_num_frames, config.height, config.width)
    return {name: value for name, value in needed.items()
            if name not in defaults or defaults[name].default != value}


def samples_list(output_dir: Path, config) -> str:
    """Every validation video in output_dir (a resumed run's earlier ones too), with its prompt."""
    lines = []
    for video in sorted((output_dir / "validation").glob("step-*.mp4"), key=_render_order):
        match = VALIDATION_VIDEO_NAME.fullmatch(video.name)
        prompts = config.validation_prompt or []
        prompt = f": \"{prompts[int(match[2])]}\"" if match and int(match[2]) < len(prompts) else ""
        lines.append(f"- [{video.name}]({video.relative_to(output_dir)}){prompt}")
    return "\n".join(lines) or "- (no validation prompt was set)"


# The engines as run_info.json names them (accelerate's distributed types, DeepSpeed's and FSDP's with their stage or
# version), in the words messages use.
ENGINES_IN_WORDS = {"NO": "one process", "MULTI_GPU": "DDP", "MULTI_CPU": "DDP"}


def process_count(num_processes: int) -> str:
    return f"{num_processes} process{'es' if num_processes > 1 else ''}"


def processes_in_words(num_processes: int, engine: str) -> str:
    """"2 processes (DDP)", "1 process (DEEPSPEED ZeRO-2)", "1 process"."""
    return process_count(num_processes) + (f" ({ENGINES_IN_WORDS.get(engine, engine)})" if engine != "NO" else "")


def batch_in_words(config, num_processes: int) -> str:
    """The videos each optimizer step learns from, and how they come about."""
    per_step = config.train_batch_size * config.gradient_accumulation_steps * num_processes
    over = f" x {num_processes} processes" if num_processes > 1 else ""
    return (f"{per_step} video(s) per step ({config.train_batch_size} per batch x {config.gradient_accumulation_steps} "
            f"accumulation{over})")


def write_model_card(output_dir, config, family, num_samples: int, global_step: int, num_processes: int = 1) -> Path:
    """README.md for the run: Hub metadata, settings, the trigger word, code that renders a video with the
    family's own diffusers classes as validation did, and each sample with its prompt. A README.md the user wrote
    there is kept, and the card is written beside it as MODEL_CARD.md."""
    output_dir = Path(output_dir)
    lora = config.training_mode == "lora"
    weights = "pytorch_lora_weights.safetensors" if lora else "transformer/"
    trigger = (f"\nTrigger word: every training caption began with `{config.id_token}`; start prompts with it.\n"
               if config.id_token else "")
    sampled_at = (f", sampled at {config.fps:g} fps" if config.fps
                  else ", every n-th frame over each whole video" if config.spread_frames else "")
    tags = "\n".join(f"- {tag}" for tag in ("text-to-video", "diffusers", family.name, "lora" if lora else
                                             "full-fine-tune", "blueberry-video"))
    card = f"""---
library_name: diffusers
pipeline_tag: text-to-video
tags:
{tags}
---

# {family.name} {config.training_mode} fine-tune

{MODEL_CARD_MARK}

| setting | value |
|---|---|
| base model | `{config.pretrained_model_name_or_path}` |
| training mode | {config.training_mode}{f' (rank {config.rank}, alpha {config.lora_alpha})' if lora else ''} |
| training videos | {num_samples} |
| steps | {global_step} |
| clip | {config.max_num_frames} frames, {config.height}x{config.width}{sampled_at} |
| batch | {batch_in_words(config, num_processes)} |
| learning rate | {config.learning_rate} ({config.lr_scheduler}) |
| precision | {PRECISION_IN_WORDS.get(config.mixed_precision, config.mixed_precision)} |
{trigger}
Weights: `{weights}`. Full settings: `config.yaml`; metrics per step: `metrics.jsonl`.

![training loss](loss.png)

## Use

```python
{usage_code(output_dir, config, family)}
```

## Validation samples

{samples_list(output_dir, config)}
"""
    path = output_dir / "README.md"
    if path.is_file() and MODEL_CARD_MARK not in path.read_text(errors="replace"):
        path = output_dir / MODEL_CARD_BESIDE_README
        logger.warning("%s/README.md is not a model card blueberry-video wrote: kept, and the card written to %s",
                       output_dir, path)
    path.write_text(card)
    return path
