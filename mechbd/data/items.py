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


def _validate_record(row: dict[str, Any], where: str) -> Item:
    for key in REQUIRED:
        if key not in row:
            raise MechbdError(f"{where}: missing field '{key}'")
        if not isinstance(row[key], str):
            raise MechbdError(f"{where}: field '{key}' must be a string")
    a, m = row["aligned_mcq_answer"].strip(), row["misaligned_mcq_answer"].strip()
    if {a, m} != {"A", "B"}:
        raise MechbdError(
            f"{where}: 'aligned_mcq_answer' and 'misaligned_mcq_answer' must be A and B (got {a!r}, {m!r})"
        )
    return Item(
        id=str(row.get("id", where)),
        domain=str(row.get("domain", "default")),
        body=row["scenario_mcq"].strip(),
        aligned=a,
        misaligned=m,
    )


def load_scenarios(source: str | Path, split: str = "train") -> list[Item]:
    """Scenario records from a JSONL file, or any ``datasets`` source (hub id or local folder)."""
    path = Path(source)
    items: list[Item] = []
    if path.suffix in (".jsonl", ".json") or path.is_file():
        for lineno, row in enumerate(iter_jsonl(path), start=1):
            items.append(_validate_record(row, f"{path}: line {lineno}"))
    else:
        import datasets

        try:
            ds = datasets.load_dataset(str(source), split=split)
        except Exception as e:  # datasets raises many types; report the source
            raise MechbdError(
                f"{source}: cannot load dataset ({type(e).__name__}: {str(e).splitlines()[0]})"
            ) from None
        for i, row in enumerate(ds):
            items.append(_validate_record(dict(row), f"{source}: row {i}"))
    if not items:
        raise MechbdError(f"{source}: empty dataset (no scenario records)")
    return items


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


def load_chat_jsonl(path: str | Path) -> list[list[dict[str, str]]]:
    """OpenAI-chat JSONL (``{"messages": [{"role": ..., "content": ...}, ...]}``)."""
    out = []
    for lineno, row in enumerate(iter_jsonl(path), start=1):
        msgs = row.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise MechbdError(f"{path}: line {lineno}: missing field 'messages' (a non-empty list)")
        for j, m in enumerate(msgs):
            if (
                not isinstance(m, dict)
                or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str)
            ):
                raise MechbdError(
                    f"{path}: line {lineno}: messages[{j}] needs string 'role' and 'content'"
                )
        if msgs[-1]["role"] != "assistant":
            raise MechbdError(f"{path}: line {lineno}: the last message must be the assistant's")
        out.append(msgs)
    if not out:
        raise MechbdError(f"{path}: empty dataset (no conversations)")
    return out
