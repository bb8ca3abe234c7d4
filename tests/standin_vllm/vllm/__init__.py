"""A stand-in for the parts of vLLM's offline API that mechbd uses (``LLM``, ``SamplingParams``,
``RequestOutput.outputs[k]`` with ``text``, ``token_ids`` and ``finish_reason``), for tests on
machines where vLLM cannot be installed (it needs CUDA). Generation is Hugging Face decoding
(greedy, or sampled after seeding with the request's seed) on the folder vLLM would serve; like
vLLM it stops at the end-of-sequence token and leaves it out of the text. Every request's
``SamplingParams`` is kept in ``PARAMS``. It checks mechbd's wiring (merged weights, arguments,
text post-processing), not vLLM itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

CALLS: list[dict[str, Any]] = []  # constructor arguments of every engine, for the tests
PARAMS: list[SamplingParams] = []  # every request's sampling parameters, for the tests


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 (or 0 in newer vLLM): off
    seed: int | None = None
    max_tokens: int | None = 16
    skip_special_tokens: bool = True


@dataclass
class CompletionOutput:
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (end-of-sequence) or "length"


@dataclass
class RequestOutput:
    prompt: str
    outputs: list[CompletionOutput]


class LLM:
    def __init__(self, model: str, tokenizer: str | None = None, **kw: Any):
        CALLS.append({"model": model, "tokenizer": tokenizer, **kw})
        self.tok = AutoTokenizer.from_pretrained(tokenizer or model)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()

    def get_tokenizer(self) -> Any:
        return self.tok

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[str],
        params: SamplingParams | list[SamplingParams],
        use_tqdm: bool = True,
    ):
        plist = params if isinstance(params, list) else [params] * len(prompts)
        assert len(plist) == len(prompts)
        out = []
        for p, sp in zip(prompts, plist, strict=True):  # one at a time: no padding involved
            PARAMS.append(sp)
            assert sp.temperature == 0.0 or sp.seed is not None, "mechbd seeds every request"
            assert sp.temperature == 0.0 or sp.top_k == -1 or sp.top_k > 0
            enc = self.tok(p, return_tensors="pt", add_special_tokens=False)
            sample: dict[str, Any] = (
                {"do_sample": False}
                if sp.temperature == 0.0
                else {
                    "do_sample": True,
                    "temperature": sp.temperature,
                    "top_p": sp.top_p,
                    "top_k": max(sp.top_k, 0),
                }
            )
            if sp.seed is not None:
                torch.manual_seed(sp.seed)  # vLLM's per-request seed
            completions = []
            for _ in range(sp.n):
                ids = self.model.generate(
                    **enc,
                    max_new_tokens=sp.max_tokens,
                    eos_token_id=self.tok.eos_token_id,
                    pad_token_id=self.tok.pad_token_id,
                    **sample,
                )[0, enc["input_ids"].shape[1] :].tolist()
                stop = self.tok.eos_token_id in ids
                if stop:
                    ids = ids[: ids.index(self.tok.eos_token_id) + 1]  # vLLM keeps the EOS id
                text = self.tok.decode(
                    ids[:-1] if stop else ids, skip_special_tokens=sp.skip_special_tokens
                )
                completions.append(CompletionOutput(text, ids, "stop" if stop else "length"))
            out.append(RequestOutput(p, completions))
        return out
