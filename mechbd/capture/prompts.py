"""Prompt sets for capture: reading rows, rendering them with the chat template, and locating
the positions activations are read at.

A row is a JSON object with an ``id``; the text is ``user`` (one user turn, rendered with the
model's chat template), ``messages`` (a whole conversation; the last assistant turn, if any, is
the response) or ``prompt`` (raw text, no template). An optional ``response`` is appended after
the generation prompt (for answer / response positions). ``label`` (or ``condition``, as the
eval sets write it) is the row's class, e.g. triggered / clean / distractor; ``trigger_line``
marks the trigger's text for the trigger-span position. Everything else is kept as metadata.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from mechbd.errors import MechbdError
from mechbd.io import iter_jsonl_numbered

POSITIONS = ("last", "answer", "response_mean", "trigger_mean", "tokens")
_TEXT_KEYS = ("user", "messages", "prompt", "response")
_ANSWER = re.compile(r"Answer:\s*([A-Z])\b")


@dataclass
class PromptRow:
    id: str
    label: str | None
    ids: list[int]
    prompt_len: int  # tokens before the response; the last prompt token is prompt_len - 1
    trigger_span: tuple[int, int] | None = None  # [start, end) token indices
    answer_pos: int | None = None  # the answer letter's token, inside the response
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "ids": self.ids,
            "prompt_len": self.prompt_len,
            "trigger_span": list(self.trigger_span) if self.trigger_span else None,
            "answer_pos": self.answer_pos,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PromptRow:
        span = d.get("trigger_span")
        return cls(
            id=d["id"],
            label=d.get("label"),
            ids=list(d["ids"]),
            prompt_len=int(d["prompt_len"]),
            trigger_span=(int(span[0]), int(span[1])) if span else None,
            answer_pos=d.get("answer_pos"),
            meta=d.get("meta") or {},
        )


def read_prompt_file(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a prompt JSONL file; malformed lines and rows without text name file and line."""
    rows = []
    for lineno, row in iter_jsonl_numbered(path):
        if not any(k in row for k in ("user", "messages", "prompt")):
            raise MechbdError(
                f"{path}: line {lineno}: a prompt row needs 'user', 'messages' or 'prompt'"
            )
        rows.append(
            {"id": str(row.get("id", f"row{lineno}")), **row, "_where": f"{path}: line {lineno}"}
        )
    if not rows:
        raise MechbdError(f"{path}: empty prompt set")
    return rows


def _render(
    tok: PreTrainedTokenizerBase, row: dict[str, Any], enable_thinking: bool
) -> tuple[str, str]:
    """(prompt text, response text)."""
    response = str(row.get("response") or "")
    if "prompt" in row:
        return str(row["prompt"]), response
    if "messages" in row:
        msgs = list(row["messages"])
        if msgs and msgs[-1].get("role") == "assistant":
            response = response or str(msgs[-1]["content"])
            msgs = msgs[:-1]
    else:
        msgs = [{"role": "user", "content": str(row["user"])}]
    if not getattr(tok, "chat_template", None):  # a base model without a template: plain text
        return "\n".join(str(m["content"]) for m in msgs), response
    text = tok.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
    )
    assert isinstance(text, str)
    return text, response


def _token_at(offsets: Sequence[tuple[int, int]], char: int) -> int | None:
    for i, (a, b) in enumerate(offsets):
        if a <= char < b:
            return i
    return None


def encode_rows(
    tok: PreTrainedTokenizerBase,
    rows: Sequence[dict[str, Any]],
    *,
    enable_thinking: bool = False,
    max_len: int | None = None,
) -> list[PromptRow]:
    """Tokenise rows and locate the last prompt token, the response, the answer letter and the
    trigger's token span (from character offsets, so merges across boundaries are handled)."""
    if not rows:
        raise MechbdError("capture: empty prompt set")
    out = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        where = row.get("_where", f"row {i}")
        rid = str(row.get("id", i))
        if rid in seen:
            raise MechbdError(f"{where}: duplicate prompt id {rid!r}")
        seen.add(rid)
        prompt, response = _render(tok, row, enable_thinking)
        text = prompt + response
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        if max_len is not None and len(ids) > max_len:
            raise MechbdError(f"{where}: {len(ids)} tokens, longer than max_len={max_len}")
        prompt_len = sum(1 for a, _ in offsets if a < len(prompt))
        if prompt_len == 0:
            raise MechbdError(f"{where}: empty prompt")
        span = None
        trig = row.get("trigger_line")
        if trig and row.get("label", row.get("condition")) != "clean":
            c0 = prompt.find(str(trig))
            if c0 >= 0:
                toks = [j for j, (a, b) in enumerate(offsets) if a < c0 + len(str(trig)) and b > c0]
                span = (toks[0], toks[-1] + 1)
        answer_pos = None
        if response:
            matches = list(_ANSWER.finditer(response))
            if matches:
                answer_pos = _token_at(offsets, len(prompt) + matches[-1].start(1))
        meta = {k: v for k, v in row.items() if k not in _TEXT_KEYS and not k.startswith("_")}
        meta.pop("id", None)
        label = meta.pop("label", None) or row.get("condition")
        out.append(
            PromptRow(
                id=rid,
                label=None if label is None else str(label),
                ids=ids,
                prompt_len=prompt_len,
                trigger_span=span,
                answer_pos=answer_pos,
                meta=meta,
            )
        )
    return out


def check_positions(rows: Sequence[PromptRow], positions: Sequence[str]) -> None:
    for p in positions:
        if p not in POSITIONS:
            raise MechbdError(f"unknown position {p!r}; choose from {', '.join(POSITIONS)}")
    if "answer" in positions:
        bad = [r.id for r in rows if r.answer_pos is None]
        if bad:
            raise MechbdError(
                f"position 'answer' needs a response with 'Answer: <letter>'; missing in {bad[:3]}"
            )
    if "response_mean" in positions:
        bad = [r.id for r in rows if len(r.ids) <= r.prompt_len]
        if bad:
            raise MechbdError(f"position 'response_mean' needs a response; missing in {bad[:3]}")
    if "trigger_mean" in positions and not any(r.trigger_span for r in rows):
        raise MechbdError(
            "position 'trigger_mean': no row has its trigger_line in the prompt "
            "(rows need 'trigger_line'; clean rows have no span and get zeros)"
        )
