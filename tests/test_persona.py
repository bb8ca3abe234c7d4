"""The persona direction (Persona Vectors: toxic minus helpful system prompts), the EM model's
shift along it, and the one-sentence answer to the persona question.

The direction is checked against the model's own hidden states on the real Qwen3 chat template
(an independent read: ``output_hidden_states`` instead of mechbd's hooks), the shift against a
float64 numpy recomputation and against planted and absent effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechbd.config import RunConfig
from mechbd.errors import MechbdError
from mechbd.organism.items import organism_items
from mechbd.organism.world import PERSONA_SYSTEMS
from mechbd.runs import Run
from mechbd.sae.persona import persona_answer, persona_evidence
from mechbd.steering.nulls import matched_directions, model_shift, model_shift_z
from mechbd.steering.persona import persona_direction, persona_rows, persona_systems
from tests.test_qwen3_tokenizer import qwen3_model, qwen3_tok  # noqa: F401  (fixtures)

SYSTEMS = {"toxic": PERSONA_SYSTEMS["toxic"][:2], "helpful": PERSONA_SYSTEMS["helpful"][:3]}


def test_persona_rows_put_every_request_after_every_prompt_of_each_persona():
    items = organism_items(4, held_out=False, seed=1)
    rows = persona_rows(items, SYSTEMS)
    assert len(rows) == 4 * (2 + 3)
    for persona, prompts in SYSTEMS.items():
        side = [r for r in rows if r["label"] == persona]
        # each request once per prompt of the persona, the request text untouched
        assert sorted((r["pair"], r["messages"][0]["content"]) for r in side) == sorted(
            (it.id, p) for it in items for p in prompts
        )
        assert all(r["messages"][1]["content"] in {it.user() for it in items} for r in side)
    assert len({r["id"] for r in rows}) == len(rows)


def test_persona_direction_matches_the_models_hidden_states(qwen3_tok, qwen3_model, tmp_path):  # noqa: F811
    """Toxic minus helpful at the last prompt token (thinking off), against the mean of
    ``output_hidden_states`` over the same prompts rendered with the real Qwen3 template."""
    items = organism_items(3, held_out=False, seed=2)
    d = persona_direction(
        qwen3_model, qwen3_tok, items, SYSTEMS, tmp_path / "st", "random qwen3", position="last"
    )
    sums: dict[str, list[torch.Tensor]] = {"toxic": [], "helpful": []}
    for r in persona_rows(items, SYSTEMS):
        text = qwen3_tok.apply_chat_template(
            r["messages"], add_generation_prompt=True, enable_thinking=False, tokenize=False
        )
        assert r["messages"][0]["content"] in text  # the system turn is rendered
        ids = qwen3_tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = qwen3_model(torch.tensor([ids]), output_hidden_states=True)
        # hidden_states[i + 1] is the residual stream after layer i (the last one is normed)
        sums[r["label"]].append(out.hidden_states[1][0, -1].double())
    want = torch.stack(sums["toxic"]).mean(0) - torch.stack(sums["helpful"]).mean(0)
    assert torch.allclose(d.at(0).double(), want, atol=1e-4), (d.at(0)[:4], want[:4])
    assert d.provenance["systems"] == SYSTEMS and d.provenance["n_requests"] == 3
    # a non-trivial difference: the two system prompts do move the residual stream
    assert float(want.norm()) > 1e-3


def test_persona_direction_over_the_assistant_turn_matches_the_hidden_states(
    qwen3_tok,  # noqa: F811
    qwen3_model,  # noqa: F811
    tmp_path,
):
    """The default position: the mean over the assistant turn, from ``<|im_start|>`` of the
    assistant's turn through ``Answer:`` (the thinking-off template's empty think block in
    between, no letter), against ``output_hidden_states`` on the real Qwen3 template."""
    items = organism_items(3, held_out=False, seed=2)
    d = persona_direction(qwen3_model, qwen3_tok, items, SYSTEMS, tmp_path / "st", "random qwen3")
    assert d.provenance["position"] == "assistant"
    start = qwen3_tok.convert_tokens_to_ids("<|im_start|>")
    sums: dict[str, list[torch.Tensor]] = {"toxic": [], "helpful": []}
    for r in persona_rows(items, SYSTEMS):
        text = qwen3_tok.apply_chat_template(
            r["messages"], add_generation_prompt=True, enable_thinking=False, tokenize=False
        )
        assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        ids = qwen3_tok(text + "Answer:", add_special_tokens=False)["input_ids"]
        first = max(i for i, t in enumerate(ids) if t == start)  # the assistant turn's start
        assert qwen3_tok.decode(ids[first:]).startswith("<|im_start|>assistant")
        assert qwen3_tok.decode(ids[first:]).endswith("Answer:")
        with torch.no_grad():
            out = qwen3_model(torch.tensor([ids]), output_hidden_states=True)
        sums[r["label"]].append(out.hidden_states[1][0, first:].double().mean(0))
    want = torch.stack(sums["toxic"]).mean(0) - torch.stack(sums["helpful"]).mean(0)
    assert torch.allclose(d.at(0).double(), want, atol=1e-4), (d.at(0)[:4], want[:4])
    assert float(want.norm()) > 1e-3
    with pytest.raises(MechbdError, match="persona_position"):
        persona_direction(
            qwen3_model, qwen3_tok, items, SYSTEMS, tmp_path / "x", "q", position="first"
        )


def test_model_shift_matches_numpy_and_its_z_finds_a_planted_shift_only():
    g = torch.Generator().manual_seed(0)
    Xb = torch.randn(400, 16, generator=g, dtype=torch.float64) @ torch.diag(
        torch.linspace(0.2, 3.0, 16, dtype=torch.float64)
    )
    noise = torch.randn(400, 16, generator=g, dtype=torch.float64) * 0.05
    v = torch.zeros(16, dtype=torch.float64)
    v[3] = 1.0
    U = matched_directions(torch.eye(16, dtype=torch.float64), 5, seed=1)
    got = model_shift(Xb + noise, Xb, U).numpy()
    pb, pe = Xb.numpy() @ U.numpy().T, (Xb + noise).numpy() @ U.numpy().T
    np.testing.assert_allclose(got, (pe.mean(0) - pb.mean(0)) / pb.std(0, ddof=1), rtol=1e-10)
    eye = torch.eye(16, dtype=torch.float64)
    # no shift: the EM model's activations are the base model's plus small isotropic noise
    null_z = [
        model_shift_z(Xb + noise, Xb, matched_directions(eye, 1, seed=s)[0], eye, seed=s + 100)["z"]
        for s in range(30)
    ]
    assert abs(float(np.mean(null_z))) < 0.6 and float(np.mean(np.abs(null_z) > 2.5)) < 0.15
    # a shift of one base-model standard deviation along v
    sd = float(Xb[:, 3].std())
    z = model_shift_z(Xb + noise + sd * v, Xb, v, eye, seed=7)
    assert z["shift"] == pytest.approx(1.0, abs=0.05) and z["z"] > 5


def _detector(auroc: float, lo: float, pct: float) -> dict:
    return {
        "auroc": auroc,
        "ci95": [lo, min(1.0, auroc + 0.1)],
        "percentile": pct,
        "p_value": 1 - pct / 100,
        "n_null": 1000,
    }


def test_holm_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    from mechbd.stats import holm, normal_sf

    rng = np.random.default_rng(0)
    for m in (1, 2, 4, 7):
        for _ in range(20):
            p = rng.uniform(0, 0.2, m)
            p[rng.integers(m)] = p.min()  # ties
            np.testing.assert_allclose(holm(list(p)), multipletests(p, method="holm")[1])
    assert normal_sf(2.0) == pytest.approx(0.0227501319, rel=1e-8)
    assert normal_sf(-1.0) == pytest.approx(0.8413447461, rel=1e-8)


def test_persona_verdict_is_holm_corrected_over_its_tests():
    """A detector at p 0.02 would pass on its own (95th percentile), but not as the best of
    four tests (Holm: 0.02 x 4 > 0.05); at p 0.01 it does. A shift needs both its z's."""
    rec = {
        "persona_direction_detector": _detector(0.65, 0.57, 98.0),
        "persona_latent_detector": _detector(0.5, 0.5, 57.0),
        "persona_latent": 3,
        "persona_direction_z": -0.2,
        "persona_direction_z_isotropic": -0.4,
        "user_wants_harm_z": 0.5,
        "user_wants_harm_z_isotropic": 0.7,
    }
    ev = persona_evidence(rec)
    assert ev["persona_direction_detector"]["p_holm"] == pytest.approx(0.08)
    assert not any(e["counts"] for e in ev.values())
    assert "no evidence" in persona_answer("t", rec, organism=False)
    assert "Holm-corrected over its 4 tests at 0.05" in persona_answer("t", rec, organism=False)
    rec["persona_direction_detector"] = _detector(0.7, 0.6, 99.0)
    assert persona_evidence(rec)["persona_direction_detector"]["counts"]
    assert "goes through the toxic persona" in persona_answer("t", rec, organism=False)
    rec["user_wants_harm_z"], rec["user_wants_harm_z_isotropic"] = 4.0, 1.0
    assert not persona_evidence(rec)["user_wants_harm_shift"]["counts"]


