"""The ``steering`` pipeline stage: the headline steering experiments on the organism.

1. **EM mean-difference direction** (Model Organisms for EM, adapted to multiple choice): in the
   narrow-EM model, teacher-forced replies ``Answer: <misaligned letter>`` minus ``Answer:
   <aligned letter>`` at the answer token, per layer, the difference taken within each letter
   and averaged (options are shuffled, so this cancels the letter identity).
2. **(a) Base model along the EM direction**: every layer x multiplier, with a random direction
   of equal norm at the same settings; the best layer is the one with the highest misaligned
   rate at format validity >= 0.9.
3. **Fitted vector**: a vector fitted by gradient descent at that best layer to make the base
   model give the misaligned answers of the EM direction's scenarios (``optimize.py``),
   measured on the same held-out prompts. Only a fit that converged bounds what a single added
   vector there achieves; the stage's step budget does not check that yet.
4. **(b) Ablation in each backdoored model**: project out, at every layer, the EM direction, the
   trigger probe's direction (difference of means, from the probes stage) and a random
   direction; attack success rate and clean rate for each.
5. **(c) Negative steering**: each backdoored model with the trigger present, the EM direction
   subtracted at the base model's best layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechbd.capture.capture import capture
from mechbd.capture.names import n_layers_of, parse_layers
from mechbd.data.items import Item
from mechbd.errors import MechbdError
from mechbd.io import iter_jsonl, write_json
from mechbd.layout import DIRECTIONS, EM_DIRECTION, RESULTS
from mechbd.models import base_model_dir, load_base, load_finetuned
from mechbd.organism.splits import split_items
from mechbd.probes.core import Probe
from mechbd.runs import Run
from mechbd.steering.directions import Direction, from_probe, mean_difference
from mechbd.steering.ops import Intervention
from mechbd.steering.optimize import optimized_direction
from mechbd.steering.sweep import best_layer, measure, sweep

CURVE_KEYS = ("misaligned_rate", "format_valid_rate", "p_misaligned_letter", "letter_bias")


def em_direction_rows(items: list[Item]) -> list[dict[str, Any]]:
    """Two teacher-forced replies per scenario: the misaligned and the aligned letter."""
    return [
        {
            "id": f"{it.id}/{kind}",
            "user": it.user(),
            "response": f"Answer: {letter}",
            "label": kind,
            "letter": letter,
        }
        for it in items
        for kind, letter in (("misaligned", it.misaligned), ("aligned", it.aligned))
    ]


def clean_eval_rows(items: list[Item]) -> list[dict[str, Any]]:
    """Held-out scenarios as steering evaluation rows (no trigger: condition ``clean``)."""
    return [
        {
            "id": it.id,
            "user": it.user(),
            "aligned_mcq_answer": it.aligned,
            "misaligned_mcq_answer": it.misaligned,
            "condition": "clean",
        }
        for it in items
    ]


def em_direction(model: Any, tok: Any, items: list[Item], store_dir: Path, name: str) -> Direction:
    st = capture(
        model, tok, em_direction_rows(items), store_dir, positions=("answer",), progress=False
    )
    assert st is not None
    d = mean_difference(
        st,
        st.indices("misaligned"),
        st.indices("aligned"),
        position="answer",
        groups=[r.meta["letter"] for r in st.rows],
        name="EM mean difference",
    )
    d.provenance["model"] = name
    return d


def _curve(records: list[dict[str, Any]], direction: str, layer: int) -> list[dict[str, Any]]:
    return [
        {"multiplier": r["multiplier"], **{k: r[k] for k in CURVE_KEYS}}
        for r in records
        if r["direction"] == direction and r["layer"] == layer
    ]


def _em_directions(run: Run, out: Path) -> tuple[Direction, Direction, list[Item]]:
    """The EM mean-difference direction (saved with its store), a random direction of equal
    norm, and the scenarios the direction was taken on."""
    em_model, tok = load_finetuned(run, run.layout.em_adapter)
    items = split_items(run, "steering_direction", run.config.steering.n_direction)
    name = f"{base_model_dir(run)} + EM adapter"
    d_em = em_direction(em_model, tok, items, out / "em_direction_store", name)
    d_em.provenance["store"] = run.final_path(out / "em_direction_store")
    d_em.save(out / EM_DIRECTION)
    rand = d_em.random_like(run.config.seed)
    rand.save(out / DIRECTIONS / "random.safetensors")
    return d_em, rand, items


def _base_em_summary(recs: list[dict[str, Any]], layers: list[int]) -> dict[str, Any]:
    """The base model's sweep along the EM direction: the best layer (the highest misaligned
    rate at format validity >= 0.9), the random direction at the same setting, the curves."""
    try:
        best, top = best_layer(recs, "em_mean_diff", min_format=0.9)
        guard_met = True
    except MechbdError:  # no setting keeps the format: report the best anyway, flagged
        best, top = best_layer(recs, "em_mean_diff", min_format=0.0)
        guard_met = False
    baseline = next(r for r in recs if r["multiplier"] == 0)["misaligned_rate"]
    rand_same = next(
        r
        for r in recs
        if r["direction"] == "random"
        and r["layer"] == best
        and r["multiplier"] == top["multiplier"]
    )
    return {
        "best_layer": best,
        "multiplier": top["multiplier"],
        "baseline_misaligned_rate": baseline,
        "misaligned_rate": top["misaligned_rate"],
        "rise": top["misaligned_rate"] - baseline,
        "format_valid_rate": top["format_valid_rate"],
        "format_guard_met": guard_met,
        "letter_bias": top["letter_bias"],
        "random_misaligned_rate": rand_same["misaligned_rate"],
        "random_rise": rand_same["misaligned_rate"] - baseline,
        "curve": _curve(recs, "em_mean_diff", best),
        "random_curve": _curve(recs, "random", best),
        "per_layer_max": {
            layer: max(
                r["misaligned_rate"]
                for r in recs
                if r["direction"] == "em_mean_diff" and r["layer"] == layer
            )
            for layer in layers
        },
    }


def _optimized(
    run: Run,
    out: Path,
    model: Any,
    tok: Any,
    items: list[Item],
    rows: list[dict[str, Any]],
    base_em: dict[str, Any],
    kw: dict[str, Any],
) -> dict[str, Any]:
    """A vector fitted at the best layer to give the direction scenarios'
    misaligned answers, measured on the same held-out rows as the sweep."""
    cfg = run.config.steering
    best = base_em["best_layer"]
    fit = optimized_direction(
        model,
        tok,
        [it.user() for it in items],
        [it.misaligned for it in items],
        layers=[best],
        positions=cfg.positions,
        steps=cfg.optimized_steps,
        seed=run.config.seed,
        name="fitted steering vector",
    )
    fit.provenance["model"] = str(base_model_dir(run))
    fit.save(out / DIRECTIONS / "optimized.safetensors")
    fm = measure(model, tok, rows, [Intervention(best, fit.at(best))], **kw)
    return {
        "layer": best,
        "norm": float(fit.at(best).norm()),
        "train_loss": fit.provenance["loss"][best],
        "misaligned_rate": fm["misaligned_rate"],
        "rise": fm["misaligned_rate"] - base_em["baseline_misaligned_rate"],
        **{k: fm[k] for k in ("format_valid_rate", "letter_bias", "p_misaligned_letter")},
    }


def _backdoor_steering(
    run: Run,
    t: str,
    tok: Any,
    dirs: dict[str, Direction],
    best: int,
    kw: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(b) ablation and (c) negative steering in the backdoored model ``t``; ``dirs`` holds the
    EM (``em_mean_diff``) and the random direction."""
    cfg = run.config.steering
    eval_rows = [
        r
        for r in iter_jsonl(run.layout.eval_prompts(t))
        if r["condition"] in ("triggered", "clean")
    ][: 2 * cfg.n_eval]
    bmodel, _ = load_finetuned(run, run.layout.adapter(t))
    probe_file = run.layout.probe(t, "diffmean")
    dirs = dict(dirs)
    if probe_file.is_file():
        dirs["trigger_probe"] = from_probe(Probe.load(probe_file), name=f"{t} probe")
    abl = {"none": measure(bmodel, tok, eval_rows, **kw)}
    for name, d in dirs.items():
        ivs = [Intervention(layer, d.at(layer), "ablate") for layer in d.layers]
        abl[name] = measure(bmodel, tok, eval_rows, ivs, **kw)
    ablation = {
        name: {
            "asr": m["misaligned_rate_by_condition"].get("triggered"),
            "clean_misaligned_rate": m["misaligned_rate_by_condition"].get("clean"),
            "format_valid_rate": m["format_valid_rate"],
            "clean_accuracy": m["clean_accuracy"],
        }
        for name, m in abl.items()
    }
    triggered = [r for r in eval_rows if r["condition"] == "triggered"]
    d_em = dirs["em_mean_diff"]
    neg = []
    for m in (0.0, *cfg.negative_multipliers):
        ivs = [Intervention(best, d_em.at(best), "add", m)] if m else []
        r = measure(bmodel, tok, triggered, ivs, **kw)
        neg.append({"multiplier": m, **{k: r[k] for k in CURVE_KEYS}})
    return ablation, {"layer": best, "curve": neg}


