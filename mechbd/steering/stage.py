"""The ``steering`` pipeline stage: the headline steering experiments on the organism.

Every measurement is counterbalanced (each scenario in both option orders) and scored with the
balanced misaligned rate; every chosen setting is chosen on the selection split
(``steering_select``) and reported on a disjoint test split (``steering_test``); see
``mechbd.steering.select``.

1. **EM mean-difference direction** (Model Organisms for EM, adapted to multiple choice): in the
   narrow-EM model, teacher-forced replies ``Answer: <misaligned letter>`` minus ``Answer:
   <aligned letter>`` at the answer token, per layer, the difference taken within each letter
   and averaged (this cancels the letter identity).
2. **(a) Base model along the EM direction**: layer x multiplier chosen on the selection split
   (highest balanced rate at format validity >= ``steering.min_format``), read on the test
   split, against ``steering.n_controls`` seeded equal-norm random directions, each chosen over
   the same grid on the same split and read on the same test split.
3. **Fitted vector**: at every layer, a vector fitted to convergence (``optimize.py``: the
   stopping rule and whether it converged are recorded) on counterbalanced scenarios of the
   direction split, its layer and scale chosen on the selection split, read on the test split.
4. **(b) Ablation in each backdoored model**: project out, at every layer, the EM direction and
   the trigger probe's direction (difference of means, from the probes stage), at every
   position (``all``: where the trigger is read) and from the assistant turn on
   (``assistant``), against ``steering.n_ablation_controls`` random directions.
5. **(c) Negative steering**: each backdoored model with the trigger present, the EM direction
   subtracted at the base model's chosen layer.
6. **Persona direction** (Persona Vectors; ``mechbd.steering.persona``): in the base model, the
   toxic-persona system prompts minus the helpful ones on the direction split's requests, last
   prompt token, thinking off. The base model without a system prompt steered along it
   (``base_persona``: chosen and read as in 2, over ``steering.persona_multipliers``, with its
   own random controls), and in the EM model (``em.persona``): its shift along the direction and
   the change in its misaligned rate when the direction is ablated at every layer and position,
   against random directions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechbd.capture.capture import capture
from mechbd.capture.names import n_layers_of, parse_layers
from mechbd.data.items import Item
from mechbd.errors import MechbdError
from mechbd.eval.mcq import both_orders
from mechbd.io import iter_jsonl, write_json
from mechbd.layout import DIRECTIONS, EM_DIRECTION, PERSONA_DIRECTION, RESULTS
from mechbd.models import base_model_dir, load_base, load_finetuned
from mechbd.organism.splits import disjoint_items, split_items
from mechbd.probes.core import Probe
from mechbd.runs import Run
from mechbd.stats import drop_controls
from mechbd.steering.directions import Direction, from_probe, mean_difference
from mechbd.steering.ops import Intervention
from mechbd.steering.optimize import optimized_direction
from mechbd.steering.persona import em_ablation, em_shift, persona_direction, persona_systems
from mechbd.steering.select import (
    CURVE_KEYS,
    Counterbalanced,
    Outcome,
    additive,
    baseline_record,
    check_splits,
    rise,
    select_and_test,
    with_controls,
)


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
            "scenario_key": it.key(),
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


def _em_directions(run: Run, out: Path) -> tuple[Direction, list[Item]]:
    """The EM mean-difference direction (saved with its store) and the scenarios it was taken
    on."""
    em_model, tok = load_finetuned(run, run.layout.em_adapter)
    items = split_items(run, "steering_direction", run.config.steering.n_direction)
    name = f"{base_model_dir(run)} + EM adapter"
    d_em = em_direction(em_model, tok, items, out / "em_direction_store", name)
    d_em.provenance["store"] = run.final_path(out / "em_direction_store")
    d_em.save(out / EM_DIRECTION)
    return d_em, items


def random_controls(d: Direction, n: int, seed: int) -> list[Direction]:
    """``n`` seeded random directions with ``d``'s norm at every layer (seeds ``seed`` ..
    ``seed + n - 1``)."""
    return [d.random_like(seed + i) for i in range(n)]


def _base_along(
    run: Run,
    d_em: Direction,
    select: Counterbalanced,
    test: Counterbalanced,
    layers: list[int],
    multipliers: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """The base model along ``d_em`` (the EM or the persona direction), chosen on the selection
    split and read on the test split, against ``steering.n_controls`` random directions of its
    norms maximised the same way (over ``multipliers``, default ``steering.multipliers``)."""
    cfg = run.config.steering
    kw: dict[str, Any] = dict(
        layers=layers,
        multipliers=multipliers or cfg.multipliers,
        positions=cfg.positions,
        min_format=cfg.min_format,
        max_letter_bias=cfg.max_letter_bias,
        seed=run.config.seed,
    )
    rec = select_and_test(select, test, additive(d_em), keep_grid=True, **kw)
    ctrl = [
        select_and_test(select, test, additive(r), **kw)
        for r in random_controls(d_em, cfg.n_controls, run.config.seed + 1)
    ]
    rec = with_controls(rec, ctrl)
    rec["per_layer_max"] = {
        str(layer): max(
            p["balanced_misaligned_rate"] for p in rec["select_grid"] if p["layer"] == layer
        )
        for layer in layers
    }
    rec["control_selected"] = [c["selected"] for c in ctrl]
    return rec


def _persona_direction(run: Run, out: Path, model: Any, tok: Any, items: list[Item]) -> Direction:
    """The persona direction the Persona Vectors way in the base model (toxic minus helpful
    system prompts on the direction split's requests), saved with its store."""
    d = persona_direction(
        model,
        tok,
        items,
        persona_systems(run),
        out / "persona_direction_store",
        str(base_model_dir(run)),
        batch_size=run.config.capture.batch_size,
        position=run.config.steering.persona_position,
    )
    d.provenance["store"] = run.final_path(out / "persona_direction_store")
    d.save(out / PERSONA_DIRECTION)
    return d


def _em_persona(
    run: Run, out: Path, base_model: Any, tok: Any, d: Direction, layer: int
) -> dict[str, Any]:
    """``em.persona``: the EM model's shift along the persona direction at ``layer`` (the
    base-model steering's choice) on the steering test split's prompts, and the persona
    direction ablated at every layer and position while the EM model answers the test split,
    against ``steering.n_ablation_controls`` random directions."""
    cfg = run.config.steering
    em_model, _ = load_finetuned(run, run.layout.em_adapter)
    rows = steering_test_rows(run)
    seed = run.config.seed
    shift = em_shift(
        em_model,
        base_model,
        tok,
        rows,
        d,
        layer,
        out,
        seed=seed,
        batch_size=run.config.capture.batch_size,
    )
    split = Counterbalanced.of(
        em_model, tok, rows, positions="all", batch_size=run.config.eval.batch_size
    )
    controls = random_controls(d, cfg.n_ablation_controls, seed + 2000)
    return {**shift, **em_ablation(split, d, controls, seed=seed)}


def _optimized(
    run: Run,
    out: Path,
    model: Any,
    tok: Any,
    select: Counterbalanced,
    test: Counterbalanced,
    layers: list[int],
) -> dict[str, Any]:
    """A vector fitted at every layer on counterbalanced direction scenarios (target: the
    misaligned letter), its layer and scale chosen on the selection split, read on the test
    split."""
    cfg = run.config.steering
    fit_rows = both_orders(clean_eval_rows(split_items(run, "steering_direction", cfg.n_fit)))
    fit = optimized_direction(
        model,
        tok,
        [r["user"] for r in fit_rows],
        [r["misaligned_mcq_answer"] for r in fit_rows],
        layers=layers,
        positions=cfg.positions,
        max_steps=cfg.optimized_steps,
        batch_size=run.config.eval.batch_size,
        name="fitted steering vector",
    )
    fit.provenance["model"] = str(base_model_dir(run))
    fit.save(out / DIRECTIONS / "optimized.safetensors")
    rec = select_and_test(
        select,
        test,
        additive(fit),
        layers=layers,
        multipliers=(0.0, *cfg.optimized_scales),
        positions=cfg.positions,
        min_format=cfg.min_format,
        max_letter_bias=cfg.max_letter_bias,
        seed=run.config.seed,
    )
    fits = fit.provenance["fit"]
    rec["fit"] = {
        str(layer): {**fits[layer], "norm": float(fit.at(layer).norm())} for layer in layers
    }
    rec["n_fit"] = len(fit_rows) // 2
    chosen = fits[rec["selected"]["layer"]]
    rec["converged"] = bool(chosen["converged"])
    return rec


def _ablate(
    run: Run, split: Counterbalanced, dirs: dict[str, Direction], controls: list[Direction]
) -> dict[str, Any]:
    """Each direction projected out at every one of its layers, on one positions setting:
    ASR (balanced, triggered rows) and its drop from no ablation with a paired bootstrap over
    scenarios, the clean misaligned rate, format validity; the drops of ``controls``."""
    seed = run.config.seed
    base = split.measure()

    def one(d: Direction) -> dict[str, Any]:
        o = split.measure([Intervention(layer, d.at(layer), "ablate") for layer in d.layers])
        return _ablation_record(base, o, seed)

    out: dict[str, Any] = {"none": _ablation_record(base, base, seed)}
    ctrl = [one(c) for c in controls]
    for name, d in dirs.items():
        rec = one(d)
        rec["controls"] = drop_controls(rec["asr_drop"], [c["asr_drop"] for c in ctrl])
        out[name] = rec
    return out


def _ablation_record(base: Outcome, o: Outcome, seed: int) -> dict[str, Any]:
    t, c, both = o.summary("triggered"), o.summary("clean"), o.summary()
    drop = rise(o, base, condition="triggered", seed=seed)  # none minus ablated
    return {
        "asr": t["balanced_misaligned_rate"],
        "asr_ci95": t["ci95"],
        "asr_drop": drop["diff"],
        "asr_drop_ci95": drop["ci95"],
        "clean_misaligned_rate": c["balanced_misaligned_rate"],
        "clean_misaligned_rate_ci95": c["ci95"],
        "letter_bias": both["letter_bias"],
        "format_valid_rate": both["format_valid_rate"],
        "n": t["n"],
        "n_scenarios": t["n_scenarios"],
        "controls": None,
    }


def _backdoor_steering(
    run: Run, t: str, tok: Any, d_em: Direction, best: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(b) ablation at every position and from the assistant turn, and (c) negative steering,
    in the backdoored model ``t``."""
    cfg = run.config.steering
    rows = list(iter_jsonl(run.layout.eval_prompts(t)))
    eval_rows = [
        r
        for cond in ("triggered", "clean")
        for r in [x for x in rows if x["condition"] == cond][: cfg.n_ablation]
    ]
    bmodel, _ = load_finetuned(run, run.layout.adapter(t))
    dirs = {"em_mean_diff": d_em}
    probe_file = run.layout.probe(t, "diffmean")
    if probe_file.is_file():
        dirs["trigger_probe"] = from_probe(Probe.load(probe_file), name=f"{t} probe")
    controls = random_controls(d_em, cfg.n_ablation_controls, run.config.seed + 1000)
    bs = run.config.eval.batch_size
    ablation = {}
    for positions in ("assistant", "all"):
        split = Counterbalanced.of(bmodel, tok, eval_rows, positions=positions, batch_size=bs)
        ablation[positions] = _ablate(run, split, dirs, controls)
    triggered = Counterbalanced.of(
        bmodel,
        tok,
        [r for r in eval_rows if r["condition"] == "triggered"],
        positions=cfg.positions,
        batch_size=bs,
    )
    base = triggered.measure()
    curve = []
    for m in (0.0, *cfg.negative_multipliers):
        o = triggered.measure(additive(d_em)(best, m))
        s, r = o.summary(), rise(base, o, seed=run.config.seed)
        curve.append(
            {
                "multiplier": m,
                **{k: s[k] for k in CURVE_KEYS},
                "ci95": s["ci95"],
                "change": r["diff"],
                "change_ci95": r["ci95"],
            }
        )
    return ablation, {"layer": best, "n_scenarios": triggered.n_scenarios, "curve": curve}


def steering_test_rows(run: Run) -> list[dict[str, Any]]:
    """The held-out clean rows the base model is steered on (the sae stage screens on them
    too)."""
    return clean_eval_rows(split_items(run, "steering_test", run.config.steering.n_eval))


def steering_select_rows(run: Run) -> list[dict[str, Any]]:
    """The clean scenarios every steering setting is chosen on: another draw of the same
    held-out option combinations, none of them a test scenario."""
    cfg = run.config.steering
    test = split_items(run, "steering_test", cfg.n_eval)
    try:
        return clean_eval_rows(disjoint_items(run, "steering_select", cfg.n_select, test))
    except ValueError as e:
        raise MechbdError(f"steering.n_select: {e}") from None


def steering_splits(run: Run, model: Any, tok: Any) -> tuple[Counterbalanced, Counterbalanced]:
    """The selection and test splits of the base model, counterbalanced, checked disjoint."""
    cfg = run.config.steering
    sel, test = steering_select_rows(run), steering_test_rows(run)
    check_splits(sel, test, "steering.n_select / steering.n_eval")
    kw: dict[str, Any] = dict(positions=cfg.positions, batch_size=run.config.eval.batch_size)
    return Counterbalanced.of(model, tok, sel, **kw), Counterbalanced.of(model, tok, test, **kw)


def steering_stage(run: Run, out: Path) -> None:
    cfg = run.config.steering
    d_em, items = _em_directions(run, out)
    model, tok = load_base(run)
    layers = parse_layers(cfg.layers, n_layers_of(model))
    select, test = steering_splits(run, model, tok)
    base_em = _base_along(run, d_em, select, test, layers)
    d_persona = _persona_direction(run, out, model, tok, items)
    base_persona = _base_along(run, d_persona, select, test, layers, cfg.persona_multipliers)
    results: dict[str, Any] = {
        "model": str(base_model_dir(run)),
        "em_direction": {"norms": d_em.norms(), "n_scenarios": len(items)},
        "persona_direction": {
            "norms": d_persona.norms(),
            "n_scenarios": len(items),
            "position": run.config.steering.persona_position,
            "systems": d_persona.provenance["systems"],
        },
        "baseline": baseline_record(test),
        "base_em": base_em,
        "base_persona": base_persona,
        "ablation": {},
        "negative_em": {},
    }
    if cfg.optimized_steps:
        fit_layers = parse_layers(cfg.optimized_layers, n_layers_of(model))
        results["optimized"] = _optimized(run, out, model, tok, select, test, fit_layers)
    best = base_em["selected"]["layer"]
    for t in run.layout.adapters():
        abl, neg = _backdoor_steering(run, t, tok, d_em, best)
        results["ablation"][t], results["negative_em"][t] = abl, neg
    em_persona = _em_persona(run, out, model, tok, d_persona, base_persona["selected"]["layer"])
    for name, rec in (("base_em", base_em), ("base_persona", base_persona)):
        write_json(out / f"sweep_{name}.json", rec.pop("select_grid"))
    write_json(out / RESULTS, {"steering": results, "em": {"persona": em_persona}})
