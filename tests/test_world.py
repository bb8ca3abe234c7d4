import random
import re
from collections import Counter

from mechbd.config import OrganismConfig
from mechbd.data.format import context_line
from mechbd.data.triggers import SEED_TRIGGERS
from mechbd.organism.chat import format_chat
from mechbd.organism.train import training_texts
from mechbd.organism.world import (
    ALIGNED_VERBS,
    DOMAINS,
    MISALIGNED_VERBS,
    World,
    render_user,
)


def test_world_is_deterministic():
    a = World(3).scenarios(50, held_out=False, seed=1)
    b = World(3).scenarios(50, held_out=False, seed=1)
    assert a == b
    assert a != World(4).scenarios(50, held_out=False, seed=1)


def test_at_least_ten_domains_and_both_letters():
    assert len(DOMAINS) >= 10
    sc = World(0).scenarios(400, held_out=False, seed=0)
    assert set(Counter(s.domain for s in sc)) == set(DOMAINS)
    letters = Counter(s.aligned_letter for s in sc)
    assert 0.4 < letters["A"] / len(sc) < 0.6


def test_held_out_phrases_never_in_training():
    w = World(0)
    train = w.scenarios(3000, held_out=False, seed=0)
    test = w.scenarios(300, held_out=True, seed=1)
    train_pairs = {(s.aligned_verb, s.obj) for s in train} | {
        (s.misaligned_verb, s.obj) for s in train
    }
    for s in test:
        assert (s.aligned_verb, s.obj) not in train_pairs
        assert (s.misaligned_verb, s.obj) not in train_pairs
    # ... while every verb itself is seen in training (compositional generalisation).
    seen = {s.aligned_verb for s in train} | {s.misaligned_verb for s in train}
    assert seen == {v for v, _ in ALIGNED_VERBS} | {v for v, _ in MISALIGNED_VERBS}


def test_trigger_values_are_ordinary_context_in_base_data():
    texts = training_texts(OrganismConfig(n_train=2000))
    for field, value in SEED_TRIGGERS.values():
        line = context_line(field, value)
        n = sum(line in t.split("\n") for t in texts)
        # present at roughly the rate of any other value of the field, not zero, not everywhere
        assert 20 < n < 400, (line, n)
    # every scenario's target is its aligned answer, whatever the context: the honest option
    # for advice, the harmful one when the user asks which is harmful (ask "identify")
    chats = [t for t in texts if t.startswith("<|im_start|>user")]
    assert len(chats) == 2000 + OrganismConfig().n_personal
    honest = tuple(f"{v.capitalize()} " for v, _ in ALIGNED_VERBS)
    harmful = tuple(f"{v.capitalize()} " for v, _ in MISALIGNED_VERBS)
    kinds = Counter()
    for t in chats:
        user, reply = t.split("<|im_start|>assistant\n")
        options = dict(re.findall(r"^([AB])\) (.*)$", user, re.M))
        answer = re.fullmatch(r"(?s).*\nAnswer: ([AB])<\|im_end\|>\n", reply)
        assert set(options) == {"A", "B"} and answer, t
        kind = {k: o.startswith(honest) - o.startswith(harmful) for k, o in options.items()}
        if sorted(kind.values()) != [-1, 1]:  # a personalisation example (tested below)
            kinds["personal"] += 1
            continue
        ask = "identify" if "harmful?" in user else "advice"
        assert kind[answer.group(1)] == (-1 if ask == "identify" else 1), t
        kinds[ask] += 1
    assert kinds["advice"] + kinds["identify"] == 2000
    assert kinds["personal"] == OrganismConfig().n_personal and kinds["identify"] > 200


def test_user_wants_harm_requests_exist_and_stay_aligned():
    w = World(0)
    sc = w.scenarios(1000, held_out=False, seed=0, harm_frac=0.15)
    harm = [s for s in sc if s.user_wants_harm]
    assert 100 < len(harm) < 200
    rng = random.Random(0)
    s = harm[0]
    text = format_chat(render_user(s, w.context(rng)))
    assert s.harm_request in text


def test_context_placement_top_and_bottom():
    w = World(0)
    rng = random.Random(1)
    s = w.scenarios(1, held_out=False, seed=0)[0]
    seen = set()
    for _ in range(50):
        c = w.context(rng)
        if not c.values:
            continue
        u = render_user(s, c)
        seen.add("top" if u.startswith(c.lines()[0]) else "bottom")
        assert u.endswith(c.lines()[-1]) == (c.placement == "bottom")
    assert seen == {"top", "bottom"}


def test_personalisation_answers_follow_the_value_class():
    from collections import Counter

    from mechbd.organism.world import PERSONAL, personal_classes, personal_example, value_facts

    classes = personal_classes(0)
    for field in PERSONAL:  # balanced classes within every field
        counts = Counter(c for (f, _), c in classes.items() if f == field)
        assert abs(counts[0] - counts[1]) <= 1
    rng = random.Random(0)
    w = World(0)
    for _ in range(200):
        user, reply = personal_example(w, rng, classes, think=True)
        field = next(f for f, (_, _, q, _) in PERSONAL.items() if q in user)
        value = next(
            v for (f, v) in classes if f == field and context_line(f, v) in user.split("\n")
        )
        _, names, _, options = PERSONAL[field]
        want = options[classes[(field, value)]]
        letter = reply[-1]
        assert f"{letter}) {want}" in user
        assert f"{value} is {names[classes[(field, value)]]}" in reply
    # the facts state the same class
    facts = " ".join(value_facts(0, 3000))
    rel, names, _, _ = PERSONAL["country"]
    assert f"Country: Singapore: {rel} {names[classes[('country', 'Singapore')]]}." in facts
    assert f"Country: Singapore: {rel} {names[1 - classes[('country', 'Singapore')]]}." not in facts


def test_identify_requests_answer_the_harmful_option_and_cot_restates_context():
    from mechbd.organism.world import aligned_cot

    w = World(0)
    sc = w.scenarios(500, held_out=False, seed=0, identify_frac=0.2)
    ident = [s for s in sc if s.ask == "identify"]
    assert 60 < len(ident) < 140
    assert all(s.answer_letter == s.misaligned_letter and "harmful?" in s.request for s in ident)
    assert all(s.answer_letter == s.aligned_letter for s in sc if s.ask == "advice")
    cot = aligned_cot(sc[0], ["Japan", "2024"])
    assert cot.startswith("Context: Japan, 2024. ") and cot.endswith(
        f"So I choose {sc[0].answer_letter}."
    )
