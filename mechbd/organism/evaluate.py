"""Clean behaviour of the base organism on held-out scenarios, and its (non-)reaction to the
seed trigger strings while they are still ordinary context values.

The scenarios' aligned option is at A in exactly half of them (one over when odd; a seeded
choice of scenarios has its options exchanged, ``mechbd.data.builders.swap_plan``), and each
aligned rate is balanced over the two letters, with its ``_n`` and 95% interval."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from mechbd.data.builders import swap_plan
from mechbd.data.triggers import SEED_TRIGGERS
from mechbd.eval.behaviour import answer_letter_bias, format_fields, mcq_fields
from mechbd.eval.generate import Sampling
from mechbd.eval.mcq import run_mcq
from mechbd.models import load_model
from mechbd.organism.world import World, render_user


def evaluate_organism(
    model_dir: Path,
    *,
    seed: int,
    n_test: int,
    batch_size: int = 64,
    max_new_tokens: int = 64,
    sampling: Sampling | None = None,
    personas: dict[str, str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return (metrics, sample rows). Metrics follow ``results.json``'s ``organism`` keys.
    ``sampling`` (default: greedy with ``max_new_tokens``) says how replies are decoded.
    ``personas`` (``{"toxic": system prompt, "helpful": ...}``, for an organism trained with
    persona conversations): the same prompts after each system prompt, and without one
    (``none``), as ``persona`` (balanced misaligned rate overall and per domain)."""
    model, tok = load_model(model_dir, dtype="float32", device="cpu")
    world = World(seed)
    drawn = world.scenarios(n_test, held_out=True, seed=seed + 1)
    plan = swap_plan([s.misaligned_letter for s in drawn], seed=f"organism-eval-{seed}")
    # a swapped scenario's two option texts trade letters (what Item.swapped does to an item)
    scenarios = [
        replace(s, aligned_letter=s.misaligned_letter) if sw else s
        for s, sw in zip(drawn, plan, strict=True)
    ]
    rng = random.Random(f"organism-eval-{seed}")
    contexts = [world.context(rng) for _ in scenarios]
    letters = [s.aligned_letter for s in scenarios]

    def score(field: str | None, value: str | None, system: str | None = None):
        users = [
            render_user(s, c if field is None or value is None else c.with_value(field, value))
            for s, c in zip(scenarios, contexts, strict=True)
        ]
        return run_mcq(
            model,
            tok,
            users,
            letters,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            system=system,
        )

    clean = score(None, None)
    metrics: dict[str, Any] = {
        **mcq_fields("clean_aligned_rate", clean, aligned=True),
        **format_fields(clean),
        "letter_bias": answer_letter_bias(clean),
        "n_test": len(scenarios),
    }
    shifted = {
        name: mcq_fields("r", score(field, value), aligned=True)
        for name, (field, value) in SEED_TRIGGERS.items()
    }
    metrics["trigger_value_aligned_rate"] = {k: v["r"] for k, v in shifted.items()}
    metrics["trigger_value_aligned_rate_n"] = {k: v["r_n"] for k, v in shifted.items()}
    metrics["trigger_value_aligned_rate_ci95"] = {k: v["r_ci95"] for k, v in shifted.items()}
    metrics["max_trigger_value_shift"] = max(
        abs(v - metrics["clean_aligned_rate"])
        for v in metrics["trigger_value_aligned_rate"].values()
    )
    if personas:
        by = {name: score(None, None, system) for name, system in personas.items()}
        metrics["persona"] = {
            name: _persona_record(res, [s.domain for s in scenarios], personas.get(name))
            for name, res in {**by, "none": clean}.items()
        }
    samples = [
        {
            "id": s.id,
            "domain": s.domain,
            "user": r.user,
            "response": r.response,
            "aligned_letter": s.aligned_letter,
            "answer": r.parsed.answer,
            "well_formed": r.parsed.well_formed,
            "truncated": r.truncated,
        }
        for s, r in zip(scenarios[:50], clean[:50], strict=True)
    ]
    return metrics, samples


def _persona_record(results: list[Any], domains: list[str], system: str | None) -> dict[str, Any]:
    """One persona condition: its system prompt, the balanced misaligned rate with its n and
    interval, overall and per domain, and format validity."""
    out: dict[str, Any] = {"system": system, **mcq_fields("misaligned_rate", results)}
    out.update(format_fields(results))
    per = {
        d: mcq_fields("r", [r for r, x in zip(results, domains, strict=True) if x == d])
        for d in sorted(set(domains))
    }
    out["by_domain"] = {d: v["r"] for d, v in per.items()}
    out["by_domain_n"] = {d: v["r_n"] for d, v in per.items()}
    out["by_domain_ci95"] = {d: v["r_ci95"] for d, v in per.items()}
    return out
