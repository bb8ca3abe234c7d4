"""Benchmark: the SAE's width and its persona latent, on an existing run folder.

    python bench/sae_width.py RUN_DIR [--expansions 4,8,16] [--sae JSON] [--confirm 200]
                              [--out bench/results/sae_width.json]

For each expansion factor, reruns the ``sae`` stage of RUN_DIR (a finished ``mechbd demo`` or
``mechbd run`` folder; its other stages are only read) into a scratch folder with ``sae.expansion``
(and any other ``--sae`` fields) changed, and prints both causal screens: the chosen latent, its
selection-split and test-split balanced rise, the rate misaligned in both orders, the letter
bias, format validity and the random latents' 95th percentile.

The width is a choice made after looking at those test-split figures, so ``--confirm N`` reads
each width's persona latent once more at the setting it chose (no selection) on N fresh held-out
scenarios that are neither selection nor test scenarios, beside the persona direction at its own
chosen setting and 20 random live latents at the latent's setting. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mechbd.config import load_config
from mechbd.io import write_json
from mechbd.models import load_base
from mechbd.organism.items import organism_items
from mechbd.runs import Run
from mechbd.sae.analysis import latent_directions
from mechbd.sae.load import load_sae
from mechbd.sae.stage import sae_stage
from mechbd.steering.directions import Direction
from mechbd.steering.select import Counterbalanced, additive, rise
from mechbd.steering.stage import clean_eval_rows, steering_select_rows, steering_test_rows

CONFIRM_SEED = 424242  # fresh held-out scenarios: neither split's seed


def screen_rows(res: dict[str, Any], key: str) -> dict[str, Any]:
    ps = res[key]
    best = ps["candidates"][str(ps["persona_latent"])]
    return {
        "latent": ps["persona_latent"],
        "multiplier": best["selected"]["multiplier"],
        "select_rate": best["selected"]["select_balanced_misaligned_rate"],
        "rise": best["rise"],
        "rise_ci95": best["rise_ci95"],
        "both_orders": best["consistent_misaligned_rate"],
        "letter_bias": best["letter_bias"],
        "format": best["format_valid_rate"],
        "controls_n": best["controls"]["n"],
        "controls_p95": best["controls"]["rise_p95"],
        "percentile": best["controls"]["percentile"],
    }


def confirm(run: Run, model: Any, tok: Any, sae_dir: Path, res: dict[str, Any], n: int) -> dict:
    banned = {r["scenario_key"] for r in steering_select_rows(run) + steering_test_rows(run)}
    seen: set[str] = set()
    fresh = []
    for it in organism_items(4 * n, held_out=True, seed=CONFIRM_SEED, world_seed=0):
        if it.key() not in banned and it.key() not in seen:
            seen.add(it.key())
            fresh.append(it)
    fresh = fresh[:n]
    split = Counterbalanced.of(
        model, tok, clean_eval_rows(fresh), positions="assistant", batch_size=128
    )
    base = split.measure()

    def read(d: Direction, layer: int, m: float) -> dict[str, Any]:
        o = split.measure(additive(d)(layer, m))
        s = o.summary()
        r, rc = rise(base, o, seed=0), rise(base, o, consistent=True, seed=0)
        return {
            "rise": r["diff"],
            "rise_ci95": r["ci95"],
            "both_orders": s["consistent_misaligned_rate"],
            "both_orders_rise_ci95": rc["ci95"],
            "letter_bias": s["letter_bias"],
            "format": s["format_valid_rate"],
        }

    sae, _ = load_sae(sae_dir)
    ps = res["persona_screen"]
    latent, L, scale = ps["persona_latent"], res["layer"], ps["scale"]
    m = ps["candidates"][str(latent)]["selected"]["multiplier"]
    out: dict[str, Any] = {"n_scenarios": len(fresh), "latent": latent, "multiplier": m}
    out["latent_read"] = read(latent_directions(sae, [latent], L, scale)[f"latent_{latent}"], L, m)
    d = Direction.load(run.layout.persona_direction)
    sel = json.loads(run.layout.results("steering").read_text())["steering"]["base_persona"]
    out["persona_direction_read"] = {
        "selected": sel["selected"],
        **read(d, sel["selected"]["layer"], sel["selected"]["multiplier"]),
    }
    g = torch.Generator().manual_seed(7)
    pool = torch.tensor([i for i in range(int(sae.cfg.d_sae)) if i != latent])
    ctrl = pool[torch.randperm(len(pool), generator=g)[:20]].tolist()
    dirs = latent_directions(sae, ctrl, L, scale)
    reads = [read(dirs[f"latent_{i}"], L, m) for i in ctrl]
    rises = sorted(x["rise"] for x in reads)
    out["random_latents_same_setting"] = {
        "n": len(reads),
        "rises": rises,
        "p95": float(torch.tensor(rises).quantile(0.95)),
        "both_orders_max": max(x["both_orders"] for x in reads),
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--expansions", default="4,8,16")
    ap.add_argument("--sae", default="{}", help="other sae fields, JSON")
    ap.add_argument("--confirm", type=int, default=0, help="fresh scenarios (0 = skip)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/sae_width.json"))
    a = ap.parse_args()
    cfg = load_config(a.run_dir / "config.yaml")
    run0 = Run(a.run_dir, cfg)
    model, tok = load_base(run0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for e in [int(x) for x in a.expansions.split(",")]:
            sae_cfg = cfg.sae.model_copy(update={"expansion": e, **json.loads(a.sae)})
            run = Run(a.run_dir, cfg.model_copy(update={"sae": sae_cfg}))
            out = Path(tmp) / f"x{e}"
            out.mkdir()
            t0 = time.perf_counter()
            sae_stage(run, out)
            secs = time.perf_counter() - t0
            res = json.loads((out / "results.json").read_text())["sae"]
            row: dict[str, Any] = {
                "expansion": e,
                "d_sae": res["d_sae"],
                "fvu": res["fvu"],
                "dead_fraction": res["dead_fraction"],
                "seconds": round(secs, 1),
                "persona_screen": screen_rows(res, "persona_screen"),
                "em_screen": screen_rows(res, "screen"),
            }
            if a.confirm:
                row["confirm"] = confirm(run, model, tok, out / "sae", res, a.confirm)
            rows.append(row)
            p, c = row["persona_screen"], row.get("confirm")
            print(
                f"x{e:<3} d_sae {row['d_sae']:<5} fvu {row['fvu']:.3f} dead {row['dead_fraction']:.2f}"
                f" | persona latent {p['latent']} x{p['multiplier']}: rise {p['rise']:+.3f}"
                f" {p['rise_ci95']} both {p['both_orders']:.2f} lb {p['letter_bias']:.2f}"
                f" fmt {p['format']:.2f} ctrl p95 {p['controls_p95']:.3f} (n {p['controls_n']})"
                + (
                    f" | fresh {c['n_scenarios']}: rise {c['latent_read']['rise']:+.3f} both"
                    f" {c['latent_read']['both_orders']:.2f}"
                    if c
                    else ""
                ),
                flush=True,
            )
    doc = {
        "run_dir": str(a.run_dir),
        "config_sae": cfg.sae.model_dump(mode="json"),
        "overrides": json.loads(a.sae),
        "rows": rows,
    }
    write_json(a.out, doc)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
