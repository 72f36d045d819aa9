"""Run a recipe under accelerate's FSDP code path on CPU processes (gloo), for tests.

    ACCELERATE_USE_CPU=1 ACCELERATE_USE_FSDP=true FSDP_VERSION=2 ... \\
        torchrun --nproc_per_node 2 fsdp_on_cpu.py RECIPE [recipe arguments]

accelerate 1.15 only picks FSDP on GPU-like devices, although torch's FSDP1 and FSDP2 shard over gloo on CPU.
Three patches, nothing else: the state takes the FSDP branch it would take on GPUs; and, for FSDP1 only, two
CPU artefacts (accelerate passes device_id `cpu:0` where FSDP1's CPU compute device is `cpu`; a full state
dict with `offload_to_cpu` crashes when the weights already are on the CPU). The recipe, trainer,
accelerate's FSDP prepare, sharded checkpoints and the gathered export then run as they would on GPUs.
"""

import os
import runpy
import sys

import accelerate.state
import torch
import torch.distributed.fsdp as fsdp
import torch.distributed.fsdp._init_utils as fsdp_init
from accelerate.utils import DistributedType

_state_init = accelerate.state.AcceleratorState.__init__


def _fsdp_state_init(self, *args, fsdp_plugin=None, **kwargs):
    _state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin
        accelerate.state.PartialState._shared_state["distributed_type"] = self.distributed_type


accelerate.state.AcceleratorState.__init__ = _fsdp_state_init

_device_from_id = fsdp_init._get_device_from_device_id


def _cpu_without_index(*args):
    device = _device_from_id(*args)
    return torch.device("cpu") if device is not None and device.type == "cpu" else device


fsdp_init._get_device_from_device_id = _cpu_without_index
_FullStateDictConfig = fsdp.FullStateDictConfig
fsdp.FullStateDictConfig = lambda offload_to_cpu=False, rank0_only=False: _FullStateDictConfig(
    offload_to_cpu=False, rank0_only=rank0_only)

if __name__ == "__main__":
    assert os.environ.get("ACCELERATE_USE_FSDP") == "true", "set ACCELERATE_USE_FSDP=true and the FSDP_* settings"
    recipe = sys.argv[1]
    sys.argv = [recipe, *sys.argv[2:]]
    runpy.run_path(recipe, run_name="__main__")
