"""``mechbd steer``: a steering sweep (multipliers x layers x directions) on a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mechbd.cli._common import DeviceOpt, load_model_or_adapter, out
from mechbd.config import parse_list
from mechbd.errors import MechbdError


def steer_cmd(
    model: Annotated[str, typer.Argument(help="model: local folder or hub id")],
    rows_file: Annotated[
        Path,
        typer.Argument(
            help="eval JSONL (user, aligned_mcq_answer, misaligned_mcq_answer, condition)"
        ),
    ],
    direction: Annotated[
        list[Path] | None, typer.Option(help="saved direction (.safetensors); repeatable")
    ] = None,
    probe: Annotated[
        list[Path] | None, typer.Option(help="probe (.safetensors) as a direction; repeatable")
    ] = None,
    mean_diff: Annotated[
        Path | None, typer.Option(help="store: direction = mean(--positive) - mean(--negative)")
    ] = None,
    positive: Annotated[str, typer.Option(help="label(s), comma list")] = "triggered",
    negative: Annotated[str, typer.Option(help="label(s), comma list")] = "clean",
    position: Annotated[str, typer.Option(help="stored position for --mean-diff")] = "last",
    adapter: Annotated[Path | None, typer.Option(help="PEFT adapter folder")] = None,
    layers: Annotated[str, typer.Option(help="all, 3, 0-5 or 1,3,5")] = "all",
    multipliers: Annotated[str, typer.Option(help="comma list")] = "0,1,2,4,8",
    op: Annotated[str, typer.Option(help="add, ablate or ablate_add")] = "add",
    positions: Annotated[str, typer.Option(help="all or assistant")] = "assistant",
    control: Annotated[
        bool, typer.Option(help="add an equal-norm random direction per direction")
    ] = True,
    as_shown: Annotated[
        bool,
        typer.Option(
            "--as-shown",
            help="score the rows as written instead of each in both option orders",
        ),
    ] = False,
    batch_size: int = 64,
    device: DeviceOpt = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="write records as JSON")] = None,
    trust_remote_code: bool = False,
) -> None:
    """Sweep multipliers x layers x directions on MODEL, measuring the balanced misaligned rate
    (each row in both option orders), per-condition rates, P(misaligned letter), format
    validity and clean accuracy."""
    from mechbd.capture.names import n_layers_of, parse_layers
    from mechbd.io import iter_jsonl, write_json
    from mechbd.steering.directions import build_directions, check_layers
    from mechbd.steering.sweep import sweep

    if not (direction or probe or mean_diff is not None):
        raise MechbdError("steer: give at least one --direction, --probe or --mean-diff")
    dirs = build_directions(
        direction or [],
        probe or [],
        mean_diff_store=mean_diff,
        positive=parse_list(positive, "--positive"),
        negative=parse_list(negative, "--negative"),
        position=position,
        control=control,
    )
    if not rows_file.is_file():
        raise MechbdError(f"{rows_file}: eval file not found")
    rows = list(iter_jsonl(rows_file))
    mults = parse_list(multipliers, "--multipliers", float)
    if not as_shown:
        from mechbd.eval.mcq import both_orders

        rows = both_orders(rows)
    m, tok = load_model_or_adapter(
        model, adapter, device=device, trust_remote_code=trust_remote_code
    )
    layer_list = parse_layers(layers, n_layers_of(m))
    check_layers(dirs, layer_list)
    recs = sweep(
        m,
        tok,
        rows,
        dirs,
        layers=layer_list,
        multipliers=mults,
        op=op,
        positions=positions,
        batch_size=batch_size,
    )
    _print_records(recs, f"steering {model}" + (f" + {adapter}" if adapter else ""))
    if out_file is not None:
        write_json(
            out_file,
            {"model": model, "adapter": str(adapter) if adapter else None, "records": recs},
        )


def _print_records(recs: list[dict[str, Any]], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for c in (
        "direction",
        "layer",
        "multiplier",
        "balanced misaligned [95% CI]",
        "P(mis letter)",
        "format",
        "bias",
    ):
        table.add_column(c)
    for r in recs:
        table.add_row(
            r["direction"],
            str(r["layer"]),
            f"{r['multiplier']:g}",
            "-"
            if r["balanced_misaligned_rate"] is None
            else f"{r['balanced_misaligned_rate']:.3f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]",
            f"{r['p_misaligned_letter']:.3f}",
            f"{r['format_valid_rate']:.3f}",
            "-" if r["letter_bias"] is None else f"{r['letter_bias']:.2f}",
        )
    out.print(table)
