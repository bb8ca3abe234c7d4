"""The on-disk activation store: what capture writes and everything downstream reads.

Layout of a store folder::

    manifest.json            model / adapter / tokenizer identity, layers, sites, positions,
                             dtype, d_model, rows hash, shard size, ``complete``
    rows.jsonl               one row per prompt: id, label, metadata, token ids, positions
    chunks/00000/            rows [0, shard_rows): one safetensors file per layer
        L003.safetensors     keys "<site>.<position>": [rows, d] ("tokens": [row tokens, d])
        chunk.json           row range and the sha256 of every file in the chunk
    chunks/00001/ ...

A chunk is written under a temporary name and renamed when all its files and its checksums are
on disk, so a chunk folder exists only complete. Chunks are fixed row ranges, so an interrupted
capture resumes by skipping the chunks that exist: nothing is duplicated or lost, and several
processes can fill disjoint chunks of one store. Reading is lazy (one layer, one site, one
position at a time) and every file is checked against its checksum the first time it is read.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mechbd.capture.prompts import PromptRow
from mechbd.errors import MechbdError
from mechbd.io import atomic_write_text, digest_of, read_json, sha256_file, write_json

FORMAT = 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class StoreError(MechbdError):
    pass


def rows_digest(rows: Sequence[PromptRow]) -> str:
    return digest_of([[r.id, r.label, r.ids, r.prompt_len] for r in rows])


def layer_file(layer: int) -> str:
    return f"L{layer:03d}.safetensors"


def chunk_name(k: int) -> str:
    return f"{k:05d}"


class StoreWriter:
    """Creates a store (or reopens an interrupted one with the same spec) and writes chunks."""

    def __init__(self, path: str | Path, spec: dict[str, Any], rows: Sequence[PromptRow]):
        self.path = Path(path)
        self.rows = list(rows)
        self.spec = {**spec, "rows_sha": rows_digest(self.rows), "n_rows": len(self.rows)}
        self.shard_rows = int(spec["shard_rows"])
        self.n_chunks = -(-len(self.rows) // self.shard_rows)
        man = self.path / "manifest.json"
        if man.exists():
            old = read_json(man)
            old_spec = {k: old.get(k) for k in self.spec}
            if old_spec != self.spec:
                diff = sorted(k for k in self.spec if old_spec.get(k) != self.spec[k])
                raise StoreError(
                    f"{self.path}: a store with another spec is already here (differs in: "
                    f"{', '.join(diff)}); choose another folder or remove it"
                )
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            rows_text = "".join(json.dumps(r.to_json()) + "\n" for r in self.rows)
            atomic_write_text(self.path / "rows.jsonl", rows_text)
            self._write_manifest(complete=False)
        (self.path / "chunks").mkdir(exist_ok=True)
        for tmp in (self.path / "chunks").glob(".*.tmp"):  # leftovers of an interrupted chunk
            shutil.rmtree(tmp, ignore_errors=True)

    def _write_manifest(self, complete: bool) -> None:
        write_json(
            self.path / "manifest.json",
            {
                "kind": "mechbd activation store",
                "format": FORMAT,
                **self.spec,
                "complete": complete,
            },
        )

    def chunk_rows(self, k: int) -> range:
        return range(k * self.shard_rows, min(len(self.rows), (k + 1) * self.shard_rows))

    def done(self, k: int) -> bool:
        return (self.path / "chunks" / chunk_name(k) / "chunk.json").is_file()

    def pending(self, chunks: Sequence[int] | None = None) -> list[int]:
        ks = range(self.n_chunks) if chunks is None else chunks
        return [k for k in ks if not self.done(k)]

    def write_chunk(self, k: int, tensors: dict[int, dict[str, torch.Tensor]]) -> None:
        """``tensors[layer]["<site>.<position>"]`` for the rows of chunk ``k``."""
        final = self.path / "chunks" / chunk_name(k)
        tmp = self.path / "chunks" / f".{chunk_name(k)}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        files = {}
        for layer, ts in tensors.items():
            for key, t in ts.items():
                if not torch.isfinite(t.float()).all():
                    raise StoreError(
                        f"capture: non-finite activations at layer {layer}, {key}, rows "
                        f"{self.chunk_rows(k).start}-{self.chunk_rows(k).stop - 1}"
                    )
            name = layer_file(layer)
            save_file({kk: v.contiguous() for kk, v in ts.items()}, str(tmp / name))
            files[name] = sha256_file(tmp / name)
        r = self.chunk_rows(k)
        write_json(tmp / "chunk.json", {"rows": [r.start, r.stop], "files": files})
        tmp.rename(final)

    def finish(self) -> None:
        missing = self.pending()
        if not missing:
            self._write_manifest(complete=True)


class ActivationStore:
    """Read side. ``get(layer, position, site, label)`` returns a ``[rows, d]`` tensor."""

    def __init__(self, path: str | Path, *, allow_incomplete: bool = False):
        self.path = Path(path)
        man = self.path / "manifest.json"
        if not man.is_file():
            raise StoreError(f"{self.path}: not an activation store (no manifest.json)")
        self.manifest = read_json(man)
        if self.manifest.get("format") != FORMAT:
            raise StoreError(f"{man}: unsupported store format {self.manifest.get('format')}")
        self.rows = [PromptRow.from_json(json.loads(x)) for x in self._lines("rows.jsonl")]
        if rows_digest(self.rows) != self.manifest["rows_sha"]:
            raise StoreError(f"{self.path / 'rows.jsonl'}: does not match the manifest's rows hash")
        self.shard_rows = int(self.manifest["shard_rows"])
        self.n_chunks = -(-len(self.rows) // self.shard_rows)
        self._chunks: dict[int, dict[str, Any]] = {}
        for k in range(self.n_chunks):
            meta = self.path / "chunks" / chunk_name(k) / "chunk.json"
            if meta.is_file():
                self._chunks[k] = read_json(meta)
        missing = [k for k in range(self.n_chunks) if k not in self._chunks]
        if missing and not allow_incomplete:
            raise StoreError(
                f"{self.path}: incomplete store, {len(missing)} of {self.n_chunks} chunks missing "
                f"(first: chunks/{chunk_name(missing[0])}); rerun the capture to resume it"
            )
        self._verified: set[Path] = set()

    def _lines(self, name: str) -> list[str]:
        p = self.path / name
        if not p.is_file():
            raise StoreError(f"{p}: missing")
        return [x for x in p.read_text().splitlines() if x.strip()]

    # -- what is in it
    @property
    def layers(self) -> list[int]:
        return list(self.manifest["layers"])

    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def positions(self) -> list[str]:
        return list(self.manifest["positions"])

    @property
    def labels(self) -> list[str | None]:
        return [r.label for r in self.rows]

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.manifest["model"])

    def __len__(self) -> int:
        return len(self.rows)

    def indices(self, label: str | Sequence[str] | None = None, **meta: Any) -> list[int]:
        """Row indices with the given label(s) and metadata values."""
        want = None if label is None else {label} if isinstance(label, str) else set(label)
        return [
            i
            for i, r in enumerate(self.rows)
            if (want is None or r.label in want)
            and all(r.meta.get(k) == v for k, v in meta.items())
        ]

    # -- reading
    def _check(self, layer: int, site: str, position: str) -> None:
        if layer not in self.layers:
            raise StoreError(f"{self.path}: layer {layer} was not captured (layers: {self.layers})")
        if site not in self.sites:
            raise StoreError(f"{self.path}: site {site!r} was not captured (sites: {self.sites})")
        if position not in self.positions:
            raise StoreError(
                f"{self.path}: position {position!r} was not captured (positions: {self.positions})"
            )

    def _file(self, k: int, layer: int) -> Path:
        if k not in self._chunks:
            raise StoreError(f"{self.path}: chunk {chunk_name(k)} is missing")
        f = self.path / "chunks" / chunk_name(k) / layer_file(layer)
        if f not in self._verified:
            expected = self._chunks[k]["files"].get(layer_file(layer))
            if not f.is_file() or expected is None:
                raise StoreError(f"{f}: missing shard")
            if sha256_file(f) != expected:
                raise StoreError(f"{f}: checksum mismatch (corrupt or half-written shard)")
            self._verified.add(f)
        return f

    def _read(self, k: int, layer: int, key: str) -> torch.Tensor:
        f = self._file(k, layer)
        try:
            with safe_open(str(f), framework="pt") as st:
                return st.get_tensor(key)
        except Exception as e:  # noqa: BLE001 - report the file whatever safetensors raised
            raise StoreError(f"{f}: cannot read {key!r}: {e}") from e

    def get(
        self,
        layer: int,
        position: str = "last",
        site: str = "resid_post",
        label: str | Sequence[str] | None = None,
        *,
        rows: Sequence[int] | None = None,
        dtype: torch.dtype | None = torch.float32,
    ) -> torch.Tensor:
        """Activations ``[n_rows, d_model]`` at one layer, site and pooled position."""
        if position == "tokens":
            raise StoreError("use tokens() for per-token activations")
        self._check(layer, site, position)
        key = f"{site}.{position}"
        parts = [self._read(k, layer, key) for k in range(self.n_chunks)]
        x = torch.cat(parts) if parts else torch.empty(0, self.d_model)
        if rows is None and label is not None:
            rows = self.indices(label)
        if rows is not None:
            x = x[torch.as_tensor(list(rows), dtype=torch.long)]
        return x if dtype is None else x.to(dtype)

    def stack(
        self, position: str = "last", site: str = "resid_post", layers: Sequence[int] | None = None
    ) -> torch.Tensor:
        """``[n_layers, n_rows, d_model]`` for all (or the given) layers."""
        return torch.stack([self.get(layer, position, site) for layer in layers or self.layers])

    def tokens(
        self, layer: int, site: str = "resid_post", row: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token activations: ``(acts [n_tokens, d], offsets [n_rows + 1])``; row ``i``'s
        tokens are ``acts[offsets[i]:offsets[i+1]]`` (its response starts at
        ``rows[i].prompt_len``). With ``row`` given, only that row's ``[len, d]``."""
        self._check(layer, site, "tokens")
        lengths = torch.tensor([len(r.ids) for r in self.rows])
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        key = f"{site}.tokens"
        if row is not None:
            k = row // self.shard_rows
            chunk = self._read(k, layer, key)
            base = int(offsets[k * self.shard_rows])
            a, b = int(offsets[row]) - base, int(offsets[row + 1]) - base
            return chunk[a:b].float(), offsets[row : row + 2] - offsets[row]
        acts = torch.cat([self._read(k, layer, key) for k in range(self.n_chunks)])
        return acts.float(), offsets

    def iter_layers(
        self, position: str = "last", site: str = "resid_post"
    ) -> Iterator[tuple[int, torch.Tensor]]:
        for layer in self.layers:
            yield layer, self.get(layer, position, site)

    def verify(self) -> None:
        """Check every shard against its checksum (raises ``StoreError`` naming the file)."""
        for k in range(self.n_chunks):
            for layer in self.layers:
                self._file(k, layer)
