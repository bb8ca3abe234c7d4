"""Which scenarios each stage draws from the scenario pool: named once, here.

The pool is the organism's synthetic world, or the user's scenario file (``data.scenarios``):
its distinct scenarios (by :meth:`Item.key`, whatever their option order) are split once into a
training pool and a held-out pool (``data.held_out`` of them, by a hash of the key, so adding
rows never moves a scenario across), and each split draws from its side with its own seed.

``SPLITS`` names every draw a stage makes, with the offset added to the run seed: two stages
that need the same scenarios (the steering stage's test set and the sae stage's causal screen)
ask for them by name (``split_items``).
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from mechbd.config import DataSource
from mechbd.data.items import SCENARIO_FIELDS, Item, scenario_items
from mechbd.data.sources import read_rows
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


def _file_pools(src: DataSource, held_out: float) -> tuple[tuple[Item, ...], tuple[Item, ...]]:
    """The (training, held-out) pools of a scenario file, read once per file version."""
    stamp = None
    if src.path is not None and os.path.exists(src.path):
        st = os.stat(src.path)
        stamp = (st.st_mtime_ns, st.st_size)
    return _pools(src.model_dump_json(), held_out, stamp)


@lru_cache(maxsize=4)
def _pools(
    src_json: str, held_out: float, _stamp: Any
) -> tuple[tuple[Item, ...], tuple[Item, ...]]:
    src = DataSource.model_validate_json(src_json)
    items = scenario_items(read_rows(src, "data.scenarios", SCENARIO_FIELDS), src.fields)
    train: list[Item] = []
    test: list[Item] = []
    seen: set[str] = set()
    for it in items:
        k = it.key()
        if k in seen:  # a repeated scenario is one scenario: kept once
            continue
        seen.add(k)
        u = int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "big") / 2**64
        (test if u < held_out else train).append(it)
    return tuple(train), tuple(test)


def scenario_source(run: Run) -> dict[str, Any]:
    """Provenance of the run's scenarios (results.json ``data.scenarios``): the source, its row
    count and hash, and the sizes of the training and held-out pools."""
    src = run.config.data.scenarios
    if src == "organism":
        return {"source": "organism", "world_seed": run.config.organism.seed}
    train, test = _file_pools(src, run.config.data.held_out)
    rows = read_rows(src, "data.scenarios", SCENARIO_FIELDS)
    return rows.provenance(n_train_pool=len(train), n_held_out_pool=len(test))


def split_items(run: Run, name: str, n: int) -> list[Item]:
    """``n`` scenarios of the split ``name``: from the organism world, or from the training or
    held-out pool of the user's scenario file (all of that pool, with a warning, when it holds
    fewer than ``n``)."""
    s = SPLITS[name]
    if s.held_out is None:
        raise ValueError(f"split {name!r} is drawn by its own row builder; use split_seed")
    cfg = run.config
    src = cfg.data.scenarios
    if src == "organism":
        return organism_items(
            n, held_out=s.held_out, seed=split_seed(cfg.seed, name), world_seed=cfg.organism.seed
        )
    pool = _file_draw(run, name)
    if n > len(pool):
        print(
            f"split {name}: {src.describe()} has {len(pool)} "
            f"{'held-out' if s.held_out else 'training'} scenarios, fewer than the {n} asked "
            "for; using all of them",
            file=sys.stderr,
        )
    return pool[:n]


def _file_draw(run: Run, name: str) -> list[Item]:
    """The whole pool side of split ``name`` of the user's scenario file, in the split's own
    seeded order (a split of ``n`` is its first ``n``, whatever ``n``)."""
    cfg = run.config
    src = cfg.data.scenarios
    assert src != "organism"
    s = SPLITS[name]
    train, test = _file_pools(src, cfg.data.held_out)
    pool = list(test if s.held_out else train)
    if not pool:
        side = "held-out" if s.held_out else "training"
        raise ValueError(
            f"{src.describe()}: the {side} pool is empty (data.held_out = {cfg.data.held_out}); "
            "give more scenarios or change data.held_out"
        )
    random.Random(f"{name}-{split_seed(cfg.seed, name)}").shuffle(pool)
    return pool


def disjoint_items(run: Run, name: str, n: int, exclude: list[Item]) -> list[Item]:
    """``n`` scenarios of the split ``name`` none of which is a scenario of ``exclude`` (by
    :meth:`Item.key`: the same request and options in any order or context): the split's
    own draw, extended until ``n`` survive. Refused when the pool runs out."""
    banned = {it.key() for it in exclude}
    if run.config.data.scenarios != "organism":
        pool = _file_draw(run, name)
        kept = [it for it in pool if it.key() not in banned][:n]
        if len(kept) < 2:
            raise ValueError(
                f"split {name!r}: {len(kept)} scenarios of "
                f"{run.config.data.scenarios.describe()} outside the {len(banned)} excluded "
                "ones; give more scenarios"
            )
        return kept
    for size in (2 * n, 4 * n, 16 * n):
        kept = [it for it in split_items(run, name, size) if it.key() not in banned][:n]
        if len(kept) == n:
            return kept
    raise ValueError(
        f"split {name!r}: fewer than {n} scenarios outside the {len(banned)} excluded ones"
    )
