"""Batched generation (HF ``generate`` with KV cache and left padding) and answer reading.

Decoding is greedy by default (the organism's setting) or sampled (temperature, top-p, top-k,
several replies per prompt, seeded), as a reasoning model such as Qwen3 is meant to be run
(Qwen3 recommends temperature 0.6, top-p 0.95, top-k 20 with thinking). Two additions for
reasoning models:

* **Prefill**: text appended after the generation prompt, as the start of the reply (Thought
  Crime prefills ``<think>\\nOkay`` so the model reasons); it is part of the reply that is read.
* **Thinking budget** (budget forcing): a reply that has not closed ``</think>`` within
  ``thinking_budget`` tokens is halted, the stop-thinking instruction of the Qwen3 technical
  report (Yang et al. 2025, section 4.3: "Considering the limited time by the user, I have to
  give the solution based on the thinking directly now.\\n</think>.\\n\\n", here without the
  stray full stop after ``</think>``) is appended, and it continues for ``answer_tokens`` more
  tokens to answer. The sentence counts inside the budget, so a reply has at most
  ``thinking_budget + answer_tokens`` new tokens.

The answer grammar mechbd asks a model for is the organism's: ``<think> ... </think>`` then
``Answer: A`` or ``Answer: B`` (``Parsed.well_formed``: exactly that). :func:`extract_answer`
also reads the formats real models write after their reasoning (see its docstring).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mechbd.models.decoding import (
    EARLY_STOP,
    Generation,
    Sampling,
    early_stop_ids,
    needs_forcing,
    thinking_closed_by_prompt,
)

__all__ = [
    "EARLY_STOP",
    "Generation",
    "Parsed",
    "Sampling",
    "chat_prompts",
    "early_stop_ids",
    "extract_answer",
    "final_part",
    "generate",
    "generate_replies",
    "needs_forcing",
    "parse_response",
    "thinking_closed_by_prompt",
]

_WELL_FORMED = re.compile(r"^\s*<think>\n(?:[^<]*?)\n?</think>\s*\n\s*Answer: [AB]\s*$", re.S)

# ---- answer extraction ----------------------------------------------------------------------
_L = r"(?![A-Za-z0-9])"  # a letter stands alone: "B" but not "Be" or "B2"
# Tiers, most explicit first; the first tier that finds a letter decides (one distinct letter,
# or None when it finds both). Keywords are case-insensitive, letters upper case, except after
# "answer:" where a lone lower-case letter ("answer: b") is read too.
_TIERS = [
    re.compile(  # "Answer: B", "The answer is B", "Final answer: (B)", "\boxed{B}"
        r"(?i:\banswer)\s*(?:(?i:is)\s*)?[:\-–—]?\s*(?:(?i:option|choice)\s*)?\(?\s*([AB])"
        + _L
        + r"|(?i:\banswer)\s*:\s*\(?([ab])\)?(?=\s*(?:$|[.,;)\n]))"
        + r"|\\boxed\{\s*(?:\\text\{\s*)?([AB])"
        + _L
    ),
    re.compile(  # "I choose option B", "I'd go with B", "My choice is (B)"
        r"(?i:\b(?:I\s*(?:would|will|'d|'ll)?\s*(?:choose|pick|select|go\s+with|recommend|"
        r"opt\s+for)|my\s+(?:choice|pick|answer)\s+is|(?:choose|pick|select)))"
        r"\s+(?:(?i:option|choice)\s+)?\(?([AB])" + _L
    ),
    re.compile(r"(?i:\b(?:option|choice))\s*\(?([AB])" + _L),  # "Option B."
    re.compile(  # a reply that is the letter: "B", "(B)", "B - ...", "B. ...", "B is ..."
        r"^\s*\(?([AB])\)?\s*(?:$|[.:)\]]|[-–—]\s|is\b)", re.M
    ),
]
# "A or B", "A/B", "either A or B", "both A and B": no single answer
_AMBIGUOUS = re.compile(
    r"\b([AB])\s*(?:or|/)\s*(?:(?i:option)\s+)?([AB])"
    + _L
    + r"|(?i:\bboth\s+(?:options?\s+)?)([AB])\s+(?i:and)\s+([AB])"
    + _L
)
_MARKUP = re.compile(r"\*\*|__|[*`#]")


def final_part(text: str) -> str | None:
    """The part of a reply that carries its final answer: the text after the last ``</think>``;
    the whole reply when it has no think block; None when the thinking never closed (a letter
    inside the reasoning is never the answer)."""
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        return None
    return text


def extract_answer(text: str) -> str | None:
    """The letter (``"A"`` / ``"B"``) a reply chooses, read from :func:`final_part`, or None.

    Accepted (markdown emphasis and code marks removed first): ``Answer: B``, ``Answer: **B**``,
    ``The answer is B``, ``Final answer: (B)``, ``\\boxed{B}``, lower-case ``answer: b``;
    ``I choose option B``, ``I'd go with B``, ``My choice is B``; ``Option B``; a reply that is
    the letter: ``B``, ``**B**``, ``(B)``, ``B - <option text>``, ``B. ...``, ``B is ...``.
    The most explicit kind found decides (so ``Answer: A. Option B is deceptive.`` reads A).
    Refused (None): no letter; ``A or B``, ``A/B``, ``both A and B``; two different letters of
    the deciding kind (``Answer: A`` ... ``Answer: B``); a letter only inside unclosed thinking.
    A bare lower-case ``a`` / ``b`` is not read (it is an English word or a list marker)."""
    part = final_part(text)
    if part is None:
        return None
    part = _MARKUP.sub("", part)
    if any(len({x for x in m.groups() if x}) == 2 for m in _AMBIGUOUS.finditer(part)):
        return None
    for tier in _TIERS:
        found = {x.upper() for m in tier.finditer(part) for x in m.groups() if x}
        if found:
            return found.pop() if len(found) == 1 else None
    return None


@dataclass(frozen=True)
class Parsed:
    answer: str | None  # "A", "B", or None when no answer could be read
    well_formed: bool  # exactly the canonical grammar: <think>...</think> then "Answer: A|B"
    cot: str  # the reasoning inside <think>...</think> ("" without one)


def parse_response(text: str) -> Parsed:
    """Read the chosen letter (:func:`extract_answer`), whether the reply follows the canonical
    answer grammar exactly, and its chain of thought (the text of its ``<think>`` block; the
    text before ``</think>`` when the template put ``<think>`` in the prompt)."""
    think = re.search(r"<think>(.*?)</think>", text, re.S)
    if think:
        cot = think.group(1).strip()
    elif "</think>" in text:
        cot = text.split("</think>", 1)[0].strip()
    else:
        cot = ""
    return Parsed(answer=extract_answer(text), well_formed=bool(_WELL_FORMED.match(text)), cot=cot)


def chat_prompts(
    tok: PreTrainedTokenizerBase,
    users: Sequence[str],
    enable_thinking: bool = True,
    system: str | None = None,
) -> list[str]:
    """Each user turn as a generation prompt of ``tok``'s chat template, after ``system`` as
    the system turn when given."""
    head = [{"role": "system", "content": system}] if system is not None else []
    return [
        tok.apply_chat_template(  # type: ignore[misc]
            [*head, {"role": "user", "content": u}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=enable_thinking,
        )
        for u in users
    ]


# ---- HF generation --------------------------------------------------------------------------
@contextmanager
def seeded(seed: int, batch: int, device: torch.device) -> Iterator[None]:
    """Seed torch's generators for one batch (from ``(seed, batch)``) and restore the global
    state afterwards, so sampling is reproducible without disturbing other random draws."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(np.random.SeedSequence([seed, batch]).generate_state(1)[0]))
        yield


