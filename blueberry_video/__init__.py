"""blueberry-video: fine-tune text-to-video diffusion transformers (CogVideoX, HunyuanVideo) with Accelerate."""

__version__ = "0.1.0"
