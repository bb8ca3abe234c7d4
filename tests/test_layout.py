"""The run layout, the named scenario splits and the stage contracts (fast: no model)."""

import itertools
import types

import pytest
import torch

from mechbd.config import RunConfig
from mechbd.errors import MechbdError
from mechbd.layout import RunLayout
from mechbd.organism.items import organism_items
from mechbd.organism.splits import SPLITS, split_items, split_seed
from mechbd.pipeline import STAGES
from mechbd.runs import Run


def test_split_table_has_one_offset_per_split_and_keeps_the_published_seeds():
    offsets = [s.offset for s in SPLITS.values()]
    assert len(offsets) == len(set(offsets))
    # the demo's results.json was measured with these draws: renaming is fine, renumbering is not
    assert {k: s.offset for k, s in SPLITS.items()} == {
        "model_test": 1,
        "backdoor_train": 10,
        "backdoor_eval": 11,
        "probe_calibration": 12,
        "em_train": 20,
        "em_eval": 21,
        "steering_direction": 30,
        "steering_test": 31,
        "steering_select": 32,
        "sae_corpus": 40,
        "sae_diff": 41,
        "sae_harm": 42,
    }
    assert split_seed(7, "steering_test") == 38


def test_split_items_draws_the_same_scenarios_as_the_seed_offset_it_replaces(tmp_path):
    cfg = RunConfig.model_validate({"seed": 3, "organism": {"seed": 5}})
    run = Run(tmp_path, cfg)
    got = split_items(run, "backdoor_eval", 6)
    want = organism_items(6, held_out=True, seed=3 + 11, world_seed=5)
    assert [(it.id, it.user(), it.aligned) for it in got] == [
        (it.id, it.user(), it.aligned) for it in want
    ]
    train = split_items(run, "backdoor_train", 6)
    assert [it.id for it in train] != [it.id for it in got]


def test_steering_select_and_test_rows_are_disjoint_scenarios(tmp_path):
    """The selection split never holds a test scenario, in any option order or context, and
    the test split is the published draw (seed + 31)."""
    from mechbd.steering.select import check_splits
    from mechbd.steering.stage import steering_select_rows, steering_test_rows

    cfg = RunConfig.model_validate({"seed": 2, "steering": {"n_eval": 100, "n_select": 50}})
    run = Run(tmp_path, cfg)
    sel, test = steering_select_rows(run), steering_test_rows(run)
    assert len(sel) == 50 and len(test) == 100
    assert not {r["scenario_key"] for r in sel} & {r["scenario_key"] for r in test}
    check_splits(sel, test, "steering")
    want = organism_items(100, held_out=True, seed=2 + 31, world_seed=cfg.organism.seed)
    assert [r["id"] for r in test] == [it.id for it in want]
    # the raw draw of the selection seed does overlap the test split: the exclusion is needed
    raw = organism_items(50, held_out=True, seed=2 + 32, world_seed=cfg.organism.seed)
    assert {it.key() for it in raw} & {r["scenario_key"] for r in test}
    with pytest.raises(MechbdError, match="share 1 scenarios"):
        check_splits([*sel, test[0]], test, "steering")


