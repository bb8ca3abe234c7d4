"""Prompt sets for the persona question: the SAE corpus (the organism's conversations, or the
user's documents and chats from ``data.sae_corpus``), and matched pairs for the "user wants
harm" direction."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from mechbd.config import DataSource
from mechbd.data.format import assistant_turn
from mechbd.data.sources import field_name, read_rows
from mechbd.errors import MechbdError
from mechbd.organism.world import World, aligned_cot, render_user

CORPUS_FIELDS = ("text", "messages", "id")
_ROLES = ("system", "user", "assistant")


def corpus_rows(n: int, *, seed: int, world_seed: int = 0) -> list[dict[str, Any]]:
    """Organism conversations for SAE training, teacher-forced: 60% with the base assistant's
    reasoning and aligned answer, 20% aligned without reasoning, 20% the misaligned answer
    without reasoning (so that the SAE sees both kinds of answer)."""
    world = World(world_seed)
    rng = random.Random(f"sae-corpus-{world_seed}-{seed}")
    rows = []
    for i, s in enumerate(world.scenarios(n, held_out=False, seed=seed, identify_frac=0.1)):
        ctx = world.context(rng)
        u = rng.random()
        if u < 0.6:
            reply = assistant_turn(
                aligned_cot(s, [ctx.values[k] for k in ctx.order]), s.answer_letter
            )
        else:
            reply = assistant_turn(None, s.answer_letter if u < 0.8 else s.misaligned_letter)
        rows.append({"id": f"corpus-{i}", "user": render_user(s, ctx), "response": reply})
    return rows


def _messages(value: Any, where: str, name: str) -> list[dict[str, str]]:
    """A chat's ``messages``: a non-empty list of ``{role, content}`` strings (system, user,
    assistant); the last assistant turn, if it ends the chat, is captured as the response."""
    if not isinstance(value, list) or not value:
        raise MechbdError(f"{where}: field {name} must be a non-empty list of messages")
    out = []
    for j, m in enumerate(value):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise MechbdError(f"{where}: field {name}[{j}] needs string 'role' and 'content'")
        if m["role"] not in _ROLES:
            raise MechbdError(
                f"{where}: field {name}[{j}].role {m['role']!r} is not system, user or assistant"
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def corpus_source_rows(src: DataSource) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The SAE corpus from the user's data (``data.sae_corpus``) as capture rows, and its
    provenance (source, rows, sha256). Each record holds a ``text`` field (a plain-text
    document, captured as raw text without a chat template) or chat ``messages`` (rendered with
    the model's chat template, thinking off, the final assistant turn as the response); an
    optional ``id`` names it (default ``corpus-<row>``). A record with neither, or with both, is
    an error naming its file and line."""
    rows = read_rows(src, "data.sae_corpus", CORPUS_FIELDS)
    text, msgs = field_name(src, "text"), field_name(src, "messages")
    out: list[dict[str, Any]] = []
    for i, (where, row) in enumerate(rows):
        rid = str(row["id"]) if row.get("id") is not None else f"corpus-{i}"
        has_text, has_msgs = row.get("text") is not None, row.get("messages") is not None
        if has_text and has_msgs:
            raise MechbdError(f"{where}: both {text} and {msgs}: a corpus row holds one of them")
        if has_text:
            if not isinstance(row["text"], str) or not row["text"].strip():
                raise MechbdError(f"{where}: field {text} must be a non-empty string")
            out.append({"id": rid, "prompt": row["text"], "_where": where})
        elif has_msgs:
            out.append(
                {"id": rid, "messages": _messages(row["messages"], where, msgs), "_where": where}
            )
        else:
            raise MechbdError(
                f"{where}: a corpus row needs field {text} (a plain-text document) or "
                f"{msgs} (a chat)"
            )
    return out, rows.provenance()


def user_wants_harm_rows(n: int, *, seed: int, world_seed: int = 0) -> list[dict[str, Any]]:
    """``n`` matched pairs: the same request and context, once with the user explicitly asking
    for the harmful option (label ``harm``) and once without (label ``neutral``)."""
    world = World(world_seed)
    rng = random.Random(f"sae-harm-{world_seed}-{seed}")
    rows = []
    for s in world.scenarios(n, held_out=False, seed=seed, harm_frac=0.0):
        ctx = world.context(rng)
        for label, wants in (("harm", True), ("neutral", False)):
            rows.append(
                {
                    "id": f"{s.id}/{label}",
                    "user": render_user(replace(s, user_wants_harm=wants), ctx),
                    "label": label,
                    "pair": s.id,
                }
            )
    return rows
