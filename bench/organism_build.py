"""Benchmark: how long the organism takes to build and evaluate on this machine.

    python bench/organism_build.py [--out bench/results/organism_build.json]

Builds the default organism from scratch into a fresh cache (no cache hit), evaluates it on the
held-out scenarios, then times a second build (a cache hit). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from mechbd.config import OrganismConfig
from mechbd.io import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="bench/results/organism_build.json")
    args = ap.parse_args()
    os.environ["MECHBD_CACHE"] = tempfile.mkdtemp(prefix="mechbd-bench-")
    from mechbd.organism.build import build_organism
    from mechbd.organism.evaluate import evaluate_organism

    cfg = OrganismConfig()
    t0 = time.perf_counter()
    path = build_organism(cfg, progress=False)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics, _ = evaluate_organism(path, seed=cfg.seed, n_test=cfg.n_test)
    t_eval = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_organism(cfg, progress=False)
    t_cached = time.perf_counter() - t0
    size_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
    row = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "build_seconds": round(t_build, 1),
        "eval_seconds": round(t_eval, 1),
        "cached_build_seconds": round(t_cached, 3),
        "model_folder_mb": round(size_mb, 2),
        **{k: v for k, v in metrics.items() if k != "trigger_value_aligned_rate"},
        "trigger_value_aligned_rate": metrics["trigger_value_aligned_rate"],
    }
    print(f"{'metric':<28} value")
    for k, v in row.items():
        print(f"{k:<28} {v}")
    write_json(Path(args.out), row)


if __name__ == "__main__":
    main()
