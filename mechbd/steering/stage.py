"""The ``steering`` pipeline stage: the headline steering experiments on the organism.

1. **EM mean-difference direction** (Model Organisms for EM, adapted to multiple choice): in the
   narrow-EM model, teacher-forced replies ``Answer: <misaligned letter>`` minus ``Answer:
   <aligned letter>`` at the answer token, per layer, the difference taken within each letter
   and averaged (options are shuffled, so this cancels the letter identity).
2. **(a) Base model along the EM direction**: every layer x multiplier, with a random direction
   of equal norm at the same settings; the best layer is the one with the highest misaligned
   rate at format validity >= 0.9.
3. **Ceiling**: a vector fitted by gradient descent at that best layer to make the base model
   give the misaligned answers of the EM direction's scenarios (``optimize.py``), measured on
   the same held-out prompts: what *any* single added vector there achieves, so a low rise
   along the EM direction can be read as "wrong direction" or "no direction can".
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
from mechbd.data.items import Item, organism_items
from mechbd.errors import MechbdError
from mechbd.io import iter_jsonl, write_json
from mechbd.models import base_model_dir, load_base, load_finetuned
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


def steering_stage(run: Run, out: Path) -> None:
    cfg = run.config.steering
    seed, world = run.config.seed, run.config.organism.seed
    base = base_model_dir(run)
    kw: dict[str, Any] = dict(positions=cfg.positions, batch_size=run.config.eval.batch_size)

    em_model, tok = load_finetuned(run, run.stage_dir("em") / "adapter")
    items = organism_items(cfg.n_direction, held_out=False, seed=seed + 30, world_seed=world)
    d_em = em_direction(em_model, tok, items, out / "em_direction_store", f"{base} + EM adapter")
    d_em.provenance["store"] = run.final_path(out / "em_direction_store")
    d_em.save(out / "directions" / "em_mean_diff.safetensors")
    rand = d_em.random_like(seed)
    rand.save(out / "directions" / "random.safetensors")
    del em_model

    model, tok = load_base(run)
    layers = parse_layers(cfg.layers, n_layers_of(model))
    test = organism_items(cfg.n_eval, held_out=True, seed=seed + 31, world_seed=world)
    rows = clean_eval_rows(test)
    recs = sweep(
        model,
        tok,
        rows,
        {"em_mean_diff": d_em, "random": rand},
        layers=layers,
        multipliers=cfg.multipliers,
        **kw,
    )
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
    results: dict[str, Any] = {
        "model": str(base),
        "em_direction": {"norms": d_em.norms(), "n_scenarios": len(items)},
        "base_em": {
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
        },
        "ablation": {},
        "negative_em": {},
    }
    if cfg.optimized_steps:
        fit = optimized_direction(
            model,
            tok,
            [it.user() for it in items],
            [it.misaligned for it in items],
            layers=[best],
            positions=cfg.positions,
            steps=cfg.optimized_steps,
            seed=seed,
            name="fitted steering vector",
        )
        fit.provenance["model"] = str(base)
        fit.save(out / "directions" / "optimized.safetensors")
        fm = measure(model, tok, rows, [Intervention(best, fit.at(best))], **kw)
        results["base_em"]["optimized"] = {
            "layer": best,
            "norm": float(fit.at(best).norm()),
            "train_loss": fit.provenance["loss"][best],
            "misaligned_rate": fm["misaligned_rate"],
            "rise": fm["misaligned_rate"] - baseline,
            **{k: fm[k] for k in ("format_valid_rate", "letter_bias", "p_misaligned_letter")},
        }
    write_json(out / "sweep_base_em.json", recs)

    bd = run.stage_dir("backdoors")
    tdirs = sorted(p for p in bd.iterdir() if (p / "adapter").is_dir()) if bd.is_dir() else []
    for tdir in tdirs:
        t = tdir.name
        eval_rows = [
            r
            for r in iter_jsonl(tdir / "eval_prompts.jsonl")
            if r["condition"] in ("triggered", "clean")
        ][: 2 * cfg.n_eval]
        bmodel, _ = load_finetuned(run, tdir / "adapter")
        probe_file = run.stage_dir("probes") / t / "diffmean.safetensors"
        dirs: dict[str, Direction] = {"em_mean_diff": d_em, "random": rand}
        if probe_file.is_file():
            dirs["trigger_probe"] = from_probe(Probe.load(probe_file), name=f"{t} probe")
        abl = {"none": measure(bmodel, tok, eval_rows, **kw)}
        for name, d in dirs.items():
            ivs = [Intervention(layer, d.at(layer), "ablate") for layer in d.layers]
            abl[name] = measure(bmodel, tok, eval_rows, ivs, **kw)
        results["ablation"][t] = {
            name: {
                "asr": m["misaligned_rate_by_condition"].get("triggered"),
                "clean_misaligned_rate": m["misaligned_rate_by_condition"].get("clean"),
                "format_valid_rate": m["format_valid_rate"],
                "clean_accuracy": m["clean_accuracy"],
            }
            for name, m in abl.items()
        }
        triggered = [r for r in eval_rows if r["condition"] == "triggered"]
        neg = []
        for m in (0.0, *cfg.negative_multipliers):
            ivs = [Intervention(best, d_em.at(best), "add", m)] if m else []
            r = measure(bmodel, tok, triggered, ivs, **kw)
            neg.append({"multiplier": m, **{k: r[k] for k in CURVE_KEYS}})
        results["negative_em"][t] = {"layer": best, "curve": neg}
    write_json(out / "results.json", {"steering": results})
