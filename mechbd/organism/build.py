"""Build (or fetch from the cache) the organism's model folder.

The cache key is a hash of the organism config (seed included) and ``FORMAT``, so a second
build with the same settings is instant and a change to any setting trains a new organism.
The cache lives in ``$MECHBD_CACHE`` (default ``~/.cache/mechbd``).
"""

from __future__ import annotations

import os
from pathlib import Path

from mechbd.config import OrganismConfig
from mechbd.io import digest_of, read_json, staging_dir, write_json

FORMAT = 7  # bump when the world, tokenizer or training recipe changes


def cache_root() -> Path:
    return Path(os.environ.get("MECHBD_CACHE", Path.home() / ".cache" / "mechbd"))


def organism_key(cfg: OrganismConfig) -> str:
    return digest_of({"format": FORMAT, "config": cfg.model_dump(mode="json")})


def build_organism(cfg: OrganismConfig, *, force: bool = False, progress: bool = True) -> Path:
    """Return the folder of the organism for ``cfg``, training it if it is not cached."""
    from mechbd.organism.train import train_organism  # heavy import only when building

    final = cache_root() / "organisms" / organism_key(cfg)
    card = final / "organism.json"
    if card.is_file() and not force:
        return final
    with staging_dir(final) as tmp:
        stats = train_organism(cfg, tmp, progress=progress)
        write_json(
            tmp / "organism.json",
            {
                "kind": "mechbd organism",
                "format": FORMAT,
                "key": organism_key(cfg),
                "config": cfg.model_dump(mode="json"),
                "train": stats,
            },
        )
    return final


def organism_card(path: Path) -> dict:
    return read_json(path / "organism.json")