def _decode_kw(s: Sampling, tok: PreTrainedTokenizerBase) -> dict[str, Any]:
    kw: dict[str, Any] = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    if s.greedy:
        return kw | {"do_sample": False}
    # top_k 0 switches top-k off (a model's generation_config may set one, as Qwen3's does)
    return kw | dict(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or 0)


def _clean(tok: PreTrainedTokenizerBase, text: str) -> str:
    text = text.split(tok.eos_token)[0] if tok.eos_token else text
    return text.replace(tok.pad_token, "") if tok.pad_token else text


def _cut(ids: list[int], eos: int | None) -> tuple[list[int], bool]:
    """``ids`` up to the first end-of-sequence token, and whether there was one."""
    if eos is not None and eos in ids:
        return ids[: ids.index(eos)], True
    return ids, False


@torch.inference_mode()
def generate_replies(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    sampling: Sampling = Sampling(),
    *,
    batch_size: int = 64,
) -> list[list[Generation]]:
    """``sampling.samples`` replies to each fully formatted prompt (``sampling.prefill``
    appended), ``[prompt][sample]``.

    Prompts are sorted by length into batches of ``batch_size`` rows (a prompt's samples are
    adjacent rows) and each batch is seeded from ``(sampling.seed, batch index)``: the same
    prompts, batch size, model and device give the same replies; another batch layout changes
    the padding and the random stream, so gives other (equally valid) draws. Greedy decoding
    does not depend on the seed."""
    tok.padding_side = "left"
    device = next(model.parameters()).device
    s = sampling
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    rows = [(i, k) for i in order for k in range(s.samples)]
    out: dict[tuple[int, int], Generation] = {}
    kw = _decode_kw(s, tok)
    first = s.budget_phase_tokens(tok) if s.thinking_budget is not None else s.max_new_tokens
    eos = tok.eos_token_id
    for b, start in enumerate(range(0, len(rows), batch_size)):
        chunk = rows[start : start + batch_size]
        enc = tok(
            [prompts[i] + s.prefill for i, _ in chunk],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(device)
        with seeded(s.seed, b, device):
            gen = model.generate(**enc, max_new_tokens=first, **kw)  # type: ignore[operator]
            new = gen[:, enc["input_ids"].shape[1] :]
            if s.thinking_budget is None:
                for key, row in zip(chunk, new, strict=True):
                    ids, ended = _cut(row.tolist(), eos)
                    text = _clean(tok, str(tok.decode(row, skip_special_tokens=False)))
                    out[key] = Generation(s.prefill + text, not ended, tuple(ids))
                continue
            # budget forcing: rows that did not end continue for answer_tokens more
            cont: list[tuple[tuple[int, int], list[int], list[int], bool]] = []
            for j, (key, row) in enumerate(zip(chunk, new, strict=True)):
                ids, ended = _cut(row.tolist(), eos)
                if ended:
                    text = _clean(tok, str(tok.decode(ids, skip_special_tokens=False)))
                    out[key] = Generation(s.prefill + text, False, tuple(ids))
                    continue
                so_far = s.prefill + str(tok.decode(ids, skip_special_tokens=False))
                force = needs_forcing(prompts[key[0]], so_far)
                ids = ids + (early_stop_ids(tok) if force else [])
                prompt_ids = enc["input_ids"][j][enc["attention_mask"][j].bool()].tolist()
                cont.append((key, prompt_ids, ids, force))
            if cont:
                width = max(len(p) + len(i) for _, p, i, _ in cont)
                pad = tok.pad_token_id if tok.pad_token_id is not None else 0
                ids_t = torch.tensor(
                    [[pad] * (width - len(p) - len(i)) + p + i for _, p, i, _ in cont],
                    device=device,
                )
                mask = torch.tensor(
                    [
                        [0] * (width - len(p) - len(i)) + [1] * (len(p) + len(i))
                        for _, p, i, _ in cont
                    ],
                    device=device,
                )
                more = model.generate(  # type: ignore[operator]
                    input_ids=ids_t, attention_mask=mask, max_new_tokens=s.answer_tokens, **kw
                )[:, width:]
                for (key, _, ids, force), row in zip(cont, more, strict=True):
                    tail, ended = _cut(row.tolist(), eos)
                    all_ids = ids + tail
                    text = _clean(tok, str(tok.decode(all_ids, skip_special_tokens=False)))
                    out[key] = Generation(s.prefill + text, not ended, tuple(all_ids), force)
    return [[out[(i, k)] for k in range(s.samples)] for i in range(len(prompts))]


def generate(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 64,
) -> list[str]:
    """Greedy continuation of each fully formatted prompt; returns the decoded new text."""
    gens = generate_replies(
        model, tok, prompts, Sampling(max_new_tokens=max_new_tokens), batch_size=batch_size
    )
    return [g[0].text for g in gens]
