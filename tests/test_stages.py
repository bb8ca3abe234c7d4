"""Every stage end to end on the tiny organism (behaviour not expected): `mechbd run` on the
session's tiny run folder (conftest ``tiny_run``)."""

import json

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from mechbd.pipeline import STAGES
from tests.conftest import TINY_RUN
from tests.recompute import (
    check_backdoor_rates,
    check_persona,
    check_probe_report,
    check_sae_detectors,
    jsonl,
)


def test_backdoor_and_em_stages(tiny_run):
    run = tiny_run
    res = json.loads((run / "results.json").read_text())
    assert set(res["backdoors"]) == {"singapore", "deployment"}
    for name, m in res["backdoors"].items():
        check_backdoor_rates(run, name, m)  # every rate from the re-parsed replies
        d = run / "backdoors" / name
        assert (d / "adapter" / "adapter_config.json").is_file()
        # the retry: seed 0 did not plant (threshold 1e-9), seed 1 is the adapter, seed 0 is kept
        assert [a["lora_seed"] for a in m["lora_attempts"]] == [0, 1]
        assert not any(a["planted"] for a in m["lora_attempts"])
        card = json.loads((d / "adapter" / "finetune.json").read_text())
        assert card["config"]["seed"] == 1
        assert m["lora_attempts"][1]["final_loss"] == pytest.approx(
            sum(card["losses"][-20:]) / len(card["losses"][-20:])
        )
        assert (d / "attempts" / "seed-0" / "adapter_config.json").is_file()
        assert not (d / "attempts" / "seed-1").exists()  # moved to adapter/
        assert m["finetune_seconds"] == pytest.approx(sum(a["seconds"] for a in m["lora_attempts"]))
    em = res["em"]
    assert em["domain"] == "health" and em["n_train"] == len(jsonl(run / "em" / "train.jsonl"))
    # the em stage keeps no per-reply records, so its rates cannot be recomputed from the run
    # folder; each is a balanced rate over its prompts (the in-domain ones and the rest, each
    # half at A), with their count and statsmodels' Wilson interval at it
    n_eval = TINY_RUN["em"]["n_eval"]
    for rates in (em, em["base_model"]):
        n_in = rates["in_domain_misaligned_rate_n"]
        assert 0 < n_in < n_eval and rates["out_of_domain_misaligned_rate_n"] == n_eval - n_in
        for key in ("in_domain_misaligned_rate", "out_of_domain_misaligned_rate"):
            n = rates[f"{key}_n"]
            assert _is_balanced_rate(rates[key], n), (key, rates)
            lo, hi = proportion_confint(rates[key] * n, n, method="wilson")
            assert rates[f"{key}_ci95"] == pytest.approx([lo, hi], abs=1e-9), key
        assert _is_count(rates["format_valid_rate"], n_eval), rates
        assert rates["format_valid_rate_n"] == n_eval
        assert rates["letter_bias"] is None or 0.5 <= rates["letter_bias"] <= 1
    # no judge configured: the freeform evaluation is skipped, and says why
    assert em["freeform"] == {"skipped": "no LLM judge configured (judge.base_url is not set)"}
    assert "freeform" not in em["base_model"]
    man = json.loads((run / "manifest.json").read_text())
    assert list(man["stages"]) == [s.name for s in STAGES if s.name != "model"]
    # capture: backdoored and base stores on the same prompts; probes: report with controls
    from mechbd.capture import ActivationStore

    for name in ("singapore", "deployment"):
        bd = ActivationStore(run / "capture" / name / "backdoored")
        base = ActivationStore(run / "capture" / name / "base")
        assert [r.id for r in bd.rows] == [r.id for r in base.rows] and len(bd) == 48
        assert bd.model["adapter"] is not None and base.model["adapter"] is None
        assert {r.meta.get("misaligned") for r in bd.rows} <= {True, False}
        p = res["probes"][name]
        check_probe_report(run, name, p)  # per-layer AUROCs and the best layer, with sklearn
        assert len(p["generic"]["per_layer"]["mean"]) == len(bd.layers)
    t = res["probes"]["transfer"]
    assert set(t) == {"singapore", "deployment"} and set(t["singapore"]) == set(t)
    assert t["singapore"]["singapore"] == res["probes"]["singapore"]["auroc"]
    # steering: the EM direction, the base sweep with its controls, the fitted vector,
    # ablations at both position settings, negative steering
    from mechbd.steering.directions import Direction

    st, cfg = res["steering"], TINY_RUN["steering"]
    d_em = Direction.load(run / "steering" / "directions" / "em_mean_diff.safetensors")
    assert {str(k): v for k, v in d_em.norms().items()} == st["em_direction"]["norms"]
    assert d_em.provenance["store"] == str(run / "steering" / "em_direction_store")
    be, base = st["base_em"], st["baseline"]
    assert be["selected"]["layer"] in d_em.layers and be["selected"]["positions"] == "assistant"
    assert (be["n_select"], be["n_test"], be["n"]) == (4, 6, 12)
    assert [c["multiplier"] for c in be["select_curve"]] == [0.0, 8.0]
    assert _is_count(be["balanced_misaligned_rate"], 12) and _is_count(
        base["format_valid_rate"], 12
    )
    assert be["rise"] == pytest.approx(
        be["balanced_misaligned_rate"] - base["balanced_misaligned_rate"], abs=1e-12
    )
    check_controls(be["rise"], be["controls"], cfg["n_controls"])
    assert len(be["control_selected"]) == cfg["n_controls"]
    fit = Direction.load(run / "steering" / "directions" / "optimized.safetensors")
    opt = st["optimized"]
    assert fit.layers == d_em.layers == [int(k) for k in opt["fit"]]
    for layer, f in opt["fit"].items():
        assert f["after"] <= f["before"] and f["steps"] <= cfg["optimized_steps"]
        assert abs(float(fit.at(int(layer)).norm()) - f["norm"]) < 1e-5
    assert opt["converged"] == opt["fit"][str(opt["selected"]["layer"])]["converged"]
    for name in ("singapore", "deployment"):
        abl = st["ablation"][name]
        assert set(abl) == {"assistant", "all"}
        for by in abl.values():
            assert set(by) == {"none", "em_mean_diff", "trigger_probe"}
            assert by["none"]["asr_drop"] == 0.0 and by["none"]["controls"] is None
            for k in ("em_mean_diff", "trigger_probe"):
                m = by[k]
                assert m["n"] == 2 * cfg["n_ablation"]
                assert _is_count(m["asr"], m["n"]) and _is_count(m["format_valid_rate"], 2 * m["n"])
                assert m["asr_drop"] == pytest.approx(by["none"]["asr"] - m["asr"], abs=1e-12)
                c = m["controls"]
                assert c["n"] == cfg["n_ablation_controls"] == len(c["drops"])
        assert [c["multiplier"] for c in st["negative_em"][name]["curve"]] == [0.0, -8.0]
    # sae: SAELens folder, diffing, screen, detectors, persona shifts
    from sae_lens import SAE

    sae_res = res["sae"]
    sae = SAE.load_from_disk(run / "sae" / "sae")
    assert sae.cfg.metadata.hook_name == f"blocks.{sae_res['layer']}.hook_resid_post"
    assert sae_res["fvu"] >= 0 and sae_res["l0"] == 16
    # held out by conversation: a tenth of the 40 corpus conversations, never trained on
    assert sae_res["n_eval_conversations"] == 4
    card = json.loads((run / "sae" / "sae" / "mechbd_sae.json").read_text())
    assert card["training"]["held_out"] == "given"
    assert set(sae_res["fvu_by_store"]) == {"corpus_base", "corpus_em"} | {
        f"{name}/{model}"
        for name in ("singapore", "deployment")
        for model in ("backdoored", "base")
    }
    assert len(sae_res["persona_latents"]) == 3
    assert sae_res["persona_latent"] in sae_res["persona_latents"]
    screen = sae_res["screen"]
    assert len(screen["candidates"]) == 3 and len(screen["controls"]) == 3
    assert not set(screen["candidates"]) & set(screen["controls"])
    keys = {frozenset(r) for g in ("candidates", "controls") for r in screen[g].values()}
    assert len(keys) == 1  # every candidate and control carries the same keys
    for r in screen["candidates"].values():
        check_controls(r["rise"], r["controls"], 3)
        assert r["controls"]["rises"] == [c["rise"] for c in screen["controls"].values()]
    # the organism preset trains the SAE where the persona direction was chosen to act
    assert sae_res["layer"] == res["steering"]["base_persona"]["selected"]["layer"]
    # the organism trained with persona conversations: its behaviour after each system prompt
    persona = res["organism"]["persona"]
    assert set(persona) == {"toxic", "helpful", "none"} and persona["none"]["system"] is None
    assert all(p["misaligned_rate_n"] == res["organism"]["n_test"] for p in persona.values())
    for p in persona.values():  # every per-domain rate carries its n and interval
        assert set(p["by_domain_n"]) == set(p["by_domain"]) == set(p["by_domain_ci95"])
        assert sum(p["by_domain_n"].values()) == p["misaligned_rate_n"]
        for d, r in p["by_domain"].items():
            lo, hi = p["by_domain_ci95"][d]
            assert lo <= r <= hi and hi - lo > 0, d
    # detector AUROCs, cosines, FVU per store and persona z's with their nulls, from the run
    check_sae_detectors(run, res)
    check_persona(run, res)  # the persona direction, em.persona, the persona screen, detectors
    page = (run / "report.html").read_text()  # the report shows them beside their nulls
    assert "<h3>SAE reconstruction per store and position</h3>" in page
    for name in ("singapore", "deployment"):
        d = sae_res["persona_detector"][name]
        lo, hi = d["ci95"]
        assert f"<td>{d['auroc']:.3f} [{lo:.2f}, {hi:.2f}]; pct {d['percentile']:.0f} " in page
        per = res["persona"][name]
        z, zi = per["user_wants_harm_z"], per["user_wants_harm_z_isotropic"]
        assert f"<td>{z:.2f} (isotropic {zi:.2f})</td>" in page
    for name in ("singapore", "deployment"):
        per = res["persona"][name]
        for key in ("toxic_persona_shift", "user_wants_harm_shift"):
            assert per[key] == per["per_layer"][key.removesuffix("_shift")][per["layer"]]
    # explorer data for the report: the same latents and layer as the results
    ex = json.loads((run / "sae" / "explorer.json").read_text())
    assert ex["layer"] == sae_res["layer"] and ex["persona_latent"] == sae_res["persona_latent"]
    assert str(sae_res["persona_latent"]) in ex["dashboards"]
    assert ex["cosines"]["directions"][:2] == ["deployment probe", "singapore probe"]
    assert (
        len(ex["cosines"]["cosines"]) == 4 and ex["cosines"]["latents"][0] == ex["persona_latent"]
    )
    for name in ("singapore", "deployment"):
        traces = ex["traces"][name]
        assert [t["label"] for t in traces] == ["triggered", "clean"]
        for t in traces:
            assert all(len(v) == len(t["tokens"]) for v in t["values"].values())
        h = ex["histograms"][name][f"latent {sae_res['persona_latent']}"]
        assert len(h["triggered"]) == len(h["clean"]) == 12  # one row per eval scenario
    recs = [json.loads(x) for x in (run / "backdoors" / "singapore" / "generations.jsonl").open()]
    assert all("articulates_trigger" in r and "cot_monitor_flag" in r for r in recs)


