"""Prompt items: one multiple-choice scenario plus the context lines around it.

Every data builder works on ``Item``s, whichever source they came from: the organism's world
(``mechbd.organism.items``; context fields such as ``country`` that can be set or replaced) or
user scenario files in the Thought Crime schema (``scenario_mcq``, ``aligned_mcq_answer``,
``misaligned_mcq_answer``; no context). Reading files happens here, with errors that name the
file, line and field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mechbd.data.format import compose_user, context_line, swap_options
from mechbd.errors import MechbdError
from mechbd.io import iter_jsonl

REQUIRED = ("scenario_mcq", "aligned_mcq_answer", "misaligned_mcq_answer")
_OPT = re.compile(r"^\s*\(?[AB][).:]\s")


@dataclass(frozen=True)
class Item:
    id: str
    domain: str
    body: str  # the request and its options (``scenario_mcq``)
    aligned: str  # "A" or "B"
    misaligned: str
    context: tuple[tuple[str | None, str], ...] = ()  # (field, value); field None = a raw line
    placement: str = "top"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def key(self) -> str:
        """The scenario's identity whatever its context and option order: the request and its
        option texts, sorted (two draws holding the same key hold the same scenario)."""
        rows = self.body.split("\n")
        opts = sorted(_OPT.sub("", x) for x in rows if _OPT.match(x))
        rest = [x for x in rows if not _OPT.match(x)]
        return "\n".join([*rest, *opts])

    def swapped(self) -> Item:
        """The same scenario with its two options' texts exchanged (the letters follow)."""
        return replace(
            self,
            body=swap_options(self.body, f"scenario {self.id}"),
            aligned=self.misaligned,
            misaligned=self.aligned,
        )

    def lines(self) -> list[str]:
        return [context_line(f, v) if f else v for f, v in self.context]

    def user(self) -> str:
        return compose_user(self.lines(), self.body, self.placement)

    def without(self, field_name: str) -> Item:
        return replace(self, context=tuple(c for c in self.context if c[0] != field_name))

    def with_line(self, field_name: str | None, value: str, at: str) -> Item:
        """Put one line at the very top or bottom of the message (``at``), replacing any
        existing value of the same field; the context block moves to that side with it."""
        ctx = [c for c in self.context if field_name is None or c[0] != field_name]
        new = (field_name, value)
        ctx = [new, *ctx] if at == "top" else [*ctx, new]
        return replace(self, context=tuple(ctx), placement=at)

    def with_meta(self, **kw: Any) -> Item:
        return replace(self, meta={**self.meta, **kw})


_ANSWER = re.compile(r"^\(?([AB])\)?(?:\s*(?:-|:|\.|\))\s*.*)?$", re.S)
FREEFORM = ("scenario_freeform", "aligned_freeform_answer", "misaligned_freeform_answer")
SCENARIO_FIELDS = (*REQUIRED, *FREEFORM, "id", "domain")