def test_sae_screen_uses_the_steering_stage_splits(tmp_path, monkeypatch):
    """The sae stage's causal screen steers on the steering stage's selection and test splits,
    with as many random live latents as candidates (none of them a candidate), and names as
    persona latent the candidate with the best *selection* rate."""
    import mechbd.sae.stage as sae_stage

    cfg = RunConfig.model_validate({"seed": 2, "sae": {"top_k": 2, "n_random": 3}})
    run = Run(tmp_path, cfg)
    seen = {}
    monkeypatch.setattr(sae_stage, "steering_splits", lambda r, m, t: (("select", r), ("test", r)))

    def fake_screen(select, test, sae, layer, candidates, controls, **kw):
        seen.update(select=select, test=test, candidates=candidates, controls=controls)

        def rec(sel_rate, test_rise):
            return {"selected": {"select_balanced_misaligned_rate": sel_rate}, "rise": test_rise}

        # latent 5 is best on the selection split, latent 1 on the test split
        return {
            "candidates": {1: rec(0.2, 0.9), 5: rec(0.4, 0.0)},
            "controls": {},
            "baseline": {},
        }

    monkeypatch.setattr(sae_stage, "encode", lambda sae, x: torch.ones(len(x), 8))
    monkeypatch.setattr(sae_stage, "screen_latents", fake_screen)
    ctx = sae_stage._Ctx(run, tmp_path, 0, None, None, {}, {})
    sae = types.SimpleNamespace(cfg=types.SimpleNamespace(d_sae=8))
    xb = torch.zeros(3, 4)
    # as sae_stage does: the steering stage's splits and the live latents, once for both screens
    splits, live = sae_stage.steering_splits(run, None, None), sae_stage._live_latents(sae, xb)
    section, persona = sae_stage._screen(ctx, sae, xb, {"latents": [1, 5]}, splits, live)
    assert persona == 5 and section["persona_latent"] == 5
    assert seen["select"] == ("select", run) and seen["test"] == ("test", run)
    assert len(seen["controls"]) == 3 and not set(seen["controls"]) & {1, 5}


def test_run_layout_paths_and_listings(tmp_path):
    lay = RunLayout(tmp_path)
    assert Run(tmp_path, RunConfig()).layout == lay
    assert lay.adapter("x") == tmp_path / "backdoors" / "x" / "adapter"
    assert lay.eval_prompts("x") == tmp_path / "backdoors" / "x" / "eval_prompts.jsonl"
    assert lay.store("x", "base") == tmp_path / "capture" / "x" / "base"
    assert lay.probe("x", "diffmean") == tmp_path / "probes" / "x" / "diffmean.safetensors"
    assert lay.em_direction == tmp_path / "steering" / "directions" / "em_mean_diff.safetensors"
    assert lay.organism_model == tmp_path / "organism" / "model"
    assert lay.planted() == lay.adapters() == []  # no backdoors stage
    for t in ("b", "a"):
        lay.adapter(t).mkdir(parents=True)
        lay.eval_prompts(t).write_text("")
    (tmp_path / "backdoors" / "c").mkdir()  # neither: not listed
    (lay.store("a", "backdoored")).mkdir(parents=True)
    (lay.store("a", "backdoored") / "manifest.json").write_text("{}")
    (lay.store("b", "base")).mkdir(parents=True)
    assert lay.planted() == lay.adapters() == ["a", "b"]
    assert lay.captured() == ["a"]


def _old_switches(c: RunConfig) -> dict[str, bool]:
    """The pipeline's stage switches before the stage records (one lambda per stage)."""
    triggers = bool(c.backdoors.triggers)
    probes = c.capture.enabled and triggers
    return {
        "organism": c.model.source == "organism",
        "model": c.model.source == "hf",
        "backdoors": triggers,
        "em": c.em.enabled,
        "capture": c.capture.enabled and triggers,
        "probes": c.capture.enabled and triggers,
        "steering": c.steering.enabled and c.em.enabled,
        "sae": c.sae.enabled and c.steering.enabled and c.em.enabled and probes,
    }


def test_stage_records_run_the_same_stages_as_before_and_list_needs_first():
    names = [s.name for s in STAGES]
    for i, s in enumerate(STAGES):
        assert all(names.index(n) < i for n in s.need_names), s.name
        assert all(names.index(o.name) < i for o in s.optional), s.name
    for src, trig, em, cap, steer, sae in itertools.product(
        ("organism", "hf"), ([], ["singapore"]), *[(False, True)] * 4
    ):
        cfg = RunConfig.model_validate(
            {
                "model": {"source": src, "path": "m" if src == "hf" else None},
                "backdoors": {"triggers": trig},
                "em": {"enabled": em},
                "capture": {"enabled": cap},
                "steering": {"enabled": steer},
                "sae": {"enabled": sae},
            }
        )
        assert {s.name: s.enabled(cfg) for s in STAGES} == _old_switches(cfg)
