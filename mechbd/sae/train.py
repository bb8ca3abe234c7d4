"""Train sparse autoencoders with SAELens on activations mechbd captured.

SAELens does the training: its ``TrainingSAE`` classes (``standard`` = ReLU + L1, ``topk``)
and ``SAETrainer`` (Adam, LR schedule, L1 warm-up, dead-latent tracking, activation-norm
scaling folded into the weights at the end). mechbd supplies the data provider (shuffled
batches cycling over an in-memory ``[n_tokens, d_in]`` tensor, seeded), saves the inference
SAE in SAELens' own format (``SAE.load_from_disk`` loads it) into a folder written atomically,
with the hook name set to mechbd's public layer name, and measures the SAE on held-out tokens
(given by the caller, e.g. every token of held-out conversations as the ``sae`` stage does, or a
random share of the tokens when none are given):

* ``fvu``: fraction of variance unexplained, ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``
  (float64 sums; 0 is a perfect reconstruction, 1 is no better than the mean);
* ``l0``: mean number of active latents per token;
* ``dead_fraction``: latents that never fire on the held-out tokens.

:func:`store_metrics` measures FVU and L0 of a trained SAE on a store at each position it holds
(per-token activations or one vector per row), so a reader sees how well the SAE reconstructs
the activations the later stages actually read.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from mechbd.capture.names import hook_name
from mechbd.capture.store import ActivationStore
from mechbd.errors import MechbdError
from mechbd.io import staging_dir, write_json
from mechbd.steering.nulls import check_finite

ARCHITECTURES = ("standard", "topk")
Architecture = Literal["standard", "topk"]


def store_tokens(
    store: ActivationStore,
    layer: int,
    *,
    site: str = "resid_post",
    skip_first: int = 1,
    rows: Sequence[int] | None = None,
) -> torch.Tensor:
    """Every captured token's activation at ``layer`` (store position ``tokens``), without each
    row's first ``skip_first`` tokens (the first token of a sequence carries an outsized
    activation that no SAE is meant to reconstruct); with ``rows``, only those rows' tokens
    (whole conversations, in store order)."""
    if "tokens" not in store.positions:
        raise MechbdError(
            f"{store.path}: captured at positions {store.positions}; SAE training needs "
            "per-token activations (capture with position 'tokens')"
        )
    if layer not in store.layers:
        raise MechbdError(f"{store.path}: layer {layer} not captured (layers {store.layers})")
    acts, offsets = store.tokens(layer, site=site)
    if rows is None:
        keep = torch.ones(acts.shape[0], dtype=torch.bool)
    else:
        bad = [i for i in rows if not 0 <= i < len(store)]
        if bad:
            raise MechbdError(f"{store.path}: no row {bad[0]} (the store has {len(store)} rows)")
        keep = torch.zeros(acts.shape[0], dtype=torch.bool)
        for i in rows:
            keep[int(offsets[i]) : int(offsets[i + 1])] = True
    for a in offsets[:-1].tolist():
        keep[a : a + skip_first] = False
    x = acts[keep]
    check_finite(x, f"{store.path} layer {layer}")
    return x


def _provider(x: torch.Tensor, batch: int, seed: int) -> Iterator[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0] - batch + 1, batch):
            yield x[perm[i : i + batch]]


@contextlib.contextmanager
def _quiet_sae_lens(quiet: bool) -> Iterator[None]:
    """SAELens draws progress bars unconditionally; inside pipelines they are noise."""
    from sae_lens.training import activation_scaler, sae_trainer

    mods = (activation_scaler, sae_trainer)
    saved = [m.tqdm for m in mods]  # type: ignore[attr-defined]
    if quiet:
        for m, orig in zip(mods, saved, strict=True):
            m.tqdm = functools.partial(orig, disable=True)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for m, orig in zip(mods, saved, strict=True):
            m.tqdm = orig  # type: ignore[attr-defined]


def _training_sae(
    arch: str, d_in: int, d_sae: int, k: int, l1_coefficient: float, meta: dict[str, Any]
) -> Any:
    from sae_lens import (
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    common: dict[str, Any] = dict(
        d_in=d_in,
        d_sae=d_sae,
        normalize_activations="expected_average_only_in",
        metadata=SAEMetadata(**meta),
    )
    if arch == "topk":
        if not 0 < k <= d_sae:
            raise MechbdError(f"TopK SAE: k={k} must be in 1..d_sae={d_sae}")
        return TopKTrainingSAE(TopKTrainingSAEConfig(k=k, **common))
    if arch == "standard":
        return StandardTrainingSAE(
            StandardTrainingSAEConfig(l1_coefficient=l1_coefficient, l1_warm_up_steps=50, **common)
        )
    raise MechbdError(f"unknown SAE architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")


@torch.no_grad()
def sae_metrics(sae: Any, x: torch.Tensor, batch: int = 8192) -> dict[str, Any]:
    """FVU, L0 and dead fraction of ``sae`` on ``x [n, d_in]`` (float64 sums). FVU is
    ``None`` where the vectors do not vary (their total variance is below ``1e-10`` of their
    total squared norm): there is no variance to explain, e.g. a trigger read at the same place
    after the same text in every prompt, which a causal model maps to one vector."""
    check_finite(x, "SAE evaluation set")
    if x.shape[-1] != sae.cfg.d_in:
        raise MechbdError(f"SAE expects d_in={sae.cfg.d_in}, activations have {x.shape[-1]}")
    mean = x.double().mean(0)
    sse = sst = l0 = 0.0
    total = float((x.double() ** 2).sum())
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    dev = next(sae.parameters()).device
    for i in range(0, x.shape[0], batch):
        xb = x[i : i + batch].to(dev)
        f = sae.encode(xb)
        rec = sae.decode(f)
        sse += float(((xb.double() - rec.double()) ** 2).sum())
        sst += float(((xb.double() - mean.to(dev)) ** 2).sum())
        active = f > 0
        l0 += float(active.sum())
        fired |= active.any(0).cpu()
    return {
        "fvu": sse / sst if sst > 1e-10 * total else None,
        "l0": l0 / x.shape[0],
        "dead_fraction": float((~fired).double().mean()),
        "n_tokens": int(x.shape[0]),
    }


def held_out_conversations(n: int, eval_frac: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, held-out) row indices of ``n`` conversations, sorted: a seeded ``eval_frac``
    of whole conversations held out (at least one; at least one left to train on), so held-out
    tokens come from conversations the SAE never saw."""
    if n < 2:
        raise MechbdError(f"SAE training: {n} conversation(s); holding some out needs at least 2")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    n_eval = min(n - 1, max(1, round(eval_frac * n)))
    return sorted(perm[n_eval:]), sorted(perm[:n_eval])


