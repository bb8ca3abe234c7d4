import random
from collections import Counter

from mechbd.config import OrganismConfig
from mechbd.organism.chat import format_chat
from mechbd.organism.train import training_texts
from mechbd.organism.world import (
    ALIGNED_VERBS,
    DOMAINS,
    MISALIGNED_VERBS,
    SEED_TRIGGERS,
    World,
    context_line,
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
    # every training target is the aligned answer, whatever the context
    assert all("Answer: " in t for t in texts)


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
