"""Joining a ``torch.distributed`` process group when a command runs as one of several processes.

Why this exists: ``torchrun`` (and ``accelerate launch``) start N copies of a command and put
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environments, but leave joining the process
group to the program. ``capture`` splits its prompts over the ranks of an initialised group, so a
command that captures under torchrun must join the group, and pin each rank to its own GPU, before
it loads the model. ``finetune_lora`` joins through accelerate and needs none of this; the CLI only
asks :func:`is_main_process` there so that one rank prints the summary.
"""

from __future__ import annotations

import os


def init_distributed(device: str | None) -> str | None:
    """Join the process group when started by ``torchrun`` (WORLD_SIZE > 1): gloo on the CPU,
    NCCL on GPUs with one device per local rank. Returns the device this rank should use
    (``device`` unchanged in a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device or "cpu"


def is_main_process() -> bool:
    """True in a single process and on rank 0 of a launched group (from ``RANK``, so it needs
    no initialised group)."""
    return os.environ.get("RANK", "0") == "0"
