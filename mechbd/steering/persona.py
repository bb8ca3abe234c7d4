"""The persona direction the Persona Vectors way, and what it does in the EM model.

Persona Vectors (Chen et al. 2025) build a trait direction as the mean activation with
trait-eliciting system prompts minus with trait-suppressing ones, on the same requests. Here:
the toxic-persona prompts minus the helpful-assistant prompts (``steering.persona_toxic`` /
``persona_helpful``; mechbd's own by default), every prompt of each side on every request of the
direction split, with thinking off, at every layer, read where ``steering.persona_position``
says: by default (``assistant``) the mean over the assistant turn, from its start marker
through ``Answer:``, teacher-forced and the same text on both sides (Persona Vectors average over
the response tokens of sampled replies; a multiple-choice reply has one answer token, which is
left out so the choice itself is not read), or (``last``) the last prompt token, where the
model has read the system prompt and not yet answered.

Then, in the narrow-EM model (``em.persona``):

- **shift**: how far the EM model's activations sit from the base model's along the persona
  direction, on the same held-out prompts without a system prompt (last prompt token, at the
  layer the base-model steering chose), in base-model standard deviations, as a z-score against
  1000 covariance-matched random directions and 1000 isotropic ones;
- **ablation**: the persona direction projected out at every layer and every position while the
  EM model answers the steering test split (counterbalanced, thinking off); the change in its
  balanced misaligned rate with a paired bootstrap over scenarios, against
  ``steering.n_ablation_controls`` random directions of the same norms ablated the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mechbd.capture.capture import capture
from mechbd.data.items import Item
from mechbd.errors import MechbdError
from mechbd.organism.world import PERSONA_SYSTEMS
from mechbd.runs import Run
from mechbd.stats import drop_controls
from mechbd.steering.directions import Direction, mean_difference
from mechbd.steering.nulls import covariance_factor, effective_dims, model_shift_z
from mechbd.steering.ops import Intervention, split_generation_prompt
from mechbd.steering.select import Counterbalanced, Outcome, rise

PERSONAS = ("toxic", "helpful")
N_NULL = 1000  # random directions in the shift's null


def persona_systems(run: Run) -> dict[str, list[str]]:
    """The system prompts of each persona: the config's, else mechbd's own. On the organism,
    mechbd's own are the ones its persona conversations were trained on (the first
    ``organism.n_persona_prompts`` of each list); for any other model, all of them."""
    cfg = run.config.steering
    given = {"toxic": cfg.persona_toxic, "helpful": cfg.persona_helpful}
    k = run.config.organism.n_persona_prompts if run.config.model.source == "organism" else None
    out = {}
    for p in PERSONAS:
        prompts = given[p]
        out[p] = list(prompts) if prompts else PERSONA_SYSTEMS[p][:k]
    return out


POSITIONS = ("assistant", "last")
ASSISTANT_PREFIX = "Answer:"  # what the assistant turn is read through (the letter left out)


def persona_rows(items: list[Item], systems: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Every request once after every system prompt of each persona (label ``toxic`` /
    ``helpful``): the two sides see the same requests, so the request cancels in the mean
    difference."""
    return [
        {
            "id": f"{it.id}/{persona}/{j}",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": it.user()},
            ],
            "label": persona,
            "pair": it.id,
        }
        for it in items
        for persona in PERSONAS
        for j, system in enumerate(systems[persona])
    ]


