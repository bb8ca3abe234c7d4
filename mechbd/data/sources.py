"""Reading the user's datasets: one :class:`~mechbd.config.DataSource` (a local JSONL, JSON or
Parquet file, or a Hugging Face dataset) as rows, each with the place it came from.

Every reader here gives ``Rows``: the records with their field names mapped to mechbd's
(``DataSource.fields``: ``{mechbd name: name in the file}``), each with a ``where`` (``file:
line 7`` for JSONL, ``file: row 7`` otherwise) that every later error names, and the
provenance recorded in results.json (``source``, ``rows``, ``sha256``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechbd.config import DataSource
from mechbd.errors import ConfigError, MechbdError
from mechbd.io import iter_jsonl_numbered, sha256_file


@dataclass(frozen=True)
class Rows:
    """Records of one source, field names mapped, each with its ``where``."""

    source: str
    records: tuple[tuple[str, dict[str, Any]], ...]
    sha256: str

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def provenance(self, **extra: Any) -> dict[str, Any]:
        """What results.json says about this data: its source, row count and content hash."""
        return {"source": self.source, "rows": len(self.records), "sha256": self.sha256, **extra}


def _local(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for lineno, row in iter_jsonl_numbered(path):
            yield f"{path}: line {lineno}", row
        return
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise MechbdError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise MechbdError(f"{path}: expected a JSON list of records (or {{'data': [...]}})")
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise MechbdError(f"{path}: row {i}: expected a JSON object")
            yield f"{path}: row {i}", row
        return
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}: row {i}", row
        return
    raise MechbdError(f"{path}: unknown file type {suffix!r} (use .jsonl, .json or .parquet)")


def _hub(src: DataSource) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_dataset(str(src.hf), src.config_name, split=src.split)
    except Exception as e:  # datasets raises many types; name the source
        first = str(e).splitlines()[0] if str(e) else ""
        raise MechbdError(
            f"{src.describe()}: cannot load dataset ({type(e).__name__}: {first})"
        ) from None
    for i, row in enumerate(ds):
        yield f"{src.describe()}: row {i}", dict(row)


def read_rows(src: DataSource, what: str, known: Sequence[str]) -> Rows:
    """The records of ``src``, with ``src.fields`` applied: each mapped file field is renamed
    to its mechbd name. ``what`` names the config entry (``data.scenarios``) in errors;
    ``known`` are the mechbd field names that entry reads (a mapping of another name is an
    error, as is an empty source)."""
    unknown = sorted(set(src.fields) - set(known))
    if unknown:
        raise ConfigError(
            f"{what}.fields: unknown field {unknown[0]!r} (this entry reads {', '.join(known)})"
        )
    if src.path is not None:
        path = Path(src.path)
        if not path.is_file():
            raise MechbdError(f"{path}: file not found ({what}.path)")
        rows: Iterator[tuple[str, dict[str, Any]]] = _local(path)
    else:
        rows = _hub(src)
    back = {theirs: ours for ours, theirs in src.fields.items()}
    out: list[tuple[str, dict[str, Any]]] = []
    for where, row in rows:
        if src.max_rows is not None and len(out) >= src.max_rows:
            break
        out.append((where, {back.get(k, k): v for k, v in row.items()}))
    if not out:
        raise MechbdError(f"{src.describe()}: empty dataset (no records for {what})")
    if src.path is not None and src.max_rows is None:
        digest = sha256_file(src.path)
    else:
        h = hashlib.sha256()
        for _, row in out:
            h.update(json.dumps(row, sort_keys=True, default=str).encode())
        digest = h.hexdigest()
    return Rows(src.describe(), tuple(out), digest)


def field_name(src: DataSource, ours: str) -> str:
    """How the file names mechbd's field ``ours`` (for errors: ``'question' (scenario_mcq)``)."""
    theirs = src.fields.get(ours)
    return f"'{theirs}' (mapped to {ours})" if theirs else f"'{ours}'"
