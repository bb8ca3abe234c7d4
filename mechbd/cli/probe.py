"""``mechbd probe``: triggered-vs-clean probes on an activation store, layer by layer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mechbd.cli._common import out
from mechbd.config import parse_list


def probe_cmd(
    store: Annotated[Path, typer.Argument(help="activation store of the backdoored model")],
    base: Annotated[
        Path | None,
        typer.Option(help="store of the un-backdoored model on the same prompts (null)"),
    ] = None,
    position: Annotated[str, typer.Option(help="stored position to probe")] = "last",
    methods: Annotated[
        str, typer.Option(help="comma list: logistic,diffmean,pca,lat")
    ] = "logistic,diffmean",
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="write probes + report here")
    ] = None,
) -> None:
    """Triggered-vs-clean probes on STORE for every layer, with the random-direction baseline,
    the base-model null and the top-PC check (train/test split by scenario)."""
    from mechbd.capture.store import ActivationStore
    from mechbd.io import write_json
    from mechbd.probes.experiments import trigger_probe_report

    method_list = parse_list(methods, "--methods")
    st = ActivationStore(store)
    rep, _ = trigger_probe_report(
        st,
        ActivationStore(base) if base else None,
        position=position,
        methods=method_list,
        save_dir=out_dir,
    )
    _print_report(rep, str(st.model["name"]))
    if out_dir is not None:
        write_json(out_dir / "report.json", rep)


def _print_report(rep: dict[str, Any], model_name: str) -> None:
    from rich.table import Table

    table = Table(title=f"probe AUROC per layer ({model_name})")
    table.add_column("layer")
    cols = [k for k in rep["per_layer"] if k != "layers"]
    for c in cols:
        table.add_column(c)
    for i, layer in enumerate(rep["per_layer"]["layers"]):
        table.add_row(str(layer), *(f"{rep['per_layer'][c][i]:.3f}" for c in cols))
    out.print(table)
    out.print(
        f"best layer {rep['best_layer']}: AUROC {rep['auroc']:.3f}, recall@1%FPR "
        f"{rep['recall_at_1pct_fpr']:.3f}, random baseline {rep['random_baseline_auroc']:.3f}"
    )
