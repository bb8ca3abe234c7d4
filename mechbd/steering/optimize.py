"""A steering vector found by gradient descent, fitted until it converges.

A mean-difference direction is one guess at the vector that switches a behaviour. To tell "this
direction is the wrong one" from "no single added vector at this layer can do it", fit the
vector itself: with the model frozen, minimise the negative log-probability of the reply
``Answer: <target>`` (thinking off) with the vector added at one layer, from the assistant turn
on, through the same ``steer`` hooks the sweeps use. This is promptless, optimisation-based
steering in the spirit of BiPO (Cao et al. 2024), used here as a diagnostic.

Fit it on *counterbalanced* prompts (each scenario in both option orders, the target the
misaligned letter of each): a vector that only pushes one letter then cannot bring the loss
below ln 2 per prompt, so a low loss means the vector changes the choice.

**Stopping rule.** Full-batch Adam from zero until the first of: the mean loss falls below
``target_loss`` (``"target"``); the best loss so far improved by less than ``rel_tol`` of itself
over the last ``patience`` steps (``"plateau"``); ``max_steps`` steps (``"max_steps"``). The fit
*converged* unless it stopped on ``max_steps``; only then is what it reaches a bound on one
added vector at that layer (up to the optimiser's local optimum). The vector kept is the one of
the best loss seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mechbd.errors import MechbdError
from mechbd.steering.directions import Direction
from mechbd.steering.ops import Intervention, steer
from mechbd.steering.read import MCQReader


def _check_targets(users: Sequence[str], targets: Sequence[str]) -> None:
    if not users or len(users) != len(targets):
        raise MechbdError(
            f"optimised steering: {len(users)} prompts and {len(targets)} targets "
            "(need the same, non-zero number)"
        )
    bad = sorted({t for t in targets if t not in ("A", "B")})
    if bad:
        raise MechbdError(f"optimised steering: targets must be 'A' or 'B', got {bad}")


def _fit_layer(
    reader: MCQReader,
    targets: Sequence[str],
    layer: int,
    *,
    max_steps: int,
    lr: float,
    target_loss: float,
    rel_tol: float,
    patience: int,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Full-batch Adam from zero on the vector at ``layer``: the best vector and its record."""
    model, tok = reader.model, reader.tok
    d = int(model.get_input_embeddings().weight.shape[1])  # type: ignore[operator]
    v = torch.zeros(d, device=reader.device, requires_grad=True)
    opt = torch.optim.Adam([v], lr=lr)
    history: list[float] = []
    best, best_v, reason = float("inf"), v.detach().clone(), "max_steps"
    reader.cache_blocks()  # the blocks below ``layer`` are then not run (no hooks yet)
    for _ in range(max_steps + 1):
        with steer(model, [Intervention(layer, v)], positions=reader.positions, tokenizer=tok):
            loss = reader.reply_loss(targets, from_layer=layer)
        now = float(loss.detach())
        if not torch.isfinite(loss):
            raise MechbdError(f"optimised steering at layer {layer}: the loss became {now}")
        if now < best:
            best, best_v = now, v.detach().clone()
        history.append(best)
        if best < target_loss:
            reason = "target"
        elif len(history) > patience and history[-patience - 1] - best < rel_tol * best:
            reason = "plateau"
        if reason != "max_steps" or len(history) > max_steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return best_v.float().cpu(), {
        "before": history[0],
        "after": best,
        "steps": len(history) - 1,
        "stop_reason": reason,
        "converged": reason != "max_steps",
    }


def optimized_direction(
    model: nn.Module,
    tok: Any,
    users: Sequence[str],
    targets: Sequence[str],
    *,
    layers: Sequence[int],
    positions: str = "assistant",
    max_steps: int = 200,
    lr: float = 0.2,
    target_loss: float = 0.01,
    rel_tol: float = 1e-3,
    patience: int = 15,
    batch_size: int = 64,
    name: str = "optimised",
) -> Direction:
    """One vector per layer in ``layers``, each fitted alone (steered at that layer only) to
    make the model answer ``targets[i]`` (``"A"`` or ``"B"``) to ``users[i]``: it minimises
    the mean negative log-probability of the reply ``Answer: <targets[i]>`` (thinking off),
    with the stopping rule of the module docstring. ``provenance["fit"][layer]`` has the
    loss before and after (nats per prompt), the iterations, the stop reason and whether it
    converged. The model runs in eval mode with its weights frozen; its mode and
    ``requires_grad`` flags are restored afterwards."""
    _check_targets(users, targets)
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    vecs: dict[int, torch.Tensor] = {}
    fits: dict[int, dict[str, Any]] = {}
    try:
        model.eval()  # no dropout noise in the objective
        for p in model.parameters():
            p.requires_grad_(False)
        reader = MCQReader(model, tok, users, positions=positions, batch_size=batch_size)
        for layer in layers:
            vecs[layer], fits[layer] = _fit_layer(
                reader,
                targets,
                layer,
                max_steps=max_steps,
                lr=lr,
                target_loss=target_loss,
                rel_tol=rel_tol,
                patience=patience,
            )
    finally:
        model.train(was_training)
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
    return Direction(
        vecs,
        {
            "name": name,
            "how": f"full-batch Adam (lr {lr}) on -log P('Answer: <target>'), thinking off, "
            f"positions {positions}, one layer at a time; stop at loss < {target_loss}, a best "
            f"loss improved by < {rel_tol:g} of itself in {patience} steps, or {max_steps} steps",
            "n_prompts": len(users),
            "fit": fits,
        },
    )
