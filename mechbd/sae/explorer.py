"""Data for the feature explorers, computed from a run's SAE, directions and activation stores
(torch, no plotting): latent dashboards, per-token traces of a direction or latent over a
prompt and its reply, latent histograms for two label sets, and cosines of directions with
decoder rows. The ``sae`` stage saves them as ``sae/explorer.json``; ``mechbd.report.figures``
draws what it is given, so ``report.html`` can be rebuilt without loading a model or an SAE.

Token strings come from the tokenizer and from datasets or model outputs: they are untrusted
and stay plain data here; whoever renders them escapes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from mechbd.capture.store import ActivationStore
from mechbd.errors import MechbdError
from mechbd.sae.analysis import encode

Score = Callable[[torch.Tensor], torch.Tensor]  # [n_tokens, d] activations -> [n_tokens]


def token_strings(tok: Any, ids: Sequence[int]) -> list[str]:
    """Each token id decoded on its own (spaces kept, special tokens shown)."""
    return [tok.decode([int(i)]) for i in ids]


def direction_score(direction: torch.Tensor) -> Score:
    """Projection onto the unit vector along ``direction``."""
    u = direction.float() / direction.float().norm()
    return lambda acts: acts.float() @ u


def latent_score(sae: Any, latent: int) -> Score:
    if not 0 <= latent < sae.cfg.d_sae:
        raise MechbdError(f"latent {latent} out of range: the SAE has {sae.cfg.d_sae} latents")
    return lambda acts: encode(sae, acts, latents=[latent])[:, 0]


def _r(x: torch.Tensor) -> list[float]:
    return [round(float(v), 4) for v in x.tolist()]


def token_trace(
    store: ActivationStore, layer: int, row: int, tok: Any, scores: Mapping[str, Score]
) -> dict[str, Any]:
    """Per-token values of each score over one stored row (prompt and reply): the data of the
    per-token heatmap. The store must hold position ``tokens`` at ``layer``."""
    if not 0 <= row < len(store):
        raise MechbdError(f"{store.path}: row {row} out of range ({len(store)} rows)")
    acts, _ = store.tokens(layer, row=row)
    r = store.rows[row]
    return {
        "id": r.id,
        "label": r.label,
        "layer": layer,
        "prompt_len": r.prompt_len,
        "tokens": token_strings(tok, r.ids),
        "values": {name: _r(fn(acts)) for name, fn in scores.items()},
    }


@torch.no_grad()
def latent_dashboards(
    sae: Any,
    stores: Sequence[ActivationStore],
    layer: int,
    latents: Sequence[int],
    tok: Any,
    W_U: torch.Tensor,
    *,
    n_examples: int = 6,
    window: int = 8,
    n_logits: int = 8,
    bins: int = 30,
) -> dict[str, Any]:
    """Neuronpedia-style dashboards for ``latents`` over every token of ``stores`` (position
    ``tokens``; each row's first token is left out, as in SAE training): the top-activating
    tokens with ``window`` tokens of context either side, a histogram of the non-zero
    activations, the share of tokens where the latent fires, and the tokens whose unembedding
    rows ``W_U [vocab, d]`` the decoder direction promotes and suppresses most."""
    if W_U.shape[-1] != sae.cfg.d_in:
        raise MechbdError(f"unembedding has width {W_U.shape[-1]}, the SAE {sae.cfg.d_in}")
    ids: list[int] = []
    where: list[tuple[int, int, int]] = []  # (store, row, position) of every token
    zs = []
    for k, st in enumerate(stores):
        acts, offsets = st.tokens(layer)
        z = encode(sae, acts, latents=list(latents))
        z[offsets[:-1]] = 0.0
        zs.append(z)
        for i, r in enumerate(st.rows):
            ids += r.ids
            where += [(k, i, p) for p in range(len(r.ids))]
    if not where:
        raise MechbdError("latent dashboards: the stores hold no tokens")
    z = torch.cat(zs)
    out: dict[str, Any] = {}
    W_dec = sae.W_dec.detach().float().cpu()
    W_U = W_U.detach().float().cpu()
    for j, lat in enumerate(latents):
        col = z[:, j]
        examples = []
        top = col.topk(min(n_examples, len(col)))
        for v, g in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            if v <= 0:
                break
            k, i, p = where[g]
            row0 = g - p
            a, b = max(0, p - window), min(len(stores[k].rows[i].ids), p + window + 1)
            examples.append(
                {
                    "id": stores[k].rows[i].id,
                    "tokens": token_strings(tok, ids[row0 + a : row0 + b]),
                    "values": _r(col[row0 + a : row0 + b]),
                    "focus": p - a,
                    "max": round(v, 4),
                }
            )
        nz = col[col > 0]
        counts, edges = (
            torch.histogram(nz, bins=bins) if len(nz) else (torch.zeros(0), torch.zeros(0))
        )
        logits = W_U @ W_dec[lat]
        up, down = logits.topk(n_logits), (-logits).topk(n_logits)
        out[str(lat)] = {
            "examples": examples,
            "hist_counts": [int(c) for c in counts.tolist()],
            "hist_edges": _r(edges),
            "frac_active": round(float((col > 0).float().mean()), 5),
            "top_logits": {
                "tokens": token_strings(tok, up.indices.tolist()),
                "values": _r(up.values),
            },
            "bottom_logits": {
                "tokens": token_strings(tok, down.indices.tolist()),
                "values": _r(-down.values),
            },
        }
    return out


def label_values(
    store: ActivationStore, layer: int, groups: Mapping[str, str], score: Score
) -> dict[str, list[float]]:
    """A score at the last prompt token for each label set: ``{group name: values}``, the data
    of a triggered-vs-clean histogram. ``groups`` maps a display name to a store label."""
    x = store.get(layer, "last")
    vals = score(x)
    out = {}
    for name, label in groups.items():
        idx = store.indices(label)
        if not idx:
            raise MechbdError(f"{store.path}: no rows labelled {label!r}")
        out[name] = _r(vals[idx])
    return out


def cosine_matrix(
    directions: Mapping[str, torch.Tensor], W_dec: torch.Tensor, latents: Sequence[int]
) -> dict[str, Any]:
    """Cosine of each direction with the decoder rows of ``latents``: rows follow
    ``directions``, columns ``latents``."""
    W = W_dec.detach().double()[list(latents)]
    W = W / W.norm(dim=-1, keepdim=True)
    z = []
    for name, d in directions.items():
        if d.shape[-1] != W.shape[-1]:
            raise MechbdError(f"direction {name!r} has width {d.shape[-1]}, the SAE {W.shape[-1]}")
        d = d.double() / d.double().norm()
        z.append(_r(W @ d))
    return {"directions": list(directions), "latents": list(latents), "cosines": z}
