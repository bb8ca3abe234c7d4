"""The pipeline as stages over one run folder: each stage reads earlier stages' files and
writes its own folder; finished stages are skipped on rerun, and an interrupted one resumes
from what it had written (``Run.stage``: finished adapters and captured chunks are kept).

Stages, in order: ``organism`` (build the organism and measure its clean behaviour) or, for a
Hugging Face model, ``model`` (its identity and clean behaviour); ``backdoors``, ``em``,
``capture``, ``probes``, ``steering``, ``sae``; then ``report.html``. The scenarios come from
the organism's synthetic world for every model (plain English MCQs any chat model can read).
Each stage's contract (the stages it needs, its config switch, the files it leaves) is a
``Stage`` record in ``STAGES``; the paths it shares with other stages are named in
``mechbd.layout`` and the scenario splits in ``mechbd.organism.splits``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from mechbd.config import OrganismConfig, RunConfig, load_config
from mechbd.errors import ConfigError
from mechbd.io import read_json, write_json, write_jsonl
from mechbd.layout import (
    ADAPTER,
    DIRECTIONS,
    EM_DIRECTION,
    EVAL_PROMPTS,
    GENERATIONS,
    PERSONA_DIRECTION,
    RESULTS,
    STORE_MANIFEST,
    TRAIN_SET,
)
from mechbd.runs import Run

console = Console(stderr=True)

ORGANISM_NOTE = (
    "Numbers from the built-in model organism (a tiny Qwen3-architecture model trained from "
    "scratch on a synthetic world). They show that the machinery works; they are not evidence "
    "about large models."
)


def organism_personas(cfg: OrganismConfig) -> dict[str, str] | None:
    """The system prompt of each persona the organism was trained with (the first of its
    training prompts), or None for an organism without persona conversations."""
    from mechbd.organism.world import PERSONA_SYSTEMS

    if not cfg.n_persona:
        return None
    return {p: PERSONA_SYSTEMS[p][0] for p in ("toxic", "helpful")}


def _built_where(card: dict[str, Any]) -> str:
    pre = card.get("prebuilt")
    if not pre:
        return " Trained on this machine."
    return (
        f" Weights prebuilt ({pre.get('built_on', '?')}, {pre.get('date', '?')}) and shipped "
        "with mechbd, the same on every machine."
    )


def organism_stage(run: Run, out: Path) -> None:
    from mechbd.eval.generate import Sampling
    from mechbd.organism.build import build_organism, organism_card
    from mechbd.organism.evaluate import evaluate_organism
    from mechbd.organism.splits import scenario_source

    cfg = run.config.organism
    cached = build_organism(cfg)
    shutil.copytree(cached, out / "model")
    card = organism_card(out / "model")
    metrics, samples = evaluate_organism(
        out / "model",
        seed=cfg.seed,
        n_test=cfg.n_test,
        batch_size=run.config.eval.batch_size,
        sampling=Sampling.of(run.config.eval),
        personas=organism_personas(cfg),
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
                "note": ORGANISM_NOTE + _built_where(card),
            },
            "data": {"scenarios": scenario_source(run)},
            "organism": metrics,
        },
    )


def hf_note(path: str, scenarios: object = "organism") -> str:
    where = (
        "the built-in organism's synthetic world"
        if scenarios == "organism"
        else getattr(scenarios, "describe", lambda: str(scenarios))()
    )
    return (
        f"Numbers from {path} and the adapters finetuned from it in this run, on scenarios from "
        f"{where} (results.json `data` says which)."
    )


def model_stage(run: Run, out: Path) -> None:
    """A Hugging Face model: identity, size, dtype, and its clean behaviour on held-out
    organism-world scenarios (the ``organism`` results key, as for the organism), the aligned
    option at A in half of them and the rate balanced over the two letters."""
    from mechbd.data.builders import balance_letters
    from mechbd.eval.behaviour import answer_letter_bias, format_fields, mcq_fields
    from mechbd.eval.generate import Sampling
    from mechbd.eval.mcq import run_mcq
    from mechbd.models import base_model_dir, generation_backend, load_base
    from mechbd.organism.splits import scenario_source, split_items, split_seed

    cfg = run.config
    model, tok = load_base(run)
    items = balance_letters(
        split_items(run, "model_test", cfg.organism.n_test),
        seed=split_seed(cfg.seed, "model_test"),
    )
    with generation_backend(run) as gen:
        results = run_mcq(
            model,
            tok,
            [it.user() for it in items],
            [it.aligned for it in items],
            batch_size=cfg.eval.batch_size,
            sampling=Sampling.of(cfg.eval),
            generator=gen,
        )
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
                "note": hf_note(path, cfg.data.scenarios),
            },
            "data": {"scenarios": scenario_source(run)},
            "organism": {
                **mcq_fields("clean_aligned_rate", results, aligned=True),
                **format_fields(results),
                "letter_bias": answer_letter_bias(results),
                "n_test": len(results),
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


@dataclass(frozen=True)
class Stage:
    """A stage's contract: what it runs, the stages whose outputs it reads, when it runs, and
    the files every run of it leaves in its folder.

    The base model (the organism stage's, or ``model.path``) is every stage's input and is not
    listed in ``needs``."""

    name: str
    fn: Callable[[Run, Path], None]
    # its own switch in the config; the stage runs when that and every stage it needs are on
    switch: Callable[[RunConfig], bool]
    # stages whose outputs it reads (each listed earlier in STAGES)
    needs: tuple[Stage, ...] = field(default=(), repr=False)
    # stages whose outputs it reads when they ran (a missing one is skipped, not an error)
    optional: tuple[Stage, ...] = field(default=(), repr=False)
    # glob patterns, relative to the stage folder, each matching at least one file it wrote
    produces: tuple[str, ...] = ()

    def enabled(self, cfg: RunConfig) -> bool:
        return self.switch(cfg) and all(s.enabled(cfg) for s in self.needs)

    @property
    def need_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.needs)


ORGANISM = Stage(
    "organism",
    organism_stage,
    lambda c: c.model.source == "organism",
    produces=("model/config.json", "samples.jsonl", RESULTS),
)
MODEL = Stage("model", model_stage, lambda c: c.model.source == "hf", produces=(RESULTS,))
BACKDOORS = Stage(
    "backdoors",
    _backdoors,
    lambda c: bool(c.backdoors.triggers),
    produces=(
        RESULTS,
        f"*/{TRAIN_SET}",
        f"*/{ADAPTER}/adapter_config.json",
        f"*/{EVAL_PROMPTS}",
        f"*/{GENERATIONS}",
    ),
)
EM = Stage(
    "em",
    _em,
    lambda c: c.em.enabled,
    produces=(RESULTS, TRAIN_SET, f"{ADAPTER}/adapter_config.json"),
)
CAPTURE = Stage(
    "capture",
    _capture,
    lambda c: c.capture.enabled,
    needs=(BACKDOORS,),
    produces=("stores.json", f"*/backdoored/{STORE_MANIFEST}", f"*/base/{STORE_MANIFEST}"),
)
PROBES = Stage(
    "probes",
    _probes,
    lambda c: True,
    needs=(CAPTURE, BACKDOORS),
    produces=(RESULTS, "*/diffmean.safetensors"),
)
STEERING = Stage(
    "steering",
    _steering,
    lambda c: c.steering.enabled,
    needs=(EM,),
    optional=(BACKDOORS, PROBES),
    produces=(
        RESULTS,
        "sweep_base_em.json",
        "sweep_base_persona.json",
        EM_DIRECTION,
        PERSONA_DIRECTION,
    ),
)
SAE = Stage(
    "sae",
    _sae,
    lambda c: c.sae.enabled,
    needs=(PROBES, EM, STEERING, CAPTURE, BACKDOORS),
    produces=(RESULTS, "explorer.json", f"{DIRECTIONS}/user_wants_harm.safetensors"),
)
STAGES: list[Stage] = [ORGANISM, MODEL, BACKDOORS, EM, CAPTURE, PROBES, STEERING, SAE]


def stages_of(cfg: RunConfig) -> list[str]:
    """The stages ``cfg`` runs, in order."""
    return [s.name for s in STAGES if s.enabled(cfg)]


def run_pipeline(cfg: RunConfig, out: str | Path, *, force: bool = False) -> Run:
    run = Run.open(out, cfg, force=force)
    for stage in STAGES:
        if not stage.enabled(cfg):
            continue
        if run.is_done(stage.name):
            console.print(f"[dim]stage {stage.name}: done, skipped[/dim]")
            continue
        console.print(f"[bold]stage {stage.name}[/bold]")
        with run.stage(stage.name) as d:
            stage.fn(run, d)
    run.write_results()
    from mechbd.report import build_report

    build_report(run.root, unfinished=unfinished_stages(run.root))
    return run


def unfinished_stages(run_dir: Path) -> list[tuple[str, str]]:
    """``(stage, why)`` for every stage the run's config asks for that has not finished (what
    ``report.html`` and ``mechbd explore`` name)."""
    man, cfg_file = run_dir / "manifest.json", run_dir / "config.yaml"
    if not man.is_file() or not cfg_file.is_file():
        return []
    try:
        cfg: RunConfig = load_config(cfg_file)
    except ConfigError:  # a run made by another mechbd version: say nothing rather than guess
        return []
    stages = read_json(man).get("stages", {})
    out = []
    for stage in STAGES:
        name, info = stage.name, stages.get(stage.name, {})
        if stage.enabled(cfg) and info.get("status") != "done":
            status = info.get("status", "not run")
            out.append((name, f"{status}: {info['error']}" if info.get("error") else status))
    return out
