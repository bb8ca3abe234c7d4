"""``mechbd finetune`` under accelerate's FSDP path, on CPU processes (gloo), for the tests.

accelerate only enters FSDP from a multi-GPU state; on a machine without GPUs a launch with
``configs/accelerate/fsdp.yaml`` becomes plain multi-CPU data parallelism. This driver turns that
state into FSDP with the plugin the config describes (accelerate reads it from the FSDP_*
environment variables the launcher sets), so ``Accelerator.prepare`` shards the model with FSDP2
(``fully_shard``) on the CPU, and reports how many parameters came out sharded (DTensor).
Run as ``accelerate launch --config_file configs/accelerate/fsdp.yaml
tests/fsdp_on_cpu.py finetune ...``.
"""

from __future__ import annotations

import sys

import accelerate
import accelerate.state
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.tensor import DTensor

_init = accelerate.state.AcceleratorState.__init__
_prepare = accelerate.Accelerator.prepare


def init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    _init(self, *args, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* env


def prepare(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    out = _prepare(self, *args, **kwargs)
    params = list(out[0].parameters())
    n = sum(isinstance(p, DTensor) for p in params)
    print(f"rank {self.process_index}: {n} of {len(params)} parameters sharded", flush=True)
    return out


accelerate.state.AcceleratorState.__init__ = init  # type: ignore[method-assign]
accelerate.Accelerator.prepare = prepare  # type: ignore[method-assign]

from mechbd.cli import app  # noqa: E402

sys.exit(app())
