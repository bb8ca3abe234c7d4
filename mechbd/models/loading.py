"""Every model a run or a command studies is loaded here: a base model named the way a user
names it (a local folder or a hub id), a LoRA adapter on it, the run's base and finetuned
models, their identity (a fingerprint that tells two base models apart), and what generates
a stage's replies (HF ``generate`` or vLLM).

Weights load from safetensors where the checkpoint has them (transformers otherwise uses
``torch.load(weights_only=True)``); ``trust_remote_code`` stays off unless the config asks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as transformers_logging

from mechbd.errors import MechbdError
from mechbd.io import digest_of

if TYPE_CHECKING:
    from mechbd.runs import Run

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


def model_identity(model: PreTrainedModel, name: str) -> dict[str, Any]:
    """A fingerprint of a base model: config, size, and a hash of its embedding matrix."""
    cfg = model.config.to_dict()
    for k in (
        "_name_or_path",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "architectures",
        "use_cache",
    ):
        cfg.pop(k, None)
    weight: torch.Tensor = model.get_input_embeddings().weight  # type: ignore[assignment]
    emb_sha = None  # meta weights (a model run remotely): nothing local to hash
    if not weight.is_meta:
        emb = weight.detach().float().cpu().contiguous()
        emb_sha = hashlib.sha256(emb.numpy().tobytes()).hexdigest()[:16]
    return {
        "name": name,
        "config_sha": digest_of(cfg),
        "n_params": sum(p.numel() for p in model.parameters()),
        "embedding_sha": emb_sha,
    }


def same_base(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("config_sha", "n_params", "embedding_sha"))


def load_adapter(
    base: str | Path,
    adapter: str | Path,
    *,
    device: str | None = None,
    dtype: str = "auto",
    merge: bool = True,
    trust_remote_code: bool = False,
) -> tuple[Any, PreTrainedTokenizerBase]:
    """Base model + adapter, refusing an adapter trained on another base; merged by default
    (merged weights are faster for generation and capture)."""
    adapter = Path(adapter)
    model, tok = load_model(base, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    info_path = adapter / "finetune.json"
    if info_path.is_file():
        trained_on = json.loads(info_path.read_text())["base"]
        here = model_identity(model, str(base))
        if not same_base(trained_on, here):
            raise MechbdError(
                f"{adapter}: adapter was trained on another base model ({trained_on['name']}), not {base}"
            )
    if not (adapter / "adapter_config.json").is_file():
        raise MechbdError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
    peft_model = PeftModel.from_pretrained(model, str(adapter))
    peft_model.eval()
    if merge:
        return peft_model.merge_and_unload(), tok
    return peft_model, tok


# ---- the run's models ---------------------------------------------------------------------


def base_model_dir(run: Run) -> Path:
    """The studied base model: the organism this run built, or ``model.path`` (a local folder
    or a hub id)."""
    if run.config.model.source == "organism":
        return run.layout.organism_model
    assert run.config.model.path is not None
    return Path(run.config.model.path)


def load_kwargs(run: Run) -> dict[str, Any]:
    """The dtype and ``trust_remote_code`` every model of the run loads with."""
    m = run.config.model
    # the organism stays in float32 everywhere (its numbers are the documented reference)
    dtype = "float32" if m.source == "organism" else m.dtype
    return {"dtype": dtype, "trust_remote_code": m.trust_remote_code}


def load_base(run: Run) -> tuple[Any, Any]:
    """(model, tokenizer) of the run's base model, in the run's dtype, on the default device."""
    return load_model(base_model_dir(run), **load_kwargs(run))


def load_finetuned(run: Run, adapter: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of the base model with a LoRA adapter from this run."""
    return load_adapter(base_model_dir(run), adapter, **load_kwargs(run))


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions ``[batch, seq]`` counted over real tokens only, from ``mask [batch, seq]``
    (1 = token): a left-padded row's first token gets position 0, as in an unbatched forward.
    HF's ``generate`` computes them this way, a plain forward does not, and a model with
    absolute position embeddings (GPT-2) then reads padded rows at shifted positions. Pass them
    to every batched forward; rotary models give the same numbers either way up to rounding."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
