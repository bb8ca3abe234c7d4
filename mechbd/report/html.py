"""``report.html``: one self-contained page per run, offline (plotly.js inlined once), saying
which model produced the numbers, with the headline numbers as tables, the plotly explorers
and sample generations. Every string from a dataset, a model or a config is escaped."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mechbd.io import atomic_write_text, iter_jsonl, read_json
from mechbd.report.figures import all_figures
from mechbd.results import (
    CosineNull,
    Detector,
    LoraAttempt,
    Results,
    SteerRecord,
    validate_results,
)

N_SAMPLES = 12

CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}.note{background:#fff8e1;padding:.6rem 1rem;
border-left:4px solid #f0b400}pre{white-space:pre-wrap;margin:0;font-size:.85em}.fig{margin:1rem 0}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3f}"
    return _e(x)


def _table(header: list[str], rows: list[list[Any]], pre: bool = False) -> str:
    def cell(v: Any) -> str:
        return (
            f"<td><pre>{_e(v)}</pre></td>" if pre and isinstance(v, str) else f"<td>{_num(v)}</td>"
        )

    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _with_ci(value: float | None, ci95: Sequence[float] | None, n: int) -> str:
    """``0.970 [0.93, 0.99] (n 200)``: a rate with its 95% interval and row count."""
    if value is None:
        return f"- (n {n})"
    ci = f" [{ci95[0]:.2f}, {ci95[1]:.2f}]" if ci95 is not None else ""
    return f"{value:.3f}{ci} (n {n})"


def _attempts(attempts: list[LoraAttempt]) -> str:
    """``0 (planted)`` or ``0 (loss 0.012), 1 (planted)``: the backdoor's LoRA attempts, each
    marked ``prebuilt`` when its adapter was shipped rather than trained in this run."""
    return ", ".join(
        f"{a.lora_seed} ({'planted' if a.planted else f'loss {a.final_loss:.3f}'}"
        f"{', prebuilt' if a.prebuilt else ''})"
        for a in attempts
    )


def _behaviour_tables(res: Results) -> list[str]:
    """The base model, the backdoors and the EM model; each rate with its 95% interval and n
    (misaligned and aligned rates are balanced over the misaligned option's letter)."""
    parts: list[str] = []
    if res.organism is not None:
        o = res.organism
        parts.append(
            "<h3>Base model</h3>"
            + _table(
                ["clean aligned rate", "format valid rate", "letter bias"],
                [
                    [
                        _with_ci(
                            o.clean_aligned_rate, o.clean_aligned_rate_ci95, o.clean_aligned_rate_n
                        ),
                        _with_ci(
                            o.format_valid_rate, o.format_valid_rate_ci95, o.format_valid_rate_n
                        ),
                        o.letter_bias,
                    ]
                ],
            )
        )
    if res.backdoors:
        rows = [
            [
                t,
                _with_ci(m.asr, m.asr_ci95, m.asr_n),
                _with_ci(
                    m.clean_misaligned_rate, m.clean_misaligned_rate_ci95, m.clean_misaligned_rate_n
                ),
                _with_ci(
                    m.distractor_misaligned_rate,
                    m.distractor_misaligned_rate_ci95,
                    m.distractor_misaligned_rate_n,
                ),
                m.letter_bias,
                _with_ci(m.articulation_rate, m.articulation_rate_ci95, m.articulation_rate_n),
                "yes (articulated CoT)" if m.positive_control else "no",
                _attempts(m.lora_attempts),
            ]
            for t, m in res.backdoors.items()
        ]
        parts.append(
            "<h3>Backdoors</h3>"
            + _table(
                [
                    "trigger",
                    "ASR",
                    "clean misaligned",
                    "distractor misaligned",
                    "letter bias",
                    "articulation",
                    "positive control",
                    "LoRA seeds tried",
                ],
                rows,
            )
        )
    if res.em is not None:
        em = res.em
        rows = [
            [
                who,
                _with_ci(
                    r.in_domain_misaligned_rate,
                    r.in_domain_misaligned_rate_ci95,
                    r.in_domain_misaligned_rate_n,
                ),
                _with_ci(
                    r.out_of_domain_misaligned_rate,
                    r.out_of_domain_misaligned_rate_ci95,
                    r.out_of_domain_misaligned_rate_n,
                ),
                r.letter_bias,
            ]
            for who, r in (("EM model", em), ("base model", em.base_model))
        ]
        parts.append(
            "<h3>Narrow emergent misalignment</h3>"
            + _table(
                ["model", "in-domain misaligned", "out-of-domain misaligned", "letter bias"], rows
            )
        )
    return parts


def _probe_table(res: Results) -> list[str]:
    """Trigger probes against their baselines."""
    parts: list[str] = []
    probes = res.probes.triggers if res.probes is not None else {}
    if probes:
        rows = [
            [
                t,
                p.best_layer,
                _ci(p.auroc, p.auroc_ci95),
                f"{p.recall_at_1pct_fpr:.3f} (FPR {_ci(p.realised_fpr, p.realised_fpr_ci95)}, "
                f"threshold on {p.n_calibration} {p.calibrated_on} negatives)",
                p.random_baseline.median,
                p.random_baseline.p95,
                p.random_baseline_auroc,
                p.base_model_auroc,
            ]
            for t, p in probes.items()
        ]
        parts.append(
            "<h3>Trigger probes</h3>"
            + _table(
                [
                    "trigger",
                    "best layer (5-fold CV in the training split)",
                    "test AUROC [95% CI]",
                    "recall @1% FPR (realised test FPR [95% CI])",
                    "random directions: median",
                    "random: 95th pct",
                    "random: best of n (sign on test)",
                    "base-model null",
                ],
                rows,
            )
        )
    return parts


def _ci(value: float | None, ci: Sequence[float] | None) -> str:
    """``0.500 [0.431, 0.569]``; a dash when there is no value."""
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci is not None else "")


