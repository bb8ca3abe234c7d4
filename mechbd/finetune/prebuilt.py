"""LoRA adapters shipped prebuilt for the shipped organism (the demo's backdoors and EM).

Planting four backdoors and the EM finetune takes about five minutes on two CPU cores, most of
the demo's time, and, like the organism, gives other weights on another CPU. So mechbd ships
the demo's adapters beside its organism: ``prebuilt/<key>/`` holds an adapter folder as
``finetune_lora`` wrote it (``finetune.json`` included) and a card, ``prebuilt.json``, saying
where and when it was trained and the sha256 of every file.

The key is a hash of the base organism's key, the training conversations (and batch groups)
and the finetune config, so an adapter is only ever used for exactly the data and recipe it
was trained on, on exactly the organism it was trained from; anything else trains here. Only
a run on a *prebuilt* organism with ``organism.prebuilt`` on uses them (``mechbd demo
--train`` turns both off). A run records which adapters came prebuilt (``prebuilt`` in the
adapter's ``finetune.json`` and in the backdoors' ``lora_attempts``).

``python -m mechbd.finetune.prebuilt RUN_DIR`` exports a demo run's adapters into the store.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import torch

from mechbd.config import FinetuneConfig
from mechbd.errors import MechbdError
from mechbd.finetune.lora import Conversation, conversations_digest, finished_adapter
from mechbd.io import digest_of, read_json, sha256_file, staging_dir, write_json
from mechbd.organism.build import check_prebuilt, organism_card
from mechbd.runs import Run

ADAPTERS_DIR = Path(__file__).resolve().parent / "prebuilt"
CARD = "prebuilt.json"
RETRAIN = "`mechbd demo --train` (or `organism.prebuilt: false`)"


def adapter_key(base_key: str, conversations_sha: str, config: dict[str, Any]) -> str:
    """The store's key of an adapter trained from the organism ``base_key`` on the
    conversations whose digest is ``conversations_sha`` with the finetune ``config``."""
    return digest_of({"base": base_key, "conversations_sha": conversations_sha, "config": config})


def _prebuilt_base_key(run: Run) -> str | None:
    """The key of the run's base organism when it is the shipped prebuilt one and the run
    allows prebuilt weights, else None (a locally trained base never takes shipped adapters)."""
    if run.config.model.source != "organism" or not run.config.organism.prebuilt:
        return None
    card_file = run.layout.organism_model / "organism.json"
    if not card_file.is_file():
        return None
    card = organism_card(run.layout.organism_model)
    return str(card["key"]) if card.get("prebuilt") and card.get("key") else None


def shipped_adapter(
    run: Run,
    conversations: Sequence[Conversation],
    out: Path,
    cfg: FinetuneConfig,
    groups: Sequence[Any] | None = None,
    store: Path | None = None,
) -> dict[str, Any] | None:
    """Install the shipped adapter for exactly this base, data and config into ``out`` and
    return its stats (those of the run that trained it, with ``prebuilt`` added), or None when
    none is shipped. A shipped folder whose files do not match its card is refused by name."""
    base_key = _prebuilt_base_key(run)
    if base_key is None:
        return None
    sha = conversations_digest(conversations, groups)
    folder = (store or ADAPTERS_DIR) / adapter_key(base_key, sha, cfg.model_dump(mode="json"))
    if not (folder / CARD).is_file():
        return None
    info = check_prebuilt(folder, CARD, "prebuilt adapter", RETRAIN)["prebuilt"]
    with staging_dir(out) as tmp:
        for f in folder.iterdir():
            if f.name != CARD:
                shutil.copyfile(f, tmp / f.name)
        stats = read_json(tmp / "finetune.json")
        stats["prebuilt"] = {k: v for k, v in info.items() if k != "sha256"}
        write_json(tmp / "finetune.json", stats)
    done = finished_adapter(out, conversations, cfg, groups)
    if done is None:  # the key matched, so the card's own record must too
        raise MechbdError(
            f"prebuilt adapter {folder}: its finetune.json is not for these conversations and "
            f"this config; reinstall mechbd or train it with {RETRAIN}"
        )
    print(
        f"adapter {out}: the prebuilt one ({info.get('built_on', '?')}, {info.get('date', '?')}); "
        f"{RETRAIN} trains it here",
        file=sys.stderr,
    )
    return done


def _run_made(run_dir: Path) -> tuple[str, str]:
    """The commit (short) and the date the run was made at, from its manifest."""
    manifest = run_dir / "manifest.json"
    m = read_json(manifest) if manifest.is_file() else {}
    commit = str(m.get("git_commit") or "?")[:7]
    return commit, str(m.get("created") or date.today().isoformat())[:10]


def machine() -> str:
    import transformers

    return (
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )


def export_adapters(
    run_dir: Path, store: Path | None = None, built_on: str | None = None
) -> list[Path]:
    """Copy every adapter a run on the prebuilt organism trained (``backdoors/*/adapter``, the
    attempts a retry left, ``em/adapter``) into the store, each under its key with a card.
    Returns the folders written."""
    run_dir, store = Path(run_dir), store or ADAPTERS_DIR
    base = run_dir / "organism" / "model" / "organism.json"
    if not base.is_file():
        raise MechbdError(f"{run_dir}: no organism/model/organism.json (not an organism run)")
    card = read_json(base)
    if not card.get("prebuilt"):
        raise MechbdError(
            f"{base}: the run's organism was trained locally, not the shipped one; adapters "
            "trained from it would never be used"
        )
    found = sorted(
        {p.parent for p in run_dir.glob("backdoors/*/adapter/finetune.json")}
        | {p.parent for p in run_dir.glob("backdoors/*/attempts/*/finetune.json")}
        | {p.parent for p in run_dir.glob("em/adapter/finetune.json")}
    )
    written, made = [], _run_made(run_dir)
    for src in found:
        stats = read_json(src / "finetune.json")
        if stats.get("prebuilt"):
            continue  # installed from the store, not trained by this run
        key = adapter_key(card["key"], stats["conversations_sha"], stats["config"])
        files = sorted(p for p in src.iterdir() if p.is_file())
        with staging_dir(store / key) as tmp:
            for f in files:
                shutil.copyfile(f, tmp / f.name)
            write_json(
                tmp / CARD,
                {
                    "kind": "mechbd prebuilt adapter",
                    "base": card["key"],
                    "trained_as": src.relative_to(run_dir).as_posix(),
                    "prebuilt": {
                        "built_on": built_on or machine(),
                        "date": made[1],
                        "commit": made[0],
                        "how": "mechbd demo (its backdoors and em stages)",
                        "sha256": {f.name: sha256_file(f) for f in files},
                    },
                },
            )
        written.append(store / key)
    return written


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit("usage: python -m mechbd.finetune.prebuilt RUN_DIR ['built on']")
    for w in export_adapters(
        Path(sys.argv[1]), built_on=sys.argv[2] if len(sys.argv) > 2 else None
    ):
        print(json.dumps({"written": str(w)}))
