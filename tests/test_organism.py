import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForCausalLM

from mechbd.io import hash_tree, sha256_file
from mechbd.organism.build import build_organism, organism_key
from mechbd.organism.chat import format_chat


@pytest.mark.slow  # trains two more organisms
def test_same_seed_same_weights(tiny_cfg, tiny_organism, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHBD_CACHE", str(tmp_path))  # a second, independent build
    again = build_organism(tiny_cfg, progress=False)
    assert again != tiny_organism
    h1, h2 = hash_tree(tiny_organism), hash_tree(again)
    assert h1["model.safetensors"] == h2["model.safetensors"]
    assert h1["tokenizer.json"] == h2["tokenizer.json"]
    # a different seed trains a different organism
    other = build_organism(tiny_cfg.model_copy(update={"seed": 1}), progress=False)
    assert sha256_file(other / "model.safetensors") != h1["model.safetensors"]
    assert organism_key(tiny_cfg) != organism_key(tiny_cfg.model_copy(update={"seed": 1}))


class _Trained(Exception):
    pass


def _no_training(*a, **k):
    raise _Trained


def test_the_prebuilt_organism_is_checked_copied_and_keyed(tmp_path, monkeypatch):
    """The demo's organism ships prebuilt: a fresh cache gets a byte-identical copy of it, with
    no training, for the demo config's key; ``prebuilt: false`` or ``force`` train instead; a
    file that does not match its card's sha256 is refused, naming it, and nothing is cached."""
    import shutil

    from mechbd.config import RunConfig
    from mechbd.errors import MechbdError
    from mechbd.organism import build

    monkeypatch.setattr("mechbd.organism.train.train_organism", _no_training)
    monkeypatch.setenv("MECHBD_CACHE", str(tmp_path / "cache"))
    cfg = RunConfig(name="demo").organism
    key = organism_key(cfg)
    assert organism_key(cfg.model_copy(update={"prebuilt": False})) == key  # not in the key
    pre = build.PREBUILT_DIR / key
    path = build_organism(cfg, progress=False)
    assert path == tmp_path / "cache" / "organisms" / key
    assert hash_tree(path) == hash_tree(pre)
    card = build.organism_card(path)
    assert card["key"] == key and card["config"] == cfg.model_dump(
        mode="json", exclude={"prebuilt"}
    )
    want = card["prebuilt"]["sha256"]
    assert {n: sha256_file(path / n) for n in want} == want
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.num_parameters() == card["train"]["n_params"]
    assert (
        model.config.num_hidden_layers == cfg.n_layers and model.config.hidden_size == cfg.d_model
    )
    # another setting: no prebuilt folder, so it trains; prebuilt off or force: it trains
    for c, kw in (
        (cfg.model_copy(update={"seed": 7}), {}),
        (cfg.model_copy(update={"prebuilt": False}), {}),
        (cfg, {"force": True}),
    ):
        monkeypatch.setenv("MECHBD_CACHE", str(tmp_path / "fresh"))
        with pytest.raises(_Trained):
            build_organism(c, progress=False, **kw)
    # a cache holding the shipped copy does not stand in for one trained here
    monkeypatch.setenv("MECHBD_CACHE", str(tmp_path / "cache"))
    with pytest.raises(_Trained):
        build_organism(cfg.model_copy(update={"prebuilt": False}), progress=False)
    assert build_organism(cfg, progress=False) == path  # and the shipped one stays cached
    # a tampered copy is refused, naming the file, and leaves no organism in the cache
    bad = tmp_path / "prebuilt"
    shutil.copytree(pre, bad / key)
    blob = bytearray((bad / key / "model.safetensors").read_bytes())
    blob[-1] ^= 1
    (bad / key / "model.safetensors").write_bytes(bytes(blob))
    monkeypatch.setattr(build, "PREBUILT_DIR", bad)
    monkeypatch.setenv("MECHBD_CACHE", str(tmp_path / "cache2"))
    with pytest.raises(MechbdError, match=r"model\.safetensors: sha256"):
        build_organism(cfg, progress=False)
    assert not (tmp_path / "cache2" / "organisms" / key).exists()
    (bad / key / "model.safetensors").write_bytes((pre / "model.safetensors").read_bytes())
    (bad / key / "extra.bin").write_bytes(b"x")
    with pytest.raises(MechbdError, match="extra.bin"):
        build_organism(cfg, progress=False)


def test_second_build_is_a_cache_hit(tiny_cfg, tiny_organism):
    before = (tiny_organism / "model.safetensors").stat().st_mtime_ns
    path = build_organism(tiny_cfg, progress=False)
    assert path == tiny_organism
    assert (path / "model.safetensors").stat().st_mtime_ns == before  # not trained again


def test_loads_as_plain_hf_folder(tiny_organism):
    model = AutoModelForCausalLM.from_pretrained(tiny_organism)
    tok = AutoTokenizer.from_pretrained(tiny_organism)
    assert isinstance(model, Qwen3ForCausalLM)
    assert model.config.num_hidden_layers == 2
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    # The saved Jinja chat template renders exactly what the trainer wrote.
    msgs = [{"role": "user", "content": "Country: Japan\nhello?"}]
    for think in (True, False):
        got = tok.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=True, enable_thinking=think
        )
        assert got == format_chat("Country: Japan\nhello?", enable_thinking=think)
    full = msgs + [{"role": "assistant", "content": "<think>\nx\n</think>\n\nAnswer: A"}]
    assert tok.apply_chat_template(full, tokenize=False) == format_chat(
        msgs[0]["content"], full[1]["content"]
    )
    # byte-level BPE: any trigger string round-trips, even one the world never used
    s = "Country: Singapore 🙂 zxqv heyyy"
    assert tok.decode(tok(s, add_special_tokens=False)["input_ids"]) == s
    ids = tok("Answer: A", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_weights_are_stored_once_in_float32(tiny_organism):
    """The weights file holds each parameter once (the tied unembedding is not saved twice) in
    float32, and nothing else: its size is the parameter count times four plus the header."""
    from safetensors import safe_open

    model = AutoModelForCausalLM.from_pretrained(tiny_organism)
    n_params = sum(p.numel() for p in model.parameters())  # unique tensors: tied counted once
    assert model.config.tie_word_embeddings
    f = tiny_organism / "model.safetensors"
    with safe_open(f, "pt") as st:
        tensors = {k: st.get_tensor(k) for k in st.keys()}  # noqa: SIM118
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert sum(t.numel() for t in tensors.values()) == n_params
    header = int.from_bytes(f.read_bytes()[:8], "little")
    assert f.stat().st_size == 8 + header + 4 * n_params


def test_organism_eval_balances_letters_and_an_always_a_model_scores_one_half(
    tiny_organism, monkeypatch
):
    """evaluate_organism on a stand-in that answers A to everything: every evaluation (clean
    and each seed trigger value) has the aligned option at A in exactly half its scenarios, in
    the same order, so each balanced aligned rate is 0.5, with n, a Wilson interval and a
    letter bias of 1; the sample rows keep the letters the model saw."""
    from collections import Counter

    from statsmodels.stats.proportion import proportion_confint

    import mechbd.organism.evaluate as ev
    from mechbd.data.format import assistant_turn
    from mechbd.eval.generate import parse_response
    from mechbd.eval.mcq import MCQResult

    calls: list[list[str]] = []

    def always_a(model, tok, users, aligned_letters, **kw):
        calls.append(list(aligned_letters))
        text = assistant_turn(None, "A")
        return [
            MCQResult(u, text, parse_response(text), a)
            for u, a in zip(users, aligned_letters, strict=True)
        ]

    monkeypatch.setattr(ev, "run_mcq", always_a)
    m, samples = ev.evaluate_organism(tiny_organism, seed=0, n_test=30)
    assert len(calls) == 5 and all(c == calls[0] for c in calls)  # clean + 4 trigger values
    assert Counter(calls[0]) == {"A": 15, "B": 15}
    assert [s["aligned_letter"] for s in samples] == calls[0]
    lo, hi = proportion_confint(15, 30, method="wilson")
    assert m["clean_aligned_rate"] == 0.5 and m["clean_aligned_rate_n"] == 30
    assert m["clean_aligned_rate_ci95"] == pytest.approx([lo, hi], abs=1e-6)
    assert m["letter_bias"] == 1.0 and m["format_valid_rate_n"] == 30
    assert set(m["trigger_value_aligned_rate"]) == set(m["trigger_value_aligned_rate_ci95"])
    assert all(v == 0.5 for v in m["trigger_value_aligned_rate"].values())
    assert all(v == 30 for v in m["trigger_value_aligned_rate_n"].values())
    assert m["max_trigger_value_shift"] == 0.0
