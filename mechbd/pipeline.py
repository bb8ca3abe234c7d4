"""The pipeline as stages over one run folder: each stage reads earlier stages' files and
writes its own folder; finished stages are skipped on rerun, and an interrupted one resumes
from what it had written (``Run.stage``: finished adapters and captured chunks are kept).

Stages, in order: ``organism`` (build the organism and measure its clean behaviour) or, for a
Hugging Face model, ``model`` (its identity and clean behaviour); ``backdoors``, ``em``,
``capture``, ``probes``, ``steering``, ``sae``; then ``report.html``. The scenarios come from
the organism's synthetic world for every model (plain English MCQs any chat model can read).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from mechbd.config import RunConfig
from mechbd.io import write_json, write_jsonl
from mechbd.runs import Run

console = Console(stderr=True)

ORGANISM_NOTE = (
    "Numbers from the built-in model organism (a tiny Qwen3-architecture model trained from "
    "scratch on a synthetic world). They show that the machinery works; they are not evidence "
    "about large models."
)


def organism_stage(run: Run, out: Path) -> None:
    from mechbd.organism.build import build_organism, organism_card
    from mechbd.organism.evaluate import evaluate_organism

    cfg = run.config.organism
    cached = build_organism(cfg)
    shutil.copytree(cached, out / "model")
    card = organism_card(out / "model")
    metrics, samples = evaluate_organism(
        out / "model",
        seed=cfg.seed,
        n_test=cfg.n_test,
        batch_size=run.config.eval.batch_size,
        max_new_tokens=run.config.eval.max_new_tokens,
    )
    write_jsonl(out / "samples.jsonl", samples)
    write_json(
        out / "results.json",
        {
            "model": {
                "name": "mechbd-organism",
                "architecture": "Qwen3ForCausalLM",
                "n_params": card["train"]["n_params"],
                "organism_key": card["key"],
                "note": ORGANISM_NOTE,
            },
            "organism": metrics,
        },
    )


def hf_note(path: str) -> str:
    return (
        f"Numbers from {path} and the adapters finetuned from it in this run, on scenarios from "
        "the built-in organism's synthetic world."
    )


def model_stage(run: Run, out: Path) -> None:
    """A Hugging Face model: identity, size, dtype, and its clean behaviour on held-out
    organism-world scenarios (the ``organism`` results key, as for the organism)."""
    from mechbd.eval.mcq import rates, run_mcq
    from mechbd.layout import split_items
    from mechbd.models import base_model_dir, generation_backend, load_base

    cfg = run.config
    model, tok = load_base(run)
    items = split_items(run, "model_test", cfg.organism.n_test)
    with generation_backend(run) as gen:
        results = run_mcq(
            model,
            tok,
            [it.user() for it in items],
            [it.aligned for it in items],
            batch_size=cfg.eval.batch_size,
            max_new_tokens=cfg.eval.max_new_tokens,
            generator=gen,
        )
    r = rates(results)
    path = str(base_model_dir(run))
    archs = getattr(model.config, "architectures", None) or [type(model).__name__]
    write_json(
        out / "results.json",
        {
            "model": {
                "name": path,
                "architecture": archs[0],
                "n_params": sum(p.numel() for p in model.parameters()),
                "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                "note": hf_note(path),
            },
            "organism": {
                "clean_aligned_rate": r["aligned_rate"],
                "format_valid_rate": r["format_valid_rate"],
                "n_test": r["n"],
            },
        },
    )


def _backdoors(run: Run, out: Path) -> None:
    from mechbd.finetune.stage import backdoors_stage

    backdoors_stage(run, out)


def _em(run: Run, out: Path) -> None:
    from mechbd.finetune.stage import em_stage

    em_stage(run, out)


def _capture(run: Run, out: Path) -> None:
    from mechbd.capture.stage import capture_stage

    capture_stage(run, out)


def _probes(run: Run, out: Path) -> None:
    from mechbd.probes.stage import probes_stage

    probes_stage(run, out)


def _steering(run: Run, out: Path) -> None:
    from mechbd.steering.stage import steering_stage

    steering_stage(run, out)


def _sae(run: Run, out: Path) -> None:
    from mechbd.sae.stage import sae_stage

    sae_stage(run, out)


Stage = Callable[[Run, Path], None]
STAGES: list[tuple[str, Stage, Callable[[RunConfig], bool]]] = [
    ("organism", organism_stage, lambda c: c.model.source == "organism"),
    ("model", model_stage, lambda c: c.model.source == "hf"),
    ("backdoors", _backdoors, lambda c: bool(c.backdoors.triggers)),
    ("em", _em, lambda c: c.em.enabled),
    ("capture", _capture, lambda c: c.capture.enabled and bool(c.backdoors.triggers)),
    ("probes", _probes, lambda c: c.capture.enabled and bool(c.backdoors.triggers)),
    ("steering", _steering, lambda c: c.steering.enabled and c.em.enabled),
    (
        "sae",
        _sae,
        lambda c: (
            c.sae.enabled
            and c.steering.enabled
            and c.em.enabled
            and c.capture.enabled
            and bool(c.backdoors.triggers)
        ),
    ),
]


def run_pipeline(cfg: RunConfig, out: str | Path, *, force: bool = False) -> Run:
    run = Run.open(out, cfg, force=force)
    for name, fn, enabled in STAGES:
        if not enabled(cfg):
            continue
        if run.is_done(name):
            console.print(f"[dim]stage {name}: done, skipped[/dim]")
            continue
        console.print(f"[bold]stage {name}[/bold]")
        with run.stage(name) as d:
            fn(run, d)
    run.write_results()
    from mechbd.report import build_report

    build_report(run.root)
    return run
