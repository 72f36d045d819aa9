"""Which attention kernels the transformer runs: one of diffusers' attention backends, tried before any work.

`native` (the default) hands attention to torch's scaled_dot_product_attention, which picks its fastest kernel
for the inputs itself. A named backend forces one: a cuDNN or memory-efficient SDPA kernel, or flash-attn,
SageAttention, xformers where installed. Some cannot take an attention mask, some lack a backward pass or a
kernel for the device; the check below finds out in a millisecond, not after the latent cache is built.
"""

from __future__ import annotations

import torch

from blueberry_video.errors import ConfigError

NATIVE = "native"
# diffusers backends that take a key-padding mask, for the message when the chosen one does not.
MASKED_BACKENDS = "native, _native_cudnn, _native_efficient, flash_varlen (flash-attn) or xformers"


def check_attention_backend(family, name: str, device: torch.device | str, dtype: torch.dtype,
                            backward: bool = True) -> None:
    """Run one tiny attention call (and its backward pass, for training) through the backend on the run's
    device and dtype, with a mask where the family passes one; a ConfigError saying what to choose if it fails."""
    if name == NATIVE:
        return
    if not family.uses_attention_dispatch:
        raise ConfigError(
            f"attention_backend={name}: the {family.name} transformer's attention calls torch's "
            f"scaled_dot_product_attention itself, so diffusers' backends do not reach it. Leave attention_backend "
            f"at native: torch picks its flash or cuDNN kernel on a GPU for this attention (no mask)."
        )
    from diffusers.models.attention_dispatch import attention_backend, dispatch_attention_fn

    config = family.transformer_config
    heads, head_dim, tokens = config["num_attention_heads"], config["attention_head_dim"], 8
    query, key, value = (torch.randn(1, tokens, heads, head_dim, device=device, dtype=dtype, requires_grad=backward)
                         for _ in range(3))
    mask = None
    if family.attention_takes_mask:
        mask = torch.ones(1, 1, 1, tokens, dtype=torch.bool, device=device)
        mask[..., -2:] = False  # padded text tokens
    try:
        with attention_backend(name):
            out = dispatch_attention_fn(query, key, value, attn_mask=mask)
        if backward:
            out.float().sum().backward()
    except (RuntimeError, ValueError, NotImplementedError, ImportError) as error:
        trial = f"{'forward and backward' if backward else 'forward'}, {str(dtype).removeprefix('torch.')} " \
                f"on {torch.device(device).type}"
        needs_mask = (f" The {family.name} transformer masks the padding of its text tokens; backends that take a "
                      f"mask: {MASKED_BACKENDS}." if mask is not None and "mask" in str(error).lower() else "")
        raise ConfigError(f"attention_backend={name} failed a trial attention call ({trial}): "
                          f"{str(error).splitlines()[0]}.{needs_mask} Or leave it at native.") from error


def apply_attention_backend(transformer: torch.nn.Module, name: str) -> None:
    """Route this transformer's attention (training and validation both) through the backend."""
    if name == NATIVE:
        return
    from diffusers.models.attention_dispatch import attention_backend

    # `set_attention_backend` also makes the backend the process-wide default for every other model; the
    # context puts that default back, and this transformer's attention modules keep the backend.
    with attention_backend(NATIVE):
        transformer.set_attention_backend(name)
