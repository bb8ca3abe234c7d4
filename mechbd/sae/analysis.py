"""What SAEs and directions say about a backdoor: model diffing, causal screening of persona
candidates, cosine comparison of directions with decoder rows, latents as detectors, and how
far a trigger moves activations along a direction.

* **Model diffing** (OpenAI persona features): encode the base model's and a finetuned model's
  activations on the *same prompts*, rank latents by mean activation increase; the top ones are
  persona candidates.
* **Screening**: steer the base model along each candidate's decoder row (unit norm x
  ``scale``) and measure the misaligned rate and format validity; a random latent of the same
  SAE at the same scale is the control.
* **Comparison**: cosine of any direction with every decoder row; the top-k latents.
* **Detector**: a latent's activation (or a direction's projection) as a score for triggered vs
  clean prompts, as AUROC.
* **Shift**: per layer, ``(mean projection on positives - mean on negatives) / std(negatives)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mechbd.capture.store import ActivationStore
from mechbd.errors import MechbdError
from mechbd.probes.core import auroc
from mechbd.sae.train import check_finite
from mechbd.steering.directions import Direction, from_sae_decoder
from mechbd.steering.select import (
    Counterbalanced,
    additive,
    baseline_record,
    select_and_test,
    with_controls,
)


@torch.no_grad()
def encode(sae: Any, x: torch.Tensor, batch: int = 8192) -> torch.Tensor:
    """Latent activations ``[n, d_sae]`` of ``x [n, d_in]`` (float32, on the CPU)."""
    if x.shape[-1] != sae.cfg.d_in:
        raise MechbdError(f"SAE expects d_in={sae.cfg.d_in}, activations have {x.shape[-1]}")
    check_finite(x, "activations to encode")
    dev = next(sae.parameters()).device
    return torch.cat(
        [sae.encode(x[i : i + batch].to(dev)).float().cpu() for i in range(0, len(x), batch)]
    )


def check_same_prompts(a: ActivationStore, b: ActivationStore) -> None:
    """Model diffing compares two models on the same prompts: refuse stores that differ."""
    if len(a) != len(b):
        raise MechbdError(
            f"{a.path} has {len(a)} prompts, {b.path} has {len(b)}: not the same prompt set"
        )
    for i, (ra, rb) in enumerate(zip(a.rows, b.rows, strict=True)):
        if ra.id != rb.id or ra.ids != rb.ids:
            raise MechbdError(
                f"{a.path} and {b.path} differ at row {i} (prompt {ra.id!r} vs {rb.id!r}): "
                "model diffing needs both models on the same prompts"
            )


def model_diff(
    sae: Any,
    base: ActivationStore,
    finetuned: ActivationStore,
    layer: int,
    *,
    position: str = "last",
    site: str = "resid_post",
    top_k: int = 10,
    rows: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Latents ranked by ``mean(finetuned) - mean(base)`` activation on the same prompts."""
    check_same_prompts(base, finetuned)
    fb = encode(sae, base.get(layer, position, site, rows=rows))
    ff = encode(sae, finetuned.get(layer, position, site, rows=rows))
    inc = ff.double().mean(0) - fb.double().mean(0)
    order = inc.argsort(descending=True)[:top_k].tolist()
    return {
        "layer": layer,
        "position": position,
        "n_prompts": int(fb.shape[0]),
        "latents": order,
        "increase": [float(inc[i]) for i in order],
        "base_mean": [float(fb[:, i].double().mean()) for i in order],
        "finetuned_mean": [float(ff[:, i].double().mean()) for i in order],
        "base_freq": [float((fb[:, i] > 0).double().mean()) for i in order],
        "finetuned_freq": [float((ff[:, i] > 0).double().mean()) for i in order],
    }


def latent_directions(
    sae: Any, latents: Sequence[int], layer: int, scale: float, prefix: str = "latent"
) -> dict[str, Direction]:
    return {f"{prefix}_{i}": from_sae_decoder(sae.W_dec, i, layer, scale=scale) for i in latents}


