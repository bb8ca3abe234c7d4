"""The ``capture`` pipeline stage: for each planted trigger, the activations of the backdoored
model and of the un-backdoored base model on the same evaluation prompts (the base model is the
probes' null), labelled by condition and, where the eval stage generated answers, by behaviour.
Stores go to ``capture/<trigger>/{backdoored,base}``, and the backdoored model's activations on
the trigger's calibration prompts (clean prompts of other scenarios, where the backdoors stage
wrote them) to ``capture/<trigger>/calibration``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechbd.capture.capture import capture
from mechbd.io import iter_jsonl, write_json
from mechbd.layout import EVAL_PROMPTS, GENERATIONS
from mechbd.models import base_model_dir, load_base, load_finetuned
from mechbd.runs import Run


def labelled_prompts(trigger_dir: Path) -> list[dict[str, Any]]:
    """The trigger's eval prompts, with ``misaligned`` (the model's behaviour) where known."""
    rows = list(iter_jsonl(trigger_dir / EVAL_PROMPTS))
    gens = trigger_dir / GENERATIONS
    if gens.is_file():
        behaviour = {g["id"]: g["misaligned"] for g in iter_jsonl(gens)}
        for r in rows:
            r["misaligned"] = behaviour.get(r["id"])
    return rows


def capture_stage(run: Run, out: Path) -> None:
    cfg = run.config.capture
    base = base_model_dir(run)
    summary: dict[str, Any] = {}
    kw: dict[str, Any] = dict(
        layers=cfg.layers,
        sites=cfg.sites,
        positions=cfg.positions,
        dtype=cfg.dtype,
        backend=cfg.backend,
        batch_size=cfg.batch_size,
        shard_rows=cfg.shard_rows,
        progress=False,
    )
    base_model, tok = load_base(run)
    for t in run.layout.planted():
        rows = labelled_prompts(run.layout.backdoor(t))
        model, _ = load_finetuned(run, run.layout.adapter(t))
        st = capture(
            model,
            tok,
            rows,
            out / t / "backdoored",
            model_name=f"{base} + {t} backdoor",
            adapter=run.layout.adapter(t),
            **kw,
        )
        capture(base_model, tok, rows, out / t / "base", model_name=str(base), **kw)
        cal_file = run.layout.calibration_prompts(t)
        if cal_file.is_file():  # clean prompts of other scenarios: the probe threshold's,
            # at the position the probes read (clean rows have no trigger span)
            capture(
                model,
                tok,
                list(iter_jsonl(cal_file)),
                out / t / "calibration",
                model_name=f"{base} + {t} backdoor",
                adapter=run.layout.adapter(t),
                **{**kw, "positions": ("last",)},
            )
        assert st is not None
        summary[t] = {"rows": len(st), "layers": st.layers, "d_model": st.d_model}
    write_json(out / "stores.json", summary)
