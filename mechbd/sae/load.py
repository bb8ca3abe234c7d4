"""Load an SAE (a local SAELens folder or a SAELens pretrained release) and fit it to mechbd's
layer names, refusing one that does not fit the model or the layer asked for."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mechbd.capture.names import hook_name
from mechbd.errors import MechbdError

# SAELens hook names for the residual stream, and the HF module paths some releases use.
_PATTERNS: list[tuple[re.Pattern[str], int]] = [
    (re.compile(r"^blocks\.(\d+)\.hook_resid_post$"), 0),
    (re.compile(r"^blocks\.(\d+)\.hook_out$"), 0),  # TransformerBridge alias
    (re.compile(r"^blocks\.(\d+)\.hook_resid_pre$"), -1),  # resid_pre of L = resid_post of L-1
    (re.compile(r"^(?:model\.)?layers\.(\d+)(?:\.output)?$"), 0),
]


def sae_layer(sae: Any) -> int:
    """The decoder-block index whose output (``blocks.{L}.hook_resid_post``) the SAE reads."""
    name = getattr(sae.cfg.metadata, "hook_name", None)
    if not name:
        raise MechbdError("the SAE's config names no hook (cfg.metadata.hook_name): pass its layer")
    for pat, shift in _PATTERNS:
        m = pat.match(str(name))
        if m:
            layer = int(m.group(1)) + shift
            if layer < 0:
                raise MechbdError(f"SAE hook {name!r} reads the embeddings, not a decoder block")
            return layer
    raise MechbdError(
        f"SAE hook {name!r} is not a residual-stream hook mechbd knows "
        "(blocks.L.hook_resid_post / hook_resid_pre, model.layers.L)"
    )


def check_sae(
    sae: Any, *, d_model: int | None = None, layer: int | None = None, where: str = "SAE"
) -> int:
    """Refuse an SAE whose width or layer does not match; return its layer."""
    d_in = int(sae.cfg.d_in)
    if d_model is not None and d_in != d_model:
        at = f" at layer {layer}" if layer is not None else ""
        raise MechbdError(
            f"{where}: d_in={d_in} but the model's residual stream{at} has width {d_model}"
        )
    if layer is None:
        return sae_layer(sae)
    if getattr(sae.cfg.metadata, "hook_name", None):  # no hook recorded: trust the caller
        found = sae_layer(sae)
        if found != layer:
            raise MechbdError(
                f"{where}: trained on {sae.cfg.metadata.hook_name} (layer {found}), "
                f"not on {hook_name(layer)} (layer {layer})"
            )
    return layer


def load_sae(
    source: str | Path,
    sae_id: str | None = None,
    *,
    device: str = "cpu",
    d_model: int | None = None,
    layer: int | None = None,
) -> tuple[Any, int]:
    """``(SAE, layer)`` from a local folder written by SAELens (``cfg.json`` + weights) or from
    a SAELens release (``source`` = release name, ``sae_id`` = the SAE in it). With ``d_model``
    or ``layer`` given, an SAE that does not fit is refused with a message naming both."""
    from sae_lens import SAE

    path = Path(source)
    if path.is_dir():
        if not (path / "cfg.json").is_file():
            raise MechbdError(f"{path}: not an SAELens folder (no cfg.json)")
        try:
            sae = SAE.load_from_disk(path, device=device)
        except Exception as e:  # noqa: BLE001 - SAELens raises many kinds; name the folder
            raise MechbdError(f"{path}: cannot load the SAE ({type(e).__name__}: {e})") from e
        where = str(path)
    else:
        if sae_id is None:
            raise MechbdError(
                f"{source}: no such folder; for a SAELens release also pass the SAE id"
            )
        try:
            sae = SAE.from_pretrained(str(source), sae_id, device=device)
        except Exception as e:  # noqa: BLE001
            raise MechbdError(f"{source}/{sae_id}: cannot load ({type(e).__name__}: {e})") from e
        where = f"{source}/{sae_id}"
    return sae, check_sae(sae, d_model=d_model, layer=layer, where=where)
