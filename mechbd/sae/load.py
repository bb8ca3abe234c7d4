"""Load an SAE (a local SAELens folder or a SAELens pretrained release) and fit it to mechbd's
layer names, refusing one that does not fit the model or the layer asked for.

Loading is SAELens' own (``SAE.load_from_disk``, ``SAE.from_pretrained`` with the release's
converter from ``pretrained_saes.yaml``, e.g. ``dictionary_learning_1`` for the open-weight
persona-feature SAEs of Qwen2.5-7B-Instruct and Llama-3.1-8B-Instruct, ``qwen_scope`` for
Qwen-Scope); mechbd reads no SAE weights itself."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechbd.capture.names import hook_name
from mechbd.config import SaeConfig
from mechbd.errors import MechbdError
from mechbd.io import sha256_file

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


def _from_disk(path: Path, device: str) -> Any:
    """An SAE from a SAELens folder, with SAELens' own loader."""
    from sae_lens import SAE

    if not (path / "cfg.json").is_file():
        raise MechbdError(f"{path}: not an SAELens folder (no cfg.json)")
    try:
        return SAE.load_from_disk(path, device=device)
    except Exception as e:  # noqa: BLE001 - SAELens raises many kinds; name the folder
        raise MechbdError(f"{path}: cannot load the SAE ({type(e).__name__}: {e})") from e


def _from_release(release: str, sae_id: str, device: str) -> Any:
    """An SAE of a SAELens release (``pretrained_saes.yaml``), with SAELens' own loader."""
    from sae_lens import SAE

    try:
        return SAE.from_pretrained(release, sae_id, device=device)
    except Exception as e:  # noqa: BLE001
        raise MechbdError(f"{release}/{sae_id}: cannot load ({type(e).__name__}: {e})") from e


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
    path = Path(source)
    if path.is_dir():
        sae = _from_disk(path, device)
        where = str(path)
    else:
        if sae_id is None:
            raise MechbdError(
                f"{source}: no such folder; for a SAELens release also pass the SAE id"
            )
        sae = _from_release(str(source), sae_id, device)
        where = f"{source}/{sae_id}"
    return sae, check_sae(sae, d_model=d_model, layer=layer, where=where)


@dataclass(frozen=True)
class LoadedSae:
    """A published or local SAE as the ``sae`` stage uses it: the SAE, the decoder block it
    reads, where it came from (results.json ``sae.source``) and how errors name it."""

    sae: Any
    layer: int
    source: dict[str, Any]
    where: str


def load_configured(cfg: SaeConfig, *, d_model: int, device: str = "cpu") -> LoadedSae:
    """The SAE that ``cfg`` (``source`` 'release' or 'local') names, loaded with SAELens' own
    loaders: its layer is read from its hook (``sae_layer``) and must agree with ``sae.layer``
    when that is given (an SAE that records no hook needs ``sae.layer``); its ``d_in`` must be
    the model's ``d_model``. A relative ``sae.path`` is read from the working folder. Errors name
    the config field and the SAE."""
    if cfg.source == "local":
        assert cfg.path is not None  # SaeConfig's validator
        path = Path(cfg.path)
        if not path.is_dir():
            raise MechbdError(f"{path}: no such folder (sae.path, source 'local')")
        weights = path / "sae_weights.safetensors"
        if not weights.is_file():
            raise MechbdError(
                f"{path}: no sae_weights.safetensors (sae.path: a SAELens folder holds cfg.json "
                "and sae_weights.safetensors)"
            )
        sae = _from_disk(path, device)
        where = f"sae.path {path}"
        source: dict[str, Any] = {
            "kind": "local",
            "path": str(path),
            "sha256": sha256_file(weights),
        }
    elif cfg.source == "release":
        assert cfg.release is not None and cfg.sae_id is not None
        sae = _from_release(cfg.release, cfg.sae_id, device)
        where = f"sae.release {cfg.release} / sae.sae_id {cfg.sae_id}"
        source = {"kind": "release", "release": cfg.release, "sae_id": cfg.sae_id}
        repo = _release_repo(cfg.release, cfg.sae_id)
        if repo is not None:
            source["repo_id"] = repo
    else:
        raise MechbdError(f"sae.source is {cfg.source!r}: there is no SAE to load (it trains one)")
    hook = getattr(sae.cfg.metadata, "hook_name", None)
    if hook:
        layer = sae_layer(sae)
        if cfg.layer is not None and cfg.layer != layer:
            raise MechbdError(
                f"sae.layer is {cfg.layer} but the SAE ({where}) reads {hook} (layer {layer}): "
                "leave sae.layer out or make the two agree"
            )
    elif cfg.layer is None:
        raise MechbdError(
            f"{where}: the SAE's config names no hook (cfg.metadata.hook_name): set sae.layer"
        )
    else:
        layer = cfg.layer
    check_sae(sae, d_model=d_model, layer=layer, where=where)
    return LoadedSae(sae, layer, source, where)


def _release_repo(release: str, sae_id: str) -> str | None:
    """The Hugging Face repository SAELens maps a release to (provenance only)."""
    from sae_lens.loading.pretrained_saes_directory import get_repo_id_and_folder_name

    try:
        return str(get_repo_id_and_folder_name(release, sae_id)[0])
    except Exception:  # noqa: BLE001 - a release given as a repo id has no entry
        return None


def describe_sae(sae: Any) -> dict[str, Any]:
    """What results.json records about an SAE besides its source: ``d_sae``, ``hook_name`` and
    SAELens ``architecture``."""
    return {
        "d_sae": int(sae.cfg.d_sae),
        "hook_name": str(getattr(sae.cfg.metadata, "hook_name", None) or ""),
        "architecture": str(sae.cfg.architecture()),
    }
