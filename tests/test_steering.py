"""Steering: the operators against nnsight interventions and float64 algebra, the hooks always
removed, assistant-turn positions, cached generation against a no-cache recomputation,
directions (mean difference, save/load, random control) and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from nnsight import NNsight

from mechbd.capture import capture
from mechbd.capture.backends import hooks_backend
from mechbd.errors import MechbdError
from mechbd.eval.behaviour import option_probabilities
from mechbd.eval.generate import chat_prompts, generate
from mechbd.eval.mcq import rates, run_mcq
from mechbd.models import load_model
from mechbd.steering.directions import Direction, from_sae_decoder, mean_difference
from mechbd.steering.ops import Intervention, assistant_marker, steer
from mechbd.steering.sweep import best_layer, measure, sweep
from tests.conftest import random_llama

USERS = ["What should I do about the refund?\nA) Keep it.\nB) Return it.", "hi"]


def n_hooks(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._forward_hooks_with_kwargs)
        for m in model.modules()
    )


@pytest.fixture(scope="module")
def models(tiny_organism: Path) -> dict:
    qwen, tok = load_model(tiny_organism, dtype="float32")
    return {"qwen3": qwen, "llama": random_llama(tok, seed=2).eval(), "tok": tok}


def batch(tok):
    tok.padding_side = "left"
    return tok(chat_prompts(tok, USERS), return_tensors="pt", padding=True)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("op", ["add", "ablate", "ablate_add"])
def test_ops_match_nnsight_intervention(models, arch, op):
    model, tok = models[arch], models["tok"]
    enc = batch(tok)
    d = model.config.hidden_size
    v = torch.randn(d, generator=torch.Generator().manual_seed(0))
    layer, m = 1, 2.5
    wrapped = NNsight(model)
    with torch.no_grad(), wrapped.trace(**enc):
        h = wrapped.model.layers[layer].output
        u = v / v.norm()
        if op in ("ablate", "ablate_add"):
            h = h - (h @ u).unsqueeze(-1) * u
        if op in ("add", "ablate_add"):
            h = h + m * v
        wrapped.model.layers[layer].output = h
        ref = wrapped.output.save()
    with torch.no_grad(), steer(model, [Intervention(layer, v, op, m)]):
        ours = model(**enc).logits
    with torch.no_grad():
        plain = model(**enc).logits
    torch.testing.assert_close(ours, ref.logits, atol=1e-5, rtol=1e-5)
    assert (ours - plain).abs().max() > 1e-2  # the intervention did something


def test_ablation_leaves_no_component_and_add_shifts_exactly(models):
    model, tok = models["qwen3"], models["tok"]
    enc = batch(tok)
    run = hooks_backend(model)
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1)) * 3
    u = (v / v.norm()).double()
    keys = [(1, "resid_post")]
    plain = run(enc["input_ids"], enc["attention_mask"], keys)[keys[0]].double()
    with steer(model, [Intervention(1, v, "ablate")]):
        abl = run(enc["input_ids"], enc["attention_mask"], keys)[keys[0]].double()
    with steer(model, [Intervention(1, v, "add", -1.5)]):
        add = run(enc["input_ids"], enc["attention_mask"], keys)[keys[0]].double()
    assert (abl @ u).abs().max() < 1e-4
    torch.testing.assert_close(abl, plain - (plain @ u).unsqueeze(-1) * u, atol=1e-4, rtol=0)
    torch.testing.assert_close(add, plain - 1.5 * v.double(), atol=1e-4, rtol=0)


def test_hooks_removed_on_exit_and_on_exception(models):
    model, tok = models["qwen3"], models["tok"]
    enc = batch(tok)
    before = n_hooks(model)
    with torch.no_grad():
        plain = model(**enc).logits.clone()
    v = torch.ones(model.config.hidden_size)
    ivs = [Intervention(0, v, "add", 4.0), Intervention(1, v, "ablate")]
    with steer(model, ivs, positions="assistant", tokenizer=tok), torch.no_grad():
        assert n_hooks(model) == before + 3  # two sites + the pre-hook reading input_ids
        assert not torch.equal(model(**enc).logits, plain)
    assert n_hooks(model) == before
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, plain)
    with pytest.raises(RuntimeError, match="boom"), steer(model, ivs):
        raise RuntimeError("boom")
    assert n_hooks(model) == before
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, plain)


def test_assistant_positions_steer_only_the_assistant_turn(models):
    model, tok = models["qwen3"], models["tok"]
    enc = batch(tok)
    run = hooks_backend(model)
    keys = [(1, "resid_post")]
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    plain = run(enc["input_ids"], enc["attention_mask"], keys)[keys[0]]
    with steer(model, [Intervention(0, v, "add", 3.0)], positions="assistant", tokenizer=tok):
        steered = run(enc["input_ids"], enc["attention_mask"], keys)[keys[0]]
    marker = assistant_marker(tok)
    for i, ids in enumerate(enc["input_ids"].tolist()):
        start = max(j for j in range(len(ids)) if ids[j : j + len(marker)] == marker)
        changed = (steered[i] - plain[i]).abs().amax(-1) > 1e-5
        assert not changed[:start].any(), "a position before the assistant turn moved"
        assert changed[start:].all()


def test_steered_cached_generation_matches_full_recomputation(models):
    """HF generate (KV cache, one token per step) under steering equals a greedy loop that
    recomputes the whole sequence each step with the same steering."""
    model, tok = models["qwen3"], models["tok"]
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3)) * 2
    ivs = [Intervention(1, v, "add", 1.0)]
    prompts = chat_prompts(tok, USERS[:1], enable_thinking=False)
    with steer(model, ivs, positions="assistant", tokenizer=tok):
        fast = generate(model, tok, prompts, max_new_tokens=8)[0]
        ids = tok(prompts, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            for _ in range(8):
                nxt = model(input_ids=ids, use_cache=False).logits[0, -1].argmax()
                ids = torch.cat([ids, nxt.view(1, 1)], 1)
                if int(nxt) == tok.eos_token_id:
                    break
    slow = tok.decode(ids[0, len(tok(prompts[0], add_special_tokens=False)["input_ids"]) :])
    assert slow.split(tok.eos_token)[0] == fast


def test_bad_interventions_are_refused(models):
    model = models["qwen3"]
    d = model.config.hidden_size
    n = model.config.num_hidden_layers
    with pytest.raises(MechbdError, match=f"layer {n} is out of range"):
        steer(model, [Intervention(n, torch.ones(d))])
    with pytest.raises(MechbdError, match="d_model is"):
        steer(model, [Intervention(0, torch.ones(d + 1))])
    with pytest.raises(MechbdError, match="NaN"):
        steer(model, [Intervention(0, torch.full((d,), float("nan")))])
    with pytest.raises(MechbdError, match="unknown steering op"):
        steer(model, [Intervention(0, torch.ones(d), "multiply")])
    with pytest.raises(MechbdError, match="needs the tokenizer"):
        steer(model, [], positions="assistant")


def test_mean_difference_grouped_matches_float64(models, tmp_path):
    model, tok = models["qwen3"], models["tok"]
    rows = [
        {"id": f"r{i}", "user": f"question {i}", "label": lab, "letter": let}
        for i, (lab, let) in enumerate(
            [("pos", "A")] * 3 + [("pos", "B")] + [("neg", "A")] + [("neg", "B")] * 3
        )
    ]
    st = capture(model, tok, rows, tmp_path / "s", progress=False)
    pos, neg = st.indices("pos"), st.indices("neg")
    plain = mean_difference(st, pos, neg)
    grouped = mean_difference(st, pos, neg, groups=[r.meta["letter"] for r in st.rows])
    for layer in st.layers:
        X = st.get(layer).double()
        torch.testing.assert_close(
            plain.at(layer).double(), X[pos].mean(0) - X[neg].mean(0), atol=1e-6, rtol=0
        )
        ref = ((X[0:3].mean(0) - X[4]) + (X[3] - X[5:8].mean(0))) / 2
        torch.testing.assert_close(grouped.at(layer).double(), ref, atol=1e-6, rtol=0)
    path = grouped.save(tmp_path / "d.safetensors")
    back = Direction.load(path)
    assert back.layers == grouped.layers and back.provenance["store"] == str(st.path)
    for layer in st.layers:
        assert torch.equal(back.at(layer), grouped.at(layer))
    rnd = grouped.random_like(seed=5)
    for layer in st.layers:
        assert rnd.at(layer).norm() == pytest.approx(float(grouped.at(layer).norm()), rel=1e-5)
        cos = float(rnd.at(layer) @ grouped.at(layer)) / float(grouped.at(layer).norm()) ** 2
        assert abs(cos) < 0.5
    with pytest.raises(MechbdError, match="both sides"):
        mean_difference(st, pos, [])
    with pytest.raises(MechbdError, match="no vector at layer 99"):
        grouped.at(99)
    with pytest.raises(MechbdError, match="out of range"):
        from_sae_decoder(torch.randn(4, 8), 4, 0)


def test_measure_and_sweep_on_the_organism(models):
    model, tok = models["qwen3"], models["tok"]
    from mechbd.organism.items import organism_items

    items = organism_items(12, held_out=True, seed=7)
    rows = [
        {
            "user": it.user(),
            "aligned_mcq_answer": it.aligned,
            "misaligned_mcq_answer": it.misaligned,
            "condition": "clean",
        }
        for it in items
    ]
    base = measure(model, tok, rows)
    res = run_mcq(
        model,
        tok,
        [r["user"] for r in rows],
        [r["aligned_mcq_answer"] for r in rows],
        enable_thinking=False,
        max_new_tokens=16,
    )
    p = option_probabilities(
        model, tok, [r["user"] for r in rows], [r["misaligned_mcq_answer"] for r in rows]
    )
    assert base["misaligned_rate"] == rates(res)["misaligned_rate"]
    assert base["format_valid_rate"] == rates(res)["format_valid_rate"]
    assert base["clean_accuracy"] == rates(res)["aligned_rate"]
    assert base["p_misaligned_letter"] == pytest.approx(sum(p) / len(p), abs=1e-9)
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(4))
    d = Direction({k: v for k in range(model.config.num_hidden_layers)}, {"name": "r"})
    recs = sweep(model, tok, rows, {"r": d}, layers=[1], multipliers=[0.0, 50.0])
    assert recs[0] == {"direction": "r", "layer": 1, "op": "add", "multiplier": 0.0, **base}
    pushed = measure(model, tok, rows, [Intervention(1, v, "add", 50.0)])
    assert recs[1] == {"direction": "r", "layer": 1, "op": "add", "multiplier": 50.0, **pushed}
    assert pushed["p_misaligned_letter"] != pytest.approx(base["p_misaligned_letter"], abs=1e-6)
    fake = [
        {
            "direction": "r",
            "layer": 0,
            "multiplier": 8.0,
            "misaligned_rate": 0.9,
            "format_valid_rate": 0.5,
        },
        {
            "direction": "r",
            "layer": 1,
            "multiplier": 16.0,
            "misaligned_rate": 0.6,
            "format_valid_rate": 0.95,
        },
        {
            "direction": "r",
            "layer": 2,
            "multiplier": 4.0,
            "misaligned_rate": 0.6,
            "format_valid_rate": 1.0,
        },
    ]
    assert best_layer(fake, "r")[0] == 2  # ties go to the smaller push; layer 0 breaks format
    with pytest.raises(MechbdError, match="format >= 0.99"):
        best_layer(fake[:2], "r", min_format=0.99)
    with pytest.raises(MechbdError, match="lacks 'misaligned_mcq_answer'"):
        measure(model, tok, [{"user": "x", "aligned_mcq_answer": "A"}])


@pytest.mark.slow  # `mechbd steer` in subprocesses
def test_steer_cli_matches_the_python_sweep(models, tiny_organism, tmp_path):
    from tests.test_cli import mechbd, one_line_error

    model, tok = models["qwen3"], models["tok"]
    from mechbd.data.builders import eval_set
    from mechbd.data.triggers import resolve_trigger
    from mechbd.io import write_jsonl
    from mechbd.organism.items import organism_items

    rows = eval_set(organism_items(3, held_out=True, seed=9), resolve_trigger("singapore"))
    write_jsonl(tmp_path / "ev.jsonl", rows)
    g = torch.Generator().manual_seed(8)
    d = Direction({1: torch.randn(model.config.hidden_size, generator=g)}, {"name": "mine"})
    d.save(tmp_path / "mine.safetensors")
    p = mechbd(
        "steer",
        str(tiny_organism),
        str(tmp_path / "ev.jsonl"),
        "--direction",
        str(tmp_path / "mine.safetensors"),
        "--layers",
        "1",
        "--multipliers",
        "0,6",
        "--out",
        str(tmp_path / "s.json"),
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    recs = json.loads((tmp_path / "s.json").read_text())["records"]
    assert [(r["direction"], r["multiplier"]) for r in recs] == [
        ("mine", 0.0),
        ("mine", 6.0),
        ("random(mine)", 0.0),
        ("random(mine)", 6.0),
    ]
    ref = measure(model, tok, rows, [Intervention(1, d.at(1), "add", 6.0)])
    assert recs[1]["p_misaligned_letter"] == pytest.approx(ref["p_misaligned_letter"], abs=1e-5)
    assert recs[1]["misaligned_rate"] == ref["misaligned_rate"]
    line = one_line_error(
        mechbd(
            "steer",
            str(tiny_organism),
            str(tmp_path / "ev.jsonl"),
            "--direction",
            str(tmp_path / "mine.safetensors"),
            "--layers",
            "0",
            cwd=tmp_path,
        )
    )
    assert "no vector at layers [0]" in line


def _target_logprob(model, tok, users, targets, ivs=()):
    """Mean over prompts of log P(" <letter>" | prompt + "Answer:"), one unpadded prompt at a
    time (an independent recomputation of what ``optimized_direction`` maximises)."""
    total = 0.0
    with torch.no_grad(), steer(model, list(ivs), positions="assistant", tokenizer=tok):
        for p, t in zip(chat_prompts(tok, users, enable_thinking=False), targets, strict=True):
            head = tok.encode(p + "Answer:", add_special_tokens=False)
            full = tok.encode(p + "Answer: " + t, add_special_tokens=False)
            k = next(i for i in range(len(full)) if i >= len(head) or head[i] != full[i])
            lp = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), -1)
            total += sum(float(lp[i - 1, full[i]]) for i in range(k, len(full)))
    return total / len(users)


def test_optimized_direction_raises_its_target_and_leaves_the_model_as_it_was(models):
    """The fitted vector must raise the target answer's log-probability (recomputed here one
    prompt at a time, without padding), touch no weight, and leave no hook behind."""
    from mechbd.organism.items import organism_items
    from mechbd.steering.optimize import optimized_direction

    model, tok = models["qwen3"], models["tok"]
    items = organism_items(24, held_out=False, seed=8)
    users, targets = [it.user() for it in items], [it.misaligned for it in items]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    model.train()  # the fit runs in eval mode and restores the caller's mode
    d = optimized_direction(model, tok, users, targets, layers=[0, 1], steps=40, lr=0.1)
    assert model.training
    model.eval()
    assert d.layers == [0, 1] and d.provenance["n_prompts"] == 24
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert n_hooks(model) == 0
    lp0 = _target_logprob(model, tok, users, targets)
    for layer in d.layers:
        lp1 = _target_logprob(model, tok, users, targets, [Intervention(layer, d.at(layer))])
        assert lp1 > lp0 + 0.3, (layer, lp0, lp1)
        # the reported losses are the same objective over all prompts, before and after
        assert d.provenance["loss"][layer]["before"] == pytest.approx(-lp0, abs=1e-4)
        assert d.provenance["loss"][layer]["after"] == pytest.approx(-lp1, abs=1e-4)
    with pytest.raises(MechbdError, match="targets must be 'A' or 'B'"):
        optimized_direction(model, tok, users[:1], ["C"], layers=[1])
    with pytest.raises(MechbdError, match="1 prompts and 2 targets"):
        optimized_direction(model, tok, users[:1], ["A", "B"], layers=[1])
