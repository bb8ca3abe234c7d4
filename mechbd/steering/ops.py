"""Steering operators installed as forward hooks by a context manager that always removes them.

Operators on the activation ``h`` of a site (default: a decoder block's output, the residual
stream ``blocks.{L}.hook_resid_post``), for a direction ``v`` and multiplier ``m``:

* ``add``: ``h + m v`` (CAA, activation addition);
* ``ablate``: ``h - (h . u) u`` with ``u = v / |v|`` (directional ablation; ``m`` unused);
* ``ablate_add``: ``h - (h . u) u + m v`` (steering-vectors' ablation-then-addition).

Positions: ``"all"`` steers every position; ``"assistant"`` steers from the start of the
assistant turn (the chat template's generation prompt, found in each row's ``input_ids``) and
every generated token, as CAA adds "at every position from the end of the instruction".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mechbd.capture.names import n_layers_of, site_path
from mechbd.errors import MechbdError

OPS = ("add", "ablate", "ablate_add")
POSITIONS = ("all", "assistant")


@dataclass(frozen=True)
class Intervention:
    layer: int
    vector: torch.Tensor  # [d_model], in the site's activation units
    op: str = "add"
    multiplier: float = 1.0
    site: str = "resid_post"

    def apply(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        v = self.vector.to(h.device, h.dtype)
        delta = self.multiplier * v if self.op != "ablate" else torch.zeros_like(v)
        if self.op != "add":
            u = v / v.norm().clamp_min(1e-12)
            delta = delta - (h @ u).unsqueeze(-1) * u
        return h + (delta if mask is None else delta * mask.unsqueeze(-1).to(h.dtype))


def split_generation_prompt(tok: Any, msgs: list[dict[str, Any]], **kw: Any) -> tuple[str, str]:
    """``(conversation, generation prompt)``: the chat template's rendering of ``msgs`` and
    what it appends to open the assistant turn (``kw``: template options, e.g.
    ``enable_thinking``)."""
    with_gen = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kw)
    without = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    if not (isinstance(with_gen, str) and with_gen.startswith(without) and with_gen != without):
        raise MechbdError("cannot find the assistant turn's start in this tokenizer's template")
    return without, with_gen[len(without) :]


def assistant_marker(tok: Any) -> list[int]:
    """Token ids the chat template puts at the start of the assistant turn (the generation
    prompt), e.g. ``<|im_start|>assistant\\n`` for Qwen."""
    _, gen = split_generation_prompt(tok, [{"role": "user", "content": "x"}])
    ids = tok(gen, add_special_tokens=False)["input_ids"]
    return list(ids[:2]) if len(ids) > 2 else list(ids)  # the stable head of the marker


def _last_occurrence(ids: torch.Tensor, marker: list[int]) -> torch.Tensor:
    """Per row, the index of the last occurrence of ``marker`` (or 0 when absent)."""
    b, t = ids.shape
    k = len(marker)
    if t < k:
        return torch.zeros(b, dtype=torch.long, device=ids.device)
    m = torch.tensor(marker, device=ids.device)
    hit = (ids.unfold(1, k, 1) == m).all(-1)  # [b, t-k+1]
    idx = torch.arange(hit.shape[1], device=ids.device).expand_as(hit)
    return torch.where(hit, idx, -1).amax(1).clamp_min(0)


class steer:  # noqa: N801 - used as a context manager, like torch.no_grad
    """``with steer(model, [Intervention(...)], positions=..., tokenizer=...): ...``

    Every hook registered on entry is removed on exit, normal or by exception. Interventions
    at the same layer and site apply in the order given."""

    def __init__(
        self,
        model: nn.Module,
        interventions: Sequence[Intervention],
        *,
        positions: str = "all",
        tokenizer: Any = None,
    ):
        if positions not in POSITIONS:
            raise MechbdError(f"unknown steering positions {positions!r}; choose from {POSITIONS}")
        if positions == "assistant" and tokenizer is None:
            raise MechbdError("positions='assistant' needs the tokenizer (to find the turn start)")
        n_layers = n_layers_of(model)
        d = int(model.get_input_embeddings().weight.shape[1])  # type: ignore[operator]
        for iv in interventions:
            if iv.op not in OPS:
                raise MechbdError(f"unknown steering op {iv.op!r}; choose from {', '.join(OPS)}")
            if not 0 <= iv.layer < n_layers:
                raise MechbdError(
                    f"steering layer {iv.layer} is out of range: the model has {n_layers} layers"
                )
            if iv.vector.shape != (d,):
                raise MechbdError(
                    f"steering vector at layer {iv.layer} has shape {tuple(iv.vector.shape)}, "
                    f"the model's d_model is {d}"
                )
            if not torch.isfinite(iv.vector).all():
                raise MechbdError(f"steering vector at layer {iv.layer} contains NaN or inf")
        self.model = model
        self.interventions = list(interventions)
        self.marker = assistant_marker(tokenizer) if positions == "assistant" else None
        self._start: torch.Tensor | None = None
        self._handles: list[Any] = []

    def _mask(self, h: torch.Tensor) -> torch.Tensor | None:
        if self.marker is None or self._start is None or h.shape[1] == 1:
            return None  # all positions; a decode step is always inside the assistant turn
        pos = torch.arange(h.shape[1], device=h.device)
        return (pos[None, :] >= self._start.to(h.device)[:, None]).to(h.dtype)

    def __enter__(self) -> steer:
        modules = dict(self.model.named_modules())
        by_site: dict[str, list[Intervention]] = {}
        for iv in self.interventions:
            by_site.setdefault(site_path(self.model, iv.layer, iv.site), []).append(iv)
        try:
            if self.marker is not None:
                self._handles.append(
                    self.model.register_forward_pre_hook(self._pre, with_kwargs=True)
                )
            for path, ivs in by_site.items():
                self._handles.append(modules[path].register_forward_hook(self._hook(ivs)))
        except BaseException:
            self._remove()
            raise
        return self

    def _pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] > 1:
            assert self.marker is not None
            self._start = _last_occurrence(ids, self.marker)

    def _hook(self, ivs: list[Intervention]) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            h = output[0] if isinstance(output, tuple) else output
            mask = self._mask(h)
            for iv in ivs:
                h = iv.apply(h, mask)
            return (h, *output[1:]) if isinstance(output, tuple) else h

        return hook

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._start = None

    def __exit__(self, *exc: object) -> None:
        self._remove()
