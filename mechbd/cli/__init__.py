"""The ``mechbd`` command line: one subcommand per stage, ``run`` for all, ``demo`` for the organism."""

from __future__ import annotations

import sys

import typer

from mechbd.cli import capture, data, evaluate, finetune, organism, probe, run, sae, steer
from mechbd.cli._common import err
from mechbd.errors import MechbdError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
# the order here is the order `mechbd --help` lists the commands in
app.command()(run.demo)
app.command("run")(run.run_cmd)
app.command()(finetune.finetune)
app.command("eval")(evaluate.eval_cmd)
app.command("capture")(capture.capture_cmd)
app.command("probe")(probe.probe_cmd)
app.command("steer")(steer.steer_cmd)
app.command()(run.explore)
app.add_typer(organism.app, name="organism")
app.add_typer(data.app, name="data")
app.add_typer(sae.app, name="sae")


def main() -> None:
    """The ``mechbd`` console script: a :class:`MechbdError` is one red line and exit code 2."""
    try:
        app()
    except MechbdError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
