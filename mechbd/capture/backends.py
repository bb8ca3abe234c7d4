"""Three ways to read the same activations: PyTorch forward hooks (default), nnsight and
TransformerLens' ``TransformerBridge``, plus nnsight traces run remotely on NDIF (``ndif``).
Each takes a padded batch and returns, for every
requested ``(layer, site)``, the full ``[batch, seq, d_model]`` activation; pooling to
positions is shared (``mechbd.capture.capture``), so the backends can only differ in what they
read, and the tests hold them to the same numbers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mechbd.capture.names import decoder_blocks, hook_name, site_path
from mechbd.errors import MechbdError
from mechbd.models import position_ids

Key = tuple[int, str]  # (layer, site)
Backend = Callable[[torch.Tensor, torch.Tensor, list[Key]], dict[Key, torch.Tensor]]
BACKENDS = ("hooks", "nnsight", "transformer_lens", "ndif")
_SITE_ORDER = {"attn_out": 0, "mlp_out": 1, "resid_post": 2}  # execution order inside a block


def forward_order(keys: Iterable[Key]) -> list[Key]:
    return sorted(set(keys), key=lambda k: (k[0], _SITE_ORDER[k[1]]))


def _first(o: Any) -> torch.Tensor:
    return o[0] if isinstance(o, tuple | list) else o


class _StopForward(Exception):
    pass


def hooks_backend(model: nn.Module) -> Backend:
    """Forward hooks on the HF modules; the forward pass stops after the deepest block
    requested (no later layers, no final norm, no unembedding)."""
    blocks_path, _ = decoder_blocks(model)
    modules = dict(model.named_modules())

    def run(ids: torch.Tensor, mask: torch.Tensor, keys: list[Key]) -> dict[Key, torch.Tensor]:
        out: dict[Key, torch.Tensor] = {}
        handles = []
        deepest = max(layer for layer, _ in keys)

        def grab(key: Key) -> Callable[..., None]:
            def hook(_m: nn.Module, _i: Any, o: Any) -> None:
                out[key] = _first(o).detach()

            return hook

        def stop(_m: nn.Module, _i: Any, _o: Any) -> None:
            raise _StopForward

        try:
            for key in keys:
                handles.append(modules[site_path(model, *key)].register_forward_hook(grab(key)))
            # registered last on the deepest block, so it fires after that block's capture hook
            handles.append(modules[f"{blocks_path}.{deepest}"].register_forward_hook(stop))
            try:
                with torch.inference_mode():
                    model(
                        input_ids=ids,
                        attention_mask=mask,
                        position_ids=position_ids(mask),
                        use_cache=False,
                    )
            except _StopForward:
                pass
        finally:
            for h in handles:
                h.remove()
        missing = [k for k in keys if k not in out]
        if missing:
            raise MechbdError(f"hooks backend: no activation recorded for {missing}")
        return out

    return run


def nnsight_backend(model: nn.Module, wrapped: Any = None, remote: bool = False) -> Backend:
    """The same reads through an nnsight trace of the unmodified HF model. ``wrapped`` is an
    nnsight model around it (default ``NNsight(model)``); with an nnsight ``LanguageModel`` of a
    hub id and ``remote``, the trace runs on NDIF and only the saved activations come back."""
    if wrapped is None:
        from nnsight import NNsight

        wrapped = NNsight(model)
    extra = {"remote": True} if remote else {}

    def envoy(path: str) -> Any:
        e: Any = wrapped
        for part in path.split("."):
            e = e[int(part)] if part.isdigit() else getattr(e, part)
        return e

    def run(ids: torch.Tensor, mask: torch.Tensor, keys: list[Key]) -> dict[Key, torch.Tensor]:
        saved: dict[Key, Any] = {}
        with (
            torch.inference_mode(),
            wrapped.trace(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids(mask),
                use_cache=False,
                **extra,
            ),
        ):
            for key in forward_order(keys):  # nnsight needs reads in execution order
                saved[key] = _first(envoy(site_path(model, *key)).output).save()  # type: ignore[attr-defined]
        return {k: torch.as_tensor(v).detach() for k, v in saved.items()}

    return run


def transformer_lens_backend(model: nn.Module, tokenizer: Any) -> Backend:
    """``TransformerBridge`` around a copy of the HF model (the bridge replaces the model's
    modules with its own components, so it never gets the caller's model), read with
    ``run_with_cache`` under the TransformerLens hook names mechbd uses as its public names."""
    import copy

    from transformer_lens.model_bridge import TransformerBridge

    model = copy.deepcopy(model)
    name = getattr(model.config, "_name_or_path", "") or "model"
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=model, tokenizer=tokenizer, dtype=dtype, device=device
    )

    def run(ids: torch.Tensor, mask: torch.Tensor, keys: list[Key]) -> dict[Key, torch.Tensor]:
        names = {hook_name(*k): k for k in keys}
        with torch.inference_mode():
            _, cache = bridge.run_with_cache(
                ids,
                attention_mask=mask,
                names_filter=list(names),
                stop_at_layer=max(k[0] for k in keys) + 1,
            )
        return {k: cache[n].detach() for n, k in names.items()}

    return run


def ndif_model(repo_id: str) -> Any:
    """An nnsight ``LanguageModel`` of a public hub model for remote execution on NDIF
    (``capture(..., backend="ndif")``). Locally its weights stay on the meta device: only the
    config and tokenizer are fetched. The API key comes from ``NDIF_API_KEY`` (or nnsight's own
    config) and is set in memory only. Limits: NDIF runs the models it hosts, unmodified, so
    local folders, LoRA adapters (backdoored models) and the organism cannot run there."""
    if Path(repo_id).exists():
        raise MechbdError(
            f"{repo_id}: a local folder; NDIF runs public hub models it hosts (use a hub id, "
            "or capture locally with --backend hooks)"
        )
    from nnsight import CONFIG, LanguageModel

    key = os.environ.get("NDIF_API_KEY")
    if key:
        CONFIG.API.APIKEY = key
    if not CONFIG.API.APIKEY:
        raise MechbdError("NDIF needs an API key: export NDIF_API_KEY=... (https://login.ndif.us)")
    return LanguageModel(repo_id)


def make_backend(name: str, model: nn.Module, tokenizer: Any, wrapped: Any = None) -> Backend:
    if name == "hooks":
        return hooks_backend(model)
    if name == "nnsight":
        return nnsight_backend(model)
    if name == "ndif":
        return nnsight_backend(model, wrapped, remote=True)
    if name == "transformer_lens":
        return transformer_lens_backend(model, tokenizer)
    raise MechbdError(f"unknown capture backend {name!r}; choose from {', '.join(BACKENDS)}")