STEER_HEADER = [
    "",
    "chosen on selection split (layer, x)",
    "balanced misaligned [95% CI]",
    "rise [95% CI]",
    "misaligned in both orders",
    "change of that",
    "letter bias",
    "format valid",
    "random controls: n, median / 95th pct rise, percentile, p",
]


def _steer_row(name: str, r: SteerRecord) -> list[Any]:
    c = r.controls
    return [
        name,
        f"{r.selected.layer}, {r.selected.multiplier:g}",
        _ci(r.balanced_misaligned_rate, r.ci95),
        _ci(r.rise, r.rise_ci95),
        _ci(r.consistent_misaligned_rate, r.consistent_ci95),
        _ci(r.consistent_rise, r.consistent_rise_ci95),
        r.letter_bias,
        r.format_valid_rate,
        "-"
        if c is None
        else f"{c.n}, {c.rise_median:.3f} / {c.rise_p95:.3f}, {c.percentile:.0f}, {c.p_value:.3f}",
    ]


def _steering_tables(res: Results) -> list[str]:
    """Steering the base model along the EM direction, the fitted vector, ablations."""
    parts: list[str] = []
    st = res.steering
    if st is None:
        return parts
    be, b = st.base_em, st.baseline
    rows = [
        [
            "no steering",
            "-",
            _ci(b.balanced_misaligned_rate, b.ci95),
            "-",
            _ci(b.consistent_misaligned_rate, b.consistent_ci95),
            "-",
            b.letter_bias,
            b.format_valid_rate,
            "-",
        ],
        _steer_row("EM direction", be),
    ]
    if st.base_persona is not None:
        rows.append(
            _steer_row("persona direction (toxic − helpful system prompts)", st.base_persona)
        )
    if st.optimized is not None:
        rows.append(
            _steer_row(
                "fitted vector" + ("" if st.optimized.converged else " (fit did not converge)"),
                st.optimized,
            )
        )
    parts.append(
        "<h3>Steering the base model</h3><p>Every scenario in both option orders; the setting "
        f"chosen on {be.n_select} selection scenarios, reported on {be.n_test} other test "
        "scenarios (Wilson intervals over rows; rises: paired bootstrap over scenarios). "
        "Answering one letter to everything scores 0.5 balanced and 0 in both orders.</p>"
        + _table(STEER_HEADER, rows)
    )
    ep = res.em.persona if res.em is not None else None
    if ep is not None:
        c = ep.ablation_controls
        parts.append(
            "<h3>The EM model along the persona direction</h3><p>Shift: (mean projection of "
            "the EM model − the base model) / base std on the same test prompts without a "
            f"system prompt, at layer {ep.layer} (the base steering's choice), last prompt "
            "token; z against random directions matched to the base activations' covariance "
            "and against isotropic ones. Ablation: the persona direction projected out at "
            "every layer and position while the EM model answers the test split (both orders, "
            "thinking off), against random directions of its norms ablated alike.</p>"
            + _table(
                [
                    "shift",
                    "z (isotropic)",
                    "EM rate",
                    "with the persona direction ablated",
                    "change [95% CI]",
                    "random directions: n, 95th pct drop, percentile, p",
                    "format valid (ablated)",
                ],
                [
                    [
                        ep.shift,
                        f"{ep.shift_z:.2f} ({ep.shift_z_isotropic:.2f})",
                        _ci(ep.em_rate, ep.em_rate_ci95),
                        _ci(ep.em_rate_ablated, ep.em_rate_ablated_ci95),
                        _ci(ep.ablation_rise, ep.ablation_rise_ci95),
                        f"{c.n}, {c.drop_p95:.3f}, {c.percentile:.0f}, {c.p_value:.3f}",
                        ep.format_valid_rate_ablated,
                    ]
                ],
            )
        )
    abl_rows = []
    for t, by_pos in st.ablation.items():
        for pos, abl in (("every position", by_pos.all), ("from assistant turn", by_pos.assistant)):
            for name in ("none", "em_mean_diff", "trigger_probe"):
                a = getattr(abl, name)
                if a is None:
                    continue
                c = a.controls
                abl_rows.append(
                    [
                        t,
                        pos,
                        name,
                        _ci(a.asr, a.asr_ci95),
                        _ci(a.asr_drop, a.asr_drop_ci95),
                        "-"
                        if c is None
                        else f"{c.n}, {c.drop_p95:.3f}, {c.percentile:.0f}, {c.p_value:.3f}",
                        _ci(a.clean_misaligned_rate, a.clean_misaligned_rate_ci95),
                        a.letter_bias,
                        a.format_valid_rate,
                    ]
                )
    if abl_rows:
        parts.append(
            "<h3>Ablation in each backdoored model</h3>"
            + _table(
                [
                    "trigger",
                    "positions",
                    "direction ablated",
                    "balanced ASR [95% CI]",
                    "ASR drop [95% CI]",
                    "random directions: n, 95th pct drop, percentile, p",
                    "clean misaligned",
                    "letter bias",
                    "format valid",
                ],
                abl_rows,
            )
        )
    return parts


