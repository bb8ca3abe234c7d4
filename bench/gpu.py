"""GPU benchmark (reduced on a CPU): capture, LoRA finetuning and generation on random-init Qwen3.

    python bench/gpu.py [--sizes 0.6b,1.7b,8b] [--n 512] [--out bench/results/gpu.json]

Per model size, in one run on one device:

* **capture**: a bare forward pass over the prompts, mechbd capture of every layer's residual
  stream (hooks, nnsight and TransformerLens backends), TransformerLens ``run_with_cache`` and a
  raw nnsight trace: tokens/s and the ratio to the bare pass (``bench/capture.py``'s timings);
* **LoRA finetuning** with ``mechbd.finetune.lora.finetune_lora`` (r=32, alpha=64, bf16,
  gradient checkpointing on a GPU): tokens/s of the optimisation loop and model FLOPs
  utilisation, MFU = 6 x parameters x tokens / time / peak (the usual convention; a LoRA step
  does less than 6 N FLOPs per token since frozen weights get no weight gradients, and
  checkpointing recomputes the forward pass, so read it as a throughput figure);
* **generation**: HF ``generate`` (greedy, KV cache, a fixed number of new tokens) tokens/s, and
  vLLM's when it is installed.

Models are random-init Qwen3 with the real sizes' shapes (bf16 on a GPU). On a CPU the default
sizes are reduced (``cpu-small``, ``cpu-medium``) and the MFU peak is a measured float32 matmul
rate on that CPU. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capture import backend_timings, prompts, timed  # noqa: E402  (bench/capture.py)

from mechbd.io import write_json  # noqa: E402

SHAPES = {
    "0.6b": dict(
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
    ),
    "1.7b": dict(
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
    ),
    "8b": dict(
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
    ),
    "cpu-small": dict(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "cpu-medium": dict(
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=12,
        num_attention_heads=8,
        num_key_value_heads=4,
    ),
}
# dense bf16 tensor-core peaks (NVIDIA data sheets, SXM parts)
GPU_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(dev: torch.device) -> tuple[float, str]:
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        for key, v in GPU_PEAK.items():
            if key in name and "PCIe" not in name:
                return v, f"{name}: {v / 1e12:.0f} TFLOP/s dense bf16 (data sheet)"
        return float("nan"), f"{name}: peak unknown"
    a = torch.randn(2048, 2048)
    best = min(timed(lambda: a @ a) for _ in range(5))
    v = 2 * 2048**3 / best
    return v, f"CPU: {v / 1e9:.0f} GFLOP/s measured float32 2048^3 matmul"


def make_model(size: str, tok, dev: torch.device, folder: Path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=151936,
        head_dim=128 if dev.type == "cuda" else 64,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        **SHAPES[size],
    )
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            model = Qwen3ForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(folder, safe_serialization=True)  # finetune_lora takes a path
    tok.save_pretrained(folder)
    return model


def finetune_row(folder: Path, tok, n_params: int, dev: torch.device, peak: float) -> dict:
    from mechbd.config import FinetuneConfig
    from mechbd.finetune.lora import finetune_lora
    from mechbd.organism.items import organism_items

    gpu = dev.type == "cuda"
    batch, steps, reps = (8, 30, 6) if gpu else (4, 6, 2)
    items = organism_items(batch * steps, held_out=False, seed=9)
    convs = [
        [
            {"role": "user", "content": it.user()},
            {"role": "assistant", "content": " ".join([it.user()] * reps) + "\nAnswer: A"},
        ]
        for it in items
    ]
    cfg = FinetuneConfig(rank=32, alpha=64, batch_size=batch, epochs=1.0, warmup_steps=0)
    out = folder.parent / "adapter"
    shutil.rmtree(out, ignore_errors=True)
    st = finetune_lora(folder, convs, out, cfg, progress=False)
    tps = st["tokens"] / st["train_seconds"]
    return {
        "steps": st["steps"],
        "batch": batch,
        "tokens": st["tokens"],
        "seconds": st["train_seconds"],
        "tokens_per_s": round(tps),
        "mfu": round(6 * n_params * tps / peak, 4) if peak == peak else None,
    }


@torch.inference_mode()
def generation_rows(model, tok, folder: Path, dev: torch.device) -> list[dict]:
    gpu = dev.type == "cuda"
    batch, new = (64, 128) if gpu else (8, 32)
    tok.padding_side = "left"
    enc = tok(
        [f"Question {i}: what should I do?" for i in range(batch)],
        return_tensors="pt",
        padding=True,
    )
    enc = {k: v.to(dev) for k, v in enc.items()}
    gen = dict(
        max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id
    )
    model.generate(
        **enc, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id
    )
    t = timed(lambda: model.generate(**enc, **gen))
    rows = [
        {
            "what": "HF generate",
            "batch": batch,
            "new_tokens": new,
            "seconds": round(t, 3),
            "tokens_per_s": round(batch * new / t),
        }
    ]
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        rows.append({"what": "vLLM", "note": "not installed"})
        return rows
    llm = LLM(model=str(folder), dtype="bfloat16", gpu_memory_utilization=0.4, enforce_eager=False)
    sp = SamplingParams(max_tokens=new, min_tokens=new, temperature=0.0)
    texts = [f"Question {i}: what should I do?" for i in range(batch)]
    llm.generate(texts[:2], sp)
    t = timed(lambda: llm.generate(texts, sp))
    rows.append(
        {
            "what": "vLLM generate",
            "batch": batch,
            "new_tokens": new,
            "seconds": round(t, 3),
            "tokens_per_s": round(batch * new / t),
        }
    )
    return rows


def main() -> None:
    from mechbd.capture.prompts import encode_rows
    from mechbd.config import OrganismConfig
    from mechbd.models import default_device, load_model
    from mechbd.organism.build import build_organism

    dev = torch.device(default_device())
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes", default="0.6b,1.7b,8b" if dev.type == "cuda" else "cpu-small,cpu-medium"
    )
    ap.add_argument("--n", type=int, default=512 if dev.type == "cuda" else 128)
    ap.add_argument("--batch", type=int, default=64 if dev.type == "cuda" else 16)
    ap.add_argument("--out", default="bench/results/gpu.json")
    a = ap.parse_args()
    _, tok = load_model(build_organism(OrganismConfig(), progress=False), device="cpu")
    enc = encode_rows(tok, prompts(a.n, tok))
    n_tokens = sum(len(r.ids) for r in enc)
    peak, peak_note = peak_flops(dev)
    results = []
    for size in a.sizes.split(","):
        tmp = Path(tempfile.mkdtemp(prefix="mechbd-gpu-bench-"))
        try:
            model = make_model(size, tok, dev, tmp / "model")
            n_params = sum(p.numel() for p in model.parameters())
            cap = backend_timings(model, tok, enc, a.batch, tmp / "stores")
            gen = generation_rows(model, tok, tmp / "model", dev)
            del model
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            ft = finetune_row(tmp / "model", tok, n_params, dev, peak)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        results.append(
            {"size": size, "n_params": n_params, "capture": cap, "finetune": ft, "generation": gen}
        )
        print(
            f"\n== {size}: {n_params / 1e6:.1f}M parameters, {len(enc)} prompts, {n_tokens} tokens, batch {a.batch}, {dev}"
        )
        print(
            f"{'capture (all residual layers)':36s} {'seconds':>8s} {'tok/s':>10s} {'x bare':>7s}"
        )
        for r in cap:
            print(f"{r['what']:36s} {r['seconds']:8.3f} {r['tokens_per_s']:10d} {r['x_bare']:7.2f}")
        mfu = f"{100 * ft['mfu']:.1f}%" if ft["mfu"] is not None else "n/a"
        print(
            f"LoRA finetune: {ft['tokens_per_s']} tok/s over {ft['steps']} steps (batch {ft['batch']}), MFU {mfu}"
        )
        for g in gen:
            print(
                f"{g['what']}: "
                + (
                    g["note"]
                    if "note" in g
                    else f"{g['tokens_per_s']} new tok/s (batch {g['batch']} x {g['new_tokens']})"
                )
            )
    print(f"\npeak for MFU: {peak_note}")
    write_json(
        a.out,
        {
            "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev)
            if dev.type == "cuda"
            else platform.processor() or platform.machine(),
            "peak_flops": peak,
            "peak_note": peak_note,
            "torch": torch.__version__,
            "date": datetime.date.today().isoformat(),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
