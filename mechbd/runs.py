"""Run folders: ``runs/<name>/`` with the resolved config, ``manifest.json`` and ``results.json``.

Each stage writes into ``<run>/.<stage>.partial/``, renamed to ``<run>/<stage>/`` only when the
stage finishes, and the manifest records the stage as done with the sha256 of every file it
produced. A rerun skips a stage whose files still match those hashes. A crashed or interrupted
stage leaves no folder under its final name and is recorded as failed, so nothing half-written
looks finished; its partial folder is kept, and the rerun resumes in it: stages reuse what is
complete there (finished LoRA adapters, captured activation chunks, finetune checkpoints) and
redo the rest.
``results.json`` is assembled from the finished stages' ``results.json`` files, so it is always
consistent with what is on disk.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mechbd.config import RunConfig, dump_config
from mechbd.errors import RunFolderError
from mechbd.io import atomic_write_text, hash_tree, read_json, replace_dir, write_json
from mechbd.layout import RESULTS, RunLayout

LIBRARIES = [
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "transformer-lens",
    "nnsight",
    "sae-lens",
    "datasets",
    "safetensors",
    "pydantic",
    "plotly",
    "einops",
]


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class Run:
    """A run folder. Open it with :meth:`Run.open`; run stages inside :meth:`stage`; find the
    finished stages' files through :attr:`layout`."""

    def __init__(self, root: Path, config: RunConfig):
        self.root = root
        self.config = config
        self.layout = RunLayout(root)
        self.manifest_path = root / "manifest.json"
        self.manifest: dict[str, Any] = (
            read_json(self.manifest_path) if self.manifest_path.exists() else {}
        )

    # ---- creation -------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike[str], config: RunConfig, force: bool = False) -> Run:
        """Create ``root`` or reopen it to resume.

        An existing run folder is reused only if it was made with the same resolved config; with
        another config (or any other content) it is refused unless ``force`` wipes it first.
        """
        root = Path(root)
        cfg_text = dump_config(config)
        if root.exists() and not root.is_dir():
            raise RunFolderError(f"{root}: exists and is not a folder")
        if root.exists() and any(root.iterdir()):
            old_cfg = root / "config.yaml"
            same = old_cfg.is_file() and old_cfg.read_text(encoding="utf-8") == cfg_text
            if force:
                shutil.rmtree(root)
            elif not same:
                what = (
                    "a run with a different config"
                    if old_cfg.is_file()
                    else "files that are not a mechbd run"
                )
                raise RunFolderError(
                    f"{root}: already holds {what}; pass --force to overwrite it or choose another --out"
                )
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise RunFolderError(
                f"{root}: cannot write to the output folder ({e.strerror})"
            ) from None
        run = cls(root, config)
        if not run.manifest:
            atomic_write_text(root / "config.yaml", cfg_text)
            run.manifest = {
                "mechbd_version": _version("mechbd"),
                "created": _now(),
                "git_commit": git_commit(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "libraries": {name: _version(name) for name in LIBRARIES},
                "seeds": {"run": config.seed, "organism": config.organism.seed},
                "stages": {},
            }
            run._save_manifest()
        return run

    def _save_manifest(self) -> None:
        write_json(self.manifest_path, self.manifest)

    # ---- stages ---------------------------------------------------------------------------
    def stage_dir(self, name: str) -> Path:
        return self.layout.stage(name)

    def is_done(self, name: str) -> bool:
        """True if the stage finished and its files are still exactly what it wrote."""
        info = self.manifest.get("stages", {}).get(name)
        if not info or info.get("status") != "done":
            return False
        d = self.stage_dir(name)
        return d.is_dir() and hash_tree(d) == info.get("files")

    def partial_dir(self, name: str) -> Path:
        return self.root / f".{name}.partial"

    def final_path(self, path: str | Path) -> str:
        """Where ``path``, written inside a running stage's partial folder, will be once the
        stage finishes (for provenance records that outlive the stage)."""
        path = Path(path)
        for name in self.manifest.get("stages", {}):
            if path.is_relative_to(self.partial_dir(name)):
                return str(self.stage_dir(name) / path.relative_to(self.partial_dir(name)))
        return str(path)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Path]:
        """Run a stage: yields ``<run>/.<name>.partial/`` (kept from an interrupted attempt, so
        the stage can resume), which becomes ``<run>/<name>/`` on success."""
        stages = self.manifest.setdefault("stages", {})
        partial = self.partial_dir(name)
        resumed = partial.is_dir() and any(partial.iterdir())
        stages[name] = {"status": "running", "started": _now(), "resumed": resumed}
        self._save_manifest()
        t0 = time.perf_counter()
        partial.mkdir(exist_ok=True)
        try:
            yield partial
            replace_dir(partial, self.stage_dir(name))
        except BaseException as e:
            stages[name].update(
                status="failed",
                error=f"{type(e).__name__}: {e}"[:500],
                seconds=round(time.perf_counter() - t0, 2),
                partial=str(partial),
            )
            self._save_manifest()
            raise
        stages[name].update(
            status="done",
            finished=_now(),
            seconds=round(time.perf_counter() - t0, 2),
            files=hash_tree(self.stage_dir(name)),
        )
        self._save_manifest()
        self.write_results()

    # ---- results --------------------------------------------------------------------------
    def results(self) -> dict[str, Any]:
        """Merge every finished stage's ``results.json`` (top-level keys are the stage's; a
        later stage may add keys inside an earlier stage's section, as the steering stage adds
        ``em.persona``), the merge checked against the results schema (``mechbd.results``)
        after each stage: a stage that wrote an unknown key or a value of the wrong type is a
        ``ResultsError`` naming it and the field. The merged dict is what the stages wrote, in
        their order (the schema only checks)."""
        from mechbd.results import validate_results

        merged: dict[str, Any] = {}
        for name, info in self.manifest.get("stages", {}).items():
            f = self.layout.results(name)
            if info.get("status") == "done" and f.is_file():
                for key, value in read_json(f).items():
                    old = merged.get(key)
                    if isinstance(old, dict) and isinstance(value, dict):
                        value = {**old, **value}
                    merged[key] = value
                validate_results(merged, f"stage {name}: {f}")
        return merged

    def write_results(self) -> Path:
        return write_json(self.root / RESULTS, self.results())
