"""A steering vector found by gradient descent (a ceiling for one added direction only once
the fit has converged).

A mean-difference direction is one guess at the vector that switches a behaviour. To tell "this
direction is the wrong one" from "no single added vector at this layer can do it", fit the
vector itself: with the model frozen, minimise the cross-entropy of a target option letter after
``Answer:`` (thinking off, the same prompt as the CAA letter probability), with the vector added
at one layer through the same ``steer`` hooks the sweeps use. Evaluate the result on held-out
prompts with ``measure`` like any other direction; if the fitted vector cannot move the
behaviour there, no mean difference at that layer will (up to the optimiser's local optimum).
This is promptless, optimisation-based steering in the spirit of BiPO (Cao et al. 2024) and
"one-shot optimised steering vectors", used here as a diagnostic rather than a method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mechbd.errors import MechbdError
from mechbd.eval.generate import chat_prompts
from mechbd.models import position_ids
from mechbd.steering.directions import Direction
from mechbd.steering.ops import Intervention, steer


def _encode(tok: Any, users: Sequence[str], targets: Sequence[str]) -> dict[str, torch.Tensor]:
    """Left-padded ``prompt + "Answer: <letter>"``, tokenized as one string (as the model saw
    its training replies), with labels on the tokens past the prompt's own tokenization."""
    prompts = [p + "Answer:" for p in chat_prompts(tok, list(users), enable_thinking=False)]
    seqs, starts = [], []
    for p, t in zip(prompts, targets, strict=True):
        head = tok.encode(p, add_special_tokens=False)
        full = tok.encode(f"{p} {t}", add_special_tokens=False)
        k = 0
        while k < min(len(head), len(full)) and head[k] == full[k]:
            k += 1
        seqs.append(full)
        starts.append(k)
    width = max(len(x) for x in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (x, k) in enumerate(zip(seqs, starts, strict=True)):
        ids[i, width - len(x) :] = torch.tensor(x)
        mask[i, width - len(x) :] = 1
        labels[i, width - len(x) + k :] = torch.tensor(x[k:])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _objective(
    model: nn.Module,
    tok: Any,
    enc: dict[str, torch.Tensor],
    layer: int,
    v: torch.Tensor,
    idx: torch.Tensor,
    positions: str,
) -> torch.Tensor:
    """Per prompt in ``idx``, the summed log-loss of the target's tokens with ``v`` added at
    ``layer``; mean over the prompts."""
    with steer(model, [Intervention(layer, v)], positions=positions, tokenizer=tok):
        mask = enc["attention_mask"][idx]
        logits = model(
            input_ids=enc["input_ids"][idx], attention_mask=mask, position_ids=position_ids(mask)
        ).logits[:, :-1]
    labels = enc["labels"][idx, 1:]
    return torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), reduction="sum"
    ) / len(idx)


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
    model: nn.Module,
    tok: Any,
    enc: dict[str, torch.Tensor],
    layer: int,
    *,
    positions: str,
    steps: int,
    batch_size: int,
    lr: float,
    g: torch.Generator,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Adam from zero on the vector at ``layer`` (minibatches drawn with ``g``): the vector and
    the objective on all prompts before and after."""
    device = enc["input_ids"].device
    n = len(enc["input_ids"])
    d = int(model.get_input_embeddings().weight.shape[1])  # type: ignore[operator]

    def full(v: torch.Tensor) -> float:
        with torch.no_grad():
            chunks = torch.arange(n, device=device).split(batch_size)
            return (
                sum(
                    float(_objective(model, tok, enc, layer, v, c, positions)) * len(c)
                    for c in chunks
                )
                / n
            )

    v = torch.zeros(d, device=device, requires_grad=True)
    start = full(v.detach())
    opt = torch.optim.Adam([v], lr=lr)
    for _ in range(steps):
        idx = torch.randperm(n, generator=g)[:batch_size].to(device)
        loss = _objective(model, tok, enc, layer, v, idx, positions)
        if not torch.isfinite(loss):
            raise MechbdError(f"optimised steering at layer {layer}: the loss became {loss.item()}")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return v.detach().float().cpu(), {"before": start, "after": full(v.detach())}


def optimized_direction(
    model: nn.Module,
    tok: Any,
    users: Sequence[str],
    targets: Sequence[str],
    *,
    layers: Sequence[int],
    positions: str = "assistant",
    steps: int = 100,
    batch_size: int = 32,
    lr: float = 0.05,
    seed: int = 0,
    name: str = "optimised",
) -> Direction:
    """One vector per layer in ``layers``, each fitted alone (steered at that layer only) to
    make the model answer ``targets[i]`` (``"A"`` or ``"B"``) to ``users[i]``: it maximises
    the log-probability of the reply ``Answer: <targets[i]>`` (thinking off).

    Adam from zero, ``steps`` minibatches of ``batch_size`` prompts. The model runs in eval
    mode with its weights frozen for the fit; its mode and ``requires_grad`` flags are
    restored afterwards."""
    _check_targets(users, targets)
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in _encode(tok, users, targets).items()}
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    g = torch.Generator().manual_seed(seed)
    vecs: dict[int, torch.Tensor] = {}
    losses: dict[int, dict[str, float]] = {}
    try:
        model.eval()  # no dropout noise in the objective
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in layers:
            vecs[layer], losses[layer] = _fit_layer(
                model,
                tok,
                enc,
                layer,
                positions=positions,
                steps=steps,
                batch_size=batch_size,
                lr=lr,
                g=g,
            )
    finally:
        model.train(was_training)
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
    return Direction(
        vecs,
        {
            "name": name,
            "how": f"Adam on the target letter's cross-entropy after 'Answer:', {steps} steps x "
            f"{batch_size} prompts, lr {lr}, positions {positions}, one layer at a time",
            "n_prompts": len(users),
            "loss": losses,
            "seed": seed,
        },
    )
