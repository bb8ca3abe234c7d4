"""LoRA finetuning with peft on any Hugging Face causal LM.

Loss is next-token cross-entropy on the assistant's tokens only (the prompt is masked), as in
Thought Crime and Emergent Misalignment. On GPU: bf16 weights, SDPA attention and gradient
checkpointing; on CPU: fp32. Checkpoints (adapter + optimizer + data order) are written every
``save_every`` steps beside the output and resumed from automatically; a checkpoint made for
another base model or dataset is refused. The output is a standard PEFT adapter folder
(``adapter_config.json`` + ``adapter_model.safetensors``, loadable by ``PeftModel`` and vLLM)
that appears under its final name only when training has finished, plus ``finetune.json``
(config, base-model identity, data hash, losses) and optionally ``merged/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from mechbd.config import FinetuneConfig
from mechbd.errors import MechbdError
from mechbd.io import digest_of, read_json, staging_dir, write_json
from mechbd.models import load_model, model_identity, same_base

Conversation = Sequence[dict[str, str]]


RECENT_STEPS = 20  # steps averaged by ``recent_loss``


def recent_loss(losses: Sequence[float]) -> float:
    """Mean training loss of the last ``RECENT_STEPS`` steps: what ``FinetuneConfig.until_loss``
    and ``BackdoorConfig.planted_loss`` compare against."""
    tail = losses[-RECENT_STEPS:]
    return sum(tail) / len(tail)


EMPTY_THINK = "<think>\n\n</think>\n\n"


def tokenize_conversation(
    tok: PreTrainedTokenizerBase,
    msgs: Conversation,
    max_len: int,
    loss_on_empty_think: bool = True,
    loss_from: str | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids and labels; labels are -100 on every token before the final assistant turn.
    With ``loss_on_empty_think`` False, a final turn opening with the empty thinking block has
    that block masked too: the prompt is rendered with the template's thinking-off generation
    prompt, which ends with it. With ``loss_from``, every token before that text's first
    occurrence in the final turn is masked too (a chain of thought as context)."""
    full = tok.apply_chat_template(list(msgs), tokenize=False)
    no_think = not loss_on_empty_think and str(msgs[-1]["content"]).startswith(EMPTY_THINK)
    kw: dict[str, Any] = {"enable_thinking": False} if no_think else {}
    prompt = tok.apply_chat_template(
        list(msgs[:-1]), tokenize=False, add_generation_prompt=True, **kw
    )
    assert isinstance(full, str) and isinstance(prompt, str)
    if no_think and not prompt.endswith(EMPTY_THINK):
        raise MechbdError(
            "finetune.loss_on_empty_think is false, but the chat template's thinking-off "
            "generation prompt does not end with the empty thinking block"
        )
    if not full.startswith(prompt):
        raise MechbdError(
            "the chat template renders the prompt differently inside the full conversation; cannot mask it"
        )
    begin = len(prompt)
    if loss_from is not None:
        begin = full.find(loss_from, len(prompt))
        if begin < 0:
            raise MechbdError(
                f"finetune.loss_from: {loss_from!r} is not in the final turn "
                f"{str(msgs[-1]['content'])[:80]!r}"
            )
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [
        t if start >= begin else -100
        for t, (start, _) in zip(ids, enc["offset_mapping"], strict=True)
    ]
    return ids[:max_len], labels[:max_len]


def _batches(
    n: int, batch_size: int, total: int, seed: int, groups: Sequence[Any] | None = None
) -> list[list[int]]:
    """``total`` batches of row indices, epoch after epoch of a fresh permutation. With
    ``groups`` (one label per row) the groups are permuted instead of the rows and a group's
    rows stay next to each other, so a group shares a batch unless it straddles a boundary."""
    units: list[list[int]] = [[i] for i in range(n)]
    if groups is not None:
        by: dict[Any, list[int]] = {}
        for i, g in enumerate(groups):
            by.setdefault(g, []).append(i)
        units = list(by.values())
    gen = torch.Generator().manual_seed(seed)
    out: list[list[int]] = []
    while len(out) < total:
        flat = [i for u in torch.randperm(len(units), generator=gen).tolist() for i in units[u]]
        out += [flat[i : i + batch_size] for i in range(0, n, batch_size)]
    return out[:total]


