"""Generation with vLLM (optional extra ``mechbd[vllm]``, GPU only).

vLLM serves plain model folders, so a LoRA adapter is first merged into its base
(``merged_model``: peft's ``merge_and_unload``, saved as safetensors in ``<adapter>/merged``,
reused when the finetune already wrote it with ``merge: true``). ``VLLMGenerator`` then decodes
as a :class:`mechbd.models.decoding.Sampling` says (greedy at temperature 0; else sampled with
its top-p / top-k, ``n = samples`` replies per prompt and a per-request seed ``seed + prompt
index``, so a prompt's replies do not depend on how vLLM batches it, up to kernel numerics)
with ``tensor_parallel_size`` GPUs, prefill and thinking budget as the Hugging Face path does,
and returns the new text exactly as that path does (special tokens kept, cut at the
end-of-sequence token; ``truncated`` from vLLM's ``finish_reason == "length"``), so the same
answer parser reads both. A budget-forced reply continues from its text (vLLM re-tokenizes
prompt + reply + the early-stopping sentence). Teacher-forced scoring (option-letter probabilities) and
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
from mechbd.models.decoding import EARLY_STOP, Generation, Sampling, early_stop_ids, needs_forcing
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
        gens = self.generate_replies(prompts, Sampling(max_new_tokens=max_new_tokens))
        return [g[0].text for g in gens]

    def _params(self, s: Sampling, max_tokens: int, n: int, seed: int | None) -> Any:
        kw: dict[str, Any] = dict(max_tokens=max_tokens, skip_special_tokens=False, n=n)
        if s.greedy:
            return self._vllm.SamplingParams(temperature=0.0, **kw)
        return self._vllm.SamplingParams(
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k if s.top_k is not None else -1,  # -1: top-k off
            seed=seed,
            **kw,
        )

    def _ids(self, c: Any) -> tuple[int, ...]:
        """A completion's new token ids, without the end-of-sequence token."""
        ids = tuple(getattr(c, "token_ids", ()) or ())
        eos = self.llm.get_tokenizer().eos_token_id
        return ids[: ids.index(eos)] if eos in ids else ids

    def _cut(self, text: str) -> str:
        return text.split(self.eos)[0] if self.eos else text

    def generate_replies(
        self, prompts: Sequence[str], sampling: Sampling
    ) -> list[list[Generation]]:
        """``sampling.samples`` replies to each fully formatted prompt, ``[prompt][sample]``
        (see the module docstring for seeding and the thinking budget)."""
        s = sampling
        tok = self.llm.get_tokenizer()
        first = s.budget_phase_tokens(tok) if s.thinking_budget is not None else s.max_new_tokens
        full = [p + s.prefill for p in prompts]
        params = [self._params(s, first, s.samples, s.seed + i) for i in range(len(full))]
        outs = self.llm.generate(full, params, use_tqdm=False)
        gens: list[list[Generation]] = []
        cont: list[tuple[int, int, str, bool]] = []  # prompt, sample, text so far, forced
        for i, o in enumerate(outs):
            row = []
            for k, c in enumerate(o.outputs):
                text = s.prefill + self._cut(c.text)
                cut = c.finish_reason == "length"
                row.append(Generation(text, cut, self._ids(c)))
                if cut and s.thinking_budget is not None:
                    force = needs_forcing(prompts[i], text)
                    cont.append((i, k, text + (EARLY_STOP if force else ""), force))
            gens.append(row)
        if cont:
            more = self.llm.generate(
                [prompts[i] + text for i, _, text, _ in cont],
                [
                    self._params(s, s.answer_tokens, 1, s.seed + len(full) * (1 + k) + i)
                    for i, k, _, _ in cont
                ],
                use_tqdm=False,
            )
            for (i, k, text, force), o in zip(cont, more, strict=True):
                c = o.outputs[0]
                forced = tuple(early_stop_ids(tok)) if force else ()
                ids = gens[i][k].token_ids + forced + self._ids(c)
                gens[i][k] = Generation(
                    text + self._cut(c.text), c.finish_reason == "length", ids, force
                )
        return gens

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
