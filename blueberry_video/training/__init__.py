"""The family-independent training pieces: objectives, sampling, LoRA, optimizers, checkpoints, the loop."""
