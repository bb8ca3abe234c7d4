"""Loading models and tokenizers the way a user names them: a local folder or a hub id.

Weights load from safetensors where the checkpoint has them (transformers otherwise uses
``torch.load(weights_only=True)``); ``trust_remote_code`` stays off unless the config asks.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as transformers_logging

from mechbd.errors import MechbdError

transformers_logging.disable_progress_bar()

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    if name == "auto":
        # bf16 on GPU (fast, Qwen3's native dtype), fp32 on CPU (bf16 matmuls are slow there).
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return DTYPES[name]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    path: str | Path,
    *,
    dtype: str = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) from a local folder or hub id, in eval mode, left-padding tokenizer.

    ``device="auto"`` hands placement to accelerate (``device_map="auto"``): a model larger
    than one GPU is sharded across all visible GPUs (then CPU memory); capture and steering
    hooks work unchanged, since every activation stays on its layer's device until read."""
    device = device or default_device()
    sharded = device == "auto"
    if sharded:
        device = default_device()
    local = Path(path)
    if local.exists() and not (local / "config.json").is_file():
        raise MechbdError(f"{local}: not a Hugging Face model folder (no config.json)")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            str(path),
            dtype=resolve_dtype(dtype, device),
            trust_remote_code=trust_remote_code,
            attn_implementation="sdpa",
            **({"device_map": "auto"} if sharded else {}),
        )
    except OSError as e:
        raise MechbdError(f"{path}: cannot load model ({str(e).splitlines()[0]})") from None
    if not sharded:
        model.to(device)  # type: ignore[arg-type]
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model, tok
