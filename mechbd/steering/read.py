"""Greedy multiple-choice answers read from teacher-forced passes, with the prompt's cache kept.

Sweeps measure the same prompts under hundreds of steering settings (every layer x multiplier,
for a direction and each of its random controls). Generating every reply would repeat the
prompt's forward each time. Two facts make one short pass per setting enough:

* **Greedy decoding is a chain of argmaxes.** With thinking off, the reply grammar is
  ``Answer: <letter>`` and the end-of-turn token. Teacher-force that canonical reply: greedy
  generation would produce it exactly when every reply token is the argmax of the logits before
  it. So one pass per candidate letter gives what greedy generation does on the first tokens:
  whether it writes ``Answer:``, which letter it picks (the argmax at the letter position, when
  that is ``A`` or ``B``) and whether it then ends the turn (the reply is *well formed*). It
  also gives CAA's P(letter) / (P(A) + P(B)) at the letter position.
* **Steering from the assistant turn leaves the user's tokens alone.** With
  ``positions="assistant"`` every hook's mask starts at the assistant marker, so the keys and
  values of the tokens before it are the unsteered ones: they are computed once
  (:class:`MCQReader` keeps them) and each setting runs only the assistant's ~10 tokens.
  With ``positions="all"`` every pass runs the whole prompt.

A reply that writes ``Answer: A`` in another tokenization, or with extra whitespace, counts as
malformed here where the regex of :func:`mechbd.eval.generate.parse_response` would accept it;
``tests/test_steering.py`` checks the reads against ``model.generate`` on the organism, steered
and unsteered.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from mechbd.capture.names import decoder_blocks
from mechbd.errors import MechbdError
from mechbd.eval.generate import chat_prompts
from mechbd.models import position_ids
from mechbd.steering.ops import POSITIONS, Intervention, assistant_marker, steer


@dataclass(frozen=True)
class Reading:
    """Per prompt: the greedy answer letter (``None`` when greedy decoding would not write
    ``Answer: A`` or ``Answer: B``), whether the reply is well formed (that, then the end of
    the turn), and P(A), P(B) renormalised over the two letters at the letter position."""

    answer: list[str | None]
    well_formed: np.ndarray  # [n] bool
    p_letter: np.ndarray  # [n, 2] float64, columns A, B


def _cache_kwarg(model: nn.Module) -> str:
    """The forward's name for the KV cache: ``cache`` from transformers 5.24 on (where
    ``past_key_values`` is deprecated), ``past_key_values`` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    params = inspect.signature(type(base).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _cache_kv(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))  # pragma: no cover


