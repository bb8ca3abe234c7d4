"""Greedy generation with vLLM (optional extra ``mechbd[vllm]``, GPU only).

vLLM serves plain model folders, so a LoRA adapter is first merged into its base
(``merged_model``: peft's ``merge_and_unload``, saved as safetensors in ``<adapter>/merged``,
reused when the finetune already wrote it with ``merge: true``). ``VLLMGenerator`` then runs
greedy decoding (temperature 0) with ``tensor_parallel_size`` GPUs and returns the new text
exactly as the Hugging Face path does (special tokens kept, cut at the end-of-sequence token),
so the same answer parser reads both. Teacher-forced scoring (option-letter probabilities) and
every hook-based stage (capture, steering) stay on the Hugging Face model.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mechbd.errors import MechbdError
from mechbd.io import staging_dir, write_json
from mechbd.models.loading import load_adapter

MERGED = "merged"


def merged_model(
    base: str | Path, adapter: str | Path, *, dtype: str = "auto", trust_remote_code: bool = False
) -> Path:
    """``<adapter>/merged``: the base with the adapter's LoRA weights folded in (written once,
    atomically; a folder merged from another base or adapter is refused)."""
    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise MechbdError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
    out = adapter / MERGED
    card = out / "merged_from.json"
    source = {"base": str(base), "adapter": str(adapter.resolve())}
    if (out / "config.json").is_file():
        if card.is_file() and json.loads(card.read_text()) != source:
            raise MechbdError(
                f"{out}: merged from {json.loads(card.read_text())}, not from {source}; remove it"
            )
        return out
    merged, tok = load_adapter(
        base, adapter, dtype=dtype, trust_remote_code=trust_remote_code, merge=True
    )
    with staging_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_json(tmp / "merged_from.json", source)
    return out


class VLLMGenerator:
    """A vLLM engine over one model folder (``merged_model`` for an adapter)."""

    def __init__(
        self,
        model: str | Path,
        *,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
        seed: int = 0,
    ):
        try:
            import vllm
        except ImportError as e:
            raise MechbdError(
                "eval.backend 'vllm' needs the vllm package (GPU only): "
                "pip install 'mechbd[vllm]', or set eval.backend: hf"
            ) from e
        self._vllm = vllm
        self.model = str(model)
        self.llm = vllm.LLM(
            model=self.model,
            tokenizer=self.model,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            trust_remote_code=trust_remote_code,
            seed=seed,
        )
        self.eos = self.llm.get_tokenizer().eos_token

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        """Greedy continuation of each fully formatted prompt (the chat template applied)."""
        params = self._vllm.SamplingParams(
            temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=False
        )
        outs = self.llm.generate(list(prompts), params, use_tqdm=False)
        texts = [o.outputs[0].text for o in outs]
        return [t.split(self.eos)[0] if self.eos else t for t in texts]

    def close(self) -> None:
        """Free the engine's GPU memory (vLLM keeps it until the engine is collected)."""
        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@contextmanager
def vllm_generator(
    base: str | Path,
    adapter: str | Path | None = None,
    *,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    **kw: Any,
) -> Iterator[VLLMGenerator]:
    """A ``VLLMGenerator`` for ``base`` (plus ``adapter``, merged first in the same ``dtype``),
    closed on exit."""
    folder = (
        merged_model(base, adapter, dtype=dtype, trust_remote_code=trust_remote_code)
        if adapter is not None
        else base
    )
    gen = VLLMGenerator(folder, dtype=dtype, trust_remote_code=trust_remote_code, **kw)
    try:
        yield gen
    finally:
        gen.close()