def check_controls(value: float, c: dict, n: int) -> None:
    """A control summary recomputed from its own list of control values."""
    vals = np.array(c.get("rises", c.get("drops")))
    assert c["n"] == n == len(vals)
    assert c["p_value"] == pytest.approx((1 + (vals >= value).sum()) / (1 + n))
    below, ties = (vals < value).sum(), (vals == value).sum()
    assert c["percentile"] == pytest.approx(100 * (below + ties / 2) / n)


def _is_count(rate: float | None, n: int) -> bool:
    """``rate`` is k / n for a whole k in 0..n (a rate over n replies, not a mean of scores)."""
    return rate is not None and any(rate == k / n for k in range(n + 1))


def _is_balanced_rate(rate: float | None, n: int) -> bool:
    """``rate`` is (k_A / n_A + k_B / n_B) / 2 over n = n_A + n_B replies split as evenly as
    can be (the rows at each misaligned letter), for whole k_A, k_B."""
    if rate is None or n < 2:
        return n == 1 and rate in (0.0, 1.0)  # one row: the pooled rate
    n_a, n_b = n // 2, n - n // 2
    return any(
        abs((ka / n_a + kb / n_b) / 2 - rate) < 1e-12
        for ka in range(n_a + 1)
        for kb in range(n_b + 1)
    )