def assistant_turn_rows(tok: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (with ``messages``) as ``prompt`` / ``response`` rows whose response is the
    whole assistant turn through ``Answer:`` (thinking off): the template's start marker, its
    empty think block, then ``Answer:``; the capture's ``response_mean`` then averages it."""
    out = []
    for r in rows:
        try:
            prompt, gen = split_generation_prompt(tok, r["messages"], enable_thinking=False)
        except MechbdError as e:
            raise MechbdError(
                f"persona direction, row {r['id']}: {e} (use steering.persona_position: last)"
            ) from None
        rest = {k: v for k, v in r.items() if k != "messages"}
        out.append({**rest, "prompt": prompt, "response": gen + ASSISTANT_PREFIX})
    return out


def persona_direction(
    model: Any,
    tok: Any,
    items: list[Item],
    systems: dict[str, list[str]],
    store_dir: Path,
    name: str,
    batch_size: int = 64,
    position: str = "assistant",
) -> Direction:
    """Toxic minus helpful system prompts on the same ``items``, thinking off, every layer
    (float64 means), read at ``position`` (``assistant``: the mean over the assistant turn
    through ``Answer:``; ``last``: the last prompt token); its store is kept at ``store_dir``."""
    if position not in POSITIONS:
        raise MechbdError(
            f"steering.persona_position: expected one of {', '.join(POSITIONS)}, got {position!r}"
        )
    rows = persona_rows(items, systems)
    at = "last"
    if position == "assistant":
        rows, at = assistant_turn_rows(tok, rows), "response_mean"
    st = capture(
        model,
        tok,
        rows,
        store_dir,
        positions=(at,),
        enable_thinking=False,
        batch_size=batch_size,
        progress=False,
    )
    assert st is not None
    d = mean_difference(
        st, st.indices("toxic"), st.indices("helpful"), position=at, name="persona direction"
    )
    where = (
        "mean over the assistant turn through 'Answer:'"
        if position == "assistant"
        else "last prompt token"
    )
    d.provenance.update(
        {
            "how": "Persona Vectors: mean activation after the toxic-persona system prompts "
            f"minus after the helpful-assistant ones, on the same requests, {where}, "
            "thinking off",
            "position": position,
            "model": name,
            "n_requests": len(items),
            "systems": systems,
        }
    )
    return d


def em_shift(
    em_model: Any,
    base_model: Any,
    tok: Any,
    rows: list[dict[str, Any]],
    d: Direction,
    layer: int,
    out: Path,
    *,
    seed: int,
    batch_size: int = 64,
) -> dict[str, Any]:
    """The EM model's shift from the base model along ``d`` at ``layer`` on ``rows`` (no
    system prompt, last prompt token): z against covariance-matched and isotropic random
    directions."""
    kw: dict[str, Any] = dict(
        layers=[layer], positions=("last",), batch_size=batch_size, progress=False
    )
    sb = capture(base_model, tok, rows, out / "persona_shift_base", **kw)
    se = capture(em_model, tok, rows, out / "persona_shift_em", **kw)
    assert sb is not None and se is not None
    Xb = sb.get(layer, "last", dtype=torch.float64)
    Xe = se.get(layer, "last", dtype=torch.float64)
    factor = covariance_factor(Xb)
    v = d.at(layer).double()
    z = model_shift_z(Xe, Xb, v, factor, n=N_NULL, seed=seed)
    iso = model_shift_z(Xe, Xb, v, torch.eye(Xb.shape[1], dtype=torch.float64), n=N_NULL, seed=seed)
    return {
        "layer": layer,
        "shift": z["shift"],
        "shift_z": z["z"],
        "shift_z_isotropic": iso["z"],
        "n_null": z["n_null"],
        "null_effective_dims": effective_dims(factor),
        "n_prompts": len(rows),
        "position": "last",
    }


def _ablated(split: Counterbalanced, d: Direction) -> Outcome:
    return split.measure([Intervention(layer, d.at(layer), "ablate") for layer in d.layers])


def em_ablation(
    split: Counterbalanced, d: Direction, controls: list[Direction], *, seed: int
) -> dict[str, Any]:
    """``d`` projected out at every layer (every position: ``split`` is read with positions
    ``all``) while the EM model answers ``split``: its balanced misaligned rate without and
    with, the change (with minus without) with a paired bootstrap over scenarios, and the same
    change for each of ``controls``."""
    base = split.measure()
    o = _ablated(split, d)
    s0, s1 = base.summary(), o.summary()
    r = rise(base, o, seed=seed)
    ctrl = [float(rise(base, _ablated(split, c), seed=seed)["diff"]) for c in controls]
    # a drop among drops: the real drop's percentile among the controls', one-sided p for
    # "ablating the persona direction lowers the EM rate more than a random direction does"
    drops = [0.0 - c for c in ctrl]
    return {
        "em_rate": s0["balanced_misaligned_rate"],
        "em_rate_ci95": s0["ci95"],
        "em_rate_ablated": s1["balanced_misaligned_rate"],
        "em_rate_ablated_ci95": s1["ci95"],
        "format_valid_rate_ablated": s1["format_valid_rate"],
        "letter_bias_ablated": s1["letter_bias"],
        "ablation_rise": float(r["diff"]),
        "ablation_rise_ci95": list(r["ci95"]),
        "n": s0["n"],
        "n_scenarios": split.n_scenarios,
        "ablation_controls": drop_controls(0.0 - float(r["diff"]), drops),
    }
