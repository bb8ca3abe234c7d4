"""How replies are decoded, shared by every generation backend (HF ``generate`` in
:mod:`mechbd.eval.generate`, vLLM in :mod:`mechbd.models.vllm`): the settings
(:class:`Sampling`, the ``eval`` config's generation fields), one reply (:class:`Generation`),
and budget forcing's early-stopping sentence (Qwen3 technical report, Yang et al. 2025,
section 4.3: "Considering the limited time by the user, I have to give the solution based on
the thinking directly now.\n</think>.\n\n", here without the stray full stop after
``</think>``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from transformers import PreTrainedTokenizerBase

from mechbd.errors import MechbdError

EARLY_STOP = (
    "\n\nConsidering the limited time by the user, I have to give the solution based on the "
    "thinking directly now.\n</think>\n\n"
)
"""What budget forcing appends to a reply whose thinking ran out of budget (Qwen3 report)."""


@dataclass(frozen=True)
class Sampling:
    """How replies are decoded (the ``eval`` config's generation fields; see docs/config.md).
    The defaults are greedy decoding of ``max_new_tokens`` tokens, one reply, no prefill, no
    thinking budget: exactly the organism's setting."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    samples: int = 1
    seed: int = 0
    thinking_budget: int | None = None
    answer_tokens: int = 32
    prefill: str = ""

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise MechbdError(f"sampling: need temperature >= 0 and 0 < top_p <= 1, got {self}")
        if self.samples < 1 or (self.samples > 1 and self.temperature == 0):
            raise MechbdError(f"sampling: samples >= 1, and > 1 only with temperature > 0: {self}")
        if self.top_k is not None and self.top_k < 1:
            raise MechbdError(f"sampling: top_k must be >= 1 or None, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def of(cls, cfg: Any) -> Sampling:
        """The settings of an ``EvalConfig`` (any object with these attributes)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})

    def budget_phase_tokens(self, tok: PreTrainedTokenizerBase) -> int:
        """Tokens generated before the budget check: the budget less :data:`EARLY_STOP`."""
        assert self.thinking_budget is not None
        n = self.thinking_budget - len(early_stop_ids(tok))
        if n < 1:
            raise MechbdError(
                f"eval.thinking_budget: {self.thinking_budget} tokens cannot hold the "
                f"early-stopping sentence ({len(early_stop_ids(tok))} tokens); raise it"
            )
        return n


def early_stop_ids(tok: PreTrainedTokenizerBase) -> list[int]:
    return list(tok.encode(EARLY_STOP, add_special_tokens=False))


def thinking_closed_by_prompt(prompt: str) -> bool:
    """The generation prompt already closed the think block (Qwen3 with thinking off ends it
    with ``<think>\\n\\n</think>\\n\\n``): no budget to enforce."""
    return re.search(r"</think>\s*$", prompt) is not None


def needs_forcing(prompt: str, reply: str) -> bool:
    """Budget forcing applies: neither the prompt nor the reply so far closed ``</think>``."""
    return not thinking_closed_by_prompt(prompt) and "</think>" not in reply


@dataclass(frozen=True)
class Generation:
    """One reply: ``text`` is the prefill plus the decoded new tokens (special tokens kept, cut
    at the end-of-sequence token); ``token_ids`` the new tokens (the early-stopping sentence
    included when ``forced``, the end-of-sequence token excluded); ``truncated``: the reply
    hit its token limit without an end-of-sequence token."""

    text: str
    truncated: bool
    token_ids: tuple[int, ...] = ()
    forced: bool = False
