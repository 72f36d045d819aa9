"""Helpers shared by the recipe tests of every family."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch


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
