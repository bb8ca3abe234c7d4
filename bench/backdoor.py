"""Benchmark: planting the demo's organism backdoor (issue 3's 40 s budget) on this machine.

    python bench/backdoor.py [--trigger singapore] [--seeds 0,1,2,3] [--out bench/results/backdoor.json]

Builds (or reuses) the default organism, builds the trigger's backdoor set exactly as the
``backdoors`` stage of ``mechbd demo`` does (1,500 scenarios, 1 misaligned : 2 aligned, random
placement, seed 0), and finetunes it with ``organism_finetune()`` twice, back to back: with the
vocabulary projection only at the positions that predict an answer token (the default) and at
every position (``full_logits=True``, the reference). Each adapter is evaluated on the stage's
200 held-out scenarios x 4 conditions (thinking on) so a fast run that planted nothing cannot
pass for a win. Prints a table and writes JSON.

``--seeds`` instead plants the same set once per LoRA seed (``FinetuneConfig.seed``: the
adapter's initialisation and the batch order; the data are unchanged), default path only, to
show how much the end of the loss plateau depends on the draw.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mechbd.config import RunConfig
from mechbd.data.builders import backdoor_set, eval_set
from mechbd.data.items import organism_items
from mechbd.data.triggers import resolve_trigger
from mechbd.eval.behaviour import evaluate_backdoor
from mechbd.finetune.lora import finetune_lora, load_adapter
from mechbd.io import write_json
from mechbd.organism.build import build_organism


def first_low_step(losses: list[float], level: float = 0.01, window: int = 10) -> int | None:
    """The step after which the loss stays below ``level`` for ``window`` steps (the end of
    the plateau), or None."""
    return next(
        (i for i in range(len(losses) - window) if max(losses[i : i + window]) < level), None
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trigger", default="singapore")
    ap.add_argument("--seeds", default="", help="comma-separated LoRA seeds (default path only)")
    ap.add_argument("--out", default="bench/results/backdoor.json")
    args = ap.parse_args()
    run = RunConfig()  # the demo's settings; the data as backdoors_stage builds it
    bd, seed, world = run.backdoors, run.seed, run.organism.seed
    base = build_organism(run.organism, progress=False)
    trigger = resolve_trigger(args.trigger)
    train = organism_items(bd.n_train, held_out=False, seed=seed + 10, world_seed=world)
    test = organism_items(bd.n_eval, held_out=True, seed=seed + 11, world_seed=world)
    ds = backdoor_set(
        train, trigger, misaligned_share=bd.misaligned_share, placement=bd.placement, seed=seed
    )
    convs = [e["messages"] for e in ds]
    rows = eval_set(test, trigger, seed=seed)
    cfg = bd.finetune

    def plant(seed: int, full_logits: bool) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            stats = finetune_lora(
                base,
                convs,
                Path(tmp) / "adapter",
                cfg.model_copy(update={"seed": seed}),
                progress=False,
                device="cpu",
                full_logits=full_logits,
            )
            wall = time.perf_counter() - t0
            model, tok = load_adapter(base, Path(tmp) / "adapter", device="cpu")
            metrics, _ = evaluate_backdoor(model, tok, rows, enable_thinking=bd.enable_thinking)
        return {
            "lora_seed": seed,
            "logits at": "every position" if full_logits else "answer positions",
            "finetune_seconds": round(wall, 1),
            "train_loop_seconds": round(stats["train_seconds"], 1),
            "steps": stats["steps"],
            "plateau_ends_at_step": first_low_step(stats["losses"]),
            "asr": metrics["asr"],
            "clean_misaligned_rate": metrics["clean_misaligned_rate"],
            "distractor_misaligned_rate": metrics["distractor_misaligned_rate"],
        }

    if args.seeds:
        table = [plant(int(x), False) for x in args.seeds.split(",")]
    else:
        table = [plant(cfg.seed, False), plant(cfg.seed, True)]
    keys = list(table[0])
    print(" | ".join(keys))
    for row in table:
        print(" | ".join(str(row[k]) for k in keys))
    speedup = None
    if not args.seeds:
        speedup = round(table[1]["train_loop_seconds"] / table[0]["train_loop_seconds"], 2)
        print(f"train loop, every position / answer positions: {speedup:.2f}x")
    write_json(
        Path(args.out),
        {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads",
            "trigger": trigger.line,
            "finetune": cfg.model_dump(mode="json"),
            "runs": table,
            "speedup_train_loop": speedup,
        },
    )


if __name__ == "__main__":
    main()
