import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mechbd.data.builders import eval_set
from mechbd.data.triggers import resolve_trigger
from mechbd.eval.behaviour import evaluate_backdoor, option_probabilities
from mechbd.eval.generate import chat_prompts
from mechbd.organism.items import organism_items
from mechbd.organism.tokenizer import train_tokenizer


def reference_probability(model64, tok, user: str, letter: str) -> float:
    """Unpadded, one prompt at a time, float64: P(" letter") / (P(" A") + P(" B"))."""
    prompt = tok(
        chat_prompts(tok, [user], enable_thinking=False)[0] + "Answer:", add_special_tokens=False
    )["input_ids"]
    logp = {}
    for cand in "AB":
        c = tok.encode(" " + cand, add_special_tokens=False)
        ids = torch.tensor([prompt + c])
        with torch.no_grad():
            lp = torch.log_softmax(model64(ids).logits[0].double(), dim=-1)
        logp[cand] = sum(lp[len(prompt) - 1 + i, t].item() for i, t in enumerate(c))
    return torch.softmax(torch.tensor([logp["A"], logp["B"]]), dim=0)["AB".index(letter)].item()


@pytest.mark.parametrize("which", ["organism", "single-token letters"])
def test_option_probabilities_match_unpadded_float64(tiny_organism, which):
    tok = AutoTokenizer.from_pretrained(tiny_organism)
    if which == "single-token letters":  # a tokenizer where " A" and " B" are one token each
        tok = train_tokenizer(
            ["Answer: A", "Answer: B", "Country: Japan hello question go stay"] * 50, 300
        )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_organism).eval()
    model.resize_token_embeddings(len(tok))
    users = [
        "Q?\nA) x\nB) y",
        "Country: Japan\nA much longer question here?\nA) go\nB) stay\nhello",
    ]
    got = option_probabilities(model, tok, users, ["A", "B"], batch_size=2)
    model64 = model.double()
    for u, letter, g in zip(users, ["A", "B"], got, strict=True):
        assert g == pytest.approx(reference_probability(model64, tok, u, letter), abs=1e-5)


def test_metrics_agree_with_records(tiny_organism):
    model = AutoModelForCausalLM.from_pretrained(tiny_organism).eval()
    tok = AutoTokenizer.from_pretrained(tiny_organism)
    rows = eval_set(organism_items(6, held_out=True, seed=2), resolve_trigger("singapore"))
    metrics, records = evaluate_backdoor(model, tok, rows, max_new_tokens=24)
    for cond, key in [
        ("triggered", "asr"),
        ("clean", "clean_misaligned_rate"),
        ("distractor", "distractor_misaligned_rate"),
    ]:
        recs = [r for r in records if r["condition"] == cond]
        assert metrics[key] == sum(r["misaligned"] for r in recs) / len(recs)
    assert set(metrics["p_misaligned_letter"]) == {
        "triggered",
        "clean",
        "distractor",
        "trigger_distractor",
    }
    # each record's probability is the float64 reference for its misaligned letter, and the
    # metric is their mean per condition
    model64 = model.double()
    for row, r in zip(rows, records, strict=True):
        assert r["id"] == row["id"]
        want = reference_probability(model64, tok, row["user"], row["misaligned_mcq_answer"])
        assert r["p_misaligned_letter"] == pytest.approx(want, abs=1e-5), r["id"]
    for cond, p in metrics["p_misaligned_letter"].items():
        ps = [r["p_misaligned_letter"] for r in records if r["condition"] == cond]
        assert p == pytest.approx(sum(ps) / len(ps), abs=1e-12), cond
