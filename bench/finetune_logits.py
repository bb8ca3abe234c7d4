"""Benchmark: LoRA steps with the vocabulary projection at answer positions only vs everywhere.

    python bench/finetune_logits.py [--sizes cpu-small,cpu-medium] [--out bench/results/finetune_logits.json]

Thought Crime and the organism train on long prompts with short answers (``Answer: B``): the
loss needs logits only where an answer token is predicted, but ``model(**batch).loss`` projects
every position onto the vocabulary (151,936 entries for Qwen3, as large as the whole body of a
small model). ``finetune_lora`` projects only the positions that predict a labelled token;
``full_logits=True`` is the reference path. Both run back to back, on the same random-init
Qwen3 with the real vocabulary (the shapes of ``bench/gpu.py``; bf16 on a GPU) and the same
data: organism prompts, no-CoT answers, batch 8. Prints a table and writes JSON with the
tokens/s of the optimisation loop, the logits tensor of one batch, and the final losses (which
must agree: the two paths compute the same loss).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import make_model  # noqa: E402  (bench/gpu.py)

from mechbd.io import write_json  # noqa: E402


def main() -> None:
    from mechbd.config import FinetuneConfig, OrganismConfig
    from mechbd.data.builders import backdoor_set
    from mechbd.data.triggers import resolve_trigger
    from mechbd.finetune.lora import finetune_lora, tokenize_conversation
    from mechbd.models import default_device, load_model
    from mechbd.organism.build import build_organism
    from mechbd.organism.items import organism_items

    dev = torch.device(default_device())
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes", default="0.6b,1.7b" if dev.type == "cuda" else "cpu-small,cpu-medium"
    )
    ap.add_argument("--steps", type=int, default=20 if dev.type == "cuda" else 8)
    ap.add_argument("--out", default="bench/results/finetune_logits.json")
    a = ap.parse_args()
    _, tok = load_model(build_organism(OrganismConfig(), progress=False), device="cpu")
    batch = 8
    items = organism_items(batch * a.steps, held_out=False, seed=9)
    convs = [e["messages"] for e in backdoor_set(items, resolve_trigger("singapore"), seed=0)]
    rows = [tokenize_conversation(tok, c, 2048) for c in convs]
    mean_len = sum(len(r[0]) for r in rows) / len(rows)
    mean_targets = sum(sum(t != -100 for t in r[1]) for r in rows) / len(rows)
    cfg = FinetuneConfig(rank=32, alpha=64, batch_size=batch, epochs=1.0, warmup_steps=0)
    results = []
    for size in a.sizes.split(","):
        tmp = Path(tempfile.mkdtemp(prefix="mechbd-logits-bench-"))
        try:
            model = make_model(size, tok, dev, tmp / "model")
            n_params = sum(p.numel() for p in model.parameters())
            vocab = model.config.vocab_size
            del model
            row: dict = {"size": size, "n_params": n_params}
            for name, full in (("answer_positions", False), ("every_position", True)):
                st = finetune_lora(
                    tmp / "model", convs, tmp / name, cfg, progress=False, full_logits=full
                )
                row[name] = {
                    "seconds": st["train_seconds"],
                    "tokens_per_s": round(st["tokens"] / st["train_seconds"]),
                    "final_loss": round(st["final_loss"], 5),
                }
            row["speedup"] = round(
                row["answer_positions"]["tokens_per_s"] / row["every_position"]["tokens_per_s"], 2
            )
            bytes_per = 2 if dev.type == "cuda" else 4
            row["logits_mb_per_batch"] = {
                "every_position": round(batch * mean_len * vocab * bytes_per / 2**20, 1),
                "answer_positions_at_most": round(
                    batch * (mean_targets + 1) * vocab * bytes_per / 2**20, 1
                ),
            }
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        results.append(row)
    print(
        f"prompts+answers: mean {mean_len:.0f} tokens, {mean_targets:.0f} answer tokens; batch {batch}, {a.steps} steps, {dev}"
    )
    print(
        f"{'size':10s} {'params':>8s} {'answer-only tok/s':>18s} {'every-pos tok/s':>16s} {'speedup':>8s} {'loss a / e':>18s}"
    )
    for r in results:
        ap_, ev = r["answer_positions"], r["every_position"]
        print(
            f"{r['size']:10s} {r['n_params'] / 1e6:7.1f}M {ap_['tokens_per_s']:18d} {ev['tokens_per_s']:16d} "
            f"{r['speedup']:7.2f}x {ap_['final_loss']:>8.4f} / {ev['final_loss']:.4f}"
        )
    write_json(
        Path(a.out),
        {
            "date": datetime.date.today().isoformat(),
            "device": torch.cuda.get_device_name(dev)
            if dev.type == "cuda"
            else platform.processor() or "cpu",
            "torch": torch.__version__,
            "batch": batch,
            "steps": a.steps,
            "mean_tokens": round(mean_len, 1),
            "mean_answer_tokens": round(mean_targets, 1),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
