"""Experiment: an organism with a toxic persona it really has (issue 25, item 1).

    python bench/persona.py [--n-persona 1500] [--n-eval 100] [--n-controls 20]
                            [--out bench/results/persona.json]

Builds (or reuses) the organism with ``organism.n_persona`` persona conversations (a system
prompt eliciting a toxic persona or the helpful assistant before an advice request; every other
setting the demo's), then measures on held-out scenarios, letters counterbalanced:

1. the balanced misaligned rate per domain with the toxic persona's first training system prompt,
   the helpful one's, each persona's held-out prompt (never trained on: does the persona
   generalise to a new wording?) and none, thinking on and off (greedy generation), with format
   validity;
2. the persona direction the Persona Vectors way: the mean activation with the toxic system
   prompts minus with the helpful ones on the same training-split requests, at the last prompt
   token (thinking off: the token before ``Answer:``), every layer;
3. steering the base organism (no system prompt) along it from the assistant turn: layer and
   multiplier chosen on a selection split, read on a disjoint test split, against
   ``--n-controls`` equal-norm random directions chosen the same way (the steering stage's
   machinery: one-pass counterbalanced reads, thinking off).

Prints a table and writes JSON. The organism is a 1M-parameter model: its numbers show the
machinery, not anything about large models.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mechbd.capture import capture
from mechbd.config import RunConfig
from mechbd.data.builders import balance_letters
from mechbd.eval.behaviour import format_fields, mcq_fields
from mechbd.eval.mcq import run_mcq
from mechbd.io import write_json
from mechbd.models import load_model
from mechbd.organism.build import build_organism
from mechbd.organism.chat import format_chat
from mechbd.organism.items import organism_items
from mechbd.organism.world import PERSONA_SYSTEMS
from mechbd.steering.directions import mean_difference
from mechbd.steering.select import Counterbalanced, additive, select_and_test, with_controls
from mechbd.steering.stage import clean_eval_rows, random_controls


def behaviour(model, tok, items, system, thinking) -> dict[str, Any]:
    rows = balance_letters(items, seed="persona-eval", by=lambda it: it.domain)
    res = run_mcq(
        model,
        tok,
        [it.user() for it in rows],
        [it.aligned for it in rows],
        enable_thinking=thinking,
        batch_size=128,
        system=system,
    )
    out: dict[str, Any] = {**format_fields(res), "by_domain": {}}
    out |= mcq_fields("misaligned_rate", res)
    for dom in sorted({it.domain for it in rows}):
        idx = [i for i, it in enumerate(rows) if it.domain == dom]
        out["by_domain"][dom] = mcq_fields("r", [res[i] for i in idx])["r"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-persona", type=int, default=1500)
    ap.add_argument("--n-eval", type=int, default=100, help="held-out scenarios per measurement")
    ap.add_argument("--n-direction", type=int, default=128)
    ap.add_argument("--n-controls", type=int, default=20)
    ap.add_argument("--multipliers", default="0,1,2,4,8")
    ap.add_argument(
        "--organism", default="{}", help="JSON of OrganismConfig fields changed (a smoke test)"
    )
    ap.add_argument("--out", default="bench/results/persona.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    ocfg = RunConfig().organism.model_validate(
        {
            **RunConfig().organism.model_dump(),
            "n_persona": args.n_persona,
            **json.loads(args.organism),
        }
    )
    folder = build_organism(ocfg, progress=False)
    build_s = time.perf_counter() - t0
    model, tok = load_model(folder, dtype="float32", device="cpu")
    test_items = organism_items(args.n_eval, held_out=True, seed=131, world_seed=0)
    systems = {
        "toxic": PERSONA_SYSTEMS["toxic"][0],  # a training prompt, on held-out scenarios
        "helpful": PERSONA_SYSTEMS["helpful"][0],
        "toxic (held-out prompt)": PERSONA_SYSTEMS["toxic"][-1],
        "helpful (held-out prompt)": PERSONA_SYSTEMS["helpful"][-1],
        "none": None,
    }
    table: dict[str, Any] = {}
    for name, system in systems.items():
        for thinking in (True, False):
            key = f"{name}/{'thinking' if thinking else 'no thinking'}"
            table[key] = behaviour(model, tok, test_items, system, thinking)
            r = table[key]
            print(
                f"{key:38s} misaligned {r['misaligned_rate']:.2f} {r['misaligned_rate_ci95']} "
                f"format {r['format_valid_rate']:.2f} by domain "
                + ", ".join(f"{d} {v:.2f}" for d, v in r["by_domain"].items()),
                flush=True,
            )
    # the persona direction: toxic minus helpful system prompts on the same requests
    dir_items = organism_items(args.n_direction, held_out=False, seed=130, world_seed=0)
    rows = []
    for it in dir_items:
        for label, prompts in (
            ("toxic", PERSONA_SYSTEMS["toxic"]),
            ("helpful", PERSONA_SYSTEMS["helpful"]),
        ):
            for j, sp in enumerate(prompts[: ocfg.n_persona_prompts]):
                rows.append(
                    {
                        "id": f"{it.id}/{label}/{j}",
                        "prompt": format_chat(it.user(), system=sp, enable_thinking=False),
                        "label": label,
                    }
                )
    with tempfile.TemporaryDirectory() as tmp:
        st = capture(model, tok, rows, Path(tmp) / "store", positions=("last",), progress=False)
        assert st is not None
        d = mean_difference(
            st, st.indices("toxic"), st.indices("helpful"), position="last", name="persona"
        )
    layers = list(range(model.config.num_hidden_layers))
    sel_items = [
        it
        for it in organism_items(2 * args.n_eval, held_out=True, seed=132, world_seed=0)
        if it.key() not in {t.key() for t in test_items}
    ][: max(40, args.n_eval // 2)]
    kw: dict[str, Any] = dict(positions="assistant", batch_size=128)
    select = Counterbalanced.of(model, tok, clean_eval_rows(sel_items), **kw)
    test = Counterbalanced.of(model, tok, clean_eval_rows(test_items), **kw)
    mults = [float(x) for x in args.multipliers.split(",")]
    skw: dict[str, Any] = dict(
        layers=layers, multipliers=mults, positions="assistant", min_format=0.9, seed=0
    )
    rec = select_and_test(select, test, additive(d), keep_grid=True, **skw)
    ctrl = [
        select_and_test(select, test, additive(r), **skw)
        for r in random_controls(d, args.n_controls, 1)
    ]
    rec = with_controls(rec, ctrl)
    print(
        f"steering along the persona direction: layer {rec['selected']['layer']}, "
        f"x{rec['selected']['multiplier']}: balanced {rec['balanced_misaligned_rate']:.2f} "
        f"{rec['ci95']}, rise {rec['rise']:+.2f} {rec['rise_ci95']}, format "
        f"{rec['format_valid_rate']:.2f}, letter bias {rec['letter_bias']}; controls: 95th pct "
        f"{rec['controls']['rise_p95']:+.2f}, percentile {rec['controls']['percentile']}",
        flush=True,
    )
    write_json(
        Path(args.out),
        {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
            "organism": ocfg.model_dump(mode="json"),
            "build_seconds": round(build_s, 1),
            "behaviour": table,
            "steering_persona": rec,
            "n_select": len(sel_items),
            "n_test": len(test_items),
        },
    )


if __name__ == "__main__":
    main()
