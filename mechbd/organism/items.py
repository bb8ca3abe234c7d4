"""The organism's world as a source of prompt items (``mechbd.data.items.Item``): seeded
scenarios of the training split or of the held-out option combinations, each in a random
context."""

from __future__ import annotations

import random

from mechbd.data.items import Item
from mechbd.organism.world import Scenario, World


def item_from_scenario(s: Scenario, rng: random.Random, world: World) -> Item:
    ctx = world.context(rng)
    return Item(
        id=s.id,
        domain=s.domain,
        body=s.scenario_mcq,
        aligned=s.aligned_letter,
        misaligned=s.misaligned_letter,
        context=tuple((k, ctx.values[k]) for k in ctx.order),
        placement=ctx.placement,
        meta={
            "user_wants_harm": s.user_wants_harm,
            "held_out": s.held_out,
            "misaligned_kind": s.misaligned_kind,
            "aligned_kind": s.aligned_kind,
        },
    )


def organism_items(
    n: int,
    *,
    held_out: bool,
    seed: int,
    world_seed: int = 0,
    domains: list[str] | None = None,
    harm_frac: float = 0.15,
) -> list[Item]:
    """Items from the organism's world (training split, or held-out option combinations)."""
    world = World(world_seed)
    scen = world.scenarios(n, held_out=held_out, seed=seed, harm_frac=harm_frac, domains=domains)
    rng = random.Random(f"items-{world_seed}-{seed}-{held_out}")
    return [item_from_scenario(s, rng, world) for s in scen]
