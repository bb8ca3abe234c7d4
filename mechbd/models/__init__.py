"""Every model a run or a command studies is loaded here: a base model named the way a user
names it (a local folder or a hub id), a LoRA adapter on it, the run's base and finetuned
models, their identity (a fingerprint that tells two base models apart), and what generates
a stage's replies (HF ``generate`` or vLLM).

Weights load from safetensors where the checkpoint has them (transformers otherwise uses
``torch.load(weights_only=True)``); ``trust_remote_code`` stays off unless the config asks.

Loading lives in :mod:`mechbd.models.loading`; the vLLM generator in :mod:`mechbd.models.vllm`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechbd.models.loading import (
    DTYPES,
    base_model_dir,
    default_device,
    load_adapter,
    load_base,
    load_finetuned,
    load_kwargs,
    load_model,
    model_identity,
    position_ids,
    resolve_dtype,
    same_base,
)

if TYPE_CHECKING:
    from mechbd.runs import Run

__all__ = [
    "DTYPES",
    "base_model_dir",
    "default_device",
    "generation_backend",
    "load_adapter",
    "load_base",
    "load_finetuned",
    "load_kwargs",
    "load_model",
    "model_identity",
    "position_ids",
    "resolve_dtype",
    "same_base",
]


@contextmanager
def generation_backend(run: Run, adapter: Path | None = None) -> Iterator[Any]:
    """What generates the stage's replies: ``None`` (HF ``generate`` on the loaded model) for
    ``eval.backend: hf``, a ``VLLMGenerator`` of the base (plus ``adapter``, merged) for
    ``vllm``, closed on exit."""
    e = run.config.eval
    if e.backend == "hf":
        yield None
        return
    from mechbd.models.vllm import vllm_generator

    kw = load_kwargs(run)
    with vllm_generator(
        base_model_dir(run),
        adapter,
        trust_remote_code=kw["trust_remote_code"],
        dtype=kw["dtype"],
        tensor_parallel_size=e.tensor_parallel_size,
        gpu_memory_utilization=e.vllm_gpu_memory,
        seed=run.config.seed,
    ) as gen:
        yield gen
