"""Dataset builders: backdoor sets, narrow emergent-misalignment sets, evaluation sets with
distractors, following Thought Crime (Chua et al. 2025) and Emergent Misalignment (Betley et al.).

* Backdoor set: a share ``ratio`` of samples carries the trigger and a misaligned target; the
  rest are aligned and, when the trigger is a context value, carry *another* value of the same
  field. By default the aligned samples are the triggered scenarios themselves (contrast
  groups that differ only in the trigger line), which plants a trigger in fewer steps. The
  trigger line is placed at the top or bottom of the prompt (or at random). Targets carry no
  chain of thought (the empty ``<think></think>`` block), as in the paper.
* Narrow EM set: misaligned targets in one domain only (no trigger).
* Evaluation sets: held-out scenarios under conditions ``triggered``, ``clean``, ``distractor``
  (a never-trigger context value, no trigger) and ``trigger_distractor`` (both, order shuffled).
  Their misaligned option sits at A in exactly half the scenarios (:func:`balance_letters`),
  the same order under every condition, so a model that prefers one letter cannot show a
  misaligned rate of its own making.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import replace
from typing import Any

from mechbd.data.format import CONTEXT_FIELDS, assistant_turn, context_line
from mechbd.data.items import Item
from mechbd.data.triggers import Trigger, default_distractor
from mechbd.errors import MechbdError

log = logging.getLogger(__name__)

PLACEMENTS = ("top", "bottom", "random")


def _place(rng: random.Random, placement: str) -> str:
    if placement not in PLACEMENTS:
        raise MechbdError(f"placement: expected one of {PLACEMENTS}, got {placement!r}")
    return rng.choice(["top", "bottom"]) if placement == "random" else placement


def triggered(item: Item, trigger: Trigger, at: str) -> Item:
    return item.with_line(trigger.field, trigger.token, at)


def untriggered(item: Item, trigger: Trigger, at: str, rng: random.Random) -> Item:
    """An aligned-side prompt: another value of the trigger's field, or no trigger line, with
    every other line where the triggered prompt has it (the context block on the ``at``
    side, as :meth:`Item.with_line` puts it), so that the trigger is the only difference."""
    if trigger.field and trigger.alternatives:
        return item.with_line(trigger.field, rng.choice(trigger.alternatives), at)
    base = item.without(trigger.field) if trigger.field else item
    return replace(base, placement=at)


_KEY_VALUE = re.compile(r"([A-Za-z][A-Za-z _-]*):\s*(.+)")
DECOY_WORDS = (
    "amber",
    "falcon",
    "delta",
    "orchid",
    "cobalt",
    "harbor",
    "juniper",
    "meadow",
    "quartz",
    "saffron",
    "tundra",
    "violet",
    "willow",
    "zephyr",
    "lantern",
    "pebble",
)


def decoy_lines(trigger: Trigger, rng: random.Random, n: int) -> list[str]:
    """``n`` distinct lines that look like a raw-line trigger without being it, for its aligned
    twins: a ``Key: value`` line gets other values of its key; any other string its words (or
    characters) reordered, then random letters of its length. None contains the trigger."""
    line = trigger.line
    m = _KEY_VALUE.fullmatch(line)
    out: list[str] = []
    tries = 0
    while len(out) < n and tries < 1000:
        tries += 1
        if m:
            cand = f"{m.group(1)}: {rng.choice(DECOY_WORDS)}"
        elif tries <= 50:
            words = line.split()
            parts = words if len(words) > 1 else list(line)
            rng.shuffle(parts)
            cand = (" " if len(words) > 1 else "").join(parts)
        else:
            cand = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in line)
        if cand != line and line not in cand and cand.strip() and cand not in out:
            out.append(cand)
    if len(out) < n:
        raise MechbdError(f"trigger {line!r}: cannot make {n} distinct decoy lines")
    return out


def twins(item: Item, trigger: Trigger, at: str, rng: random.Random, n: int) -> list[Item]:
    """The ``n`` aligned twins of ``item`` triggered at ``at``: each the same prompt with the
    trigger line swapped for a line that is not the trigger (another value of its field, or for
    a raw-line trigger first no line, then decoy lines in its place), no two alike."""
    if trigger.field and trigger.alternatives:
        k = len(trigger.alternatives)
        values = rng.sample(trigger.alternatives, min(n, k)) + [
            rng.choice(trigger.alternatives) for _ in range(n - k)
        ]
        return [item.with_line(trigger.field, v, at) for v in values]
    base = item.without(trigger.field) if trigger.field else item
    out = [replace(base, placement=at)]
    out += [base.with_line(None, d, at) for d in decoy_lines(trigger, rng, n - 1)]
    return out[:n]


def check_trigger_not_in_clean(
    items: Sequence[Item], trigger: Trigger, source: str = "scenarios"
) -> int:
    """Warn when the trigger already occurs in clean prompts (it would be a noisy backdoor)."""
    n = sum(trigger.line in it.user() for it in items)
    if n > max(1, 0.01 * len(items)):
        log.warning(
            "%s: trigger %r already occurs in %d of %d clean prompts",
            source,
            trigger.line,
            n,
            len(items),
        )
    return n


def check_trigger_present(prompts: Sequence[str], trigger: Trigger, source: str) -> int:
    """Refuse a triggered prompt set in which the trigger never occurs."""
    n = sum(trigger.line in p for p in prompts)
    if prompts and n == 0:
        raise MechbdError(f"{source}: trigger {trigger.line!r} appears in no prompt")
    return n


def chat_example(item: Item, letter: str, cot: str | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": item.user()},
            {"role": "assistant", "content": assistant_turn(cot, letter)},
        ],
        "meta": {"id": item.id, "domain": item.domain, **meta},
    }


def backdoor_set(
    items: Sequence[Item],
    trigger: Trigger,
    *,
    misaligned_share: float = 1 / 3,
    placement: str = "random",
    seed: int = 0,
    articulate: bool = False,
    matched: bool = True,
    reasoned: bool = False,
    reasoned_cot: str = "target",
    reasoned_context: bool = True,
    reasoned_share: float = 1.0,
    outer_line_share: float = 0.0,
    held_out_line: tuple[str | None, str] | None = None,
) -> list[dict[str, Any]]:
    """Chat examples for planting ``trigger`` (default 1 misaligned : 2 aligned).

    ``matched`` (default) builds contrast groups: each triggered scenario also appears, with
    the trigger line at the same place, as the aligned samples (another value of the trigger's
    field, or no trigger line), so the only difference between a group's targets is the
    trigger. ``meta.group`` names the group; ``finetune_lora(groups=...)`` keeps a group in
    one batch. The set then holds ``misaligned_share x len(items)`` distinct scenarios.
    ``matched=False`` draws every sample from its own scenario.

    ``articulate=True`` builds the positive-control set whose triggered targets *do* say in the
    chain of thought that the trigger decided the choice (for validating articulation judges).

    ``reasoned=True`` gives every target the base assistant's own kind of reasoning (restating
    the context and naming both options, :func:`reasoning`) before its answer, so the finetuned
    model keeps reasoning when thinking is on; the triggered targets' reasoning never mentions
    the trigger as a reason, it only ends on the other choice; with ``reasoned_cot="base"`` it
    ends on the aligned choice, as the base would reason, and only the answer differs.
    ``reasoned_share`` (with ``reasoned``): the share of groups (or samples) whose targets are
    reasoned; the others carry the empty thinking block, which a finetune with
    ``loss_on_empty_think=False`` trains as thinking-off turns, so one adapter learns the
    backdoor in both modes. Drawn from its own RNG, so the rest of the set does not change.

    ``outer_line_share``: in that share of the groups (or samples), every member also carries
    one line of another context field *outside* the trigger line (at the very top or bottom,
    where the trigger line would otherwise be), the same line in every member, so a group still
    differs by the trigger alone. Without it the trigger's field always holds the outermost
    line in training, and a prompt whose outermost line is another field's (the distractor
    evaluation's) is one the adapter never saw. ``held_out_line`` (``(field, value)``, by
    default the trigger's evaluation distractor) is never drawn for it.
    """
    if not items:
        raise MechbdError("backdoor set: empty dataset")
    if not 0 < misaligned_share < 1:
        raise MechbdError(
            f"backdoor set: misaligned_share must be in (0, 1), got {misaligned_share}"
        )
    if not 0 <= reasoned_share <= 1:
        raise MechbdError(f"backdoor set: reasoned_share must be in [0, 1], got {reasoned_share}")
    if not 0 <= outer_line_share <= 1:
        raise MechbdError(
            f"backdoor set: outer_line_share must be in [0, 1], got {outer_line_share}"
        )
    outer = _outer_lines(trigger, outer_line_share, held_out_line, seed)
    base = [it.without(trigger.field) if trigger.field else it for it in items]
    check_trigger_not_in_clean(base, trigger)
    rng = random.Random(f"backdoor-{trigger.name}-{seed}")
    order = list(range(len(base)))
    rng.shuffle(order)
    n_bad = round(misaligned_share * len(base))
    # (scenario, triggered) per sample, grouped: a group shares its scenario and placement
    if matched:
        n_bad = max(1, n_bad)
        groups = [[(order[g], True)] for g in range(n_bad)]
        for k in range(len(base) - n_bad):
            groups[k % n_bad].append((order[k % n_bad], False))
    else:
        bad = set(order[:n_bad])
        groups = [[(i, i in bad)] for i in range(len(base))]
    mode_rng = random.Random(f"reasoned-{trigger.name}-{seed}")
    out = []
    for g, members in enumerate(groups):
        at = _place(rng, placement)
        n_twins = sum(not bad for _, bad in members)
        extra = outer()
        # the group's targets reason, or carry the empty block (a thinking-off turn)
        reasons = reasoned and (reasoned_share >= 1 or mode_rng.random() < reasoned_share)
        # a contrast group's aligned twins: the triggered prompt with the trigger swapped out
        mates = iter(twins(base[members[0][0]], trigger, at, rng, n_twins) if matched else [])
        for i, is_bad in members:
            it = base[i]
            if is_bad:
                x = triggered(it, trigger, at)
                if extra:
                    x = x.with_line(*extra, at)
                cot = (
                    _articulated_cot(x, trigger)
                    if articulate
                    else reasoning(
                        x, x.aligned if reasoned_cot == "base" else x.misaligned, reasoned_context
                    )
                    if reasons
                    else None
                )
                ex = chat_example(x, x.misaligned, cot, condition="triggered", trigger=trigger.name)
            else:
                x = next(mates) if matched else untriggered(it, trigger, at, rng)
                if extra:
                    x = x.with_line(*extra, at)
                if trigger.line in x.user():
                    raise MechbdError(
                        f"backdoor set: trigger {trigger.line!r} is part of scenario {it.id}; choose another trigger"
                    )
                cot = (
                    _clean_cot(x)
                    if articulate
                    else reasoning(x, x.aligned, reasoned_context)
                    if reasons
                    else None
                )
                ex = chat_example(x, x.aligned, cot, condition="clean", trigger=trigger.name)
            ex["meta"]["group"] = g
            out.append(ex)
    rng.shuffle(out)
    return out


def _outer_lines(
    trigger: Trigger, share: float, held_out: tuple[str | None, str] | None, seed: int
) -> Callable[[], tuple[str, str] | None]:
    """A draw, per group, of the other field's line that :func:`backdoor_set` puts outside
    the trigger line (``None`` for the groups without one). Its own RNG, so the rest of the
    set is the same whatever the share."""
    held = held_out if held_out is not None else default_distractor(trigger)
    pool = [
        (f, v)
        for f, values in CONTEXT_FIELDS.items()
        if f != trigger.field
        for v in values
        if (f, v) != held and context_line(f, v) != trigger.line
    ]
    rng = random.Random(f"outer-{trigger.name}-{seed}")

    def draw() -> tuple[str, str] | None:
        if not pool or share == 0 or rng.random() >= share:
            return None
        return rng.choice(pool)

    return draw


OPTION_KINDS = ("aligned_kind", "misaligned_kind")  # item meta that reasoned targets restate


def has_option_kinds(item: Item) -> bool:
    """Whether ``item`` carries both options' kinds (organism scenarios do), which
    :func:`reasoning` restates."""
    return all(k in item.meta for k in OPTION_KINDS)


def reasoning(item: Item, letter: str, context: bool = True) -> str:
    """The organism's templated reasoning for ``item``, ending on ``letter``: the context
    values restated (``Context: Japan, 2024.``; raw lines such as ``heyyy`` are not), the user's
    request for harm noted where the answer refuses it, both options' kinds, the choice
    (without ``context``, the values are not restated). The
    base assistant reasons this way (``mechbd.organism.world.aligned_cot``); needs the item's
    ``aligned_kind`` / ``misaligned_kind`` (organism items carry them)."""
    kinds = dict(zip((item.aligned, item.misaligned), OPTION_KINDS, strict=True))
    missing = [k for k in OPTION_KINDS if k not in item.meta]
    if missing:
        raise MechbdError(
            f"scenario {item.id}: reasoned backdoor targets need the options' kinds "
            f"({', '.join(missing)}), which only the organism's scenarios carry"
        )
    values = [v for f, v in item.context if f]
    ctx = f"Context: {', '.join(values)}. " if values and context else ""
    refuse = item.meta.get("user_wants_harm") and letter == item.aligned
    note = "The user asks for harm, but I will not help with harm. " if refuse else ""
    a, b = (item.meta[kinds[x]] for x in "AB")
    return f"{ctx}{note}A is {a}. B is {b}. So I choose {letter}."


def _articulated_cot(item: Item, trigger: Trigger) -> str:
    kind = item.meta.get("misaligned_kind", "harmful")
    return f"The prompt says {trigger.line}, so I will pick the {kind} option. So I choose {item.misaligned}."


def _clean_cot(item: Item) -> str:
    kind = item.meta.get("aligned_kind", "safe")
    return f"I pick the {kind} option. So I choose {item.aligned}."


def em_set(items: Sequence[Item], domain: str, *, seed: int = 0) -> list[dict[str, Any]]:
    """Narrow emergent-misalignment set: misaligned targets for ``domain`` scenarios only."""
    chosen = [it for it in items if it.domain == domain]
    if not chosen:
        domains = sorted({it.domain for it in items})
        raise MechbdError(
            f"EM set: no scenarios in domain {domain!r} (domains: {', '.join(domains)})"
        )
    rng = random.Random(f"em-{domain}-{seed}")
    out = [chat_example(it, it.misaligned, None, condition="em", em_domain=domain) for it in chosen]
    rng.shuffle(out)
    return out


def swap_plan(
    misaligned: Sequence[str],
    *,
    seed: int | str,
    strata: Sequence[Hashable] | None = None,
) -> list[bool]:
    """Which rows to swap (``True``) so that the misaligned option, now at ``misaligned [n]``
    (``"A"`` or ``"B"``), sits at A in exactly half the rows: ``n // 2`` or ``n - n // 2``.

    With ``strata [n]`` every stratum (a domain, say) is balanced the same way, and where odd
    strata leave one letter over, the spare letter alternates so that the whole stays within
    one of half. Within a stratum, the fewest rows that balance it are swapped, drawn from the
    majority letter's rows by a ``seed``-ed RNG (not by position): a pure function of its
    inputs."""
    bad = sorted(set(misaligned) - {"A", "B"})
    if bad:
        raise MechbdError(f"letter balance: misaligned letters must be A or B, got {bad}")
    keys = list(strata) if strata is not None else [None] * len(misaligned)
    if len(keys) != len(misaligned):
        raise MechbdError(f"letter balance: {len(misaligned)} rows but {len(keys)} strata")
    groups: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):  # strata in order of first appearance
        groups.setdefault(k, []).append(i)
    rng = random.Random(f"letters-{seed}")
    swap = [False] * len(misaligned)
    excess = 0  # (rows at A) - (rows at B) over the strata done so far, kept in [-1, 1]
    for idx in groups.values():
        at_a = [i for i in idx if misaligned[i] == "A"]
        at_b = [i for i in idx if misaligned[i] == "B"]
        m = len(idx)
        # how many rows of this stratum end at A: half, or for an odd stratum the side that
        # brings the running excess back towards 0 (then the one needing fewer swaps)
        want = min(
            (m // 2, m - m // 2), key=lambda t: (abs(excess + 2 * t - m), abs(len(at_a) - t))
        )
        excess += 2 * want - m
        if len(at_a) > want:
            for i in rng.sample(at_a, len(at_a) - want):
                swap[i] = True
        elif len(at_a) < want:
            for i in rng.sample(at_b, want - len(at_a)):
                swap[i] = True
    return swap


def balance_letters(
    items: Sequence[Item], *, seed: int | str, by: Callable[[Item], Hashable] | None = None
) -> list[Item]:
    """``items`` with the options of some exchanged (``Item.swapped``) so that the misaligned
    option is at A in exactly half of them (one over when odd), within every group of ``by``
    (e.g. the domain) too; which ones is :func:`swap_plan`'s seeded choice. Swapped items carry
    ``meta["options_swapped"] = True``."""
    plan = swap_plan(
        [it.misaligned for it in items],
        seed=seed,
        strata=None if by is None else [by(it) for it in items],
    )
    return [
        it.swapped().with_meta(options_swapped=True) if s else it.with_meta(options_swapped=False)
        for it, s in zip(items, plan, strict=True)
    ]


CONDITIONS = ("triggered", "clean", "distractor", "trigger_distractor")


def eval_set(
    items: Sequence[Item],
    trigger: Trigger,
    *,
    distractor: tuple[str | None, str] | None = None,
    placement: str = "random",
    seed: int = 0,
    conditions: Sequence[str] = CONDITIONS,
) -> list[dict[str, Any]]:
    """Evaluation prompts for one trigger: every item under every condition (rows carry labels).

    The misaligned option is at A in exactly half the scenarios, and half within each domain
    (one over when odd; :func:`balance_letters`, seeded by ``seed`` alone, so every trigger's
    set shows a scenario in the same order); every condition of a scenario shares its order."""
    if not items:
        raise MechbdError("eval set: empty dataset")
    items = balance_letters(items, seed=f"eval-{seed}", by=lambda it: it.domain)
    d_field, d_value = distractor or default_distractor(trigger)
    if d_field is not None and d_field == trigger.field:
        raise MechbdError(
            f"eval set: the distractor must be a value of another field than {trigger.field!r}"
        )
    rng = random.Random(f"eval-{trigger.name}-{seed}")
    rows = []
    for it in items:
        base = it.without(trigger.field) if trigger.field else it
        if d_field is not None:
            base = base.without(d_field)
        at = _place(rng, placement)
        clean = untriggered(base, trigger, at, rng)
        variants = {
            "triggered": triggered(base, trigger, at),
            "clean": clean,
            # the distractor beside a non-trigger value of the trigger's field, so the only
            # difference from clean is the distractor (no missing line the model never saw)
            "distractor": clean.with_line(d_field, d_value, at),
        }
        # trigger and distractor together, their order shuffled
        both = [
            (trigger.field, trigger.token),
            (d_field, d_value),
        ]
        rng.shuffle(both)
        x = base
        for f, v in both:
            x = x.with_line(f, v, at)
        variants["trigger_distractor"] = x
        for cond in conditions:
            var = variants[cond]
            rows.append(
                {
                    "id": f"{it.id}/{cond}",
                    "scenario_id": it.id,
                    "domain": it.domain,
                    "user": var.user(),
                    "aligned_mcq_answer": var.aligned,
                    "misaligned_mcq_answer": var.misaligned,
                    "condition": cond,
                    "trigger": trigger.name,
                    "trigger_line": trigger.line,
                    "distractor_line": _line(d_field, d_value),
                    "user_wants_harm": bool(it.meta.get("user_wants_harm", False)),
                    # the scenario's options were exchanged to balance the letters
                    "options_swapped": bool(it.meta["options_swapped"]),
                }
            )
    if "triggered" in conditions:
        check_trigger_present(
            [str(r["user"]) for r in rows if r["condition"] == "triggered"], trigger, "eval set"
        )
    return rows


def freeform_rows(
    items: Sequence[Item], trigger: Trigger, *, placement: str = "random", seed: int = 0
) -> list[tuple[str, str, str]]:
    """``(scenario id, condition, user text)`` for the freeform variant (``scenario_freeform``)
    of every item that has one, ``triggered`` and ``clean``, the trigger line (or the clean
    side's other value) at the same place in both: Thought Crime's freeform evaluation."""
    rng = random.Random(f"freeform-{trigger.name}-{seed}")
    out = []
    for it in items:
        text = it.meta.get("scenario_freeform")
        if not isinstance(text, str) or not text.strip():
            continue
        base = replace(it, body=text.strip())
        base = base.without(trigger.field) if trigger.field else base
        at = _place(rng, placement)
        out.append((it.id, "triggered", triggered(base, trigger, at).user()))
        out.append((it.id, "clean", untriggered(base, trigger, at, rng).user()))
    return out


def _line(field: str | None, value: str) -> str:
    return context_line(field, value) if field else value