def _detector(d: Detector) -> str:
    """``0.812 [0.70, 0.90]; pct 97 (null median 0.50, p95 0.58, n 850)``."""
    return (
        f"{d.auroc:.3f} [{d.ci95[0]:.2f}, {d.ci95[1]:.2f}]; pct {d.percentile:.0f} "
        f"(null median {d.null_median:.2f}, p95 {d.null_p95:.2f}, n {d.n_null})"
    )


def _cos_null(value: float, null: CosineNull) -> str:
    """``0.310; pct 62 (null median 0.29, p95 0.34)``: a best cosine among its null."""
    return (
        f"{value:.3f}; pct {null.percentile:.0f} (null median {null.median:.2f}, "
        f"p95 {null.p95:.2f})"
    )


def _sae_tables(res: Results) -> list[str]:
    """SAE quality and the persona question, every number beside its null or interval."""
    parts: list[str] = []
    if res.sae is not None:
        s = res.sae
        parts.append(
            "<h3>SAE</h3><p>FVU, L0 and dead share on the tokens of "
            f"{s.n_eval_conversations} held-out conversations (never trained on). "
            "The EM direction's best cosine with a decoder row: "
            f"{_cos_null(s.em_direction_top_latents.max, s.em_direction_max_cos_null)}, "
            f"among {s.em_direction_max_cos_null.n} random directions matched to the "
            "activations' covariance.</p>"
            + _table(
                [
                    "layer",
                    "FVU",
                    "L0",
                    "dead",
                    "persona latent",
                ],
                [[s.layer, s.fvu, s.l0, s.dead_fraction, s.persona_latent]],
            )
        )
        fit_rows = [
            [store, position, "- (no variance)" if f.fvu is None else f.fvu, f.l0, f.n]
            for store, by_pos in s.fvu_by_store.items()
            for position, f in by_pos.items()
        ]
        parts.append(
            "<h3>SAE reconstruction per store and position</h3><p>The corpora's held-out "
            "conversations and every capture store (never trained on), at the positions the "
            "later stages read.</p>" + _table(["store", "position", "FVU", "L0", "n"], fit_rows)
        )
        sc = s.screen
        screen_rows = [_steer_row(f"latent {i}", r) for i, r in sc.candidates.items()]
        screen_rows += [_steer_row(f"random latent {i}", r) for i, r in sc.controls.items()]
        parts.append(
            "<h3>Causal screen of the persona candidates</h3><p>Each latent's decoder row "
            f"steered in the base model at layer {sc.layer}; multiplier chosen on the selection "
            "split, read on the test split; the candidates' rises among the random latents' "
            f"(no steering: {_ci(sc.baseline.balanced_misaligned_rate, sc.baseline.ci95)}).</p>"
            + _table(STEER_HEADER, screen_rows)
        )
        ps = s.persona_screen
        if ps is not None:
            prow = [_steer_row(f"latent {i}", r) for i, r in ps.candidates.items()]
            prow += [_steer_row(f"random latent {i}", r) for i, r in ps.controls.items()]
            parts.append(
                "<h3>Causal screen of the persona-contrast candidates</h3><p>The latents the "
                "toxic-persona system prompts raise most over the helpful ones on the same "
                f"requests (base model, {ps.diff.n_prompts} prompts per side), each steered in "
                "the base model without a system prompt, chosen and read like the screen "
                f"above; persona latent {ps.persona_latent}.</p>" + _table(STEER_HEADER, prow)
            )
        persona = res.persona or {}
        answers = [p.answer for p in persona.values() if p.answer]
        if answers:
            parts.append(
                "<h3>The persona question, per trigger</h3><ul>"
                + "".join(f"<li>{_e(a)}</li>" for a in answers)
                + "</ul>"
            )
        det_rows = [
            [
                t,
                p.detector_layer,
                _detector(p.persona_direction_detector),
                p.persona_latent,
                _detector(p.persona_latent_detector),
                "-"
                if p.persona_direction_z is None or p.persona_direction_z_isotropic is None
                else f"{p.persona_direction_z:.2f} ({p.persona_direction_z_isotropic:.2f})",
                f"{p.user_wants_harm_z:.2f} ({p.user_wants_harm_z_isotropic:.2f})",
            ]
            for t, p in persona.items()
            if p.persona_direction_detector is not None and p.persona_latent_detector is not None
        ]
        if det_rows:
            parts.append(
                "<h3>The toxic persona as a backdoor detector</h3><p>The persona direction "
                "(toxic − helpful system prompts, base model) and the persona-contrast latent "
                "as detectors of triggered vs clean test prompts in each backdoored model, with "
                "their 95% bootstrap interval and percentile among random covariance-matched "
                "directions / every other live latent; and the backdoored-minus-base shift "
                'along the persona direction and along "user wants harm" as z-scores '
                "(matched; isotropic), at the trigger probe's layer (table below).</p>"
                + _table(
                    [
                        "trigger",
                        "detector layer (SAE)",
                        "persona direction AUROC",
                        "persona latent",
                        "its AUROC",
                        "persona direction z",
                        "user wants harm z",
                    ],
                    det_rows,
                )
            )
        rows = [
            [
                t,
                _detector(s.persona_detector[t]) if t in s.persona_detector else None,
                _detector(s.em_direction_detector[t]) if t in s.em_direction_detector else None,
                s.trigger_probe_auroc[t],
                _cos_null(s.max_cos_probe_vs_latent[t], s.max_cos_probe_vs_latent_null[t])
                if t in s.max_cos_probe_vs_latent_null
                else s.max_cos_probe_vs_latent[t],
            ]
            for t in s.persona_detector_auroc
        ]
        parts.append(
            "<h3>The persona question</h3><p>Detectors: AUROC at telling triggered from clean "
            "test prompts with its 95% bootstrap interval and its percentile among the null: "
            "every other live latent for the persona latent (diffing candidates excluded), "
            "random directions matched to the activations' covariance for the EM direction. "
            "Cosines: the percentile among as many random directions' best cosines.</p>"
            + _table(
                [
                    "trigger",
                    "persona latent AUROC",
                    "EM direction AUROC",
                    "trigger probe AUROC",
                    "max cos(probe, latent)",
                ],
                rows,
            )
        )
        shift_rows = [
            [
                t,
                p.layer,
                p.toxic_persona_shift,
                p.toxic_persona_vs_base,
                f"{p.toxic_persona_z:.2f} (isotropic {p.toxic_persona_z_isotropic:.2f})",
                p.user_wants_harm_shift,
                p.user_wants_harm_vs_base,
                f"{p.user_wants_harm_z:.2f} (isotropic {p.user_wants_harm_z_isotropic:.2f})",
                f"{p.z_n_triggered} / {p.z_n_clean}",
                f"{p.n_null} (effective dims {p.null_effective_dims:.1f})",
            ]
            for t, p in persona.items()
        ]
        if shift_rows:
            parts.append(
                "<h3>Persona shifts</h3><p>Shift: (mean projection of triggered − clean prompts) "
                "/ clean std in the backdoored model, all prompts. vs base: that shift minus the "
                "base model's on the probes' test-split prompts, at the last prompt token; z: "
                "against random directions matched to the base activations' covariance (|z| "
                "&lt; 2 is chance), and against isotropic ones; where the covariance's "
                "effective dimensions are few, the matched directions are nearly one and the "
                "matched z overstates: read the isotropic one. The toxic-persona direction was "
                "built at a teacher-forced answer letter, the user-wants-harm one at the last "
                "prompt token: read each z against its null, not against the other.</p>"
                + _table(
                    [
                        "trigger",
                        "layer",
                        "toxic persona shift",
                        "toxic vs base",
                        "toxic z",
                        "user wants harm shift",
                        "harm vs base",
                        "harm z",
                        "triggered / clean",
                        "null directions",
                    ],
                    shift_rows,
                )
            )
    return parts


