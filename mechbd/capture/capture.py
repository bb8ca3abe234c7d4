"""Capture activations from a model into an activation store.

``capture(model, tokenizer, prompts, out, layers=..., positions=...)`` tokenises the prompts
(chat template, optional response), runs them in padded batches through one of the backends,
pools each ``[batch, seq, d]`` activation to the requested positions and streams chunks of
``shard_rows`` rows to the store. Rerunning into the same folder with the same spec resumes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from mechbd.capture.backends import BACKENDS, Key, make_backend
from mechbd.capture.names import SITES, n_layers_of, parse_layers
from mechbd.capture.prompts import PromptRow, check_positions, encode_rows
from mechbd.capture.store import DTYPES, ActivationStore, StoreWriter
from mechbd.errors import MechbdError
from mechbd.io import digest_of, sha256_file


def pool(
    acts: torch.Tensor,
    rows: Sequence[PromptRow],
    starts: Sequence[int],
    positions: Sequence[str],
) -> dict[str, torch.Tensor]:
    """Read ``[batch, seq, d]`` activations at each row's positions; ``starts[i]`` is where row
    ``i``'s first token sits in the padded batch (the pad width for left padding, else 0)."""
    out: dict[str, torch.Tensor] = {}
    d = acts.shape[-1]
    for p in positions:
        if p == "last":
            idx = torch.tensor([s + r.prompt_len - 1 for r, s in zip(rows, starts, strict=True)])
            out[p] = acts[torch.arange(len(rows)), idx.to(acts.device)]
        elif p == "answer":
            idx = torch.tensor(
                [s + int(r.answer_pos or 0) for r, s in zip(rows, starts, strict=True)]
            )
            out[p] = acts[torch.arange(len(rows)), idx.to(acts.device)]
        elif p == "response_mean":
            out[p] = torch.stack(
                [
                    acts[i, s + r.prompt_len : s + len(r.ids)].float().mean(0)
                    for i, (r, s) in enumerate(zip(rows, starts, strict=True))
                ]
            )
        elif p == "trigger_mean":
            out[p] = torch.stack(
                [
                    acts[i, s + r.trigger_span[0] : s + r.trigger_span[1]].float().mean(0)
                    if r.trigger_span
                    else acts.new_zeros(d, dtype=torch.float32)
                    for i, (r, s) in enumerate(zip(rows, starts, strict=True))
                ]
            )
        elif p == "tokens":
            out[p] = torch.cat(
                [
                    acts[i, s : s + len(r.ids)]
                    for i, (r, s) in enumerate(zip(rows, starts, strict=True))
                ]
            )
    return out


def model_fingerprint(
    model: Any, tok: PreTrainedTokenizerBase, name: str, adapter: str | Path | None = None
) -> dict[str, Any]:
    """Model, adapter and tokenizer identity recorded in a store's manifest."""
    from mechbd.models import model_identity

    ident = model_identity(model, name)
    ident["tokenizer_sha"] = digest_of(
        [sorted(tok.get_vocab().items()), getattr(tok, "chat_template", None)]
    )
    if adapter is not None:
        f = Path(adapter) / "adapter_model.safetensors"
        ident["adapter"] = {"path": str(adapter), "sha256": sha256_file(f) if f.is_file() else None}
    else:
        ident["adapter"] = None
    return ident


