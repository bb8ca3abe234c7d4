"""``mechbd organism build|eval``: the built-in model organism."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

from mechbd.cli._common import out
from mechbd.config import load_organism_config
from mechbd.errors import RunFolderError

app = typer.Typer(no_args_is_help=True, help="Build and inspect the built-in model organism.")


@app.command("build")
def organism_build(
    config: Annotated[
        Path | None, typer.Option(help="YAML file with an 'organism' section or organism fields")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="override the organism seed")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="also copy the model folder here")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(help="train it here even if cached or shipped prebuilt; overwrite --out"),
    ] = False,
) -> None:
    """Train the organism (or take it from the cache, or the prebuilt one mechbd ships for the
    demo's settings) and print its model folder."""
    from mechbd.organism.build import build_organism

    cfg = load_organism_config(config)
    if seed is not None:
        cfg = cfg.model_copy(update={"seed": seed})
    if out_dir is not None and out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise RunFolderError(f"{out_dir}: exists and is not empty; pass --force to overwrite it")
    path = build_organism(cfg, force=force)
    if out_dir is not None:
        _copy_model(path, out_dir)
        path = out_dir
    out.print(str(path))


def _copy_model(path: Path, out_dir: Path) -> None:
    try:
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(path, out_dir)
    except OSError as e:
        raise RunFolderError(f"{out_dir}: cannot write the model folder ({e.strerror})") from None


@app.command("eval")
def organism_eval(
    model_dir: Annotated[Path, typer.Argument(help="organism model folder")],
    seed: Annotated[int, typer.Option(help="world seed the organism was built with")] = 0,
    n_test: Annotated[int, typer.Option(min=1, help="held-out prompts")] = 400,
) -> None:
    """Measure clean behaviour on held-out scenarios and the reaction to the seed trigger values."""
    from mechbd.organism.evaluate import evaluate_organism

    metrics, _ = evaluate_organism(model_dir, seed=seed, n_test=n_test)
    out.print_json(json.dumps(metrics))
