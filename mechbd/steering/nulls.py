"""Random-direction nulls: directions drawn like a model's activations (matched to their
covariance) or uniformly on the sphere, and the statistics read against them that more than one
stage needs (a model-vs-model shift along a direction, as a z-score)."""

from __future__ import annotations

from typing import Any

import torch

from mechbd.errors import MechbdError


def check_finite(x: torch.Tensor, where: str) -> None:
    """Refuse NaN or infinite activations, naming where they came from and the first bad row."""
    bad = ~torch.isfinite(x)
    if bad.any():
        row = int(bad.any(-1).nonzero()[0]) if x.dim() > 1 else int(bad.nonzero()[0])
        raise MechbdError(f"{where}: activations contain NaN or inf (first at row {row})")


def _unit(v: torch.Tensor) -> torch.Tensor:
    v = v.double()
    return v / v.norm(dim=-1, keepdim=True)


def covariance_factor(x: torch.Tensor) -> torch.Tensor:
    """``F [d, d]`` (float64) with ``F @ F.T`` the sample covariance of ``x [n, d]``: the
    eigen-factor ``U diag(sqrt(lambda))``, which exists for a rank-deficient covariance too
    (fewer rows than dimensions), where a Cholesky factor does not; eigenvalues below
    ``1e-12`` of the largest (rounding noise of a zero) count as zero, so random directions
    stay in the span of the activations."""
    if x.dim() != 2 or x.shape[0] < 2:
        raise MechbdError(f"a covariance needs activations [n >= 2, d], got {tuple(x.shape)}")
    check_finite(x, "activations for the covariance")
    X = x.double()
    Xc = X - X.mean(0)
    evals, evecs = torch.linalg.eigh(Xc.T @ Xc / (X.shape[0] - 1))
    top = float(evals.max())
    if top <= 0:
        raise MechbdError("the activations do not vary: no covariance to match random directions")
    return evecs * torch.where(evals > 1e-12 * top, evals, 0.0).sqrt()


def effective_dims(factor: torch.Tensor) -> float:
    """The participation ratio ``(sum lambda)^2 / sum lambda^2`` of the covariance whose factor
    is ``factor``: about how many directions its variance spreads over (``d`` when isotropic,
    1 when one direction carries it all). Covariance-matched random directions are only as
    varied as this: with a value near 1 they are nearly all one direction, and a null's spread
    across them understates how much a single other direction varies."""
    lam = (factor.double() ** 2).sum(0)
    return float(lam.sum() ** 2 / (lam**2).sum())


def matched_directions(factor: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``[n, d]`` float64 unit directions ``F z / |F z|``, ``z ~ N(0, I)`` (seeded): random
    directions distributed as the activations whose covariance factor is ``factor``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, factor.shape[1], generator=g, dtype=torch.float64)
    v = z @ factor.double().T
    return v / v.norm(dim=-1, keepdim=True)


def model_shift(
    finetuned: torch.Tensor, base: torch.Tensor, directions: torch.Tensor
) -> torch.Tensor:
    """Per direction (``directions [k, d]``), how far the finetuned model's activations sit
    from the base model's on the same rows, ``(mean p_finetuned - mean p_base) / std p_base``
    with ``p`` the projection on the unit direction -> ``[k]`` (float64)."""
    if finetuned.shape != base.shape:
        raise MechbdError(
            f"model shift: {tuple(finetuned.shape)} and {tuple(base.shape)} activations; "
            "both models must be read on the same prompts"
        )
    if base.shape[0] < 2:
        raise MechbdError("a model shift needs >= 2 rows")
    U = _unit(directions)
    pf, pb = finetuned.double() @ U.T, base.double() @ U.T
    return (pf.mean(0) - pb.mean(0)) / pb.std(0)


def model_shift_z(
    finetuned: torch.Tensor,
    base: torch.Tensor,
    direction: torch.Tensor,
    factor: torch.Tensor,
    *,
    n: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`model_shift` along ``direction`` as a z-score against the same statistic for
    ``n`` random directions ``factor @ z`` (:func:`covariance_factor`; the identity for
    isotropic ones), each with its random sign: ``{"shift", "z", "null_mean", "null_std",
    "n_null"}``. The null's shifts are signed, so its mean is near 0 and a z of 2 is a shift
    two null standard deviations beyond what a random direction in this space shows."""
    real = float(model_shift(finetuned, base, direction[None])[0])
    null = model_shift(finetuned, base, matched_directions(factor, n, seed))
    mu, sd = float(null.mean()), float(null.std())
    if not sd > 0:
        raise MechbdError("model shift z: the random directions' shifts do not vary")
    return {"shift": real, "z": (real - mu) / sd, "null_mean": mu, "null_std": sd, "n_null": n}