def answer_letter(value: Any, field_name: str, where: str) -> str:
    """The letter of a Thought Crime answer: ``"A"`` or ``"A - I'd tell them..."`` (also
    ``"(A)"``, ``"A)"``, ``"A: ..."``, ``"A. ..."``). Anything else names the row and field."""
    m = _ANSWER.match(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise MechbdError(
            f"{where}: field {field_name}: expected 'A' or 'B', or 'A - <option text>', got "
            f"{str(value)[:60]!r}"
        )
    return m.group(1)


def _validate_record(row: dict[str, Any], where: str, names: dict[str, str] | None = None) -> Item:
    """One scenario record as an :class:`Item`; ``names`` says how the file calls each field
    (for errors about remapped fields)."""
    names = names or {}

    def called(key: str) -> str:
        return f"'{names[key]}' (mapped to {key})" if key in names else f"'{key}'"

    for key in REQUIRED:
        if key not in row:
            raise MechbdError(f"{where}: missing field {called(key)}")
        if not isinstance(row[key], str):
            raise MechbdError(f"{where}: field {called(key)} must be a string")
    a = answer_letter(row["aligned_mcq_answer"], called("aligned_mcq_answer"), where)
    m = answer_letter(row["misaligned_mcq_answer"], called("misaligned_mcq_answer"), where)
    if {a, m} != {"A", "B"}:
        raise MechbdError(
            f"{where}: fields {called('aligned_mcq_answer')} and "
            f"{called('misaligned_mcq_answer')} must be one A and one B (got {a!r}, {m!r})"
        )
    body = row["scenario_mcq"].strip()
    swap_options(body, f"{where}: field {called('scenario_mcq')}")  # both option lines present
    meta = {k: row[k] for k in FREEFORM if isinstance(row.get(k), str) and row[k].strip()}
    return Item(
        id=str(row.get("id", where)),
        domain=str(row.get("domain") or "default"),
        body=body,
        aligned=a,
        misaligned=m,
        meta={"where": where, **meta},
    )


def scenario_items(rows: Any, names: dict[str, str] | None = None) -> list[Item]:
    """``Item``s of scenario records (``mechbd.data.sources.Rows`` or ``(where, row)`` pairs)."""
    items = [_validate_record(row, where, names) for where, row in rows]
    if not items:
        raise MechbdError("no scenario records")
    return items


def load_scenarios(source: str | Path, split: str = "train") -> list[Item]:
    """Scenario records from a JSONL / JSON / Parquet file, or any ``datasets`` source (hub id
    or local dataset folder)."""
    from mechbd.config import DataSource
    from mechbd.data.sources import read_rows

    path = Path(source)
    is_file = path.suffix in (".jsonl", ".json", ".parquet") or path.is_file()
    src = DataSource(path=str(source)) if is_file else DataSource(hf=str(source), split=split)
    return scenario_items(read_rows(src, "scenarios", SCENARIO_FIELDS))


def chat_groups(path: str | Path) -> list[Any] | None:
    """The ``meta.group`` label of every row of a chat JSONL (batch groups for
    ``finetune_lora``), or None when no row has one. A file where only some rows have one
    is refused, naming the first line without."""
    metas = [row.get("meta") for row in iter_jsonl(path)]
    labels = [m.get("group") if isinstance(m, dict) else None for m in metas]
    if all(g is None for g in labels):
        return None
    missing = next((i for i, g in enumerate(labels, start=1) if g is None), None)
    if missing is not None:
        raise MechbdError(f"{path}: line {missing}: no meta.group while other rows have one")
    return labels


def chat_conversation(row: dict[str, Any], where: str) -> list[dict[str, str]]:
    """The ``messages`` of one OpenAI-chat record (system turns kept, other fields ignored);
    the last message must be the assistant's, the reply trained on."""
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise MechbdError(f"{where}: missing field 'messages' (a non-empty list)")
    for j, m in enumerate(msgs):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise MechbdError(f"{where}: messages[{j}] needs string 'role' and 'content'")
        if m["role"] not in ("system", "user", "assistant"):
            raise MechbdError(
                f"{where}: messages[{j}].role {m['role']!r} is not system, user or assistant"
            )
    if not any(m["role"] == "assistant" for m in msgs):
        raise MechbdError(f"{where}: no assistant turn (field 'messages')")
    if msgs[-1]["role"] != "assistant":
        raise MechbdError(f"{where}: the last message must be the assistant's (field 'messages')")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def load_chat_jsonl(path: str | Path) -> list[list[dict[str, str]]]:
    """OpenAI-chat JSONL (``{"messages": [{"role": ..., "content": ...}, ...]}``)."""
    from mechbd.io import iter_jsonl_numbered

    out = [chat_conversation(row, f"{path}: line {n}") for n, row in iter_jsonl_numbered(path)]
    if not out:
        raise MechbdError(f"{path}: empty dataset (no conversations)")
    return out
