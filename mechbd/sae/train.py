"""Train sparse autoencoders with SAELens on activations mechbd captured.

SAELens does the training: its ``TrainingSAE`` classes (``standard`` = ReLU + L1, ``topk``)
and ``SAETrainer`` (Adam, LR schedule, L1 warm-up, dead-latent tracking, activation-norm
scaling folded into the weights at the end). mechbd supplies the data provider (shuffled
batches cycling over an in-memory ``[n_tokens, d_in]`` tensor, seeded), saves the inference
SAE in SAELens' own format (``SAE.load_from_disk`` loads it) into a folder written atomically,
with the hook name set to mechbd's public layer name, and measures the SAE on held-out tokens:

* ``fvu``: fraction of variance unexplained, ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``
  (float64 sums; 0 is a perfect reconstruction, 1 is no better than the mean);
* ``l0``: mean number of active latents per token;
* ``dead_fraction``: latents that never fire on the held-out tokens.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from mechbd.capture.names import hook_name
from mechbd.capture.store import ActivationStore
from mechbd.errors import MechbdError
from mechbd.io import staging_dir, write_json

ARCHITECTURES = ("standard", "topk")
Architecture = Literal["standard", "topk"]


def check_finite(x: torch.Tensor, where: str) -> None:
    """Refuse NaN or infinite activations, naming where they came from and the first bad row."""
    bad = ~torch.isfinite(x)
    if bad.any():
        row = int(bad.any(-1).nonzero()[0]) if x.dim() > 1 else int(bad.nonzero()[0])
        raise MechbdError(f"{where}: activations contain NaN or inf (first at row {row})")


def store_tokens(
    store: ActivationStore,
    layer: int,
    *,
    site: str = "resid_post",
    skip_first: int = 1,
) -> torch.Tensor:
    """Every captured token's activation at ``layer`` (store position ``tokens``), without each
    row's first ``skip_first`` tokens (the first token of a sequence carries an outsized
    activation that no SAE is meant to reconstruct)."""
    if "tokens" not in store.positions:
        raise MechbdError(
            f"{store.path}: captured at positions {store.positions}; SAE training needs "
            "per-token activations (capture with position 'tokens')"
        )
    if layer not in store.layers:
        raise MechbdError(f"{store.path}: layer {layer} not captured (layers {store.layers})")
    acts, offsets = store.tokens(layer, site=site)
    keep = torch.ones(acts.shape[0], dtype=torch.bool)
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
def sae_metrics(sae: Any, x: torch.Tensor, batch: int = 8192) -> dict[str, float]:
    """FVU, L0 and dead fraction of ``sae`` on ``x [n, d_in]`` (float64 sums)."""
    check_finite(x, "SAE evaluation set")
    if x.shape[-1] != sae.cfg.d_in:
        raise MechbdError(f"SAE expects d_in={sae.cfg.d_in}, activations have {x.shape[-1]}")
    mean = x.double().mean(0)
    sse = sst = l0 = 0.0
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
        "fvu": sse / sst,
        "l0": l0 / x.shape[0],
        "dead_fraction": float((~fired).double().mean()),
        "n_tokens": int(x.shape[0]),
    }


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
    seed: int = 0,
    device: str = "cpu",
    model_name: str | None = None,
    progress: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Train an SAE on ``x [n, d_in]`` (activations of ``layer``) and save it to ``out``.

    ``n_tokens`` training samples are drawn by cycling through a shuffled ``1 - eval_frac`` of
    ``x``; the rest is held out for the metrics. Returns ``(SAE, metrics)``; the same seed and
    data give the same SAE. The folder holds SAELens' ``cfg.json`` and weights plus
    ``mechbd_sae.json`` (metrics and training settings)."""
    from sae_lens import SAE
    from sae_lens.training.sae_trainer import SAETrainer

    if x.dim() != 2 or x.shape[0] == 0:
        raise MechbdError(f"SAE training needs activations [n_tokens, d_in], got {tuple(x.shape)}")
    check_finite(x, f"layer {layer} activations")
    x_eval, x_train = _held_out_split(x, eval_frac, seed)
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
