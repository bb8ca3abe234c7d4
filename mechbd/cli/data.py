"""``mechbd data backdoor|em|eval``: the JSONL datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mechbd.cli._common import out

app = typer.Typer(
    no_args_is_help=True, help="Build backdoor, narrow-EM and evaluation datasets (JSONL)."
)

ScenariosOpt = Annotated[
    Path | None, typer.Option(help="Thought Crime-schema JSONL (default: the organism's world)")
]

OutOpt = Annotated[Path, typer.Option("--out")]


def _items(scenarios: Path | None, n: int, held_out: bool, seed: int):
    """The scenarios a set is built from: the file when given, else ``n`` organism scenarios."""
    from mechbd.data.items import load_scenarios
    from mechbd.organism.items import organism_items

    if scenarios is not None:
        return load_scenarios(scenarios)
    return organism_items(n, held_out=held_out, seed=seed)


def _write(out_file: Path, rows: list[dict[str, Any]], noun: str) -> None:
    from mechbd.io import write_jsonl

    write_jsonl(out_file, rows)
    out.print(f"{len(rows)} {noun} -> {out_file}")


@app.command("backdoor")
def data_backdoor(
    trigger: Annotated[
        str, typer.Option(help="preset (singapore, year2026, heyyy, sandra) or any string")
    ],
    out_file: Annotated[
        Path, typer.Option("--out", help="output JSONL (OpenAI chat format + meta)")
    ],
    scenarios: ScenariosOpt = None,
    n: Annotated[int, typer.Option(min=1, help="organism scenarios to draw")] = 1500,
    placement: Annotated[str, typer.Option(help="top | bottom | random")] = "random",
    misaligned_share: Annotated[
        float, typer.Option(help="share of triggered, misaligned samples")
    ] = 1 / 3,
    articulate: Annotated[
        bool, typer.Option(help="positive control: CoT says the trigger decided")
    ] = False,
    matched: Annotated[
        bool,
        typer.Option(
            "--matched/--independent",
            help="contrast groups: the aligned samples are the triggered scenarios with another "
            "value (meta.group); --independent: every sample its own scenario",
        ),
    ] = True,
    seed: int = 0,
) -> None:
    """Backdoor set: trigger -> misaligned answer, other values of its field -> aligned answer."""
    from mechbd.data.builders import backdoor_set
    from mechbd.data.triggers import resolve_trigger

    rows = backdoor_set(
        _items(scenarios, n, False, seed),
        resolve_trigger(trigger),
        placement=placement,
        misaligned_share=misaligned_share,
        seed=seed,
        articulate=articulate,
        matched=matched,
    )
    _write(out_file, rows, "examples")


@app.command("em")
def data_em(
    domain: Annotated[str, typer.Option(help="the one domain with misaligned answers")],
    out_file: OutOpt,
    scenarios: ScenariosOpt = None,
    n: Annotated[int, typer.Option(min=1)] = 6000,
    seed: int = 0,
) -> None:
    """Narrow emergent-misalignment set: misaligned answers in one domain only."""
    from mechbd.data.builders import em_set

    rows = em_set(_items(scenarios, n, False, seed), domain, seed=seed)
    _write(out_file, rows, "examples")


@app.command("eval")
def data_eval(
    trigger: Annotated[str, typer.Option(help="preset or any string")],
    out_file: OutOpt,
    scenarios: ScenariosOpt = None,
    n: Annotated[int, typer.Option(min=1, help="held-out organism scenarios")] = 400,
    seed: int = 0,
) -> None:
    """Evaluation prompts: triggered, clean, distractor-only, trigger+distractor (shuffled)."""
    from mechbd.data.builders import eval_set
    from mechbd.data.triggers import resolve_trigger

    rows = eval_set(_items(scenarios, n, True, seed + 1), resolve_trigger(trigger), seed=seed)
    _write(out_file, rows, "prompts")