def screen_latents(
    select: Counterbalanced,
    test: Counterbalanced,
    sae: Any,
    layer: int,
    candidates: Sequence[int],
    controls: Sequence[int],
    *,
    scale: float,
    multipliers: Sequence[float],
    positions: str,
    min_format: float = 0.9,
    seed: int = 0,
) -> dict[str, Any]:
    """Steer along each candidate's and each control latent's decoder row (unit norm x
    ``scale`` x multiplier): each one's multiplier chosen on ``select`` and read on ``test``
    (:func:`mechbd.steering.select.select_and_test`), the candidates' rises placed among the
    controls' (``controls`` of each candidate)."""
    if len(controls) < len(candidates):
        raise MechbdError(
            f"sae.n_random: {len(controls)} random latents for {len(candidates)} candidates "
            "(the screen needs at least as many controls as candidates)"
        )
    if set(controls) & set(candidates):
        raise MechbdError("SAE screen: a control latent is also a candidate")
    kw: dict[str, Any] = dict(
        layers=[layer],
        multipliers=multipliers,
        positions=positions,
        min_format=min_format,
        seed=seed,
    )

    def run(prefix: str, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        dirs = latent_directions(sae, ids, layer, scale, prefix=prefix)
        return {
            i: select_and_test(select, test, additive(dirs[f"{prefix}_{i}"]), **kw) for i in ids
        }

    ctrl = run("random", controls)
    cand = {i: with_controls(r, list(ctrl.values())) for i, r in run("latent", candidates).items()}
    return {
        "layer": layer,
        "scale": scale,
        "baseline": baseline_record(test),
        "candidates": cand,
        "controls": ctrl,
    }


def top_cosines(direction: torch.Tensor, W_dec: torch.Tensor, k: int = 5) -> dict[str, Any]:
    """Cosine of ``direction [d]`` with every decoder row ``W_dec [d_sae, d]``; the top ``k``
    (signed: a latent pointing the same way as the direction)."""
    if direction.shape[-1] != W_dec.shape[-1]:
        raise MechbdError(
            f"direction has width {direction.shape[-1]}, SAE decoder {W_dec.shape[-1]}"
        )
    d = direction.double() / direction.double().norm()
    W = W_dec.detach().double()
    cos = W @ d / W.norm(dim=-1)
    top = cos.argsort(descending=True)[:k]
    return {"latents": top.tolist(), "cosines": cos[top].tolist(), "max": float(cos.max())}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(a @ b / (a.norm() * b.norm()))


def _rows_auroc(
    scores: torch.Tensor, positive: Sequence[int], negative: Sequence[int]
) -> torch.Tensor:
    """AUROC along the last axis (``[..., n_rows]``) of ``positive`` vs ``negative`` rows."""
    idx = torch.as_tensor([*positive, *negative])
    y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))])
    return auroc(scores[..., idx], y)


def detector_auroc(scores: torch.Tensor, positive: Sequence[int], negative: Sequence[int]) -> float:
    """AUROC of ``scores`` (one per store row) at telling ``positive`` from ``negative`` rows."""
    return float(_rows_auroc(scores, positive, negative))


def random_latent_auroc(
    acts: torch.Tensor,
    positive: Sequence[int],
    negative: Sequence[int],
    n: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """AUROC of ``n`` random latents that fire on these rows: their mean, and their best."""
    alive = (acts > 0).any(0).nonzero().flatten()
    if len(alive) == 0:
        raise MechbdError("no SAE latent fires on these prompts")
    g = torch.Generator().manual_seed(seed)
    pick = alive[torch.randperm(len(alive), generator=g)[:n]]
    a = _rows_auroc(acts[:, pick].T, positive, negative)  # one batched call, [n_latents]
    return {"mean": float(a.mean()), "max": float(a.max()), "n": len(pick)}


def projection_shift(
    store: ActivationStore,
    direction: Direction,
    positive: Sequence[int],
    negative: Sequence[int],
    *,
    position: str = "last",
    site: str = "resid_post",
) -> dict[int, float]:
    """Per layer of ``direction``: ``(mean proj(positive) - mean proj(negative)) /
    std(proj(negative))``, the projection on the unit direction (float64)."""
    if len(negative) < 2 or not positive:
        raise MechbdError(f"{store.path}: a shift needs >= 2 negative and >= 1 positive rows")
    out = {}
    for layer in direction.layers:
        v = direction.at(layer).double()
        X = store.get(layer, position, site, dtype=torch.float64)
        p = X @ (v / v.norm())
        pos, neg = p[list(positive)], p[list(negative)]
        out[layer] = float((pos.mean() - neg.mean()) / neg.std())
    return out