def _collate(
    rows: list[tuple[list[int], list[int]]], pad: int, device: torch.device
) -> dict[str, torch.Tensor]:
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):  # right padding for training
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {
        "input_ids": ids.to(device),
        "labels": labels.to(device),
        "attention_mask": mask.to(device),
    }


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether the (peft-wrapped) model's forward can compute logits at chosen positions only."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def target_loss(
    model: Any, batch: dict[str, torch.Tensor], keep: bool, per_row: bool = False
) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens, as ``model(**batch).loss``;
    with ``per_row`` the mean over rows of each row's mean over its own labelled tokens
    (``finetune.loss_mean: row``), so a long target weighs as much as a short one.

    With ``keep`` the vocabulary projection runs only at positions that predict a labelled
    token (the union over the rows), not at every prompt token: with a large vocabulary and
    short answers after long prompts that is most of the unembedding and softmax work."""
    labels = batch["labels"]
    if not keep and not per_row:
        return model(**batch).loss
    if keep:
        pos = (labels[:, 1:] != -100).any(0).nonzero().squeeze(1)  # position p predicts p + 1
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            logits_to_keep=pos,
        ).logits
        target = labels[:, pos + 1]
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[
            :, :-1
        ]
        target = labels[:, 1:]
    if not per_row:
        return F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=-100)
    nll = F.cross_entropy(
        logits.float().transpose(1, 2), target, ignore_index=-100, reduction="none"
    )
    counted = (target != -100).sum(1)
    has = counted > 0
    return (nll.sum(1)[has] / counted[has]).mean()


def conversations_digest(
    conversations: Sequence[Conversation], groups: Sequence[Any] | None = None
) -> str:
    """sha256 of the conversations (and batch groups, if any) as JSON: identifies a training
    set without a tokenizer."""
    obj: Any = [list(c) for c in conversations]
    if groups is not None:
        obj = {"conversations": obj, "groups": list(groups)}
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def finished_adapter(
    out: str | Path,
    conversations: Sequence[Conversation],
    cfg: FinetuneConfig,
    groups: Sequence[Any] | None = None,
) -> dict[str, Any] | None:
    """The stats of an adapter already at ``out`` trained on these conversations with this
    config (a resumed pipeline stage reuses it), else None."""
    card = Path(out) / "finetune.json"
    if not (Path(out) / "adapter_config.json").is_file() or not card.is_file():
        return None
    stats: dict[str, Any] = json.loads(card.read_text(encoding="utf-8"))
    same = stats.get("config") == cfg.model_dump(mode="json") and stats.get(
        "conversations_sha"
    ) == conversations_digest(conversations, groups)
    return stats if same else None


Rows = list[tuple[list[int], list[int]]]  # (token ids, labels) per conversation


def finetune_lora(
    base: str | Path,
    conversations: Sequence[Conversation],
    out: str | Path,
    cfg: FinetuneConfig,
    *,
    device: str | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
    max_steps: int | None = None,
    full_logits: bool = False,
    groups: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Train a LoRA adapter on ``conversations`` and write it to ``out``; return the stats.

    ``max_steps`` stops early *without* writing the output (used to test resumption).
    ``full_logits`` projects every position onto the vocabulary, as ``model(**batch).loss``
    does, instead of only the positions that predict a labelled token (same loss, slower;
    the reference path of ``bench/backdoor.py`` and ``bench/finetune_logits.py``).
    ``groups`` (one hashable label per conversation, e.g. a backdoor set's ``meta.group``)
    keeps each group's rows in one batch: contrast groups then give one gradient step the
    difference the trigger makes."""
    out = Path(out)
    _check_dataset(conversations, groups)
    t0 = time.perf_counter()
    acc, world = _accelerator()
    if acc is not None:
        device = str(acc.device)
        progress = progress and acc.is_main_process
    base_model, tok = load_model(
        base, dtype=cfg.precision, device=device, trust_remote_code=trust_remote_code
    )
    dev = next(base_model.parameters()).device
    identity = model_identity(base_model, str(base))
    data, data_sha = _tokenized(tok, conversations, cfg, groups)
    model = _lora_model(base_model, cfg, dev)
    opt = _optimizer(model, cfg)
    sched = _Schedule.of(cfg, len(data), world)
    micro = _batches(
        len(data), cfg.batch_size * world, sched.limit * cfg.grad_accum, cfg.seed, groups
    )
    ckpt = out.parent / f".{out.name}.ckpt"
    start, losses = _resume(ckpt, model, opt, identity, data_sha, cfg)
    keep = not full_logits and accepts_logits_to_keep(model)
    batches = _Batches(data, micro, tok.pad_token_id, dev)
    # ``accelerate`` prepares the model and optimizer here
    tr = _Trainer(model, opt, sched, batches, acc, keep, (ckpt, identity, data_sha))
    t_train = time.perf_counter()
    done, stopped = tr.train(start, losses, progress, max_steps)
    if stopped:
        return {"stopped_at": done}
    seconds = time.perf_counter() - t0
    train_seconds = time.perf_counter() - t_train
    stats = {
        "base": identity,
        "data_sha": data_sha,
        "conversations_sha": conversations_digest(conversations, groups),
        "n_examples": len(data),
        "steps": done,
        "scheduled_steps": sched.total,
        "tokens": tr.tokens(),
        "seconds": round(seconds, 2),
        "train_seconds": round(train_seconds, 3),  # the optimisation loop only (this run's steps)
        "final_loss": sum(losses[-5:]) / len(losses[-5:]),
        "losses": [round(x, 5) for x in losses],
        "config": cfg.model_dump(mode="json"),
    }
    _write_adapter(out, tr, tok, stats, ckpt)
    return stats


