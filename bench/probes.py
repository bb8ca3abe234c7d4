"""Benchmark: fitting logistic probes for all layers at once (torch, batched L-BFGS) against a
per-layer scikit-learn loop on the same standardised data, at equal AUROC.

    python bench/probes.py [--layers 28] [--n 2000] [--d 1024] [--out bench/results/probes.json]

Synthetic activations with a planted direction whose strength grows with depth (the shape of a
real capture: layers x prompts x d_model). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from mechbd.io import write_json
from mechbd.probes import Probe, auroc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--out", default="bench/results/probes.json")
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(a.n, generator=g) < 0.4).float()
    u = torch.randn(a.d, generator=g)
    u /= u.norm()
    X = torch.stack(
        [
            torch.randn(a.n, a.d, generator=g) + (k / a.layers) * 1.5 * y[:, None] * u
            for k in range(a.layers)
        ]
    )
    tr, te = slice(0, a.n // 2), slice(a.n // 2, None)
    t0 = time.perf_counter()
    p = Probe.fit(X[:, tr], y[tr], "logistic", C=1.0)
    t_ours = time.perf_counter() - t0
    ours = auroc(p.score(X[:, te]), y[te])
    t0 = time.perf_counter()
    ref = []
    for k in range(a.layers):
        sc = StandardScaler().fit(X[k, tr].numpy())
        clf = LogisticRegression(C=1.0, max_iter=1000).fit(
            sc.transform(X[k, tr].numpy()), y[tr].numpy()
        )
        ref.append(
            roc_auc_score(y[te].numpy(), clf.decision_function(sc.transform(X[k, te].numpy())))
        )
    t_sk = time.perf_counter() - t0
    diff = max(abs(float(o) - r) for o, r in zip(ours, ref, strict=True))
    print(f"{a.layers} layers x {a.n} prompts x d={a.d}, torch threads {torch.get_num_threads()}")
    print(f"{'method':40s} {'seconds':>8s}")
    print(f"{'mechbd Probe.fit (all layers, torch)':40s} {t_ours:8.2f}")
    print(f"{'scikit-learn loop (per layer, lbfgs)':40s} {t_sk:8.2f}")
    print(f"speed-up {t_sk / t_ours:.1f}x; max |AUROC difference| {diff:.4f}")
    write_json(
        a.out,
        {
            "layers": a.layers,
            "n": a.n,
            "d": a.d,
            "seconds_mechbd": t_ours,
            "seconds_sklearn": t_sk,
            "speedup": t_sk / t_ours,
            "max_auroc_diff": diff,
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
    )


if __name__ == "__main__":
    main()
