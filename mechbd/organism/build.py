"""Build (or fetch from the cache) the organism's model folder.

The cache key is a hash of the organism config (seed included) and ``FORMAT``, so a second
build with the same settings is instant and a change to any setting trains a new organism.
The cache lives in ``$MECHBD_CACHE`` (default ``~/.cache/mechbd``).

Training on another CPU gives another organism (floating-point differences grow over the run),
so mechbd ships the demo's organism prebuilt (``prebuilt/<key>/``: the model folder, its card
saying where and when it was built, and the sha256 of every file). When the config's key has a
prebuilt folder and ``organism.prebuilt`` is on, it is checked and copied into the cache
instead of training; ``force`` (``mechbd organism build --force``) always trains.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from mechbd.config import OrganismConfig
from mechbd.errors import MechbdError
from mechbd.io import digest_of, read_json, sha256_file, staging_dir, write_json

FORMAT = 7  # bump when the world, tokenizer or training recipe changes
PREBUILT_DIR = Path(__file__).resolve().parent / "prebuilt"
CARD = "organism.json"


def cache_root() -> Path:
    return Path(os.environ.get("MECHBD_CACHE", Path.home() / ".cache" / "mechbd"))


def organism_key(cfg: OrganismConfig) -> str:
    # ``prebuilt`` says where the weights come from, not what they are: not in the key
    return digest_of(
        {"format": FORMAT, "config": cfg.model_dump(mode="json", exclude={"prebuilt"})}
    )


def check_prebuilt(
    folder: Path,
    card_name: str = CARD,
    what: str = "prebuilt organism",
    retrain: str = "`mechbd organism build --force`",
) -> dict[str, Any]:
    """The card (``card_name``) of the prebuilt organism, or other prebuilt ``what``, in
    ``folder``, after checking that its files are exactly the ones its card lists, each with
    the sha256 the card gives (``retrain``: how the error says to train it instead)."""
    card = read_json(folder / card_name)
    want = (card.get("prebuilt") or {}).get("sha256")
    if not isinstance(want, dict) or not want:
        raise MechbdError(f"{folder / card_name}: no 'prebuilt.sha256' file list")
    have = {p.name for p in folder.iterdir() if p.is_file() and p.name != card_name}
    if have != set(want):
        raise MechbdError(
            f"{what} {folder}: files {sorted(have ^ set(want))} differ from the "
            f"card's list; reinstall mechbd or train it with {retrain}"
        )
    for name, digest in sorted(want.items()):
        got = sha256_file(folder / name)
        if got != digest:
            raise MechbdError(
                f"{what} {folder / name}: sha256 {got[:12]}..., the card says "
                f"{digest[:12]}...; reinstall mechbd or train it with {retrain}"
            )
    return card


def build_organism(cfg: OrganismConfig, *, force: bool = False, progress: bool = True) -> Path:
    """Return the folder of the organism for ``cfg``: the prebuilt one for its key when
    ``cfg.prebuilt`` and mechbd ships one (checked), else one trained here (always with
    ``force``); each from the cache when it holds that kind."""
    key = organism_key(cfg)
    final = cache_root() / "organisms" / key
    card = final / CARD
    pre = PREBUILT_DIR / key
    use_pre = cfg.prebuilt and not force and (pre / CARD).is_file()
    # the cache holds one organism per key: the shipped one or one trained here, whichever
    # ``prebuilt`` asks for (a cached copy of the other kind is replaced)
    if card.is_file() and not force and bool(read_json(card).get("prebuilt")) == use_pre:
        return final
    if use_pre:
        info = check_prebuilt(pre)["prebuilt"]
        print(
            f"organism {key}: the prebuilt one ({info.get('built_on', '?')}, "
            f"{info.get('date', '?')}); `mechbd organism build --force` trains it here",
            file=sys.stderr,
        )
        with staging_dir(final) as tmp:
            for f in pre.iterdir():
                shutil.copyfile(f, tmp / f.name)
        return final
    from mechbd.organism.train import train_organism  # heavy import only when building

    with staging_dir(final) as tmp:
        stats = train_organism(cfg, tmp, progress=progress)
        write_json(
            tmp / CARD,
            {
                "kind": "mechbd organism",
                "format": FORMAT,
                "key": key,
                "config": cfg.model_dump(mode="json", exclude={"prebuilt"}),
                "train": stats,
            },
        )
    return final


def organism_card(path: Path) -> dict:
    return read_json(path / CARD)
