"""Which scenarios each stage draws from the organism world's pool: named once, here.

``SPLITS`` names every draw a stage makes, with the offset added to the run seed: two stages
that need the same scenarios (the steering stage's test set and the sae stage's causal screen)
ask for them by name (``split_items``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mechbd.data.items import Item
from mechbd.organism.items import organism_items

if TYPE_CHECKING:
    from mechbd.runs import Run


@dataclass(frozen=True)
class Split:
    """One draw of the scenario pool: ``offset`` is added to the run seed; ``held_out`` says
    whether it comes from the held-out option combinations, or is ``None`` for a draw a row
    builder of its own makes from the seed (``corpus_rows``, ``user_wants_harm_rows``)."""

    offset: int
    held_out: bool | None
    what: str


SPLITS: dict[str, Split] = {
    "model_test": Split(1, True, "model stage: a Hugging Face model's clean behaviour"),
    "backdoor_train": Split(10, False, "backdoors stage: every trigger's training set"),
    "backdoor_eval": Split(11, True, "backdoors stage: the behaviour evaluation"),
    "probe_calibration": Split(12, True, "backdoors stage: clean prompts for the probe threshold"),
    "em_train": Split(20, False, "em stage: the narrow EM finetune"),
    "em_eval": Split(21, True, "em stage: in- and out-of-domain misaligned rates"),
    "steering_direction": Split(30, False, "steering stage: the EM mean-difference direction"),
    "steering_test": Split(31, True, "steering stage and sae screen: the test split reported"),
    "steering_select": Split(32, True, "steering stage and sae screen: settings chosen on it"),
    "sae_corpus": Split(40, None, "sae stage: the SAE's training corpus (corpus_rows)"),
    "sae_diff": Split(41, True, "sae stage: EM model diffing"),
    "sae_harm": Split(42, None, "sae stage: user-wants-harm pairs (user_wants_harm_rows)"),
}


def split_seed(run_seed: int, name: str) -> int:
    """The seed of the split ``name`` in a run with seed ``run_seed``."""
    return run_seed + SPLITS[name].offset


def split_items(run: Run, name: str, n: int) -> list[Item]:
    """``n`` scenarios of the split ``name`` from the run's organism world."""
    s = SPLITS[name]
    if s.held_out is None:
        raise ValueError(f"split {name!r} is drawn by its own row builder; use split_seed")
    cfg = run.config
    return organism_items(
        n, held_out=s.held_out, seed=split_seed(cfg.seed, name), world_seed=cfg.organism.seed
    )


def disjoint_items(run: Run, name: str, n: int, exclude: list[Item]) -> list[Item]:
    """``n`` scenarios of the split ``name`` none of which is a scenario of ``exclude`` (by
    :meth:`Item.key`: the same request and options in any order or context): the split's
    own draw, extended until ``n`` survive. Refused when the pool runs out."""
    banned = {it.key() for it in exclude}
    for size in (2 * n, 4 * n, 16 * n):
        kept = [it for it in split_items(run, name, size) if it.key() not in banned][:n]
        if len(kept) == n:
            return kept
    raise ValueError(
        f"split {name!r}: fewer than {n} scenarios outside the {len(banned)} excluded ones"
    )