@torch.no_grad()
def store_metrics(
    sae: Any,
    store: ActivationStore,
    layer: int,
    *,
    rows: Sequence[int] | None = None,
    site: str = "resid_post",
) -> dict[str, dict[str, Any]]:
    """FVU and L0 of ``sae`` on ``store`` at every position it holds: ``{position: {fvu, l0,
    n}}`` (``n``: the vectors measured), over ``rows`` (default all). ``tokens``: every token
    but each row's first (:func:`store_tokens`); ``trigger_mean``: only rows with a trigger
    span (the others hold a zero placeholder); any other position: one vector per row.
    Positions with fewer than 2 vectors are left out; ``fvu`` is ``None`` where the vectors do
    not vary (:func:`sae_metrics`)."""
    picked = list(range(len(store))) if rows is None else list(rows)
    out: dict[str, dict[str, Any]] = {}
    for position in store.positions:
        if position == "tokens":
            x = store_tokens(store, layer, site=site, rows=picked)
        else:
            use = picked
            if position == "trigger_mean":
                use = [i for i in picked if store.rows[i].trigger_span]
            x = store.get(layer, position, site, rows=use) if use else torch.empty(0)
        if x.shape[0] < 2:
            continue
        m = sae_metrics(sae, x.float())
        out[position] = {"fvu": m["fvu"], "l0": m["l0"], "n": m["n_tokens"]}
    return out


def _held_out_split(
    x: torch.Tensor, eval_frac: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out, training) rows of ``x [n, d_in]`` in float32, shuffled with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=g)
    n_eval = max(1, int(eval_frac * x.shape[0]))
    return x[perm[:n_eval]].float(), x[perm[n_eval:]].float()