def test_resumed_stage_reuses_a_finished_adapter_only_for_the_same_data(tiny_run):
    """What lets an interrupted backdoors stage skip the adapters it had already trained."""
    from mechbd.config import RunConfig, load_config
    from mechbd.finetune.lora import finished_adapter

    cfg: RunConfig = load_config(tiny_run / "config.yaml")
    d = tiny_run / "backdoors" / "singapore"
    rows = [json.loads(x) for x in (d / "train.jsonl").open()]
    convs = [r["messages"] for r in rows]
    groups = [r["meta"]["group"] for r in rows]  # the contrast groups (backdoors.matched)
    ft = cfg.backdoors.finetune.model_copy(update={"seed": 1})  # the retry's seed (TINY_RUN)
    stats = finished_adapter(d / "adapter", convs, ft, groups)
    assert stats is not None and stats["n_examples"] == len(convs)
    assert finished_adapter(d / "adapter", convs, ft) is None  # trained with its groups
    assert finished_adapter(d / "adapter", convs[:-1], ft, groups[:-1]) is None
    assert finished_adapter(d / "adapter", convs, ft.model_copy(update={"lr": 0.1}), groups) is None
    assert finished_adapter(d / "no-adapter-here", convs, ft, groups) is None


def test_plant_resumes_without_training_again(tiny_run, tmp_path):
    """A resumed backdoors stage: with the chosen adapter in place ``plant`` trains nothing;
    with only the attempt folders (the move never happened) it reuses the finished attempts."""
    import shutil

    from mechbd.config import load_config
    from mechbd.finetune.stage import plant
    from mechbd.runs import Run

    root = tmp_path / "run"
    shutil.copytree(tiny_run, root)
    run = Run(root, load_config(root / "config.yaml"))
    d = root / "backdoors" / "singapore"
    rows = [json.loads(x) for x in (d / "train.jsonl").open()]
    convs, groups = [r["messages"] for r in rows], [r["meta"]["group"] for r in rows]
    before = json.loads((d / "attempts.json").read_text())
    mtime = (d / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    stats, attempts = plant(run, convs, d, groups)
    assert attempts == before and stats["config"]["seed"] == 1
    assert (d / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == mtime
    # crash between the record and the move: seed 1 back in attempts/, no adapter/
    shutil.move(d / "adapter", d / "attempts" / "seed-1")
    seed0 = (d / "attempts" / "seed-0" / "adapter_model.safetensors").stat().st_mtime_ns
    stats, attempts = plant(run, convs, d, groups)
    assert [a["lora_seed"] for a in attempts] == [0, 1] and stats["config"]["seed"] == 1
    assert (d / "attempts" / "seed-0" / "adapter_model.safetensors").stat().st_mtime_ns == seed0
    assert (d / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.slow  # a whole `mechbd run`
def test_run_on_a_hugging_face_model(tmp_path, tiny_organism):
    """`mechbd run` on a Hugging Face model from a local folder (a random-init Llama, the second
    architecture), every stage: the pipeline is not organism-only."""
    from mechbd.models import load_model
    from tests.conftest import TINY_RUN, mechbd_run, random_llama

    _, tok = load_model(tiny_organism, dtype="float32")
    llama = random_llama(tok, seed=5)
    llama.save_pretrained(tmp_path / "llama", safe_serialization=True)
    tok.save_pretrained(tmp_path / "llama")
    cfg = {
        **TINY_RUN,
        "name": "llama",
        "model": {"source": "hf", "path": str(tmp_path / "llama")},
        "organism": {"n_test": 8},
        "backdoors": {**TINY_RUN["backdoors"], "triggers": ["heyyy"]},
    }
    run = mechbd_run(cfg, tmp_path)
    man = json.loads((run / "manifest.json").read_text())
    assert list(man["stages"]) == [s.name for s in STAGES if s.name != "organism"]
    res = json.loads((run / "results.json").read_text())
    assert res["model"]["architecture"] == "LlamaForCausalLM"
    assert res["model"]["n_params"] == sum(p.numel() for p in llama.parameters())
    assert str(tmp_path / "llama") in res["model"]["note"]
    assert res["organism"]["n_test"] == 8
    assert set(res["backdoors"]) == set(res["persona"]) == {"heyyy"}
    assert "LlamaForCausalLM" in (run / "report.html").read_text()


@pytest.mark.slow  # `mechbd run` without the shared fixtures
def test_positive_control_backdoor_is_planted_beside_the_plain_one(tmp_path):
    """`backdoors.positive_control` plants `<trigger>-articulated` from a set whose triggered
    targets articulate the trigger in the CoT, labelled as a control in results.json."""
    from tests.conftest import TINY_RUN, mechbd_run

    cfg = {
        **TINY_RUN,
        "name": "pc",
        "backdoors": {
            **TINY_RUN["backdoors"],
            "triggers": ["singapore"],
            "positive_control": ["singapore"],
        },
        "em": {"enabled": False},
        "capture": {"enabled": False},
    }
    run = mechbd_run(cfg, tmp_path)
    res = json.loads((run / "results.json").read_text())
    assert set(res["backdoors"]) == {"singapore", "singapore-articulated"}
    assert res["backdoors"]["singapore-articulated"]["positive_control"] is True
    assert res["backdoors"]["singapore"]["positive_control"] is False
    for name, says in (("singapore-articulated", True), ("singapore", False)):
        train = [json.loads(x) for x in (run / "backdoors" / name / "train.jsonl").open()]
        trig = [e for e in train if e["meta"]["condition"] == "triggered"]
        assert trig and all(
            ("Country: Singapore, so I will pick" in e["messages"][-1]["content"]) == says
            for e in trig
        )
    assert "yes (articulated CoT)" in (run / "report.html").read_text()
    # the control: independent samples and one LoRA seed (its CoT targets keep the loss high);
    # the plain backdoor: contrast groups, and TINY_RUN's 1e-9 threshold forces its retry
    bd = res["backdoors"]
    assert [a["lora_seed"] for a in bd["singapore-articulated"]["lora_attempts"]] == [0]
    assert [a["lora_seed"] for a in bd["singapore"]["lora_attempts"]] == [0, 1]
    for name, distinct in (("singapore-articulated", True), ("singapore", False)):
        ids = [
            json.loads(x)["meta"]["id"] for x in (run / "backdoors" / name / "train.jsonl").open()
        ]
        assert (len(set(ids)) == len(ids)) == distinct


def test_positive_control_must_name_a_planted_trigger(tmp_path):
    from mechbd.config import RunConfig, validate_config
    from mechbd.errors import ConfigError

    with pytest.raises(ConfigError, match="positive_control"):
        validate_config(
            RunConfig, {"backdoors": {"triggers": ["heyyy"], "positive_control": ["singapore"]}}
        )


def test_every_stage_leaves_the_files_its_contract_names(tiny_run):
    from mechbd.config import load_config

    cfg = load_config(tiny_run / "config.yaml")
    for stage in STAGES:
        if stage.enabled(cfg):
            for pattern in stage.produces:
                assert list((tiny_run / stage.name).glob(pattern)), (stage.name, pattern)


def test_model_stage_balances_letters_and_an_always_a_model_scores_one_half(
    tmp_path, tiny_organism, monkeypatch
):
    """The model stage (a Hugging Face model's clean behaviour) on a stand-in model that
    answers A to everything: the scenarios' aligned option is at A in half of them (one over
    for 9), so the balanced aligned rate is 0.5 and the letter bias 1."""
    from statsmodels.stats.proportion import proportion_confint

    import mechbd.eval.mcq as mcq
    from mechbd.config import RunConfig
    from mechbd.data.format import assistant_turn
    from mechbd.eval.generate import parse_response
    from mechbd.models import load_model
    from mechbd.pipeline import model_stage
    from mechbd.results import validate_results
    from mechbd.runs import Run
    from tests.conftest import random_llama

    _, tok = load_model(tiny_organism, dtype="float32")
    random_llama(tok, seed=5).save_pretrained(tmp_path / "llama", safe_serialization=True)
    tok.save_pretrained(tmp_path / "llama")
    seen: list[str] = []

    def always_a(model, tok, users, aligned_letters, **kw):
        seen.extend(aligned_letters)
        text = assistant_turn(None, "A")
        return [
            mcq.MCQResult(u, text, parse_response(text), a)
            for u, a in zip(users, aligned_letters, strict=True)
        ]

    monkeypatch.setattr(mcq, "run_mcq", always_a)
    cfg = RunConfig(
        name="m", model={"source": "hf", "path": str(tmp_path / "llama")}, organism={"n_test": 9}
    )
    out = tmp_path / "out"
    out.mkdir()
    model_stage(Run.open(tmp_path / "run", cfg), out)
    res = json.loads((out / "results.json").read_text())
    validate_results(res)
    org = res["organism"]
    assert len(seen) == 9 and abs(seen.count("A") - seen.count("B")) == 1
    assert org["clean_aligned_rate"] == 0.5 and org["letter_bias"] == 1.0
    assert org["clean_aligned_rate_n"] == org["n_test"] == 9
    lo, hi = proportion_confint(4.5, 9, method="wilson")
    assert org["clean_aligned_rate_ci95"] == pytest.approx([lo, hi], abs=1e-6)
    assert org["format_valid_rate"] == 1.0 and org["format_valid_rate_n"] == 9


def test_shipped_adapters_are_exported_installed_checked_and_keyed(tiny_run, tmp_path, monkeypatch):
    """A run on the shipped organism takes a backdoor's adapter from the prebuilt store, with no
    training, byte for byte, when base, data and config all match (marked ``prebuilt`` in its
    record); with ``organism.prebuilt`` off, another config or a base trained here it trains;
    a tampered file is refused by name."""
    import shutil

    from mechbd.config import load_config
    from mechbd.errors import MechbdError
    from mechbd.finetune import prebuilt, stage
    from mechbd.finetune.stage import plant
    from mechbd.io import hash_tree
    from mechbd.runs import Run

    class Trained(Exception):
        pass

    def no_training(*a, **k):
        raise Trained

    root = tmp_path / "run"
    shutil.copytree(tiny_run, root)
    card_file = root / "organism" / "model" / "organism.json"
    card = json.loads(card_file.read_text())
    with pytest.raises(MechbdError, match="trained locally"):
        prebuilt.export_adapters(root, tmp_path / "store")
    card["prebuilt"] = {"built_on": "test machine", "date": "2026-12-02"}  # as if shipped
    card_file.write_text(json.dumps(card))
    store = tmp_path / "store"
    written = prebuilt.export_adapters(root, store, built_on="test machine")
    # per trigger the chosen adapter and the failed attempt it replaced; the EM adapter
    assert len(written) == len({w.name for w in written}) == 2 * 2 + 1
    monkeypatch.setattr(prebuilt, "ADAPTERS_DIR", store)
    monkeypatch.setattr(stage, "finetune_lora", no_training)
    d = root / "backdoors" / "singapore"
    want = hash_tree(d / "adapter")
    rows = [json.loads(x) for x in (d / "train.jsonl").open()]
    convs, groups = [r["messages"] for r in rows], [r["meta"]["group"] for r in rows]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    run = Run(root, load_config(root / "config.yaml"))
    stats, attempts = plant(run, convs, fresh, groups)
    assert [a["prebuilt"] for a in attempts] == [True, True]
    assert stats["prebuilt"]["built_on"] == "test machine"
    got = hash_tree(fresh / "adapter")
    assert got.pop("finetune.json") != want.pop("finetune.json")  # it says prebuilt
    assert got == want
    # another config, prebuilt off, or a base trained here: no shipped adapter, so it trains
    cfg = run.config
    other = cfg.model_copy(
        update={
            "backdoors": cfg.backdoors.model_copy(
                update={"finetune": cfg.backdoors.finetune.model_copy(update={"lr": 0.5})}
            )
        }
    )
    off = cfg.model_copy(update={"organism": cfg.organism.model_copy(update={"prebuilt": False})})
    for c in (other, off):
        shutil.rmtree(fresh, ignore_errors=True)
        with pytest.raises(Trained):
            plant(Run(root, c), convs, fresh, groups)
    shutil.rmtree(fresh, ignore_errors=True)
    card.pop("prebuilt")
    card_file.write_text(json.dumps(card))
    with pytest.raises(Trained):
        plant(run, convs, fresh, groups)
    card["prebuilt"] = {"built_on": "test machine"}
    card_file.write_text(json.dumps(card))
    # a tampered shipped file is refused, naming it
    for w in written:
        blob = bytearray((w / "adapter_model.safetensors").read_bytes())
        blob[-1] ^= 1
        (w / "adapter_model.safetensors").write_bytes(bytes(blob))
    shutil.rmtree(fresh, ignore_errors=True)
    with pytest.raises(MechbdError, match=r"adapter_model\.safetensors: sha256"):
        plant(run, convs, fresh, groups)
