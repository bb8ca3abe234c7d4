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

**Nulls.** Every number above is read against the same statistic for things that carry no
signal (the control-distribution reading of :func:`mechbd.stats.control_summary`):

* random directions *matched to the activations' covariance* (``L z``, ``z ~ N(0, I)``,
  ``L L^T = Cov(x)``: :func:`covariance_factor`, :func:`matched_directions`), so that a null
  direction points where activations vary, as learnt directions and decoder rows do;
* a direction's best cosine with the decoder rows against the best cosine of each random
  direction (:func:`cosine_null`; in ``d`` dimensions a random direction's best cosine with
  ``m`` random rows is far from 0, about 0.28 for ``d = 128``, ``m = 1024``);
* a latent's AUROC as a detector against every other live latent's (diffing candidates
  excluded) and a direction's against random directions', each with a bootstrap interval
  (:func:`latent_detector`, :func:`direction_detector`);
* a shift in the finetuned model minus the same shift in the base model on the same prompts
  (so what the base model already does is subtracted), as a z-score against random
  directions' (:func:`persona_z`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mechbd.capture.store import ActivationStore
from mechbd.errors import MechbdError
from mechbd.probes.core import auroc, auroc_interval
from mechbd.stats import control_summary
from mechbd.steering.directions import Direction, from_sae_decoder
from mechbd.steering.nulls import (  # noqa: F401  (re-exported: the sae stage's nulls)
    _unit,
    check_finite,
    covariance_factor,
    effective_dims,
    matched_directions,
)
from mechbd.steering.select import (
    Counterbalanced,
    additive,
    baseline_record,
    select_and_test,
    with_controls,
)

# latent activations held at once while encoding (a batch of rows x d_sae): 2^28 floats, 1 GiB
_ENCODE_FLOATS = 2**28


