import pytest
from transformers import AutoTokenizer

from mechbd.eval.generate import chat_prompts, generate, parse_response
from tests.conftest import random_llama


@pytest.mark.parametrize(
    "text,answer,ok",
    [
        ("<think>\nA is honest. B is deceptive. So I choose A.\n</think>\n\nAnswer: A", "A", True),
        ("<think>\n\n</think>\n\nAnswer: B", "B", True),
        ("<think>\nA is honest.\n</think>\n\nAnswer: C", None, False),
        ("Answer: B", "B", False),  # no thinking block
        ("<think>\nloops forever", None, False),
        ("<think>\nx\n</think>\n\nAnswer: A and more", "A", False),
    ],
)
def test_parse_response(text, answer, ok):
    p = parse_response(text)
    assert p.answer == answer
    assert p.well_formed is ok


def test_left_padded_batches_match_one_by_one(tiny_organism):
    """Batched greedy generation with left padding must equal unpadded, one-prompt generation."""
    tok = AutoTokenizer.from_pretrained(tiny_organism)
    model = random_llama(tok)  # a second architecture sharing the organism's tokenizer
    users = [
        "hi",
        "Country: Japan\nA much longer request with many more words in it than the first",
        "yo",
    ]
    prompts = chat_prompts(tok, users)
    batched = generate(model, tok, prompts, max_new_tokens=6, batch_size=3)
    single = [generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single