def _fresh_cache(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A new cache holding ``kv`` (each forward appends to its cache, so every pass gets its
    own copy of the references; the tensors themselves are not copied)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(ddp_cache_data=kv)
    except TypeError:  # pragma: no cover - older transformers
        return DynamicCache.from_legacy_cache(tuple(kv))  # type: ignore[attr-defined]


def _left_pad(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(list(s))
            mask[i, width - len(s) :] = 1
    return ids, mask


BLOCK_CACHE_BYTES = 1 << 30  # at most 1 GiB of kept block outputs per reader


@dataclass
class _Batch:
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None  # the prefix's cache (assistant mode)
    prefix_mask: torch.Tensor | None
    suffix: dict[str, tuple[torch.Tensor, torch.Tensor]]  # letter -> (ids, mask), left padded
    # letter -> every block's unsteered output on that suffix (filled on first use)
    blocks_out: dict[str, list[torch.Tensor] | None] = field(default_factory=dict)


class _Pass(nn.Module):
    """Stands in for a block below the steered one: nothing to compute."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


class _Cached(nn.Module):
    """Stands in for the block just below the steered one: its unsteered output."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.out


class MCQReader:
    """The prompts ``users`` (thinking off), encoded once, read under any interventions.

    ``reader.read(interventions)`` returns a :class:`Reading`; ``reader.letter_logits(...)``
    the differentiable logits at the letter position (the fitted vector's objective)."""

    def __init__(
        self,
        model: nn.Module,
        tok: Any,
        users: Sequence[str],
        *,
        positions: str = "assistant",
        batch_size: int = 64,
    ):
        if positions not in POSITIONS:
            raise MechbdError(f"unknown steering positions {positions!r}; choose from {POSITIONS}")
        if not users:
            raise MechbdError("MCQ read: no prompts")
        self.model, self.tok, self.positions = model, tok, positions
        self.cache_kw = _cache_kwarg(model)
        self.n = len(users)
        self.device = next(model.parameters()).device
        if tok.eos_token_id is None:
            raise MechbdError("MCQ read: the tokenizer has no eos_token (the end of the reply)")
        # the canonical replies, tokenized as generation would append them to the prompt
        self.reply = {
            x: [*tok.encode(f"Answer: {x}", add_special_tokens=False), tok.eos_token_id]
            for x in "AB"
        }
        ra, rb = self.reply["A"], self.reply["B"]
        h = 0
        while h < min(len(ra), len(rb)) and ra[h] == rb[h]:
            h += 1
        self.h = h  # the replies' shared head ("Answer:"); they part at the letter
        self.single = len(ra) == len(rb) == h + 2  # one token per letter, then the end
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.blocks = decoder_blocks(model)[1]
        self._blocks_cached: bool | None = None  # cache_blocks() not called yet
        prompts = chat_prompts(tok, list(users), enable_thinking=False)
        ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
        marker = assistant_marker(tok) if positions == "assistant" else None
        self.batches = [
            self._encode(ids[s : s + batch_size], marker) for s in range(0, self.n, batch_size)
        ]

    def _split(self, ids: list[int], marker: list[int] | None) -> int:
        """Where the steered part starts: the last assistant marker (0 = the whole prompt)."""
        if marker is None:
            return 0
        k = len(marker)
        for i in range(len(ids) - k, -1, -1):
            if ids[i : i + k] == marker:
                return i
        raise MechbdError("MCQ read: a prompt has no assistant turn marker")

    @torch.no_grad()
    def _encode(self, ids: list[list[int]], marker: list[int] | None) -> _Batch:
        cuts = [self._split(x, marker) for x in ids]
        suffix = {}
        for letter in "AB":
            reply = self.reply[letter]
            s_ids, s_mask = _left_pad([x[c:] + reply for x, c in zip(ids, cuts, strict=True)], 0)
            s_ids[s_mask == 0] = self.pad
            suffix[letter] = (s_ids.to(self.device), s_mask.to(self.device))
        if marker is None:
            return _Batch(None, None, suffix)
        p_ids, p_mask = _left_pad([x[:c] for x, c in zip(ids, cuts, strict=True)], 0)
        p_ids[p_mask == 0] = self.pad
        p_ids, p_mask = p_ids.to(self.device), p_mask.to(self.device)
        out = self.model(
            input_ids=p_ids,
            attention_mask=p_mask,
            position_ids=position_ids(p_mask),
            use_cache=True,
            logits_to_keep=1,
        )
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        return _Batch(_cache_kv(cache), p_mask, suffix)

    def _logits(
        self, b: _Batch, letter: str, rows: torch.Tensor | None = None, from_layer: int = 0
    ) -> torch.Tensor:
        """Logits ``[rows, k, vocab]`` at the positions that predict the reply's ``k`` tokens
        (of the batch's ``rows`` only, when given). ``from_layer`` L > 0 says no active
        intervention acts below block L: blocks 0..L-1 are then not run, block L-1's unsteered
        output on this suffix (computed once per batch and letter) standing in for them. The
        logits are the full pass's (``tests/test_steering.py`` compares them)."""
        s_ids, s_mask = b.suffix[letter]
        kv, p_mask = b.kv, b.prefix_mask
        below: torch.Tensor | None = None
        outs = self._blocks_out(b, letter) if from_layer > 0 else None
        if outs is not None:
            below = outs[from_layer - 1]
        if rows is not None:
            s_ids, s_mask = s_ids[rows], s_mask[rows]
            if kv is not None and p_mask is not None:
                kv, p_mask = [(k[rows], v[rows]) for k, v in kv], p_mask[rows]
            if below is not None:
                below = below[rows]
        if below is None:
            return self._forward(s_ids, s_mask, kv, p_mask, letter)
        real = [self.blocks[i] for i in range(from_layer)]
        for i in range(from_layer):
            self.blocks[i] = _Cached(below) if i == from_layer - 1 else _Pass()
        try:
            return self._forward(s_ids, s_mask, kv, p_mask, letter)
        finally:
            for i, block in enumerate(real):
                self.blocks[i] = block

    def _forward(
        self,
        s_ids: torch.Tensor,
        s_mask: torch.Tensor,
        kv: list[tuple[torch.Tensor, torch.Tensor]] | None,
        p_mask: torch.Tensor | None,
        letter: str,
    ) -> torch.Tensor:
        kw: dict[str, Any] = {}
        if kv is None:
            mask = s_mask
        else:
            assert p_mask is not None
            mask = torch.cat([p_mask, s_mask], dim=1)
            kw = {self.cache_kw: _fresh_cache(kv), "use_cache": True}
        k = len(self.reply[letter])
        out = self.model(
            input_ids=s_ids,
            attention_mask=mask,
            position_ids=position_ids(mask)[:, -s_ids.shape[1] :],
            logits_to_keep=k + 1,
            **kw,
        )
        return out.logits[:, -k - 1 : -1]

    def _blocks_out(self, b: _Batch, letter: str) -> list[torch.Tensor] | None:
        return b.blocks_out.get(letter)

    @torch.no_grad()
    def cache_blocks(self) -> bool:
        """Keep every block's unsteered output on every suffix, so passes steered from block
        L on skip blocks 0..L-1 (``read`` calls it; call it before ``reply_loss(from_layer=)``,
        with no hooks active). Skipped, returning False, when the kept outputs would take more
        than ``BLOCK_CACHE_BYTES`` or the blocks return more than a tensor."""
        if self._blocks_cached is None:
            first = self.batches[0].suffix["A"][0]
            d = int(self.model.get_input_embeddings().weight.shape[1])  # type: ignore[operator]
            per_row = sum(s[0].shape[1] for s in self.batches[0].suffix.values()) / len(first)
            itemsize = next(self.model.parameters()).element_size()
            size = self.n * per_row * d * len(self.blocks) * itemsize
            ok = size <= BLOCK_CACHE_BYTES
            for b in self.batches if ok else []:
                for letter in "AB":
                    outs: list[Any] = []
                    hooks = [
                        blk.register_forward_hook(lambda m, a, o, outs=outs: outs.append(o))
                        for blk in self.blocks
                    ]
                    try:
                        self._forward(*b.suffix[letter], b.kv, b.prefix_mask, letter)
                    finally:
                        for h in hooks:
                            h.remove()
                    if len(outs) != len(self.blocks) or not all(
                        isinstance(o, torch.Tensor) for o in outs
                    ):
                        ok = False
                        break
                    b.blocks_out[letter] = [o.detach() for o in outs]
                if not ok:
                    break
            if not ok:
                for b in self.batches:
                    b.blocks_out.clear()
            self._blocks_cached = ok
        return self._blocks_cached

    @staticmethod
    def _skip_to(interventions: Sequence[Intervention]) -> int:
        """The lowest block any intervention acts in (0 without interventions)."""
        return min((iv.layer for iv in interventions), default=0)

    def _greedy(
        self, logits: torch.Tensor, letter: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per row: does greedy decoding write ``Answer: <letter>`` (every token the argmax),
        and then end the turn; and log P of the letter's own tokens."""
        want = torch.tensor(self.reply[letter], device=logits.device)
        hit = logits.argmax(-1) == want
        logp = torch.log_softmax(logits.float(), -1).gather(
            -1, want.expand(len(logits), -1)[..., None]
        )
        return hit[:, :-1].all(-1), hit[:, -1], logp[:, self.h : -1, 0].sum(-1)

    @torch.no_grad()
    def read(self, interventions: Sequence[Intervention] = ()) -> Reading:
        answers: list[str | None] = []
        well: list[bool] = []
        probs: list[np.ndarray] = []
        first_b = self.reply["B"][self.h]
        skip = self._skip_to(interventions) if self.cache_blocks() else 0
        with steer(self.model, interventions, positions=self.positions, tokenizer=self.tok):
            for b in self.batches:
                la = self._logits(b, "A", from_layer=skip)
                says_a, ends_a, lp_a = self._greedy(la, "A")
                says_b = torch.zeros_like(says_a)
                ends_b = torch.zeros_like(ends_a)
                if self.single:  # B's probability is at A's letter position; B's pass only
                    lp_b = torch.log_softmax(la[:, self.h].float(), -1)[:, first_b]
                    rows = (la[:, self.h].argmax(-1) == first_b).nonzero().flatten()
                else:  # to check its end of turn, on the rows that would write it
                    rows = torch.arange(len(la), device=la.device)
                if rows.numel():
                    sb, eb, lb = self._greedy(self._logits(b, "B", rows, skip), "B")
                    says_b[rows], ends_b[rows] = sb, eb
                    if not self.single:
                        lp_b = lb
                for i in range(len(la)):
                    letter = "A" if says_a[i] else "B" if says_b[i] else None
                    answers.append(letter)
                    well.append(
                        bool(ends_a[i]) if letter == "A" else bool(ends_b[i]) and letter == "B"
                    )
                pair = torch.stack([lp_a, lp_b], -1)
                probs.append(torch.softmax(pair, -1).double().cpu().numpy())
        return Reading(answers, np.asarray(well, dtype=bool), np.concatenate(probs))

    def reply_loss(self, targets: Sequence[str], from_layer: int = 0) -> torch.Tensor:
        """Mean over prompts of the negative log-probability of the whole canonical reply
        ``Answer: <targets[i]>`` and the end of the turn, differentiable in whatever the active
        hooks add (call it inside ``steer``). ``from_layer``: no hook acts below that block,
        so after ``cache_blocks()`` the blocks below it are skipped."""
        if from_layer and not self._blocks_cached:
            from_layer = 0
        if len(targets) != self.n:
            raise MechbdError(f"MCQ read: {len(targets)} targets for {self.n} prompts")
        total = torch.zeros((), device=self.device)
        start = 0
        for b in self.batches:
            rows = b.suffix["A"][0].shape[0]
            mine = targets[start : start + rows]
            for letter in "AB":
                idx = torch.tensor([i for i, t in enumerate(mine) if t == letter], dtype=torch.long)
                if not idx.numel():
                    continue
                idx = idx.to(self.device)
                logp = torch.log_softmax(self._logits(b, letter, idx, from_layer).float(), dim=-1)
                want = torch.tensor(self.reply[letter], device=self.device).expand(len(idx), -1)
                total = total - logp.gather(-1, want.unsqueeze(-1)).sum()
            start += rows
        return total / self.n