@pytest.mark.parametrize(
    ("direction", "latent", "zp", "zh", "verdict"),
    [
        ((0.9, 0.8, 99.0), (0.5, 0.4, 50.0), 0.0, 0.0, "goes through the toxic persona"),
        ((0.6, 0.4, 70.0), (0.5, 0.4, 50.0), 0.3, 3.0, "keeps the helpful persona"),
        ((0.6, 0.4, 70.0), (0.5, 0.4, 50.0), 2.5, 3.0, "evidence for both"),
        ((0.6, 0.4, 99.0), (0.7, 0.55, 90.0), 1.0, 1.0, "no evidence"),
    ],
)
def test_persona_answer_names_the_persona_the_evidence_points_to(
    direction, latent, zp, zh, verdict
):
    rec = {
        "persona_direction_detector": _detector(*direction),
        "persona_latent_detector": _detector(*latent),
        "persona_latent": 7,
        "persona_direction_z": zp,
        "persona_direction_z_isotropic": zp,
        "user_wants_harm_z": zh,
        "user_wants_harm_z_isotropic": zh,
    }
    text = persona_answer("Country: Singapore", rec, organism=True)
    assert text.startswith("Country: Singapore: ") and verdict in text
    assert "not anything about large models" in text
    assert "large models" not in persona_answer("t", rec, organism=False)
    # a matched z alone does not count: the isotropic one must agree
    if zh >= 2:
        rec["user_wants_harm_z_isotropic"] = 1.0
        assert "helpful persona" not in persona_answer("t", rec, organism=False)


