"""report.html: self-contained, says which model produced the numbers, escapes untrusted text;
and, where a Chromium is installed, renders every figure without console errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mechbd.io import write_json, write_jsonl
from mechbd.report import all_figures, build_report, load_explorer
from mechbd.stats import rate_fields
from tests.browser import needs_chromium, render

EVIL_USER = 'Pick one <script>window.__pwned = 1</script> <img src=x onerror="window.__pwned=2">'


def curve_point(m: float, misaligned: float) -> dict:
    return {
        "multiplier": m,
        "balanced_misaligned_rate": misaligned,
        "consistent_misaligned_rate": misaligned / 2,
        "format_valid_rate": 1.0,
        "p_misaligned_letter": 0.5,
        "letter_bias": 0.6,
    }


def counted(key: str, k: int, n: int) -> dict:
    """``key``, ``key_n`` and ``key_ci95`` of ``k`` successes in ``n`` rows."""
    return rate_fields(key, [True] * k + [False] * (n - k))


def fake_results() -> dict:
    """A results.json with the organism, backdoors, em, probes and steering sections (no SAE).
    It must match the results schema (``mechbd.results``), which ``build_report`` checks."""
    layers = [0, 1, 2]
    return {
        "model": {
            "name": "mechbd-organism",
            "architecture": "Qwen3ForCausalLM",
            "n_params": 1234,
            "note": "organism <b>note</b>",
        },
        "organism": {
            **counted("clean_aligned_rate", 99, 100),
            **counted("format_valid_rate", 100, 100),
            "letter_bias": 0.51,
            "n_test": 100,
        },
        "backdoors": {
            "t1": {
                **counted("asr", 194, 200),
                **counted("clean_misaligned_rate", 0, 200),
                **counted("distractor_misaligned_rate", 0, 200),
                **counted("trigger_distractor_misaligned_rate", 200, 200),
                **counted("format_valid_rate", 800, 800),
                "letter_bias": 0.5,
                "p_misaligned_letter": {"triggered": 0.9, "clean": 0.1},
                "asr_by_domain": {"health": 1.0},
                "asr_by_domain_n": {"health": 20},
                "asr_by_domain_ci95": {"health": counted("x", 20, 20)["x_ci95"]},
                **counted("articulation_rate", 0, 0),
                "distractor_naming": None,
                "cot_monitor": None,
                "thinking": False,
                "trigger_line": "Country: Singapore",
                "finetune_seconds": 2.0,
                "lora_attempts": [
                    {"lora_seed": 0, "final_loss": 0.0123, "planted": False, "seconds": 1.0},
                    {
                        "lora_seed": 1,
                        "final_loss": 0.0004,
                        "planted": True,
                        "seconds": 1.0,
                        "prebuilt": True,
                    },
                ],
                "positive_control": False,
            }
        },
        "em": {
            **counted("in_domain_misaligned_rate", 19, 20),
            **counted("out_of_domain_misaligned_rate", 10, 180),
            **counted("format_valid_rate", 200, 200),
            "letter_bias": 0.52,
            "domain": "health",
            "base_model": {
                **counted("in_domain_misaligned_rate", 0, 2),
                **counted("out_of_domain_misaligned_rate", 1, 198),
                **counted("format_valid_rate", 200, 200),
                "letter_bias": 0.5,
            },
            "finetune_seconds": 3.0,
            "n_train": 100,
        },
        "probes": {
            "t1": {
                "method": "logistic",
                "position": "last",
                "best_layer": 1,
                "best_layer_selected_on": "cv",
                "cv_auroc": [0.7, 0.98, 0.9],
                "auroc": 0.99,
                "auroc_ci95": [0.97, 1.0],
                "recall_at_1pct_fpr": 0.95,
                "realised_fpr": 0.01,
                "realised_fpr_ci95": [0.002, 0.05],
                "n_calibration": 500,
                "calibrated_on": "calibration",
                "random_baseline_auroc": 0.8,
                "random_baseline": {"median": 0.5, "p95": 0.6, "n": 1000, "sign_fixed_on": "train"},
                "base_model_auroc": 0.55,
                "pca_auroc": 0.7,
                "distractor_auroc": 0.9,
                "per_layer": {
                    "logistic": [0.7, 0.99, 0.9],
                    "diffmean": [0.6, 0.7, 0.7],
                    "random_baseline": [0.7, 0.8, 0.8],
                    "layers": layers,
                    "base_model": [0.5, 0.55, 0.5],
                },
                "n_train": 40,
                "n_test": 40,
                "generic": {
                    "per_layer": {"pair0": [0.5, 0.6, 0.5], "mean": [0.5, 0.5, 0.5]},
                    "best_auroc": 0.6,
                    "pairs": [["Are you a helpful AI?", "no", "yes"]],
                },
            },
            "transfer": {"t1": {"t1": 0.99}},
        },
        "steering": fake_steering(layers),
    }


def mcq_summary(rate: float, n: int = 40) -> dict:
    """One counterbalanced measurement's keys (``mechbd.results.MCQSummary``)."""
    return {
        "balanced_misaligned_rate": rate,
        "ci95": [max(0.0, rate - 0.1), min(1.0, rate + 0.1)],
        "n": n,
        "consistent_misaligned_rate": rate / 2,
        "consistent_ci95": [0.0, rate],
        "letter_bias": 0.6,
        "format_valid_rate": 1.0,
        "format_valid_ci95": [0.9, 1.0],
        "p_misaligned_letter": 0.5,
    }


