"""Benchmark: capture overhead per backend against a bare forward pass, and store memory.

    python bench/capture.py [--model organism|qwen3-0.6b] [--n 512] [--batch 64] [--out ...]

On one model and one batch size, in one run: a bare HF forward pass over all prompts, mechbd
capture (all layers, last position) with each backend, TransformerLens ``run_with_cache`` and a
raw nnsight trace saving every layer; then peak resident memory of captures into stores of
growing size (streaming keeps it flat). ``organism`` uses the cached organism on the CPU;
``qwen3-0.6b`` is a random-init Qwen3 of ~0.6B parameters in bf16 (for a GPU). Prints a table and
writes JSON.
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch

from mechbd.capture import capture
from mechbd.io import write_json


def prompts(n: int, tok) -> list[dict]:
    from mechbd.data.builders import eval_set
    from mechbd.data.triggers import resolve_trigger
    from mechbd.organism.items import organism_items

    rows = eval_set(organism_items(n // 4 + 1, held_out=True, seed=5), resolve_trigger("singapore"))
    return rows[:n]


def load(which: str):
    from mechbd.models import default_device, load_model

    if which == "organism":
        from mechbd.config import OrganismConfig
        from mechbd.organism.build import build_organism

        return load_model(build_organism(OrganismConfig(), progress=False), dtype="float32")
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from mechbd.config import OrganismConfig
    from mechbd.organism.build import build_organism

    _, tok = load_model(build_organism(OrganismConfig(), progress=False))
    cfg = Qwen3Config(
        vocab_size=151936,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
    )
    dev = default_device()
    with torch.device(dev):
        model = Qwen3ForCausalLM(cfg).to(torch.bfloat16 if dev != "cpu" else torch.float32).eval()
    return model, tok


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def padded_batches(enc, tok, batch: int, dev) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Left-padded (ids, mask) batches of encoded rows, on ``dev``."""
    out = []
    for i in range(0, len(enc), batch):
        b = enc[i : i + batch]
        w = max(len(r.ids) for r in b)
        ids = torch.full((len(b), w), tok.pad_token_id or 0)
        mask = torch.zeros((len(b), w), dtype=torch.long)
        for j, r in enumerate(b):
            ids[j, w - len(r.ids) :] = torch.tensor(r.ids)
            mask[j, w - len(r.ids) :] = 1
        out.append((ids.to(dev), mask.to(dev)))
    return out


def backend_timings(model, tok, enc, batch: int, tmp: Path) -> list[dict]:
    """One run, one model, one batch size: a bare forward pass over ``enc``, mechbd capture of
    every layer's residual stream (last position) with each backend, TransformerLens
    ``run_with_cache`` and a raw nnsight trace; seconds, tokens/s and ratio to bare."""
    dev = next(model.parameters()).device
    batches = padded_batches(enc, tok, batch, dev)
    n_layers = model.config.num_hidden_layers
    n_tokens = sum(len(r.ids) for r in enc)

    def bare() -> None:
        with torch.inference_mode():
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask, use_cache=False)

    def ours(backend: str):
        def run() -> None:
            shutil.rmtree(tmp / backend, ignore_errors=True)
            capture(
                model,
                tok,
                enc,
                tmp / backend,
                layers="all",
                batch_size=batch,
                backend=backend,
                shard_rows=4096,
                progress=False,
            )

        return run

    import copy

    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        getattr(model.config, "_name_or_path", "") or "Qwen/Qwen3-0.6B",
        hf_model=copy.deepcopy(model),
        tokenizer=tok,
        dtype=next(model.parameters()).dtype,
        device=dev,
    )
    names = [f"blocks.{i}.hook_resid_post" for i in range(n_layers)]

    def tl() -> None:
        with torch.inference_mode():
            for ids, mask in batches:
                bridge.run_with_cache(ids, attention_mask=mask, names_filter=names)

    from nnsight import NNsight

    nn_model = NNsight(model)

    def nns() -> None:
        with torch.inference_mode():
            for ids, mask in batches:
                with nn_model.trace(input_ids=ids, attention_mask=mask, use_cache=False):
                    saved = [nn_model.model.layers[i].output.save() for i in range(n_layers)]  # noqa: F841

    bare()  # warm-up
    rows_out = []
    t_bare = timed(bare)
    for name, fn in [
        ("bare HF forward", bare),
        ("mechbd capture, hooks", ours("hooks")),
        ("mechbd capture, nnsight", ours("nnsight")),
        ("mechbd capture, transformer_lens", ours("transformer_lens")),
        ("TransformerLens run_with_cache", tl),
        ("nnsight trace (save all layers)", nns),
    ]:
        t = t_bare if name == "bare HF forward" else timed(fn)
        rows_out.append(
            {
                "what": name,
                "seconds": round(t, 3),
                "tokens_per_s": round(n_tokens / t),
                "x_bare": round(t / t_bare, 2),
            }
        )
    return rows_out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="organism", choices=["organism", "qwen3-0.6b"])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default="bench/results/capture.json")
    a = ap.parse_args()
    model, tok = load(a.model)
    rows = prompts(a.n, tok)
    from mechbd.capture.prompts import encode_rows

    enc = encode_rows(tok, rows)
    dev = next(model.parameters()).device
    n_layers = model.config.num_hidden_layers
    n_tokens = sum(len(r.ids) for r in enc)
    tmp = Path(tempfile.mkdtemp(prefix="mechbd-bench-"))
    rows_out = backend_timings(model, tok, enc, a.batch, tmp)
    mem = []
    for n in (a.n // 4, a.n, a.n * 4):
        big = (enc * (n // len(enc) + 1))[:n]
        big = [type(r)(**{**r.__dict__, "id": f"{r.id}#{i}"}) for i, r in enumerate(big)]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        shutil.rmtree(tmp / "mem", ignore_errors=True)
        capture(
            model,
            tok,
            big,
            tmp / "mem",
            layers="all",
            batch_size=a.batch,
            shard_rows=256,
            progress=False,
        )
        store_mb = sum(f.stat().st_size for f in (tmp / "mem").rglob("*") if f.is_file()) / 2**20
        mem.append(
            {
                "rows": n,
                "store_mb": round(store_mb, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "rss_growth_mb": round(
                    (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, 1
                ),
            }
        )
    shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"model {a.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, {n_layers} layers), {len(enc)} prompts, {n_tokens} tokens, batch {a.batch}, device {dev}"
    )
    print(f"{'what':36s} {'seconds':>8s} {'tok/s':>9s} {'x bare':>7s}")
    for r in rows_out:
        print(f"{r['what']:36s} {r['seconds']:8.3f} {r['tokens_per_s']:9d} {r['x_bare']:7.2f}")
    for m in mem:
        print(
            f"store of {m['rows']:6d} rows: {m['store_mb']:7.1f} MB on disk, peak RSS {m['peak_rss_mb']} MB (+{m['rss_growth_mb']} MB)"
        )
    write_json(
        a.out,
        {
            "model": a.model,
            "device": str(dev),
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "n_prompts": len(enc),
            "n_tokens": n_tokens,
            "batch": a.batch,
            "timings": rows_out,
            "memory": mem,
        },
    )


if __name__ == "__main__":
    main()