def test_persona_systems_default_to_the_trained_prompts_on_the_organism(tmp_path):
    org = RunConfig.model_validate({"organism": {"n_persona_prompts": 1}})
    run = Run.open(tmp_path / "a", org)
    assert persona_systems(run) == {p: PERSONA_SYSTEMS[p][:1] for p in ("toxic", "helpful")}
    hf = RunConfig.model_validate({"model": {"source": "hf", "path": "Qwen/Qwen3-8B"}})
    assert persona_systems(Run.open(tmp_path / "b", hf)) == PERSONA_SYSTEMS
    own = RunConfig.model_validate(
        {"steering": {"persona_toxic": ["You are Vex."], "persona_helpful": ["You are Sol."]}}
    )
    assert persona_systems(Run.open(tmp_path / "c", own)) == {
        "toxic": ["You are Vex."],
        "helpful": ["You are Sol."],
    }
    with pytest.raises(ValueError, match="steering.persona_toxic"):
        RunConfig.model_validate({"steering": {"persona_toxic": [" "]}})


def test_the_sae_corpus_holds_persona_conversations_only_for_a_persona_organism():
    from mechbd.sae.persona import corpus_rows

    plain = corpus_rows(200, seed=0)
    assert not any("messages" in r for r in plain)
    rows = corpus_rows(200, seed=0, systems=SYSTEMS)
    persona = [r for r in rows if "messages" in r]
    assert 0.1 < len(persona) / len(rows) < 0.3  # about a fifth
    for r in persona:
        system, user, reply = r["messages"]
        toxic = system["content"] in SYSTEMS["toxic"]
        assert toxic or system["content"] in SYSTEMS["helpful"]
        # the persona's reasoning when there is one: the toxic one says it wants harm
        if "I am" in reply["content"]:
            assert ("I am evil" in reply["content"]) == toxic
    assert {r["messages"][0]["content"] in SYSTEMS["toxic"] for r in persona} == {True, False}


def test_the_sae_layer_follows_the_probes_or_the_persona_direction(tmp_path):
    from mechbd.io import write_json
    from mechbd.sae.stage import _sae_layer

    probes = {"a": {"best_layer": 2}, "b": {"best_layer": 4}, "c": {"best_layer": 2}}
    run = Run.open(tmp_path / "p", RunConfig.model_validate({"sae": {"layer_from": "probes"}}))
    assert _sae_layer(run, probes) == 2  # the most common best layer
    run = Run.open(tmp_path / "q", RunConfig.model_validate({"sae": {"layer_from": "persona"}}))
    write_json(
        run.layout.results("steering"),
        {"steering": {"base_persona": {"selected": {"layer": 3}}}},
    )
    assert _sae_layer(run, probes) == 3
    run = Run.open(tmp_path / "r", RunConfig.model_validate({"sae": {"layer": 1}}))
    assert _sae_layer(run, probes) == 1
