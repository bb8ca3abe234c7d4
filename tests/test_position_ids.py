"""Batched forwards with left padding and uneven lengths equal unbatched ones on architectures
with absolute position embeddings (GPT-2, OPT): the capture backends and the option
probabilities pass positions counted from the attention mask."""

from __future__ import annotations

import pytest
import torch

from mechbd.capture.backends import hooks_backend, nnsight_backend
from mechbd.eval.behaviour import option_probabilities
from mechbd.models import position_ids


def _gpt2(vocab: int, pad: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=256, pad_token_id=pad
    )
    return GPT2LMHeadModel(cfg).eval()


def _opt(vocab: int, pad: int):
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    cfg = OPTConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        ffn_dim=64,
        max_position_embeddings=256,
        word_embed_proj_dim=32,
        pad_token_id=pad,
    )
    return OPTForCausalLM(cfg).eval()


ARCHS = {"gpt2": _gpt2, "opt": _opt}


def _left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    want = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 1, 2, 2, 2]])
    assert torch.equal(position_ids(mask), want)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("backend", ["hooks", "nnsight"])
def test_left_padded_capture_equals_unbatched(arch, backend):
    model = ARCHS[arch](vocab=50, pad=0)
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(1, 50, (n,), generator=g).tolist() for n in (3, 9, 6)]
    keys = [(0, "resid_post"), (1, "resid_post")]
    run = hooks_backend(model) if backend == "hooks" else nnsight_backend(model)
    ids, mask = _left_padded(rows, pad=0)
    batched = run(ids, mask, keys)
    for i, r in enumerate(rows):
        one = run(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long), keys)
        for k in keys:
            got = batched[k][i, -len(r) :]
            assert torch.allclose(got, one[k][0], atol=1e-5), (arch, backend, k, i)


def test_without_positions_gpt2_reads_padded_rows_wrongly():
    # the negative control: the bug these positions fix is real on GPT-2
    model = _gpt2(vocab=50, pad=0)
    ids, mask = _left_padded([[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8]], pad=0)
    with torch.inference_mode():
        plain = model(input_ids=ids, attention_mask=mask).logits[0, -1]
        fixed = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
        alone = model(input_ids=torch.tensor([[5, 6, 7]])).logits[0, -1]
    assert torch.allclose(fixed[0, -1], alone, atol=1e-5)
    assert (plain - alone).abs().max() > 1e-3


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_option_probabilities_batched_equal_one_at_a_time(arch, tiny_organism):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_organism)
    model = ARCHS[arch](vocab=len(tok), pad=tok.pad_token_id)
    users = ["Hi.", "Which option is better for my neighbour and me? A or B, tell me now.", "Ok?"]
    letters = ["A", "B", "A"]
    batched = option_probabilities(model, tok, users, letters, batch_size=3)
    single = [
        option_probabilities(model, tok, [u], [x], batch_size=1)[0]
        for u, x in zip(users, letters, strict=True)
    ]
    assert batched == pytest.approx(single, abs=1e-5)
