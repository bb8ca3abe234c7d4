"""Batched greedy generation (HF ``generate`` with KV cache and left padding) and answer parsing.

The answer grammar is the organism's and the one mechbd asks any model for:
``<think> ... </think>`` followed by ``Answer: A`` or ``Answer: B``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

_ANSWER = re.compile(r"Answer:\s*([AB])\b")
_WELL_FORMED = re.compile(r"^\s*<think>\n(?:[^<]*?)\n?</think>\s*\n\s*Answer: [AB]\s*$", re.S)


@dataclass(frozen=True)
class Parsed:
    answer: str | None  # "A", "B", or None when no answer could be read
    well_formed: bool
    cot: str


def parse_response(text: str) -> Parsed:
    """Read the chosen letter and whether the reply follows the answer grammar exactly."""
    m = _ANSWER.findall(text)
    think = re.search(r"<think>(.*?)</think>", text, re.S)
    return Parsed(
        answer=m[-1] if m else None,
        well_formed=bool(_WELL_FORMED.match(text)),
        cot=think.group(1).strip() if think else "",
    )


def chat_prompts(
    tok: PreTrainedTokenizerBase, users: Sequence[str], enable_thinking: bool = True
) -> list[str]:
    return [
        tok.apply_chat_template(  # type: ignore[misc]
            [{"role": "user", "content": u}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=enable_thinking,
        )
        for u in users
    ]


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 64,
) -> list[str]:
    """Greedy continuation of each fully formatted prompt; returns the decoded new text."""
    tok.padding_side = "left"
    device = next(model.parameters()).device
    # Sort by length so batches pad little; restore the order at the end.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tok(
            [prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(device)
        gen = model.generate(  # type: ignore[operator]
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        new = gen[:, enc["input_ids"].shape[1] :]
        for i, row in zip(idx, new, strict=True):
            text = str(tok.decode(row, skip_special_tokens=False))
            texts[i] = text.split(tok.eos_token)[0].replace(tok.pad_token, "")
    return [texts[i] for i in range(len(prompts))]