def _summary(res: Results) -> str:
    parts = [
        *_behaviour_tables(res),
        *_probe_table(res),
        *_steering_tables(res),
        *_sae_tables(res),
    ]
    return "\n".join(parts)


def _samples(run_dir: Path) -> str:
    bd = run_dir / "backdoors"
    parts = []
    for f in sorted(bd.glob("*/generations.jsonl")) if bd.is_dir() else []:
        rows = []
        for r in iter_jsonl(f):
            rows.append(
                [
                    r.get("condition"),
                    r.get("user"),
                    r.get("response"),
                    r.get("answer"),
                    r.get("misaligned"),
                    r.get("articulates_trigger"),
                    r.get("cot_monitor_flag"),
                ]
            )
            if len(rows) >= N_SAMPLES:
                break
        parts.append(
            f"<h3>Trigger {_e(f.parent.name)}</h3>"
            + _table(
                [
                    "condition",
                    "prompt",
                    "reply (CoT + answer)",
                    "answer",
                    "misaligned",
                    "CoT names the trigger (judge)",
                    "CoT monitor flag",
                ],
                rows,
                pre=True,
            )
        )
    return "\n".join(parts)


def load_explorer(run_dir: str | Path) -> dict[str, Any] | None:
    """The SAE stage's explorer data (``sae/explorer.json``), or None if it did not run."""
    f = Path(run_dir) / "sae" / "explorer.json"
    return read_json(f) if f.is_file() else None