def _dist_rank_world() -> tuple[int, int]:
    """(rank, world size) when running under an initialised ``torch.distributed`` group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def _check_args(
    backend: str,
    dtype: str,
    padding_side: str,
    sites: Sequence[str],
    batch_size: int,
    shard_rows: int,
) -> None:
    if backend not in BACKENDS:
        raise MechbdError(f"unknown capture backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise MechbdError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    if padding_side not in ("left", "right"):
        raise MechbdError("padding_side must be 'left' or 'right'")
    for s in sites:
        if s not in SITES:
            raise MechbdError(f"unknown site {s!r}; choose from {', '.join(SITES)}")
    if batch_size <= 0 or shard_rows <= 0:
        raise MechbdError("batch_size and shard_rows must be positive")


def _unwrap_ndif(model: Any, adapter: str | Path | None) -> tuple[Any, Any]:
    """(nnsight wrapper, the HF module it wraps) for ``backend='ndif'``."""
    if adapter is not None:
        raise MechbdError(
            "backend 'ndif': NDIF runs the public weights it hosts, so an adapter "
            "(a backdoored model) cannot run there; capture it locally"
        )
    if not hasattr(model, "_module") or not hasattr(model, "trace"):
        raise MechbdError(
            "backend 'ndif' takes an nnsight LanguageModel: mechbd.capture.ndif_model(hub_id)"
        )
    return model, model._module


def _open_writer(
    out: str | Path, spec: dict[str, Any], rows: list[PromptRow], chunks: Sequence[int] | None
) -> tuple[StoreWriter, Sequence[int] | None, int]:
    """The store writer, the chunks this process takes, and the world size."""
    rank, world = _dist_rank_world()
    if world == 1:
        return StoreWriter(out, spec, rows), chunks, world
    if chunks is not None:
        raise MechbdError("capture: pass chunks= or run under torch.distributed, not both")
    # rank 0 creates (or reopens) the store; every rank opens it before any rank writes,
    # since opening clears an interrupted run's half-written chunks
    if rank == 0:
        writer = StoreWriter(out, spec, rows)
    _barrier()
    if rank != 0:
        writer = StoreWriter(out, spec, rows)
    _barrier()
    return writer, list(range(rank, writer.n_chunks, world)), world  # round-robin: uneven is fine


def _pad_batch(
    batch: list[PromptRow], pad: int, padding_side: str
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``ids`` and ``mask`` ``[batch, width]`` and each row's first real position."""
    width = max(len(r.ids) for r in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    starts = []
    for i, r in enumerate(batch):
        at = width - len(r.ids) if padding_side == "left" else 0
        ids[i, at : at + len(r.ids)] = torch.tensor(r.ids)
        mask[i, at : at + len(r.ids)] = 1
        starts.append(at)
    return ids, mask, starts


@dataclass
class _ChunkJob:
    """What every chunk of one ``capture`` call shares."""

    run: Any
    rows: list[PromptRow]
    layer_list: list[int]
    sites: Sequence[str]
    positions: Sequence[str]
    device: torch.device
    pad: int
    store_dtype: torch.dtype
    batch_size: int
    padding_side: str

    def chunk(self, idx: list[int], bar: Any) -> dict[int, dict[str, torch.Tensor]]:
        """Activations of rows ``idx``, per layer: ``{"site.position": tensor}``."""
        rows, positions = self.rows, self.positions
        keys: list[Key] = [(layer, s) for layer in self.layer_list for s in self.sites]
        # longest first within the chunk: less padding, and an OOM shows up at once
        order = sorted(range(len(idx)), key=lambda j: -len(rows[idx[j]].ids))
        parts: dict[tuple[int, str, str], list[torch.Tensor | None]] = {
            (layer, s, p): [None] * len(idx)
            for layer in self.layer_list
            for s in self.sites
            for p in positions
        }
        for b0 in range(0, len(order), self.batch_size):
            bj = order[b0 : b0 + self.batch_size]
            batch = [rows[idx[j]] for j in bj]
            ids, mask, starts = _pad_batch(batch, self.pad, self.padding_side)
            acts = self.run(ids.to(self.device), mask.to(self.device), keys)
            for (layer, s), a in acts.items():
                pooled = pool(a, batch, starts, positions)
                for p, t in pooled.items():
                    t = t.to("cpu", self.store_dtype)
                    if p == "tokens":  # split back into rows
                        lens = [len(r.ids) for r in batch]
                        for j, piece in zip(bj, torch.split(t, lens), strict=True):
                            parts[(layer, s, p)][j] = piece
                    else:
                        for j, row_t in zip(bj, t, strict=True):
                            parts[(layer, s, p)][j] = row_t
            bar.update(len(batch))
        tensors: dict[int, dict[str, torch.Tensor]] = {layer: {} for layer in self.layer_list}
        for (layer, s, p), items in parts.items():
            vals = [x for x in items if x is not None]
            tensors[layer][f"{s}.{p}"] = torch.cat(vals) if p == "tokens" else torch.stack(vals)
        return tensors


def _write_chunks(
    job: _ChunkJob, writer: StoreWriter, todo: Sequence[int], model: Any, progress: bool
) -> int:
    """Capture and write chunks ``todo`` in eval mode (the caller's mode is restored);
    returns the number of prompts captured."""
    n_todo = sum(len(writer.chunk_rows(k)) for k in todo)
    bar = tqdm(total=n_todo, desc="capture", disable=not progress, unit="prompt")
    was_training = model.training
    model.eval()
    try:
        for k in todo:
            writer.write_chunk(k, job.chunk(list(writer.chunk_rows(k)), bar))
    finally:
        bar.close()
        model.train(was_training)
    return n_todo


def capture(
    model: Any,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[dict[str, Any]] | Sequence[PromptRow],
    out: str | Path,
    *,
    layers: str | int | Sequence[int] = "all",
    sites: Sequence[str] = ("resid_post",),
    positions: Sequence[str] = ("last",),
    dtype: str = "float32",
    batch_size: int = 16,
    backend: str = "hooks",
    padding_side: str = "left",
    shard_rows: int = 256,
    enable_thinking: bool = False,
    model_name: str | None = None,
    adapter: str | Path | None = None,
    chunks: Sequence[int] | None = None,
    progress: bool = True,
) -> ActivationStore | None:
    """Capture ``prompts`` into the store at ``out`` and return it (opened for reading).

    ``chunks`` restricts this call to some chunk indices (data-parallel capture: each process
    takes its own); then ``None`` is returned unless the store is complete afterwards.

    Under ``torchrun`` (an initialised ``torch.distributed`` group) every rank calls this with
    the same arguments and takes chunks ``rank, rank + world, ...``; the store is the one a
    single process writes (chunk boundaries do not depend on the world size), and a rerun
    after a crash resumes with any world size."""
    _check_args(backend, dtype, padding_side, sites, batch_size, shard_rows)
    wrapped = None
    if backend == "ndif":  # ``model`` is an nnsight LanguageModel (``ndif_model``)
        wrapped, model = _unwrap_ndif(model, adapter)
    layer_list = parse_layers(layers, n_layers_of(model))
    rows: list[PromptRow] = (
        list(prompts)  # type: ignore[arg-type]
        if prompts and isinstance(prompts[0], PromptRow)
        else encode_rows(tok, prompts, enable_thinking=enable_thinking)  # type: ignore[arg-type]
    )
    check_positions(rows, positions)
    name = model_name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
    spec = {
        "model": model_fingerprint(model, tok, name, adapter),
        "layers": layer_list,
        "sites": list(sites),
        "positions": list(positions),
        "dtype": dtype,
        "d_model": int(model.get_input_embeddings().weight.shape[1]),
        "shard_rows": shard_rows,
        "enable_thinking": enable_thinking,
    }
    writer, chunks, world = _open_writer(out, spec, rows, chunks)
    todo = writer.pending(chunks)
    job = _ChunkJob(
        run=make_backend(backend, model, tok, wrapped),
        rows=rows,
        layer_list=layer_list,
        sites=sites,
        positions=positions,
        # remote execution: inputs are sent from the CPU (the local weights are on the meta device)
        device=torch.device("cpu") if wrapped is not None else next(model.parameters()).device,
        pad=tok.pad_token_id if tok.pad_token_id is not None else 0,
        store_dtype=DTYPES[dtype],
        batch_size=batch_size,
        padding_side=padding_side,
    )
    t0 = time.perf_counter()
    n_todo = _write_chunks(job, writer, todo, model, progress)
    if world > 1:
        _barrier()  # every rank's chunks are on disk
    writer.finish()
    if progress:
        print(f"captured {n_todo} prompts in {time.perf_counter() - t0:.1f} s -> {out}")
    if writer.pending():
        return None
    return ActivationStore(out)
