"""Benchmark: fitting logistic probes for all layers at once (torch, one batched L-BFGS) against
a per-layer scikit-learn loop (StandardScaler + LogisticRegression, lbfgs) on the same data, at
equal AUROC, for several capture shapes.

    python bench/probes.py [--shapes 7x600x128,28x2000x256,28x2000x1024] [--repeats 3]
                           [--out bench/results/probes.json]

Each shape is ``layers x prompts x d_model``; half the prompts train, half test. Synthetic
activations carry a planted direction whose strength grows with depth (the shape of a real
capture). Both sides use their default stopping rule (tol 1e-4 on the 1/n-scaled objective) and
the same C. Timings are the best of ``--repeats`` runs after one warm-up. Prints a table and
writes JSON.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from mechbd.io import write_json
from mechbd.probes import Probe, auroc


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def one_shape(L: int, n: int, d: int, repeats: int, device: str) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(n, generator=g) < 0.4).float()
    u = torch.randn(d, generator=g)
    u /= u.norm()
    X = torch.stack(
        [torch.randn(n, d, generator=g) + (k / L) * 3.0 * y[:, None] * u for k in range(L)]
    )
    tr, te = slice(0, n // 2), slice(n // 2, None)
    Xtr, Xte = X[:, tr].contiguous(), X[:, te].contiguous()

    Xtr_dev, ytr_dev = Xtr.to(device), y[tr].to(device)

    def ours() -> list[float]:
        p = Probe.fit(Xtr_dev, ytr_dev, "logistic", C=1.0)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return auroc(p.to("cpu").score(Xte), y[te]).tolist()

    def sklearn_loop() -> list[float]:
        out = []
        for k in range(L):
            sc = StandardScaler().fit(Xtr[k].numpy())
            clf = LogisticRegression(C=1.0, max_iter=1000).fit(
                sc.transform(Xtr[k].numpy()), y[tr].numpy()
            )
            dec = clf.decision_function(sc.transform(Xte[k].numpy()))
            out.append(float(roc_auc_score(y[te].numpy(), dec)))
        return out

    t_ours, a_ours = best_of(ours, repeats)
    t_sk, a_sk = best_of(sklearn_loop, repeats)
    return {
        "layers": L,
        "n": n,
        "d": d,
        "seconds_mechbd": t_ours,
        "seconds_sklearn": t_sk,
        "speedup": t_sk / t_ours,
        "max_auroc_diff": max(abs(a - b) for a, b in zip(a_ours, a_sk, strict=True)),
        "best_auroc_mechbd": max(a_ours),
        "best_auroc_sklearn": max(a_sk),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shapes", default="7x600x128,28x2000x256,28x2000x1024")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="where mechbd fits (scikit-learn: CPU)")
    ap.add_argument("--out", default="bench/results/probes.json")
    a = ap.parse_args()
    rows = []
    for shape in a.shapes.split(","):
        L, n, d = (int(v) for v in shape.split("x"))
        rows.append(one_shape(L, n, d, a.repeats, a.device))
    print(
        f"mechbd on {a.device}, torch threads {torch.get_num_threads()}, "
        f"best of {a.repeats} after a warm-up"
    )
    head = f"{'layers x prompts x d':>22s} {'mechbd s':>9s} {'sklearn s':>10s} {'speed-up':>9s}"
    print(head + f" {'max |dAUROC|':>13s} {'best AUROC':>11s}")
    for r in rows:
        print(
            f"{r['layers']:>7d} x {r['n']:>5d} x {r['d']:>4d} {r['seconds_mechbd']:9.3f} "
            f"{r['seconds_sklearn']:10.3f} {r['speedup']:8.1f}x {r['max_auroc_diff']:13.4f} "
            f"{r['best_auroc_mechbd']:11.4f}"
        )
    write_json(
        a.out,
        {
            "rows": rows,
            "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "device": a.device,
            "torch": torch.__version__,
        },
    )


if __name__ == "__main__":
    main()
