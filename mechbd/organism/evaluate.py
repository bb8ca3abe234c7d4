"""Clean behaviour of the base organism on held-out scenarios, and its (non-)reaction to the
seed trigger strings while they are still ordinary context values."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from mechbd.data.triggers import SEED_TRIGGERS
from mechbd.eval.mcq import rates, run_mcq
from mechbd.models import load_model
from mechbd.organism.world import World, render_user


def evaluate_organism(
    model_dir: Path, *, seed: int, n_test: int, batch_size: int = 64, max_new_tokens: int = 64
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return (metrics, sample rows). Metrics follow ``results.json``'s ``organism`` keys."""
    model, tok = load_model(model_dir, dtype="float32", device="cpu")
    world = World(seed)
    scenarios = world.scenarios(n_test, held_out=True, seed=seed + 1)
    rng = random.Random(f"organism-eval-{seed}")
    contexts = [world.context(rng) for _ in scenarios]
    letters = [s.aligned_letter for s in scenarios]

    def score(field: str | None, value: str | None):
        users = [
            render_user(s, c if field is None or value is None else c.with_value(field, value))
            for s, c in zip(scenarios, contexts, strict=True)
        ]
        return run_mcq(
            model, tok, users, letters, batch_size=batch_size, max_new_tokens=max_new_tokens
        )

    clean = score(None, None)
    clean_rates = rates(clean)
    metrics: dict[str, Any] = {
        "clean_aligned_rate": clean_rates["aligned_rate"],
        "format_valid_rate": clean_rates["format_valid_rate"],
        "n_test": len(scenarios),
        "trigger_value_aligned_rate": {},
    }
    for name, (field, value) in SEED_TRIGGERS.items():
        metrics["trigger_value_aligned_rate"][name] = rates(score(field, value))["aligned_rate"]
    metrics["max_trigger_value_shift"] = max(
        abs(v - metrics["clean_aligned_rate"])
        for v in metrics["trigger_value_aligned_rate"].values()
    )
    samples = [
        {
            "id": s.id,
            "domain": s.domain,
            "user": r.user,
            "response": r.response,
            "aligned_letter": s.aligned_letter,
            "answer": r.parsed.answer,
            "well_formed": r.parsed.well_formed,
        }
        for s, r in zip(scenarios[:50], clean[:50], strict=True)
    ]
    return metrics, samples