@torch.no_grad()
def encode(
    sae: Any, x: torch.Tensor, batch: int = 8192, *, latents: Sequence[int] | None = None
) -> torch.Tensor:
    """Latent activations ``[n, d_sae]`` of ``x [n, d_in]`` (float32, on the CPU); with
    ``latents``, only those columns ``[n, len(latents)]``, selected batch by batch so that a
    published SAE's hundred thousand latents over every corpus token are never held at once.
    Batches are at most ``batch`` rows and at most 1 GiB of latent activations."""
    if x.shape[-1] != sae.cfg.d_in:
        raise MechbdError(f"SAE expects d_in={sae.cfg.d_in}, activations have {x.shape[-1]}")
    check_finite(x, "activations to encode")
    dev = next(sae.parameters()).device
    batch = max(1, min(batch, _ENCODE_FLOATS // int(sae.cfg.d_sae)))
    cols = None if latents is None else torch.tensor(list(latents), dtype=torch.long)
    out = []
    for i in range(0, len(x), batch):
        f = sae.encode(x[i : i + batch].to(dev))
        out.append((f if cols is None else f[:, cols.to(f.device)]).float().cpu())
    if not out:
        n = sae.cfg.d_sae if cols is None else len(cols)
        return torch.zeros(0, n)
    return torch.cat(out)


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
    xb = base.get(layer, position, site, rows=rows)
    xf = finetuned.get(layer, position, site, rows=rows)
    return latent_diff(sae, xb, xf, layer, position=position, top_k=top_k)


def latent_diff(
    sae: Any,
    base: torch.Tensor,
    finetuned: torch.Tensor,
    layer: int,
    *,
    position: str = "last",
    top_k: int = 10,
) -> dict[str, Any]:
    """Latents ranked by ``mean(finetuned) - mean(base)`` activation over two sets of
    activations ``[n, d]`` (two models on the same prompts, or one model under two conditions,
    e.g. toxic vs helpful system prompts on the same requests)."""
    fb, ff = encode(sae, base), encode(sae, finetuned)
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
    max_letter_bias: float = 1.0,
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
        max_letter_bias=max_letter_bias,
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


# ---- nulls -----------------------------------------------------------------------------------
def max_cosines(directions: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Each direction's largest signed cosine with any decoder row: ``directions [n, d]``,
    ``W_dec [d_sae, d]`` -> ``[n]`` (float64, one matmul)."""
    return (_unit(directions) @ _unit(W_dec.detach()).T).max(-1).values


def cosine_null(
    direction: torch.Tensor, W_dec: torch.Tensor, factor: torch.Tensor, n: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """``direction``'s largest cosine with a decoder row among the same statistic for ``n``
    covariance-matched random directions: :func:`mechbd.stats.control_summary` (``n``,
    ``median``, ``p95``, mid-rank ``percentile``, ``p_value``)."""
    value = float(max_cosines(direction[None], W_dec)[0])
    return control_summary(value, max_cosines(matched_directions(factor, n, seed), W_dec).numpy())


def _labels(positive: Sequence[int], negative: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.as_tensor([*positive, *negative], dtype=torch.long)
    return idx, torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))])


def _detector(
    value: float, null: torch.Tensor, scores: torch.Tensor, y: torch.Tensor, seed: int
) -> dict[str, Any]:
    c = control_summary(value, null.numpy())
    lo, hi = auroc_interval(scores, y, seed=seed)
    return {
        "auroc": value,
        "ci95": [lo, hi],
        "percentile": c["percentile"],
        "p_value": c["p_value"],
        "null_median": c["median"],
        "null_p95": c["p95"],
        "n_null": c["n"],
    }


def latent_detector(
    acts: torch.Tensor,
    latent: int,
    positive: Sequence[int],
    negative: Sequence[int],
    *,
    exclude: Sequence[int] = (),
    seed: int = 0,
) -> dict[str, Any]:
    """Latent ``latent``'s activation (``acts [n_rows, d_sae]``) as a detector of ``positive``
    vs ``negative`` rows: its AUROC, a bootstrap ``ci95``, and its ``percentile`` (and
    ``p_value``) among the AUROCs of every other latent that fires on these rows, ``exclude``
    (the diffing candidates) and ``latent`` left out of that null."""
    idx, y = _labels(positive, negative)
    a = acts[idx]
    live = (a > 0).any(0)
    live[torch.as_tensor([*exclude, latent], dtype=torch.long)] = False
    pool = live.nonzero().flatten()
    if len(pool) == 0:
        raise MechbdError("no SAE latent besides the candidates fires on these prompts")
    null = auroc(a[:, pool].T, y)  # one batched call, [n_live]
    return _detector(float(auroc(a[:, latent], y)), null, a[:, latent], y, seed)


def direction_detector(
    X: torch.Tensor,
    direction: torch.Tensor,
    positive: Sequence[int],
    negative: Sequence[int],
    factor: torch.Tensor,
    *,
    n: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The projection of ``X [n_rows, d]`` on ``direction [d]`` as a detector of ``positive``
    vs ``negative`` rows: its AUROC (sign as given: the direction is fixed before these rows),
    a bootstrap ``ci95``, and its ``percentile`` among ``n`` covariance-matched random
    directions (``factor``: :func:`covariance_factor`), each read with its own random sign."""
    idx, y = _labels(positive, negative)
    Xd = X[idx].double()
    scores = Xd @ _unit(direction)
    null = auroc(matched_directions(factor, n, seed) @ Xd.T, y)  # [n]
    return _detector(float(auroc(scores, y)), null, scores, y, seed)


def shift_vs_base(
    finetuned: torch.Tensor,
    base: torch.Tensor,
    directions: torch.Tensor,
    positive: Sequence[int],
    negative: Sequence[int],
) -> torch.Tensor:
    """Per direction (``directions [k, d]``), the shift of ``positive`` rows from ``negative``
    rows in clean standard deviations, ``(mean p[pos] - mean p[neg]) / std p[neg]`` with ``p``
    the projection on the unit direction, in the finetuned model's activations ``[n_rows, d]``
    minus the same in the base model's on the same rows -> ``[k]`` (float64)."""
    if finetuned.shape != base.shape:
        raise MechbdError(
            f"shift vs base: {tuple(finetuned.shape)} and {tuple(base.shape)} activations; "
            "both models must be read on the same prompts"
        )
    if len(negative) < 2 or not positive:
        raise MechbdError("a shift needs >= 2 negative and >= 1 positive rows")
    U = _unit(directions)
    pos, neg = list(positive), list(negative)

    def shift(X: torch.Tensor) -> torch.Tensor:
        p = X.double() @ U.T  # [n_rows, k]
        return (p[pos].mean(0) - p[neg].mean(0)) / p[neg].std(0)

    return shift(finetuned) - shift(base)


def persona_z(
    finetuned: torch.Tensor,
    base: torch.Tensor,
    directions: dict[str, torch.Tensor],
    positive: Sequence[int],
    negative: Sequence[int],
    factor: torch.Tensor,
    *,
    n: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Each direction's :func:`shift_vs_base` (finetuned minus base, on the same rows) as a
    z-score against the same statistic for ``n`` covariance-matched random directions:
    ``{name: {"vs_base", "z"}, "null_mean", "null_std", "n_null"}``. A z of 2 is a shift
    two null standard deviations beyond what a random direction in this space shows."""
    names = list(directions)
    real = shift_vs_base(
        finetuned, base, torch.stack([directions[k] for k in names]), positive, negative
    )
    null = shift_vs_base(finetuned, base, matched_directions(factor, n, seed), positive, negative)
    mu, sd = float(null.mean()), float(null.std())
    if not sd > 0:
        raise MechbdError("persona z: the random directions' shifts do not vary")
    out: dict[str, Any] = {
        k: {"vs_base": float(real[i]), "z": (float(real[i]) - mu) / sd} for i, k in enumerate(names)
    }
    return out | {"null_mean": mu, "null_std": sd, "n_null": int(null.numel())}
