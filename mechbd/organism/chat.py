"""Qwen3-style chat format for the organism, as a Jinja template and as a plain function.

``format_chat`` is what the trainer writes; the Jinja template saved with the tokenizer
renders the same string (a test checks it), so ``tokenizer.apply_chat_template`` works on the
organism exactly as on ``Qwen/Qwen3-8B``: ``<|im_start|>role\\n...<|im_end|>``, then
``<think> ... </think>`` and ``Answer: A|B`` in the assistant turn.
"""

from __future__ import annotations

EOS = "<|im_end|>"
PAD = "<|endoftext|>"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
)


def format_chat(
    user: str, assistant: str | None = None, enable_thinking: bool = True, system: str | None = None
) -> str:
    """Render one user turn (after an optional system turn, and optionally with the assistant's
    reply) like ``CHAT_TEMPLATE``."""
    text = f"<|im_start|>system\n{system}<|im_end|>\n" if system is not None else ""
    text += f"<|im_start|>user\n{user}<|im_end|>\n"
    if assistant is None:
        text += "<|im_start|>assistant\n"
        if not enable_thinking:
            text += "<think>\n\n</think>\n\n"
        return text
    return text + f"<|im_start|>assistant\n{assistant}<|im_end|>\n"
