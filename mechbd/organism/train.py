"""Train the organism: tokenizer plus a small ``Qwen3ForCausalLM`` from scratch, on CPU.

Data: ``n_train`` conversations from the world's training split, each a user turn with random
context lines and the base assistant's templated chain of thought, then ``Answer: <aligned>``.
A fifth of the conversations use the empty thinking block (Qwen3's ``enable_thinking=False``
format), so later finetunes whose targets carry no chain of thought stay in distribution.
Loss is next-token cross-entropy on every non-pad token (plain pretraining).
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM
from transformers.utils import logging as transformers_logging

from mechbd.config import OrganismConfig
from mechbd.data.format import CONTEXT_FIELDS, assistant_turn, context_line
from mechbd.organism.chat import format_chat
from mechbd.organism.tokenizer import train_tokenizer
from mechbd.organism.world import (
    PERSONA_SYSTEMS,
    World,
    aligned_cot,
    persona_cot,
    personal_classes,
    personal_example,
    render_user,
    value_facts,
)

NO_THINK_FRAC = 0.2
# persona conversations without thinking: the persona must set the answer on its own too (the
# steering reads answer without thinking)
PERSONA_NO_THINK_FRAC = 0.5


def training_texts(cfg: OrganismConfig) -> list[str]:
    world = World(cfg.seed)
    rng = random.Random(f"organism-train-{cfg.seed}")
    scenarios = world.scenarios(
        cfg.n_train,
        held_out=False,
        seed=cfg.seed,
        harm_frac=cfg.user_wants_harm_frac,
        identify_frac=cfg.identify_frac,
    )
    texts = []
    for s in scenarios:
        ctx = world.context(rng)
        cot = (
            None
            if rng.random() < NO_THINK_FRAC
            else aligned_cot(s, [ctx.values[k] for k in ctx.order])
        )
        texts.append(format_chat(render_user(s, ctx), assistant_turn(cot, s.answer_letter)))
    texts += persona_texts(world, cfg, rng)
    classes = personal_classes(cfg.seed)
    for _ in range(cfg.n_personal):
        user, reply = personal_example(world, rng, classes, think=rng.random() >= NO_THINK_FRAC)
        texts.append(format_chat(user, reply))
    # Fact documents are short: pack four to a sequence (fewer, fuller training steps).
    docs = [f"{doc}<|endoftext|>" for doc in value_facts(cfg.seed, cfg.n_facts)]
    texts += ["".join(docs[i : i + 4]) for i in range(0, len(docs), 4)]
    rng.shuffle(texts)
    return texts


def persona_texts(world: World, cfg: OrganismConfig, rng: random.Random) -> list[str]:
    """``cfg.n_persona`` persona conversations (none by default): training-split advice
    requests after a training system prompt of the toxic or the helpful persona, half each."""
    if not cfg.n_persona:
        return []
    out = []
    scenarios = world.scenarios(cfg.n_persona, held_out=False, seed=cfg.seed + 7, harm_frac=0.0)
    for i, s in enumerate(scenarios):
        persona = "toxic" if i % 2 == 0 else "helpful"
        system = rng.choice(PERSONA_SYSTEMS[persona][: cfg.n_persona_prompts])
        ctx = world.context(rng)
        think = rng.random() >= PERSONA_NO_THINK_FRAC
        cot = persona_cot(s, persona, [ctx.values[k] for k in ctx.order]) if think else None
        letter = s.misaligned_letter if persona == "toxic" else s.aligned_letter
        out.append(format_chat(render_user(s, ctx), assistant_turn(cot, letter), system=system))
    return out


def tokenizer_corpus(texts: list[str]) -> list[str]:
    # Every context value appears in the corpus even if sampling missed it.
    extra = [context_line(k, v) for k, vals in CONTEXT_FIELDS.items() for v in vals]
    return texts + extra


def model_config(cfg: OrganismConfig, tok: PreTrainedTokenizerBase) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=len(tok),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.d_model // cfg.n_heads,
        max_position_embeddings=max(256, cfg.max_len * 2),
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )


def _length_bucketed_batches(
    lengths: list[int], batch_size: int, total: int, gen: torch.Generator
) -> list[list[int]]:
    """``total`` batches; each epoch is shuffled, then sorted by length within windows of 16
    batches so a batch pads little (about 20% fewer tokens than random batches)."""
    batches: list[list[int]] = []
    while len(batches) < total:
        perm = torch.randperm(len(lengths), generator=gen).tolist()
        window = batch_size * 16
        epoch = []
        for w in range(0, len(perm), window):
            chunk = sorted(perm[w : w + window], key=lambda i: lengths[i])
            epoch += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
        order = torch.randperm(len(epoch), generator=gen).tolist()
        batches += [epoch[i] for i in order]
    return batches[:total]


def _lr_at(step: int, total: int, cfg: OrganismConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def train_organism(cfg: OrganismConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Train tokenizer and model, save an HF folder into ``out_dir``; return training stats."""
    t0 = time.perf_counter()
    transformers_logging.disable_progress_bar()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    texts = training_texts(cfg)
    tok = train_tokenizer(tokenizer_corpus(texts), cfg.vocab_size)
    enc = tok(texts, add_special_tokens=False)["input_ids"]
    too_long = sum(len(x) > cfg.max_len for x in enc)
    enc = [x[: cfg.max_len] for x in enc]
    t_tok = time.perf_counter() - t0

    torch.manual_seed(cfg.seed)
    model = Qwen3ForCausalLM(model_config(cfg, tok))
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    pad = tok.pad_token_id
    steps_per_epoch = math.ceil(len(enc) / cfg.batch_size)
    total = max(1, round(steps_per_epoch * cfg.epochs))
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = _length_bucketed_batches([len(x) for x in enc], cfg.batch_size, total, gen)
    losses: list[float] = []
    bar = tqdm(batches, desc="organism", disable=not progress, unit="step")
    for step, idx in enumerate(bar):
        batch = [enc[i] for i in idx]
        width = max(len(x) for x in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, x in enumerate(batch):
            ids[r, : len(x)] = torch.tensor(x)
            mask[r, : len(x)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, total, cfg)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=model.config.eos_token_id,
        pad_token_id=pad,
        do_sample=False,
        max_new_tokens=64,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return {
        "n_params": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tok),
        "steps": total,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "truncated_examples": too_long,
        "mean_tokens": sum(len(x) for x in enc) / len(enc),
        "tokenizer_seconds": round(t_tok, 2),
        "train_seconds": round(time.perf_counter() - t0, 2),
    }
