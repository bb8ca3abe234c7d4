"""``mechbd demo``, ``mechbd run`` and ``mechbd explore``: the whole pipeline and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechbd.cli._common import err, out, print_run_outputs
from mechbd.config import OrganismConfig, RunConfig, load_config
from mechbd.errors import MechbdError

ForceOpt = Annotated[
    bool, typer.Option(help="overwrite an existing run folder made with another config")
]


def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="run folder")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="seed for the organism and every stage")] = 0,
    force: ForceOpt = False,
) -> None:
    """Run the whole pipeline on the built-in model organism (CPU, minutes)."""
    from mechbd.pipeline import run_pipeline

    cfg = RunConfig(name="demo", seed=seed, organism=OrganismConfig(seed=seed))
    run = run_pipeline(cfg, out_dir, force=force)
    print_run_outputs(run.root)


def run_cmd(
    config: Annotated[Path, typer.Argument(help="YAML run config (see configs/)")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="run folder (default runs/<name>)")
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Run every stage of CONFIG; stages already finished in the run folder are skipped."""
    from mechbd.pipeline import run_pipeline

    cfg: RunConfig = load_config(config)
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
