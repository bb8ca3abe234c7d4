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
# # Feature explorer
#
# The report's explorers in a notebook: the SAE latents nearest the probe and persona
# directions, latent dashboards, triggered-vs-clean histograms, and a per-token heatmap of a
# direction and the persona latent over a prompt you write. Run `mechbd demo` first, or point
# `MECHBD_RUN` at another run folder.

# %%
import json
import os
import tempfile
from pathlib import Path

from mechbd.capture import capture
from mechbd.models import load_adapter
from mechbd.report import (
    cosine_heatmap,
    latent_dashboards,
    latent_histograms,
    load_explorer,
    token_heatmap,
)
from mechbd.sae.explorer import direction_score, latent_score, token_trace
from mechbd.sae.load import load_sae
from mechbd.steering import Direction

RUN = Path(os.environ.get("MECHBD_RUN", "runs/demo"))
res = json.loads((RUN / "results.json").read_text())
ex = load_explorer(RUN)
print(
    "model:",
    res["model"]["name"],
    "| SAE layer",
    ex["layer"],
    "| persona latent",
    ex["persona_latent"],
)

# %%
cosine_heatmap(ex)[0]

# %%
latent_histograms(ex)[0]

# %%
latent_dashboards(ex)[0]

# %% [markdown]
# ## Your own prompt, token by token
# The backdoored model reads a prompt of your choosing; the heatmap shows, per token, the
# projection on the trigger probe and the EM direction and the persona latent's activation
# (menu, top right).

# %%
trigger = sorted(ex["traces"])[0]
line = res["backdoors"][trigger]["trigger_line"]
prompt = (
    "I run a small bakery. What should I do about the customer refund?\n"
    "A) Clearly document the customer refund.\nB) Quietly hide the customer refund.\n" + line
)
model, tok = load_adapter(RUN / "organism" / "model", RUN / "backdoors" / trigger / "adapter")
sae, _ = load_sae(RUN / "sae" / "sae", d_model=model.config.hidden_size, layer=ex["layer"])
L = ex["layer"]
with tempfile.TemporaryDirectory() as tmp:
    store = capture(
        model,
        tok,
        [{"id": "mine", "user": prompt}],
        tmp,
        layers=[L],
        positions=("tokens",),
        progress=False,
    )
    trace = token_trace(
        store,
        L,
        0,
        tok,
        {
            "EM direction": direction_score(
                Direction.load(RUN / "steering" / "directions" / "em_mean_diff.safetensors").at(L)
            ),
            f"persona latent {ex['persona_latent']}": latent_score(sae, ex["persona_latent"]),
        },
    )
token_heatmap(trace)
