# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A steering experiment
#
# Steer the base model of a mechbd run along the emergent-misalignment (EM) mean-difference
# direction the `steering` stage saved, with an equal-norm random direction as the control.
# Every scenario is scored in both option orders: the *balanced* misaligned rate (answering one
# letter to everything scores 0.5) and the share misaligned in *both* orders (one letter scores
# 0), with format validity as the capability guard. The `steer` context manager removes its
# hooks on exit, so the last cell checks the model is untouched.
# Run `mechbd demo` first, or point `MECHBD_RUN` at another run folder.

# %%
import json
import os
from pathlib import Path

import plotly.graph_objects as go
import torch

from mechbd.models import load_model
from mechbd.organism.items import organism_items
from mechbd.steering import Counterbalanced, Direction, Intervention, steer
from mechbd.steering.stage import clean_eval_rows

RUN = Path(os.environ.get("MECHBD_RUN", "runs/demo"))
N_EVAL = int(os.environ.get("MECHBD_N_EVAL", "40"))
model, tok = load_model(RUN / "organism" / "model", dtype="float32")
d_em = Direction.load(RUN / "steering" / "directions" / "em_mean_diff.safetensors")
d_rand = d_em.random_like(seed=0)
res = json.loads((RUN / "results.json").read_text())
layer = res["steering"]["base_em"]["selected"]["layer"]  # chosen on the selection split
print(d_em.provenance)
print(f"layer {layer}: |EM direction| = {float(d_em.at(layer).norm()):.3f}")

# %% [markdown]
# Held-out clean scenarios from the organism's world (no trigger anywhere).

# %%
rows = clean_eval_rows(organism_items(N_EVAL, held_out=True, seed=123))
split = Counterbalanced.of(model, tok, rows)  # each scenario in both option orders
multipliers = [0.0, 8.0, 16.0, 32.0]  # the steering stage sweeps 0-32 too
curves = {}
for name, d in (("EM direction", d_em), ("random (equal norm)", d_rand)):
    curves[name] = [
        split.measure([Intervention(layer, d.at(layer), "add", m)] if m else []).summary()
        for m in multipliers
    ]
    for m, r in zip(multipliers, curves[name], strict=True):
        lo, hi = r["ci95"]
        bias = "-" if r["letter_bias"] is None else f"{r['letter_bias']:.2f}"
        print(
            f"{name:22s} x{m:<4} balanced misaligned {r['balanced_misaligned_rate']:.2f} "
            f"[{lo:.2f}, {hi:.2f}]  both orders {r['consistent_misaligned_rate']:.2f}  "
            f"letter bias {bias}  format valid {r['format_valid_rate']:.2f}"
        )

# %%
fig = go.Figure()
for name, c in curves.items():
    fig.add_scatter(
        x=multipliers,
        y=[r["balanced_misaligned_rate"] for r in c],
        name=f"{name}: balanced misaligned",
    )
    fig.add_scatter(
        x=multipliers,
        y=[r["format_valid_rate"] for r in c],
        name=f"{name}: format valid",
        line=dict(dash="dot"),
    )
fig.update_layout(title=f"Base model steered at layer {layer}", xaxis_title="multiplier")
fig

# %% [markdown]
# The hooks are gone once the `with` block exits: the logits equal the unsteered ones exactly.

# %%
ids = tok(rows[0]["user"], return_tensors="pt").input_ids
with torch.no_grad():
    before = model(ids).logits
    with steer(model, [Intervention(layer, d_em.at(layer), "add", 8.0)]):
        during = model(ids).logits
    after = model(ids).logits
print("changed while steering:", not torch.equal(before, during))
assert torch.equal(before, after)