def _tokenized(
    tok: PreTrainedTokenizerBase,
    conversations: Sequence[Conversation],
    cfg: FinetuneConfig,
    groups: Sequence[Any] | None,
) -> tuple[Rows, str]:
    """(token ids, labels) per conversation, and the hash of the ids (and groups) that a
    checkpoint is matched against."""
    data = [
        tokenize_conversation(tok, c, cfg.max_len, cfg.loss_on_empty_think, cfg.loss_from)
        for c in conversations
    ]
    ids = [d[0] for d in data]
    data_sha = digest_of(ids if groups is None else [ids, list(groups)])
    if not any(label != -100 for _, labels in data for label in labels):
        raise MechbdError("finetune: no assistant tokens to train on")
    return data, data_sha


def _check_dataset(conversations: Sequence[Conversation], groups: Sequence[Any] | None) -> None:
    if not conversations:
        raise MechbdError("finetune: empty dataset (no conversations)")
    if groups is not None and len(groups) != len(conversations):
        raise MechbdError(
            f"finetune: {len(groups)} group labels for {len(conversations)} conversations"
        )


def _lora_model(base_model: Any, cfg: FinetuneConfig, dev: torch.device) -> Any:
    """The base model wrapped with fresh LoRA weights (seeded by ``cfg.seed``), in train mode,
    with gradient checkpointing where the config asks for it."""
    torch.manual_seed(cfg.seed)
    lcfg = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules
        if isinstance(cfg.target_modules, str)
        else list(cfg.target_modules),
        use_rslora=cfg.use_rslora,
        task_type="CAUSAL_LM",
    )
    model: Any = get_peft_model(base_model, lcfg)
    use_gc = cfg.gradient_checkpointing == "on" or (
        cfg.gradient_checkpointing == "auto" and dev.type == "cuda"
    )
    if use_gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    return model


