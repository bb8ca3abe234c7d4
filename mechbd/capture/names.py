"""Public activation names (TransformerLens style) and where they live in a Hugging Face model.

mechbd calls the decoder block outputs ``blocks.{L}.hook_resid_post``, the attention and MLP
outputs ``blocks.{L}.hook_attn_out`` and ``blocks.{L}.hook_mlp_out``, exactly as TransformerLens
and SAELens do, so an SAE trained on a store loads onto the model without renaming. The mapping
to modules is found from the model's structure (the ``ModuleList`` of decoder blocks and the
attention / MLP child of each block), not from a per-architecture table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from mechbd.errors import MechbdError

SITES = ("resid_post", "attn_out", "mlp_out")
_ATTN = ("self_attn", "attn", "attention", "self_attention")
_MLP = ("mlp", "feed_forward", "ffn")
_NAME = re.compile(r"^blocks\.(\d+)\.hook_(resid_post|attn_out|mlp_out)$")


def hook_name(layer: int, site: str = "resid_post") -> str:
    if site not in SITES:
        raise MechbdError(f"unknown site {site!r}; choose from {', '.join(SITES)}")
    return f"blocks.{layer}.hook_{site}"


def parse_hook_name(name: str) -> tuple[int, str]:
    m = _NAME.match(name)
    if not m:
        raise MechbdError(
            f"unknown activation name {name!r}; expected blocks.<layer>.hook_resid_post "
            "(or hook_attn_out / hook_mlp_out)"
        )
    return int(m.group(1)), m.group(2)


def parse_layers(spec: str | int | Sequence[int], n_layers: int) -> list[int]:
    """``"all"``, ``"3"``, ``"0-5"``, ``"1,3,-1"``, an int or a list; negative counts from the end.
    A layer outside the model is an error that names it and the model's layer count."""
    if isinstance(spec, int):
        items: list[int] = [spec]
    elif isinstance(spec, str):
        s = spec.strip().lower()
        if s == "all":
            return list(range(n_layers))
        items = []
        for part in filter(None, (p.strip() for p in s.split(","))):
            m = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", part)
            try:
                if m:
                    items += list(range(int(m.group(1)), int(m.group(2)) + 1))
                else:
                    items.append(int(part))
            except ValueError:
                raise MechbdError(
                    f"layers: cannot read {part!r} (use all, 3, 0-5 or 1,3,5)"
                ) from None
    else:
        items = [int(x) for x in spec]
    if not items:
        raise MechbdError("layers: no layers selected")
    out = []
    for layer in items:
        real = layer + n_layers if layer < 0 else layer
        if not 0 <= real < n_layers:
            raise MechbdError(
                f"layer {layer} is out of range: the model has {n_layers} layers (0-{n_layers - 1})"
            )
        if real not in out:
            out.append(real)
    return sorted(out)


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The dotted path and ``ModuleList`` of the decoder blocks of a causal LM (Llama/Qwen/
    Mistral ``model.layers``, GPT-2 ``transformer.h``, GPT-NeoX ``gpt_neox.layers``, ...)."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    found = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n)
    ]
    if not found:
        raise MechbdError(
            f"cannot find the decoder blocks of {type(model).__name__} (no ModuleList of {n} layers)"
        )
    return min(found, key=lambda x: x[0].count("."))  # the outermost list


def site_path(model: nn.Module, layer: int, site: str) -> str:
    """Dotted module path whose output is ``blocks.{layer}.hook_{site}``."""
    path, blocks = decoder_blocks(model)
    if not 0 <= layer < len(blocks):
        raise MechbdError(f"layer {layer} is out of range: the model has {len(blocks)} layers")
    base = f"{path}.{layer}"
    if site == "resid_post":
        return base
    candidates = _ATTN if site == "attn_out" else _MLP if site == "mlp_out" else None
    if candidates is None:
        raise MechbdError(f"unknown site {site!r}; choose from {', '.join(SITES)}")
    block = blocks[layer]
    for child in candidates:
        if isinstance(getattr(block, child, None), nn.Module):
            return f"{base}.{child}"
    raise MechbdError(
        f"{type(block).__name__} has no attention/MLP child named any of {candidates}; "
        f"cannot capture {site}"
    )


def n_layers_of(model: nn.Module) -> int:
    return len(decoder_blocks(model)[1])