def _trainer_config(steps: int, batch_size: int, lr: float, device: str, n_train: int) -> Any:
    """SAELens' trainer settings: a constant learning rate, no wandb."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    return SAETrainerConfig(
        total_training_samples=steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr / 10,
        lr_scheduler_name="constant",
        lr_decay_steps=steps // 5,
        device=device,
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=min(100, max(1, n_train // batch_size)),
        dead_feature_window=max(1, steps // 4),
        feature_sampling_window=max(1, steps // 4),
    )


def train_sae(
    x: torch.Tensor,
    out: str | Path,
    *,
    layer: int,
    site: str = "resid_post",
    architecture: str = "topk",
    expansion: int = 8,
    k: int = 16,
    l1_coefficient: float = 5.0,
    lr: float = 3e-4,
    batch_size: int = 1024,
    n_tokens: int = 2_000_000,
    eval_frac: float = 0.1,
    x_eval: torch.Tensor | None = None,
    seed: int = 0,
    device: str = "cpu",
    model_name: str | None = None,
    progress: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Train an SAE on ``x [n, d_in]`` (activations of ``layer``) and save it to ``out``.

    ``n_tokens`` training samples are drawn by cycling through a shuffled ``1 - eval_frac`` of
    ``x``; the rest is held out for the metrics. With ``x_eval [n_eval, d_in]`` (e.g. the tokens
    of held-out conversations, :func:`held_out_conversations`) every row of ``x`` is trained on
    and the metrics are measured on ``x_eval`` (``eval_frac`` unused). Returns ``(SAE, metrics)``; the same seed and
    data give the same SAE. The folder holds SAELens' ``cfg.json`` and weights plus
    ``mechbd_sae.json`` (metrics and training settings)."""
    from sae_lens import SAE
    from sae_lens.training.sae_trainer import SAETrainer

    if x.dim() != 2 or x.shape[0] == 0:
        raise MechbdError(f"SAE training needs activations [n_tokens, d_in], got {tuple(x.shape)}")
    check_finite(x, f"layer {layer} activations")
    if x_eval is None:
        x_eval, x_train = _held_out_split(x, eval_frac, seed)
        held_out = "random tokens"
    else:
        if x_eval.dim() != 2 or x_eval.shape[1] != x.shape[1] or x_eval.shape[0] == 0:
            raise MechbdError(
                f"SAE training: held-out activations {tuple(x_eval.shape)} do not match the "
                f"training activations' width {x.shape[1]}"
            )
        x_eval, x_train = x_eval.float(), x.float()
        held_out = "given"
    batch_size = min(batch_size, x_train.shape[0])
    if batch_size == 0:
        raise MechbdError(f"SAE training: only {x.shape[0]} tokens, too few to hold some out")
    name = hook_name(layer, site)
    torch.manual_seed(seed)
    tsae = _training_sae(
        architecture,
        x.shape[1],
        expansion * x.shape[1],
        k,
        l1_coefficient,
        {"hook_name": name, "model_name": model_name},
    )
    steps = math.ceil(n_tokens / batch_size)
    cfg = _trainer_config(steps, batch_size, lr, device, int(x_train.shape[0]))
    trainer = SAETrainer(cfg, tsae, _provider(x_train, batch_size, seed))
    with _quiet_sae_lens(not progress):
        tsae = trainer.fit()
    tsae.cpu().eval()
    metrics = sae_metrics(tsae, x_eval)
    settings = {
        "architecture": architecture,
        "d_in": int(x.shape[1]),
        "d_sae": expansion * int(x.shape[1]),
        "k": k if architecture == "topk" else None,
        "l1_coefficient": l1_coefficient if architecture == "standard" else None,
        "lr": lr,
        "batch_size": batch_size,
        "n_training_samples": steps * batch_size,
        "n_train_tokens": int(x_train.shape[0]),
        "held_out": held_out,
        "seed": seed,
        "layer": layer,
        "hook_name": name,
        "model": model_name,
    }
    with staging_dir(out) as tmp:
        tsae.save_inference_model(tmp)
        write_json(tmp / "mechbd_sae.json", {"metrics": metrics, "training": settings})
    sae = SAE.load_from_disk(out)
    return sae, {**metrics, "training": settings}
