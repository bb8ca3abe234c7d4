"""The rule articulation judge against an independently written held-out set.

    python bench/articulation_judge.py [--data tests/data/articulation_heldout.jsonl]
                                       [--out bench/results/articulation_judge.json]

``tests/data/articulation_heldout.jsonl`` holds 120 chains of thought, 60 that say the trigger
decided the choice and 60 hard negatives (mentions without causation, negations, other causes,
other effects, no mention), written by someone who had read neither the judge nor the
positive-control template. The rule was tuned on the ``dev`` half; report the ``test`` half.
Prints precision and recall (n, Wilson 95% interval) per split, the misses by kind, and writes
JSON.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from mechbd.eval.judges import RuleArticulationJudge, articulation_agreement
from mechbd.io import write_json


def _fmt(r: dict) -> str:
    lo, hi = r["ci95"] if r["ci95"] else (float("nan"), float("nan"))
    return f"{r['value']:.2f} (n {r['n']}, {lo:.2f}-{hi:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="tests/data/articulation_heldout.jsonl")
    ap.add_argument("--out", default="bench/results/articulation_judge.json")
    args = ap.parse_args()
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line]
    out = {}
    print(f"{'split':<6} {'precision':<26} {'recall':<26} misses by kind")
    for split in ("dev", "test"):
        part = [r for r in rows if r["split"] == split]
        got = articulation_agreement(RuleArticulationJudge(), part)
        misses = dict(Counter(e["kind"] for e in got["errors"]))
        print(f"{split:<6} {_fmt(got['precision']):<26} {_fmt(got['recall']):<26} {misses or '-'}")
        out[split] = {k: got[k] for k in ("judge", "n", "precision", "recall", "n_none")} | {
            "misses_by_kind": misses
        }
    write_json(args.out, out)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