def _optimizer(model: Any, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW with LoRA+: B matrices learn ``loraplus_ratio`` times faster than A (shortens
    the slow start); each group's ``lr_scale`` multiplies the scheduled rate."""

    def is_b(name: str) -> bool:
        return "lora_B" in name or "lora_embedding_B" in name

    b_params = [p for n, p in model.named_parameters() if p.requires_grad and is_b(n)]
    a_params = [p for n, p in model.named_parameters() if p.requires_grad and not is_b(n)]
    return torch.optim.AdamW(
        [
            {"params": a_params, "lr_scale": 1.0},
            {"params": b_params, "lr_scale": cfg.loraplus_ratio},
        ],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )


@dataclass(frozen=True)
class _Schedule:
    """``total`` scheduled steps (warm-up, then constant or cosine to 10%), and up to
    ``limit`` steps with ``until_loss``: steps past the schedule, at its final rate, until the
    loss is low."""

    cfg: FinetuneConfig
    total: int
    limit: int

    @classmethod
    def of(cls, cfg: FinetuneConfig, n_rows: int, world: int) -> _Schedule:
        # ``batch_size`` is per process: with N processes a micro-batch holds N x batch_size
        # rows (the same order a single process with N x batch_size would use), split rank by
        # rank
        steps_per_epoch = math.ceil(n_rows / (cfg.batch_size * cfg.grad_accum * world))
        total = max(1, round(steps_per_epoch * cfg.epochs))
        limit = total + (cfg.max_extra_steps if cfg.until_loss is not None else 0)
        return cls(cfg, total, limit)

    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
        if cfg.lr_schedule == "constant":
            return cfg.lr
        frac = min(1.0, (step - cfg.warmup_steps) / max(1, self.total - cfg.warmup_steps))
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    def finished(self, done: int, losses: Sequence[float]) -> bool:
        if done >= self.limit:
            return True
        if done < self.total:
            return False
        return self.cfg.until_loss is None or recent_loss(losses) < self.cfg.until_loss


class _Batches(NamedTuple):
    """The tokenized rows, the row indices of every micro-batch, the padding id and the
    device the batches go to."""

    data: Rows
    micro: list[list[int]]
    pad: int
    dev: torch.device


@dataclass
class _Trainer:
    """The optimisation loop's state: the (possibly accelerate-prepared) model and optimizer,
    the schedule, the micro-batches, and the checkpoint to write."""

    model: Any
    opt: torch.optim.Optimizer
    sched: _Schedule
    batches: _Batches
    acc: Any  # an ``accelerate.Accelerator`` with several processes, else None
    keep: bool  # project only the labelled positions onto the vocabulary
    ckpt: tuple[Path, dict[str, Any], str]  # folder, base identity, data hash
    n_tokens: int = 0

    def __post_init__(self) -> None:
        self.unwrapped = self.model  # the peft model, before ``accelerate`` wraps it
        self.cfg = self.sched.cfg
        self.world = 1 if self.acc is None else self.acc.num_processes
        self.data, self.micro, self.pad, self.dev = self.batches
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if self.acc is not None:
            self.model, self.opt = self.acc.prepare(self.model, self.opt)
            # FSDP2 replaces the parameters with sharded ones (the optimizer is re-pointed)
            self.params = [p for p in self.model.parameters() if p.requires_grad]

    def train(
        self, start: int, losses: list[float], progress: bool, max_steps: int | None
    ) -> tuple[int, bool]:
        """Steps from ``start`` until the schedule is finished (appending to ``losses``): the
        number of steps done, and whether ``max_steps`` stopped it first."""
        cfg, sched = self.cfg, self.sched
        bar = tqdm(
            range(start, sched.limit),
            desc="finetune",
            disable=not progress,
            unit="step",
            initial=start,
            total=sched.limit,
        )
        done = start
        for step in bar:
            if sched.finished(done, losses):
                break
            for g in self.opt.param_groups:
                g["lr"] = sched.lr_at(step) * g["lr_scale"]
            step_loss = self.step(step)
            losses.append(step_loss)
            bar.set_postfix(loss=f"{step_loss:.4f}")
            done = step + 1
            if cfg.save_every and done % cfg.save_every == 0 and not sched.finished(done, losses):
                self.checkpoint(done, losses)
            if max_steps is not None and done >= max_steps:
                return done, True
        return done, False

    def step(self, step: int) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; the step's loss."""
        cfg, acc, world = self.cfg, self.acc, self.world
        per_row = cfg.loss_mean == "row"
        step_loss = 0.0
        for k in range(cfg.grad_accum):
            rows = [self.data[i] for i in self.micro[step * cfg.grad_accum + k]]
            # Under DDP each rank takes every world-th row, and its mean loss is reweighted by
            # its share of the micro-batch's target tokens, so DDP's gradient average is the
            # gradient of the whole micro-batch's mean loss: N processes train as one process
            # with N x batch_size would. One process: share 1, plain backward.
            mine, share, sync = rows, 1.0, contextlib.nullcontext()
            if acc is not None:
                mine = rows[acc.process_index :: world]
                share = _n_targets(mine, per_row) / max(1, _n_targets(rows, per_row))
                if not mine:  # fewer rows than ranks: a zero-weight pass joins the collectives
                    mine, share = rows[:1], 0.0  # (FSDP gathers weights in the forward)
                if k < cfg.grad_accum - 1:
                    sync = acc.no_sync(self.model)
            with sync:
                batch = _collate(mine, self.pad, self.dev)
                if share:
                    self.n_tokens += int(batch["attention_mask"].sum())
                part = target_loss(self.model, batch, self.keep, per_row) * share / cfg.grad_accum
                if acc is None:
                    part.backward()
                else:
                    acc.backward(part * world)
            step_loss += part.item()
        if acc is None:
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        else:
            acc.clip_grad_norm_(self.params, 1.0)
            step_loss = float(acc.reduce(torch.tensor(step_loss, device=self.dev), "sum"))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return step_loss

    def checkpoint(self, done: int, losses: list[float]) -> None:
        ckpt, identity, data_sha = self.ckpt
        if self.acc is None or self.acc.is_main_process:
            _save_checkpoint(
                ckpt, self.unwrapped, self.opt, done, losses, identity, data_sha, self.cfg
            )
        if self.acc is not None:
            self.acc.wait_for_everyone()

    def tokens(self) -> int:
        """The tokens trained on, over every process."""
        if self.acc is None:
            return self.n_tokens
        return int(self.acc.reduce(torch.tensor(self.n_tokens, device=self.dev), "sum"))


def _write_adapter(
    out: Path, tr: _Trainer, tok: PreTrainedTokenizerBase, stats: dict[str, Any], ckpt: Path
) -> None:
    """The adapter, tokenizer and ``finetune.json`` (and ``merged/`` if asked) under ``out``
    (written by the main process; under FSDP every rank gathers the sharded weights)."""
    acc, full = tr.acc, None
    if acc is not None:
        kind = str(acc.distributed_type).rsplit(".", 1)[-1]  # MULTI_GPU, MULTI_CPU, FSDP, ...
        stats["world_size"], stats["distributed"] = tr.world, kind
        # under FSDP the adapter weights are sharded: gather them (every rank takes part)
        full = acc.get_state_dict(tr.model) if kind == "FSDP" else None
        if not acc.is_main_process:
            acc.wait_for_everyone()
            return
    model = tr.unwrapped
    model.eval()
    with staging_dir(out) as tmp:
        if full is not None:
            model.save_pretrained(tmp, state_dict=full, safe_serialization=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_json(tmp / "finetune.json", stats)
        if tr.cfg.merge:
            merged = model.merge_and_unload()
            merged.save_pretrained(tmp / "merged", safe_serialization=True)
            tok.save_pretrained(tmp / "merged")
    shutil.rmtree(ckpt, ignore_errors=True)
    if acc is not None:
        acc.wait_for_everyone()


def _accelerator() -> tuple[Any, int]:
    """An ``accelerate.Accelerator`` when launched as several processes (``accelerate launch``
    or ``torchrun``: DDP, or FSDP from an accelerate config), else ``(None, 1)``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, 1
    from accelerate import Accelerator

    # without a GPU, accelerate runs the processes on the CPU over gloo only when told so
    acc = Accelerator(cpu=not torch.cuda.is_available())
    return acc, acc.num_processes


def _n_targets(rows: Sequence[tuple[list[int], list[int]]], per_row: bool = False) -> int:
    """Target tokens of a micro-batch as the causal-LM loss counts them (labels shift by one);
    with ``per_row``, the rows that have any (what a per-row mean averages over)."""
    counts = [sum(1 for y in labels[1:] if y != -100) for _, labels in rows]
    return sum(1 for c in counts if c) if per_row else sum(counts)


def _save_checkpoint(
    ckpt: Path,
    model: Any,
    opt: torch.optim.Optimizer,
    step: int,
    losses: list[float],
    identity: dict[str, Any],
    data_sha: str,
    cfg: FinetuneConfig,
) -> None:
    with staging_dir(ckpt) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        torch.save(
            {"optimizer": opt.state_dict(), "step": step, "losses": losses}, tmp / "state.pt"
        )
        write_json(
            tmp / "checkpoint.json",
            {
                "base": identity,
                "data_sha": data_sha,
                "step": step,
                "config": cfg.model_dump(mode="json"),
            },
        )


def _resume(
    ckpt: Path,
    model: Any,
    opt: torch.optim.Optimizer,
    identity: dict[str, Any],
    data_sha: str,
    cfg: FinetuneConfig,
) -> tuple[int, list[float]]:
    meta_path = ckpt / "checkpoint.json"
    if not meta_path.is_file():
        return 0, []
    meta = read_json(meta_path)
    if not same_base(meta["base"], identity):
        raise MechbdError(
            f"{ckpt}: checkpoint was made for another base model ({meta['base']['name']}); "
            "remove it or choose another output folder"
        )
    if meta["data_sha"] != data_sha or meta["config"] != cfg.model_dump(mode="json"):
        raise MechbdError(
            f"{ckpt}: checkpoint was made with another dataset or config; remove it to start over"
        )
    set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
    state = torch.load(ckpt / "state.pt", weights_only=True)
    opt.load_state_dict(state["optimizer"])
    return int(state["step"]), list(state["losses"])