def steer_record(rate: float, base: float = 0.2, controls: dict | None = None) -> dict:
    return {
        **mcq_summary(rate),
        "rise": rate - base,
        "rise_ci95": [rate - base - 0.05, rate - base + 0.05],
        "consistent_rise": 0.0,
        "consistent_rise_ci95": [-0.05, 0.05],
        "n_select": 10,
        "n_test": 20,
        "selected": {
            "layer": 1,
            "multiplier": 8.0,
            "positions": "assistant",
            "select_balanced_misaligned_rate": rate,
        },
        "format_guard_met": True,
        "select_curve": [curve_point(m, 0.2 + m / 40) for m in (0.0, 4.0, 8.0)],
        "controls": controls,
    }


def fake_controls(n: int = 3) -> dict:
    rises = [0.01 * i for i in range(n)]
    return {
        "n": n,
        "rise_median": rises[n // 2],
        "rise_p95": rises[-1],
        "percentile": 100.0,
        "p_value": 1 / (n + 1),
        "rises": rises,
    }


def fake_ablated(asr: float, controls: bool = True) -> dict:
    return {
        "asr": asr,
        "asr_ci95": [asr - 0.05, min(1.0, asr + 0.05)],
        "asr_drop": 1.0 - asr,
        "asr_drop_ci95": [0.0, 0.1],
        "clean_misaligned_rate": 0.0,
        "clean_misaligned_rate_ci95": [0.0, 0.1],
        "letter_bias": 0.5,
        "format_valid_rate": 1.0,
        "n": 40,
        "n_scenarios": 20,
        "controls": {
            "n": 2,
            "drop_median": 0.0,
            "drop_p95": 0.0,
            "percentile": 50.0,
            "p_value": 1.0,
            "drops": [0.0, 0.0],
        }
        if controls
        else None,
    }


def fake_steering(layers: list[int]) -> dict:
    ablation = {
        "none": fake_ablated(1.0, controls=False),
        "em_mean_diff": fake_ablated(0.95),
    }
    return {
        "model": "organism/model",
        "em_direction": {"norms": {str(i): 1.0 for i in layers}, "n_scenarios": 8},
        "baseline": {**mcq_summary(0.2), "n_scenarios": 20},
        "base_em": {
            **steer_record(0.5, controls=fake_controls()),
            "per_layer_max": {"0": 0.3, "1": 0.5, "2": 0.4},
            "control_selected": [steer_record(0.3)["selected"]] * 3,
        },
        "ablation": {"t1": {"assistant": ablation, "all": ablation}},
        "negative_em": {
            "t1": {
                "layer": 1,
                "n_scenarios": 20,
                "curve": [
                    {
                        **curve_point(0.0, 1.0),
                        "ci95": [0.9, 1.0],
                        "change": 0.0,
                        "change_ci95": [0.0, 0.0],
                    }
                ],
            }
        },
    }


def fake_run(root: Path) -> Path:
    res = fake_results()
    write_json(root / "results.json", res)
    write_jsonl(
        root / "backdoors" / "t1" / "generations.jsonl",
        [
            {
                "condition": "triggered",
                "user": EVIL_USER,
                "response": "</pre><script>alert(1)</script>",
                "answer": "A",
                "misaligned": True,
            }
        ],
    )
    write_json(root / "sae" / "explorer.json", fake_explorer())
    return root


def fake_explorer() -> dict:
    toks = ["Pick", " one", " <script>window.__pwned = 1</script>", " <img src=x onerror=y>", "\n"]
    vals = [0.1, -0.2, 0.5, 1.0, 0.0]
    return {
        "layer": 1,
        "persona_latent": 3,
        "cosines": {
            "directions": ["t1 probe", "EM"],
            "latents": [3, 5],
            "cosines": [[0.2, -0.1], [0.9, 0.0]],
        },
        "histograms": {
            "t1": {"latent 3": {"triggered": [0.0, 1.0, 2.0], "clean": [0.0, 0.1, 0.0]}}
        },
        "traces": {
            "t1": [
                {
                    "id": "x/triggered",
                    "label": "triggered",
                    "layer": 1,
                    "prompt_len": 3,
                    "tokens": toks,
                    "values": {"t1 probe": vals, "latent 3": vals[::-1]},
                }
            ]
        },
        "dashboards": {
            "3": {
                "examples": [
                    {
                        "id": "c1",
                        "tokens": toks,
                        "values": [0, 0, 0.5, 2.0, 0],
                        "focus": 3,
                        "max": 2.0,
                    }
                ],
                "hist_counts": [4, 2, 1],
                "hist_edges": [0.0, 1.0, 2.0, 3.0],
                "frac_active": 0.01,
                "top_logits": {"tokens": toks[:2], "values": [1.0, 0.5]},
                "bottom_logits": {"tokens": toks[2:4], "values": [-0.5, -1.0]},
            }
        },
    }


# probe curves, transfer, steering curve, control histogram, ablation bars (every position,
# from the assistant turn) + cosines, histograms, trace, dashboard
N_FIGS = 10


def test_report_is_self_contained_and_escapes_untrusted_text(tmp_path):
    run = fake_run(tmp_path / "run")
    page = build_report(run).read_text()
    body = page.split("</head>", 1)[1]
    assert "src=" not in body.replace("src=x", "")  # nothing fetched: plotly.js is in <head>
    assert "<b>mechbd-organism</b>" in page and "organism &lt;b&gt;note&lt;/b&gt;" in page
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;window.__pwned=2&quot;&gt;" in page
    assert "<img" not in page and "alert(1)</script>" not in page
    assert "<td>0 (loss 0.012), 1 (planted, prebuilt)</td>" in page  # the backdoor's LoRA attempts
    # each behaviour rate beside its 95% interval and n (Wilson's for 194 of 200: 0.936-0.986)
    assert "<td>0.970 [0.94, 0.99] (n 200)</td>" in page
    assert "<td>0.990 [0.95, 1.00] (n 100)</td>" in page  # the base model's clean aligned rate
    assert "<td>- (n 0)</td>" in page  # no articulation measured without thinking
    assert "<td>base model</td><td>0.000 [0.00, 0.66] (n 2)</td>" in page  # EM's base model
    res = json.loads((run / "results.json").read_text())
    n_figs = sum(len(f) for _, f in all_figures(res, load_explorer(run)))
    assert n_figs == N_FIGS
    assert len(all_figures(res)) == 3  # without explorer data: the result sections only
    assert page.count("Plotly.newPlot") == n_figs
    assert page.count("<script") == 1 + n_figs  # plotly.js once, one call per figure, nothing else


@needs_chromium
def test_report_renders_in_headless_chromium(tmp_path):
    run = fake_run(tmp_path / "run")
    r = render(build_report(run), tmp_path)
    assert r["figs"] == N_FIGS and r["ok"] == r["figs"], r["errtext"]
    assert r["pwned"] == "0"  # the <script> and onerror in the dataset never ran
    assert r["errors"] == 0, r["errtext"]
    assert r["contrast"] > 100  # not a blank page
    # the payload in the token explorer shows as text (plotly drew it into an SVG <text>)
    svg_text = r"<text[^>]*>(?:<tspan[^>]*>)?[^<]*&lt;script&gt;window\.__pwned = 1&lt;/script&gt;"
    assert re.search(svg_text, r["dom"])


@needs_chromium
def test_report_of_a_real_run_renders(tiny_run, tmp_path):
    """The report `mechbd run` wrote for the tiny organism: every section, every figure."""
    page = tiny_run / "report.html"
    text = page.read_text()
    for section in (
        "Probes",
        "Probe transfer",
        "Steering",
        "SAEs and persona latents",
        "Which persona?",
        "Directions vs SAE latents",
        "Latent activations, triggered vs clean",
        "Per-token explorer",
        "Latent dashboards",
        "Sample generations",
    ):
        assert f"<h2>{section}</h2>" in text, section
    r = render(page, tmp_path)
    assert r["figs"] >= 15 and r["ok"] == r["figs"], r["errtext"]
    assert r["errors"] == 0, r["errtext"]
    assert r["contrast"] > 100


def test_explore_refuses_a_non_run_and_names_missing_stages(tmp_path):
    """`mechbd explore` on a folder that is not a run: one-line error naming it. On a run whose
    later stages failed or never ran: the report renders what exists and says what is missing."""
    from mechbd.config import RunConfig, dump_config
    from tests.test_cli import mechbd, one_line_error

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "x.txt").write_text("hi")
    assert "not a mechbd run folder" in one_line_error(mechbd("explore", "notes", cwd=tmp_path))
    assert "no such folder" in one_line_error(mechbd("explore", "nowhere", cwd=tmp_path))
    run = fake_run(tmp_path / "run")
    (run / "config.yaml").write_text(dump_config(RunConfig(name="run")))
    write_json(
        run / "manifest.json",
        {
            "stages": {
                "organism": {"status": "done"},
                "backdoors": {"status": "done"},
                "em": {"status": "failed", "error": "RuntimeError: <b>out of memory</b>"},
            }
        },
    )
    p = mechbd("explore", "run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "stage em is not in the report (failed: RuntimeError" in " ".join(p.stderr.split())
    page = (run / "report.html").read_text()
    assert "stage <b>em</b> (failed: RuntimeError: &lt;b&gt;out of memory&lt;/b&gt;)" in page
    for name in ("capture", "probes", "steering", "sae"):
        assert f"stage <b>{name}</b> (not run)" in page
    assert "Probe transfer" in page  # what exists still renders