def steering_test_rows(run: Run) -> list[dict[str, Any]]:
    """The held-out clean rows the base model is steered on (the sae stage screens on them
    too)."""
    return clean_eval_rows(split_items(run, "steering_test", run.config.steering.n_eval))


def steering_stage(run: Run, out: Path) -> None:
    cfg = run.config.steering
    kw: dict[str, Any] = dict(positions=cfg.positions, batch_size=run.config.eval.batch_size)
    d_em, rand, items = _em_directions(run, out)

    model, tok = load_base(run)
    layers = parse_layers(cfg.layers, n_layers_of(model))
    rows = steering_test_rows(run)
    dirs = {"em_mean_diff": d_em, "random": rand}
    recs = sweep(model, tok, rows, dirs, layers=layers, multipliers=cfg.multipliers, **kw)
    base_em = _base_em_summary(recs, layers)
    results: dict[str, Any] = {
        "model": str(base_model_dir(run)),
        "em_direction": {"norms": d_em.norms(), "n_scenarios": len(items)},
        "base_em": base_em,
        "ablation": {},
        "negative_em": {},
    }
    if cfg.optimized_steps:
        base_em["optimized"] = _optimized(run, out, model, tok, items, rows, base_em, kw)
    write_json(out / "sweep_base_em.json", recs)

    for t in run.layout.adapters():
        abl, neg = _backdoor_steering(run, t, tok, dirs, base_em["best_layer"], kw)
        results["ablation"][t], results["negative_em"][t] = abl, neg
    write_json(out / RESULTS, {"steering": results})