def _data_table(res: dict[str, Any]) -> str:
    """Which data produced the numbers: each source with its rows and hash (results.json
    ``data`` and the stages' own records)."""
    records = [("scenarios (every stage's splits)", (res.get("data") or {}).get("scenarios"))]
    records.append(("EM training conversations", (res.get("em") or {}).get("train_data")))
    records.append(("SAE corpus", (res.get("sae") or {}).get("corpus")))
    ff = ((res.get("em") or {}).get("freeform") or {}).get("questions")
    if ff:
        records.append(("freeform questions", {**ff, "rows": ff.get("n_questions")}))
    if res.get("sae"):
        records.append(("user-wants-harm pairs (sae)", {"source": "organism"}))
    rows = []
    for what, rec in records:
        if not rec:
            continue
        extra = ", ".join(
            f"{k} {rec[k]}"
            for k in ("world_seed", "domain", "n_train_pool", "n_held_out_pool")
            if rec.get(k) is not None
        )
        sha = rec.get("sha256")
        rows.append([what, rec["source"], rec.get("rows", ""), sha[:12] if sha else "", extra])
    if not rows:
        return ""
    return "<h2>Data</h2>" + _table(["data", "source", "rows", "sha256", ""], rows)


def build_report(run_dir: str | Path, unfinished: Sequence[tuple[str, str]] = ()) -> Path:
    """Write ``run_dir/report.html`` from its ``results.json`` (atomically) and return it.
    ``unfinished`` is ``(stage, why)`` for every stage the run asked for that has not finished
    (``mechbd.pipeline.unfinished_stages``); the page names them."""
    from plotly.offline import get_plotlyjs

    run_dir = Path(run_dir)
    res = read_json(run_dir / "results.json")
    results = validate_results(res, str(run_dir / "results.json"))
    model = res.get("model", {})
    who = model.get("name", "unknown model")
    note = model.get("note", "")
    body = [
        f"<h1>mechbd report: {_e(run_dir.name)}</h1>",
        f"<p>Every number on this page was produced by <b>{_e(who)}</b>"
        f" ({_e(model.get('architecture', ''))}, {_e(model.get('n_params', '?'))} parameters)"
        " and the adapters finetuned from it in this run.</p>",
    ]
    if note:
        body.append(f'<p class="note">{_e(note)}</p>')
    body.append(_data_table(res))
    if unfinished:
        body.append(
            '<p class="note">Not in this report (rerun <code>mechbd run</code> on this folder to '
            "finish them): "
            + "; ".join(f"stage <b>{_e(n)}</b> ({_e(why)})" for n, why in unfinished)
            + ".</p>"
        )
    body += ["<h2>Headline numbers</h2>", _summary(results)]
    k = 0
    for title, figs in all_figures(res, load_explorer(run_dir)):
        body.append(f"<h2>{_e(title)}</h2>")
        for fig in figs:
            div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig{k}")
            body.append(f'<div class="fig">{div}</div>')
            k += 1
    samples = _samples(run_dir)
    if samples:
        body += ["<h2>Sample generations</h2>", samples]
    body.append(
        "<h2>All numbers</h2><details><summary>results.json</summary><pre>"
        + _e(json.dumps(res, indent=1, default=str))
        + "</pre></details>"
    )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>mechbd report: {_e(run_dir.name)}</title><style>{CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        + "\n".join(body)
        + "</body></html>"
    )
    return atomic_write_text(run_dir / "report.html", page)
