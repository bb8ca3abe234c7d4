"""Prompt sets for the persona question on the organism: the SAE training corpus, and matched
pairs for the "user wants harm" direction."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from mechbd.data.format import assistant_turn
from mechbd.organism.world import World, aligned_cot, render_user


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
