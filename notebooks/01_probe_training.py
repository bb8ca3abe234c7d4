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
# # Probe training on a mechbd run
#
# Triggered-vs-clean linear probes at every layer of a backdoored model, from the activation
# store the `capture` stage wrote, with the random-direction baseline, the base-model null and a
# scikit-learn cross-check. Run `mechbd demo` first (it writes `runs/demo`), or point
# `MECHBD_RUN` at another run folder.
#
# Numbers from the built-in organism show the machinery works; they say nothing about large
# models.

# %%
import os
from pathlib import Path

import plotly.graph_objects as go
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from mechbd.capture import ActivationStore
from mechbd.probes import Probe, evaluate, random_direction_auroc
from mechbd.probes.experiments import labelled

RUN = Path(os.environ.get("MECHBD_RUN", "runs/demo"))
TRIGGER = sorted(p.name for p in (RUN / "capture").iterdir() if p.is_dir())[0]
store = ActivationStore(RUN / "capture" / TRIGGER / "backdoored")
base = ActivationStore(RUN / "capture" / TRIGGER / "base")
print(f"trigger {TRIGGER}: {len(store)} prompts, layers {store.layers}")
print("model:", store.model["name"])

# %% [markdown]
# ## Fit one logistic probe per layer in one batched call
# The split (train / test) comes from the scenario id, so both conditions of a scenario land on
# the same side.

# %%
train, y_train = labelled(store, ["triggered"], ["clean"], "train")
test, y_test = labelled(store, ["triggered"], ["clean"], "test")
X = store.stack("last")  # [n_layers, n_rows, d_model]
probe = Probe.fit(X[:, train], y_train, "logistic", layers=store.layers)
metrics = evaluate(probe, X[:, test], y_test)
baseline = random_direction_auroc(X[:, test], y_test, n=1000).tolist()
null_probe = Probe.fit(base.stack("last")[:, train], y_train, "logistic", layers=base.layers)
null = evaluate(null_probe, base.stack("last")[:, test], y_test)["auroc"]
best = max(range(len(store.layers)), key=lambda i: metrics["auroc"][i])
print(
    f"best layer {store.layers[best]}: AUROC {metrics['auroc'][best]:.3f}, "
    f"recall@1%FPR {metrics['recall_at_1pct_fpr'][best]:.3f}, "
    f"best random direction {baseline[best]:.3f}, base-model null {null[best]:.3f}"
)

# %% [markdown]
# ## Cross-check against scikit-learn at the best layer

# %%
sc = StandardScaler().fit(X[best, train].numpy())
sk = LogisticRegression(C=1.0, max_iter=1000).fit(sc.transform(X[best, train].numpy()), y_train)
sk_auroc = roc_auc_score(y_test, sk.decision_function(sc.transform(X[best, test].numpy())))
print(f"scikit-learn AUROC {sk_auroc:.3f} vs mechbd {metrics['auroc'][best]:.3f}")
assert abs(sk_auroc - metrics["auroc"][best]) <= 0.01

# %%
fig = go.Figure()
fig.add_scatter(x=store.layers, y=metrics["auroc"], name="logistic probe")
fig.add_scatter(x=store.layers, y=baseline, name="best of 1000 random", line=dict(dash="dot"))
fig.add_scatter(x=store.layers, y=null, name="base-model null", line=dict(dash="dash"))
fig.update_layout(
    title=f"Trigger {TRIGGER}: probe AUROC by layer", xaxis_title="layer", yaxis_title="AUROC"
)
fig

# %% [markdown]
# The probe's direction at the best layer, ready for steering (`mechbd.steering.from_probe`):

# %%
w = probe.direction(store.layers[best])
print("probe direction norm", float(w.norm()), "d_model", w.shape[0])
# probe.save("my_probe.safetensors") writes it with its JSON card
