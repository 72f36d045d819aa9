"""blueberry-video: fine-tune text-to-video diffusion transformers (CogVideoX, HunyuanVideo) with Accelerate."""

import logging

__version__ = "0.1.0"

# diffusers imports bitsandbytes, whose CPU backend then warns on every start that it has no 4-bit matrix kernel
# (a `kernels` package we never use: 8-bit Adam is all we take from it), on the CPU machines where people first
# try the demo. Only that message is dropped.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: "gemm_4bit_forward" not in record.getMessage())
# diffusers (0.42) warns on every `model.to(dtype)` that modules "should be kept in float32: []" when the model
# names none (an empty list is not None); the toolkit casts the VAE and transformer that way several times.
# The warning stays where the list names modules.
logging.getLogger("diffusers.models.modeling_utils").addFilter(
    lambda record: "should be kept in float32: []" not in record.getMessage())
