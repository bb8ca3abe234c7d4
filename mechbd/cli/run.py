"""``mechbd demo``, ``mechbd run`` and ``mechbd explore``: the whole pipeline and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechbd.cli._common import err, out, print_run_outputs
from mechbd.config import RunConfig, dump_config, load_config, organism_config
from mechbd.errors import MechbdError

ForceOpt = Annotated[
    bool, typer.Option(help="overwrite an existing run folder made with another config")
]


def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="run folder")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="seed for the organism and every stage")] = 0,
    force: ForceOpt = False,
    train: Annotated[
        bool,
        typer.Option(
            "--train",
            help="train the organism and its adapters here (organism.prebuilt false) instead "
            "of using the ones mechbd ships prebuilt for these settings",
        ),
    ] = False,
) -> None:
    """Run the whole pipeline on the built-in model organism (CPU, minutes)."""
    from mechbd.pipeline import run_pipeline

    organism = {"seed": seed, **({"prebuilt": False} if train else {})}
    cfg = organism_config(name="demo", seed=seed, organism=organism)
    run = run_pipeline(cfg, out_dir, force=force)
    print_run_outputs(run.root)


def run_cmd(
    config: Annotated[Path, typer.Argument(help="YAML run config (see configs/)")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="run folder (default runs/<name>)")
    ] = None,
    force: ForceOpt = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="print the resolved config (extends and presets applied, every field) and "
            "the stages it would run, then stop",
        ),
    ] = False,
) -> None:
    """Run every stage of CONFIG; stages already finished in the run folder are skipped."""
    from mechbd.pipeline import run_pipeline, stages_of

    cfg: RunConfig = load_config(config)
    if dry_run:
        out.print(dump_config(cfg), end="", markup=False, highlight=False)
        out.print(f"# stages: {', '.join(stages_of(cfg))}", markup=False, highlight=False)
        out.print(f"# run folder: {out_dir or Path('runs') / cfg.name}", markup=False)
        return
    run = run_pipeline(cfg, out_dir or Path("runs") / cfg.name, force=force)
    print_run_outputs(run.root)


def explore(run_dir: Annotated[Path, typer.Argument(help="run folder (has results.json)")]) -> None:
    """Rebuild RUN_DIR/report.html (offline, self-contained) from its results.json."""
    from mechbd.pipeline import unfinished_stages
    from mechbd.report import build_report

    if not run_dir.is_dir():
        raise MechbdError(f"{run_dir}: no such folder")
    if not (run_dir / "results.json").is_file() or not (run_dir / "manifest.json").is_file():
        raise MechbdError(
            f"{run_dir}: not a mechbd run folder (no results.json / manifest.json); "
            "`mechbd run CONFIG.yaml` or `mechbd demo` makes one"
        )
    unfinished = unfinished_stages(run_dir)
    out.print(f"report: {build_report(run_dir, unfinished=unfinished)}")
    for name, why in unfinished:
        err.print(f"[yellow]stage {name} is not in the report ({why})[/yellow]")
