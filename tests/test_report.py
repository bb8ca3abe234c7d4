"""report.html: self-contained, says which model produced the numbers, escapes untrusted text;
and, where a Chromium is installed, renders every figure without console errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mechbd.io import write_json, write_jsonl
from mechbd.report import all_figures, build_report

EVIL_USER = 'Pick one <script>window.__pwned = 1</script> <img src=x onerror="window.__pwned=2">'


def fake_run(root: Path) -> Path:
    layers = [0, 1, 2]
    res = {
        "model": {
            "name": "mechbd-organism",
            "architecture": "Qwen3ForCausalLM",
            "n_params": 1234,
            "note": "organism <b>note</b>",
        },
        "organism": {"clean_aligned_rate": 0.99, "format_valid_rate": 1.0},
        "backdoors": {
            "t1": {
                "asr": 1.0,
                "clean_misaligned_rate": 0.0,
                "distractor_misaligned_rate": 0.0,
                "articulation_rate": None,
            }
        },
        "probes": {
            "t1": {
                "best_layer": 1,
                "auroc": 0.99,
                "recall_at_1pct_fpr": 0.95,
                "random_baseline_auroc": 0.8,
                "base_model_auroc": 0.55,
                "per_layer": {
                    "logistic": [0.7, 0.99, 0.9],
                    "diffmean": [0.6, 0.7, 0.7],
                    "random_baseline": [0.7, 0.8, 0.8],
                    "base_model": [0.5, 0.55, 0.5],
                    "layers": layers,
                },
            },
            "transfer": {"t1": {"t1": 0.99}},
        },
        "steering": {
            "base_em": {
                "best_layer": 1,
                "multiplier": 8.0,
                "baseline_misaligned_rate": 0.2,
                "misaligned_rate": 0.5,
                "format_valid_rate": 1.0,
                "letter_bias": 0.9,
                "random_misaligned_rate": 0.21,
                "curve": [
                    {"multiplier": m, "misaligned_rate": 0.2 + m / 40, "format_valid_rate": 1.0}
                    for m in (0, 4, 8)
                ],
                "random_curve": [
                    {"multiplier": m, "misaligned_rate": 0.2, "format_valid_rate": 1.0}
                    for m in (0, 4, 8)
                ],
            },
            "ablation": {"t1": {k: {"asr": 1.0} for k in ("none", "em_mean_diff", "random")}},
        },
    }
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
    return root


def test_report_is_self_contained_and_escapes_untrusted_text(tmp_path):
    run = fake_run(tmp_path / "run")
    page = build_report(run).read_text()
    body = page.split("</head>", 1)[1]
    assert "src=" not in body.replace("src=x", "")  # nothing fetched: plotly.js is in <head>
    assert "<b>mechbd-organism</b>" in page and "organism &lt;b&gt;note&lt;/b&gt;" in page
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;window.__pwned=2&quot;&gt;" in page
    assert "<img" not in page and "alert(1)</script>" not in page
    n_figs = sum(len(f) for _, f in all_figures(json.loads((run / "results.json").read_text())))
    assert n_figs == 4  # probe curves, transfer, steering curve, ablation bars
    assert page.count("Plotly.newPlot") == n_figs
    assert page.count("<script") == 1 + n_figs  # plotly.js once, one call per figure, nothing else


def _chromium() -> str | None:
    return next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )


@pytest.mark.skipif(
    _chromium() is None, reason="no Chromium on this machine (README set-up installs it)"
)
def test_report_renders_in_headless_chromium(tmp_path):
    run = fake_run(tmp_path / "run")
    page = build_report(run)
    probe = tmp_path / "probe.html"
    # The same page plus a script that reports what rendered, read back via --dump-dom.
    probe.write_text(
        page.read_text()
        .replace(
            "<head>",
            "<head><script>window.__errors=[];window.addEventListener('error',e=>"
            "window.__errors.push(String(e.message)));const ce=console.error;console.error="
            "(...a)=>{window.__errors.push(a.join(' '));ce(...a)};</script>",
            1,
        )
        .replace(
            "</body>",
            "<script>window.addEventListener('load',()=>setTimeout(()=>{"
            "const figs=[...document.querySelectorAll('.fig .js-plotly-plot')];"
            "const ok=figs.filter(f=>f.querySelector('svg.main-svg')&&"
            "f.querySelectorAll('path').length>5).length;"
            "document.body.setAttribute('data-figs',figs.length);"
            "document.body.setAttribute('data-ok',ok);"
            "document.body.setAttribute('data-errors',window.__errors.length);"
            "document.body.setAttribute('data-pwned',String(window.__pwned||0));},1000));"
            "</script></body>",
        )
    )
    out = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = out.stdout
    figs = int(re.search(r'data-figs="(\d+)"', dom).group(1))
    ok = int(re.search(r'data-ok="(\d+)"', dom).group(1))
    assert figs == 4 and ok == figs
    assert 'data-pwned="0"' in dom  # the <script> and onerror in the dataset never ran
    assert 'data-errors="0"' in dom, out.stderr[-2000:]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert hi - lo > 100  # not a blank page
