"""What the command modules share: the two consoles and the option types used by several
commands. Nothing here imports torch or transformers, so ``mechbd --help`` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

err = Console(stderr=True)
out = Console()

DeviceOpt = Annotated[
    str | None,
    typer.Option(
        help="cpu, cuda, cuda:1, or auto (shard a model larger than one GPU over all GPUs); default: best"
    ),
]


def print_run_outputs(run_root: Path) -> None:
    """Where a finished run put its results.json (and report.html, when it made one)."""
    res = run_root / "results.json"
    out.print(f"results: {res}")
    report = run_root / "report.html"
    if report.exists():
        out.print(f"report:  {report}")


def load_model_or_adapter(model: str, adapter: Path | None, **kw: Any) -> tuple[Any, Any]:
    """``(model, tokenizer)``: MODEL with ADAPTER merged when one is given, else MODEL alone;
    ``kw`` (device, dtype, trust_remote_code) go to the loader."""
    from mechbd.models import load_adapter, load_model

    return load_adapter(model, adapter, **kw) if adapter is not None else load_model(model, **kw)
