"""Steering directions with their provenance: from probes, from mean differences of any two
label sets in an activation store (CAA / Model Organisms for EM), from SAE decoder rows, and
random controls of equal norm. Saved as safetensors (one ``[d_model]`` vector per layer) plus a
JSON card saying which model, layers, site, position and recipe made them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mechbd.capture.store import ActivationStore
from mechbd.errors import MechbdError
from mechbd.io import write_json
from mechbd.probes import Probe


@dataclass
class Direction:
    vectors: dict[int, torch.Tensor]  # layer -> [d_model]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    def at(self, layer: int) -> torch.Tensor:
        if layer not in self.vectors:
            raise MechbdError(
                f"direction {self.provenance.get('name', '')!r} has no vector at layer {layer}; "
                f"it has layers {self.layers}"
            )
        return self.vectors[layer]

    def norms(self) -> dict[int, float]:
        return {k: float(v.norm()) for k, v in sorted(self.vectors.items())}

    def random_like(self, seed: int = 0) -> Direction:
        """A random direction with the same norm at every layer (the steering control)."""
        g = torch.Generator().manual_seed(seed)
        out = {}
        for k, v in sorted(self.vectors.items()):
            r = torch.randn(v.shape, generator=g, dtype=torch.float32)
            out[k] = (r / r.norm() * v.float().norm()).to(v.dtype)
        prov = {**self.provenance, "how": "random, equal norm", "control_of": self.provenance}
        prov["name"] = f"random({self.provenance.get('name', '')})"
        prov["seed"] = seed
        return Direction(out, prov)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({f"L{k}": v.contiguous().float() for k, v in self.vectors.items()}, str(tmp))
        tmp.replace(path)
        write_json(path.with_suffix(".json"), {**self.provenance, "layers": self.layers})
        return path

    @classmethod
    def load(cls, path: str | Path) -> Direction:
        path = Path(path)
        if not path.is_file():
            raise MechbdError(f"{path}: no such direction file")
        card_path = path.with_suffix(".json")
        prov = json.loads(card_path.read_text()) if card_path.is_file() else {}
        t = load_file(str(path))
        return cls({int(k[1:]): v for k, v in t.items()}, prov)


def from_probe(
    probe: Probe, *, scale: float = 1.0, name: str | None = None, model: str | None = None
) -> Direction:
    """The probe's unit weight vector at each of its layers, times ``scale``."""
    vecs = {layer: probe.direction(layer) * scale for layer in probe.layers}
    return Direction(
        vecs,
        {
            "name": name or f"{probe.method} probe",
            "how": f"{probe.method} probe weights, unit norm x {scale}",
            "model": model,
            "probe": {k: v for k, v in probe.card.items() if k != "metrics"},
        },
    )


def mean_difference(
    store: ActivationStore,
    positive: Sequence[int],
    negative: Sequence[int],
    *,
    layers: Sequence[int] | None = None,
    position: str = "last",
    site: str = "resid_post",
    name: str = "mean difference",
    groups: Sequence[Any] | None = None,
) -> Direction:
    """``mean(positive rows) - mean(negative rows)`` at every layer (float64 sums).

    With ``groups`` (one key per store row, e.g. the answer letter), the difference is taken
    within each group and averaged over groups, so a nuisance variable that is unbalanced
    between the two sides (more misaligned answers on letter A) cancels."""
    if not positive or not negative:
        raise MechbdError(
            f"{store.path}: mean difference needs rows on both sides, got "
            f"{len(positive)} positive and {len(negative)} negative"
        )
    pairs = [(list(positive), list(negative))]
    if groups is not None:
        if len(groups) != len(store):
            raise MechbdError(f"{store.path}: {len(groups)} group keys for {len(store)} rows")
        keys = sorted({groups[i] for i in positive} & {groups[i] for i in negative}, key=str)
        if not keys:
            raise MechbdError(f"{store.path}: no group has rows on both sides")
        pairs = [
            ([i for i in positive if groups[i] == k], [i for i in negative if groups[i] == k])
            for k in keys
        ]
    vecs = {}
    for layer in layers if layers is not None else store.layers:
        X = store.get(layer, site=site, position=position).double()
        diffs = [X[p].mean(0) - X[n].mean(0) for p, n in pairs]
        vecs[layer] = torch.stack(diffs).mean(0).float()
    return Direction(
        vecs,
        {
            "name": name,
            "how": f"mean({len(positive)} rows) - mean({len(negative)} rows)"
            + (f", within {len(pairs)} groups" if groups is not None else ""),
            "model": store.model.get("name"),
            "store": str(store.path),
            "site": site,
            "position": position,
        },
    )


def from_sae_decoder(
    W_dec: torch.Tensor, latent: int, layer: int, *, scale: float = 1.0, name: str | None = None
) -> Direction:
    """An SAE latent's decoder row (``W_dec[latent]``, SAELens layout ``[d_sae, d_in]``)."""
    if not 0 <= latent < W_dec.shape[0]:
        raise MechbdError(f"SAE latent {latent} out of range: the SAE has {W_dec.shape[0]}")
    v = W_dec[latent].detach().float()
    return Direction(
        {layer: v / v.norm() * scale},
        {"name": name or f"SAE latent {latent}", "how": f"SAE decoder row x {scale}"},
    )


def build_directions(
    direction_files: Sequence[str | Path] = (),
    probe_files: Sequence[str | Path] = (),
    *,
    mean_diff_store: str | Path | None = None,
    positive: Sequence[str] = ("triggered",),
    negative: Sequence[str] = ("clean",),
    position: str = "last",
    control: bool = True,
) -> dict[str, Direction]:
    """The directions a steering sweep runs, by name: each saved direction file and each probe
    file (named by file stem), then ``"mean_diff"`` = mean(``positive`` rows) - mean(``negative``
    rows) of ``mean_diff_store`` at ``position``, and with ``control`` an equal-norm random
    ``"random(<name>)"`` for each (seed 0). Nothing to build is an error."""
    dirs: dict[str, Direction] = {}
    for f in direction_files:
        dirs[Path(f).stem] = Direction.load(f)
    for f in probe_files:
        dirs[Path(f).stem] = from_probe(Probe.load(f), name=Path(f).stem)
    if mean_diff_store is not None:
        st = ActivationStore(mean_diff_store)
        pos, neg = st.indices(list(positive)), st.indices(list(negative))
        dirs["mean_diff"] = mean_difference(st, pos, neg, position=position)
    if not dirs:
        raise MechbdError("no steering direction: give direction files, probes or a store")
    if control:
        for name, d in list(dirs.items()):
            dirs[f"random({name})"] = d.random_like()
    return dirs


def check_layers(directions: dict[str, Direction], layers: Sequence[int]) -> None:
    """Every direction has a vector at every one of ``layers``; else an error naming the
    direction and the layers it lacks."""
    for name, d in directions.items():
        missing = [layer for layer in layers if layer not in d.vectors]
        if missing:
            raise MechbdError(f"direction {name!r} has no vector at layers {missing}")
