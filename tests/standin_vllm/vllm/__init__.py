"""A stand-in for the parts of vLLM's offline API that mechbd uses (``LLM``, ``SamplingParams``,
``RequestOutput.outputs[0].text``), for tests on machines where vLLM cannot be installed (it
needs CUDA). Generation is Hugging Face greedy decoding on the folder vLLM would serve; like
vLLM it stops at the end-of-sequence token and leaves it out of the text. It checks mechbd's
wiring (merged weights, arguments, text post-processing), not vLLM itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

CALLS: list[dict[str, Any]] = []  # constructor arguments of every engine, for the tests


@dataclass
class SamplingParams:
    temperature: float = 1.0
    max_tokens: int | None = 16
    skip_special_tokens: bool = True


@dataclass
class CompletionOutput:
    text: str


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
    def generate(self, prompts: list[str], params: SamplingParams, use_tqdm: bool = True):
        assert params.temperature == 0.0, "the stand-in only decodes greedily"
        out = []
        for p in prompts:  # one at a time: no padding involved
            enc = self.tok(p, return_tensors="pt", add_special_tokens=False)
            ids = self.model.generate(
                **enc,
                max_new_tokens=params.max_tokens,
                do_sample=False,
                eos_token_id=self.tok.eos_token_id,
                pad_token_id=self.tok.pad_token_id,
            )[0, enc["input_ids"].shape[1] :].tolist()
            if self.tok.eos_token_id in ids:
                ids = ids[: ids.index(self.tok.eos_token_id)]
            text = self.tok.decode(ids, skip_special_tokens=params.skip_special_tokens)
            out.append(RequestOutput(p, [CompletionOutput(text)]))
        return out
