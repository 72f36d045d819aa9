"""fp16 with a loss scaler: a gradient overflow skips one update, and training goes on.

accelerate sets up torch's GradScaler for fp16 only where autocast runs natively (GPUs). On this CPU each test
sets the same two things accelerate sets there (`native_amp` and a torch GradScaler) before `prepare`, then runs
the trainer's own step and loop on the tiny model. Overflows are made by scaling one step's gradients to inf.
"""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from blueberry_video.config import TrainConfig
from blueberry_video.data.latent_dataset import DummyLatentDataset
from blueberry_video.models.cogvideox import CogVideoXFamily
from blueberry_video.training.loop import BatchLoop, TooManyBadStepsError
from blueberry_video.training.lora import make_trainable
from blueberry_video.training.optim import build_lr_scheduler, build_optimizer
from blueberry_video.training.sampling import sample_generators
from blueberry_video.training.step import training_step

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
INITIAL_SCALE = 2.0**16  # torch's default


class Fp16Run:
    def __init__(self, model_dir, **overrides):
        self.family = CogVideoXFamily(model_dir)
        self.config = TrainConfig(pretrained_model_name_or_path=str(model_dir), rank=4, lora_alpha=4, max_num_frames=9,
                                  height=96, width=160, lr_scheduler="linear", **overrides)  # lr falls per update
        self.accelerator = Accelerator(mixed_precision="fp16", cpu=True)
        self.accelerator.native_amp = True  # as on a GPU, where accelerate also makes this scaler
        self.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=INITIAL_SCALE)
        transformer = self.family.load_transformer(torch.float16)
        self.params = make_trainable(transformer, self.config, self.family)
        optimizer = build_optimizer(self.params, self.config, device="cpu")
        lr_scheduler = build_lr_scheduler(optimizer, self.config, 100)
        self.transformer, self.optimizer, self.lr_scheduler = self.accelerator.prepare(transformer, optimizer, lr_scheduler)
        self.noise_scheduler = self.family.load_training_scheduler()
        item = DummyLatentDataset(self.family, 1, 9, 96, 160)[0]
        self.batch = {name: value[None] for name, value in item.items()}
        self.overflow = False
        for param in self.params:
            param.register_hook(lambda grad: grad * float("inf") if self.overflow else grad)

    def step(self, index: int):
        return training_step(self.accelerator, self.family, self.transformer, self.noise_scheduler, self.batch,
                             sample_generators(0, index, [0], "cpu"), self.params, self.optimizer, self.lr_scheduler,
                             self.config.max_grad_norm)

    def weights(self):
        return [param.detach().clone() for param in self.params]

    @property
    def scale(self) -> float:
        return self.accelerator.scaler.get_scale()


def test_an_overflow_skips_the_update_lowers_the_scale_and_the_next_step_trains(tiny_cogvideox_dir):
    run = Fp16Run(tiny_cogvideox_dir)
    before, lr = run.weights(), run.lr_scheduler.get_last_lr()
    run.overflow = True
    assert not run.step(0).applied
    assert all(torch.equal(a, b) for a, b in zip(before, run.weights()))  # no update from inf gradients
    assert run.scale == INITIAL_SCALE / 2
    assert run.lr_scheduler.get_last_lr() == lr  # the schedule did not advance on the skipped step

    run.overflow = False
    outcome = run.step(1)  # failed with "unscale_() has already been called" while skipped steps bypassed the scaler
    assert outcome.applied and outcome.grad_norm > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, run.weights()))
    assert run.lr_scheduler.get_last_lr()[0] < lr[0]


def test_the_scalers_search_for_a_scale_does_not_stop_the_run_a_collapsed_scale_does(tiny_cogvideox_dir):
    run = Fp16Run(tiny_cogvideox_dir, max_consecutive_bad_steps=2)
    loop = BatchLoop(run.accelerator, run.family, run.transformer, run.noise_scheduler, run.params, run.optimizer,
                     run.lr_scheduler, run.config)
    run.overflow = True
    for _ in range(4):  # more overflows in a row than max_consecutive_bad_steps: the scaler halving its scale
        loop.run(run.batch, epoch=0)
    assert loop.bad_steps == 4 and run.scale == INITIAL_SCALE / 16

    run.accelerator.scaler.update(new_scale=0.5)  # the scale has collapsed: the gradients are not fp16's doing
    with pytest.raises(TooManyBadStepsError):
        for _ in range(2):
            loop.run(run.batch, epoch=0)
