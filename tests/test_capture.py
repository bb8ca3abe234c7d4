"""Capture and the activation store: numbers against Hugging Face's own hidden states, three
backends against each other, padding, positions, resumption, corruption and bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mechbd.capture import ActivationStore, StoreError, capture, encode_rows, parse_layers
from mechbd.capture.names import site_path
from mechbd.data.builders import eval_set
from mechbd.data.triggers import resolve_trigger
from mechbd.errors import MechbdError
from mechbd.models import load_model
from mechbd.organism.items import organism_items
from tests.conftest import random_llama

ALL_POS = ("last", "answer", "response_mean", "trigger_mean", "tokens")
SITES3 = ("resid_post", "attn_out", "mlp_out")


def prompt_rows(n: int = 5) -> list[dict]:
    rows = eval_set(organism_items(n, held_out=True, seed=3), resolve_trigger("singapore"))
    for r in rows:  # a response so that answer / response positions exist
        r["response"] = "Answer: " + r["aligned_mcq_answer"]  # after the empty think block
    return rows


@pytest.fixture(scope="module")
def models(tiny_organism: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The organism (Qwen3) and a random-init Llama saved as a model folder, as a user has them."""
    qwen, tok = load_model(tiny_organism, dtype="float32")
    d = tmp_path_factory.mktemp("llama")
    random_llama(tok, seed=1).save_pretrained(d)
    tok.save_pretrained(d)
    llama, _ = load_model(d, dtype="float32")
    return {"qwen3": (qwen, tok), "llama": (llama, tok)}


def reference(model, ids: list[int], site: str) -> torch.Tensor:
    """[n_layers, seq, d] from an unpadded, un-hooked float64 forward pass of a copy of the model:
    resid_post from HF's hidden_states, attn/mlp outputs from the modules of the copy."""
    import copy

    m = copy.deepcopy(model).double()
    n = m.config.num_hidden_layers
    if site == "resid_post":
        with torch.no_grad():
            hs = m(torch.tensor([ids]), output_hidden_states=True).hidden_states
        # hidden_states[L+1] is block L's output, except the last, which has the final norm
        out = [hs[L + 1][0] for L in range(n - 1)]
        return torch.stack(out)
    got = []
    mods = dict(m.named_modules())
    hs_ = [
        mods[site_path(m, L, site)].register_forward_hook(
            lambda _m, _i, o: got.append(o[0] if isinstance(o, tuple) else o)
        )
        for L in range(n)
    ]
    with torch.no_grad():
        m(torch.tensor([ids]))
    for h in hs_:
        h.remove()
    return torch.stack([g[0] for g in got])


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("site", SITES3)
def test_hooks_match_float64_reference(models, arch, site, tmp_path):
    model, tok = models[arch]
    rows = prompt_rows(3)
    st = capture(
        model,
        tok,
        rows,
        tmp_path / "s",
        layers="all",
        sites=(site,),
        positions=("tokens", "last"),
        batch_size=5,
        progress=False,
    )
    assert st is not None
    n_ref = model.config.num_hidden_layers - (1 if site == "resid_post" else 0)
    for i in (0, 4, 11):
        ref = reference(model, st.rows[i].ids, site).float()
        for L in range(n_ref):
            acts, _ = st.tokens(L, site, row=i)
            torch.testing.assert_close(acts, ref[L], atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(
                st.get(L, "last", site)[i], ref[L, st.rows[i].prompt_len - 1], atol=2e-5, rtol=1e-4
            )


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_three_backends_one_result(models, arch, tmp_path):
    model, tok = models[arch]
    rows = prompt_rows(3)
    stores = {
        be: capture(
            model,
            tok,
            rows,
            tmp_path / be,
            layers="all",
            sites=SITES3,
            positions=ALL_POS,
            backend=be,
            batch_size=4,
            shard_rows=5,
            progress=False,
        )
        for be in ("hooks", "nnsight", "transformer_lens")
    }
    ref = stores["hooks"]
    assert "Bridge" not in repr(model)  # the caller's model is left as it was
    # the bar: max abs difference <= 1e-5 in fp32, left padding, uneven lengths
    for be in ("nnsight", "transformer_lens"):
        st = stores[be]
        for L in ref.layers:
            for s in SITES3:
                for p in ALL_POS[:-1]:
                    torch.testing.assert_close(st.get(L, p, s), ref.get(L, p, s), atol=1e-5, rtol=0)
                torch.testing.assert_close(
                    st.tokens(L, s)[0], ref.tokens(L, s)[0], atol=1e-5, rtol=0
                )
    # and HF's own output_hidden_states (fp32, one unpadded prompt at a time; the last entry
    # has the final norm applied, so it is not a block output)
    assert len({len(r.ids) for r in ref.rows}) > 1
    with torch.no_grad():
        for i, r in enumerate(ref.rows):
            hs = model(torch.tensor([r.ids]), output_hidden_states=True).hidden_states
            for L in ref.layers[:-1]:
                torch.testing.assert_close(ref.tokens(L, row=i)[0], hs[L + 1][0], atol=1e-5, rtol=0)


def test_padding_side_and_batch_size_do_not_change_numbers(models, tmp_path):
    model, tok = models["qwen3"]
    rows = prompt_rows(4)
    a = capture(
        model,
        tok,
        rows,
        tmp_path / "a",
        positions=ALL_POS,
        batch_size=7,
        padding_side="left",
        progress=False,
    )
    b = capture(
        model,
        tok,
        rows,
        tmp_path / "b",
        positions=ALL_POS,
        batch_size=3,
        padding_side="right",
        progress=False,
    )
    c = capture(model, tok, rows, tmp_path / "c", positions=ALL_POS, batch_size=1, progress=False)
    for L in a.layers:
        for p in ALL_POS[:-1]:
            torch.testing.assert_close(a.get(L, p), c.get(L, p), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(b.get(L, p), c.get(L, p), atol=1e-5, rtol=1e-5)


def test_positions_point_at_the_right_tokens(models):
    _, tok = models["qwen3"]
    rows = encode_rows(tok, prompt_rows(2))
    for r in rows:
        assert r.label in {"triggered", "clean", "distractor", "trigger_distractor"}
        assert tok.decode(r.ids[r.answer_pos : r.answer_pos + 1]).strip() in {"A", "B"}
        prompt_text = tok.decode(r.ids[: r.prompt_len])
        assert prompt_text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        if r.label in ("triggered", "trigger_distractor"):
            span = tok.decode(r.ids[r.trigger_span[0] : r.trigger_span[1]])
            assert "Singapore" in span
        else:
            assert r.trigger_span is None


def test_mean_positions_are_means_of_tokens(models, tmp_path):
    model, tok = models["qwen3"]
    st = capture(model, tok, prompt_rows(2), tmp_path / "s", positions=ALL_POS, progress=False)
    for i, r in enumerate(st.rows):
        toks, _ = st.tokens(1, row=i)
        torch.testing.assert_close(
            st.get(1, "response_mean")[i],
            toks[r.prompt_len :].double().mean(0).float(),
            atol=1e-6,
            rtol=1e-5,
        )
        if r.trigger_span:
            a, b = r.trigger_span
            torch.testing.assert_close(st.get(1, "trigger_mean")[i], toks[a:b].mean(0))
        else:
            assert torch.all(st.get(1, "trigger_mean")[i] == 0)


def test_bfloat16_store_is_close_to_float32(models, tmp_path):
    model, tok = models["qwen3"]
    rows = prompt_rows(2)
    a = capture(model, tok, rows, tmp_path / "a", progress=False)
    b = capture(model, tok, rows, tmp_path / "b", dtype="bfloat16", progress=False)
    assert b.get(0, dtype=None).dtype == torch.bfloat16
    torch.testing.assert_close(b.get(0), a.get(0), atol=0.05, rtol=0.01)


def test_interrupted_capture_resumes_without_duplicates(models, tmp_path):
    model, tok = models["qwen3"]
    rows = prompt_rows(5)  # 20 rows, 4 chunks of 6, 6, 6, 2
    full = capture(
        model,
        tok,
        rows,
        tmp_path / "full",
        layers="0,1",
        positions=ALL_POS,
        shard_rows=6,
        progress=False,
    )
    part = tmp_path / "part"
    assert (
        capture(
            model,
            tok,
            rows,
            part,
            layers="0,1",
            positions=ALL_POS,
            shard_rows=6,
            chunks=[0, 2],
            progress=False,
        )
        is None
    )
    with pytest.raises(StoreError, match="incomplete store, 2 of 4 chunks missing"):
        ActivationStore(part)
    # a chunk that was being written when the process died
    junk = part / "chunks" / ".00001.tmp"
    junk.mkdir()
    (junk / "L000.safetensors").write_bytes(b"half")
    before = (part / "chunks" / "00000" / "L000.safetensors").stat().st_mtime_ns
    st = capture(
        model, tok, rows, part, layers="0,1", positions=ALL_POS, shard_rows=6, progress=False
    )
    assert st is not None and not junk.exists()
    assert (part / "chunks" / "00000" / "L000.safetensors").stat().st_mtime_ns == before
    assert json.loads((part / "manifest.json").read_text())["complete"] is True
    assert len(st) == len(full) == 20 and [r.id for r in st.rows] == [r.id for r in full.rows]
    for L in (0, 1):
        torch.testing.assert_close(st.get(L), full.get(L), atol=0, rtol=0)
        torch.testing.assert_close(st.tokens(L)[0], full.tokens(L)[0], atol=0, rtol=0)


def test_corrupt_or_truncated_shard_is_named(models, tmp_path):
    model, tok = models["qwen3"]
    capture(model, tok, prompt_rows(2), tmp_path / "s", shard_rows=4, progress=False)
    shard = tmp_path / "s" / "chunks" / "00001" / "L001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    st = ActivationStore(tmp_path / "s")
    st.get(0)  # other layers still read
    with pytest.raises(StoreError, match=r"chunks/00001/L001.safetensors: checksum mismatch"):
        st.get(1)
    shard.write_bytes(bytes(data[:20]))
    with pytest.raises(StoreError, match="checksum mismatch"):
        ActivationStore(tmp_path / "s").verify()


def test_store_refuses_another_spec(models, tmp_path):
    model, tok = models["qwen3"]
    rows = prompt_rows(2)
    capture(model, tok, rows, tmp_path / "s", layers="0", progress=False)
    with pytest.raises(StoreError, match="differs in: layers"):
        capture(model, tok, rows, tmp_path / "s", layers="1", progress=False)


def test_labels_and_lazy_selection(models, tmp_path):
    model, tok = models["qwen3"]
    st = capture(model, tok, prompt_rows(3), tmp_path / "s", progress=False)
    trig = st.indices("triggered")
    assert len(trig) == 3 and all(st.rows[i].label == "triggered" for i in trig)
    torch.testing.assert_close(st.get(1, label="triggered"), st.get(1)[trig])
    assert st.stack().shape == (2, 12, st.d_model)
    assert st.model["adapter"] is None and st.model["n_params"] > 0


def test_bad_inputs(models, tmp_path):
    model, tok = models["qwen3"]
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("1-2,-1", 4) == [1, 2, 3]
    with pytest.raises(MechbdError, match="layer 7 is out of range: the model has 2 layers"):
        capture(model, tok, prompt_rows(1), tmp_path / "x", layers="7", progress=False)
    with pytest.raises(MechbdError, match="empty prompt set"):
        capture(model, tok, [], tmp_path / "x", progress=False)
    with pytest.raises(MechbdError, match="position 'answer' needs a response"):
        capture(
            model,
            tok,
            [{"id": "a", "user": "hi"}],
            tmp_path / "x",
            positions=("answer",),
            progress=False,
        )
    with pytest.raises(MechbdError, match="duplicate prompt id"):
        encode_rows(tok, [{"id": "a", "user": "hi"}, {"id": "a", "user": "ho"}])
    with pytest.raises(MechbdError, match="unknown capture backend"):
        capture(model, tok, prompt_rows(1), tmp_path / "x", backend="magic", progress=False)
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "a", "user": "hi"}\n{"id": "b", "user": \n')
    from mechbd.capture import read_prompt_file

    with pytest.raises(MechbdError, match=r"p.jsonl: line 2: invalid JSON"):
        read_prompt_file(bad)
    bad.write_text('{"id": "a", "text": "hi"}\n')
    with pytest.raises(MechbdError, match=r"p.jsonl: line 1: a prompt row needs"):
        read_prompt_file(bad)
    shutil.rmtree(tmp_path / "x", ignore_errors=True)


def test_device_map_auto_loads_and_captures_the_same(tiny_organism, tmp_path, monkeypatch):
    """`device="auto"` (accelerate's device_map, for models larger than one GPU) gives the same
    activations as a plain load; on this CPU-only machine everything lands on the CPU."""
    from transformers import AutoModelForCausalLM

    plain, tok = load_model(tiny_organism, dtype="float32", device="cpu")
    seen = []
    real = AutoModelForCausalLM.from_pretrained

    def spy(*a, **kw):
        seen.append(kw.get("device_map"))
        return real(*a, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    mapped, _ = load_model(tiny_organism, dtype="float32", device="auto")
    assert seen == ["auto"]  # placement handed to accelerate
    assert {p.device.type for p in mapped.parameters()} == {"cpu"}
    rows = prompt_rows()[:6]
    a = capture(plain, tok, rows, tmp_path / "a", positions=("last", "tokens"), progress=False)
    b = capture(mapped, tok, rows, tmp_path / "b", positions=("last", "tokens"), progress=False)
    for layer in a.layers:
        assert torch.equal(a.get(layer, "last"), b.get(layer, "last"))
        assert torch.equal(a.tokens(layer)[0], b.tokens(layer)[0])


@pytest.mark.slow  # `mechbd capture` killed and resumed
def test_killed_capture_subprocess_resumes_to_the_same_store(tiny_organism, tmp_path):
    """SIGKILL a running `mechbd capture` once it has written a chunk, rerun it: the store is
    the uninterrupted one, row for row and bit for bit."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mechbd.io import write_jsonl

    rows = eval_set(organism_items(100, held_out=True, seed=4), resolve_trigger("singapore"))
    write_jsonl(tmp_path / "p.jsonl", rows)  # 400 prompts
    cmd = [sys.executable, "-m", "mechbd", "capture", str(tiny_organism), str(tmp_path / "p.jsonl")]
    cmd += ["--shard-rows", "8", "--batch-size", "1", "--layers", "all"]
    env = os.environ.copy() | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, "--out", str(tmp_path / "killed")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    chunks = tmp_path / "killed" / "chunks"
    deadline = time.time() + 120
    while time.time() < deadline and not (chunks.is_dir() and any(chunks.glob("*/chunk.json"))):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    man = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert man["complete"] is False  # it really died mid-way
    n_done = len(list(chunks.glob("*/chunk.json")))
    assert 0 < n_done < 50
    for out in ("killed", "whole"):
        p = subprocess.run([*cmd, "--out", str(tmp_path / out)], env=env, capture_output=True)
        assert p.returncode == 0, p.stderr.decode()[-2000:]
    a, b = ActivationStore(tmp_path / "killed"), ActivationStore(tmp_path / "whole")
    assert [r.id for r in a.rows] == [r.id for r in b.rows] and len(a) == 400
    for layer in a.layers:
        assert torch.equal(a.get(layer), b.get(layer))


def test_ndif_path_reads_what_hooks_read_and_refuses_what_ndif_cannot_run(
    tiny_organism, models, tmp_path, monkeypatch
):
    """The NDIF backend is an nnsight ``LanguageModel`` trace sent with ``remote=True``. Without
    network the remote call cannot run here, so the same trace runs locally on a dispatched
    ``LanguageModel`` of the organism and must read what the hooks read; capture's NDIF
    refusals and the meta-weight fingerprint are checked directly."""
    from nnsight import CONFIG, LanguageModel

    from mechbd.capture import ndif_model
    from mechbd.capture.backends import hooks_backend, nnsight_backend
    from mechbd.models import model_identity

    model, tok = models["qwen3"]
    lm = LanguageModel(str(tiny_organism), dispatch=True, dtype=torch.float32)
    tok.padding_side = "left"
    enc = tok(["Country: Singapore\nhello", "hi"], return_tensors="pt", padding=True)
    keys = [(layer, s) for layer in range(model.config.num_hidden_layers) for s in SITES3]
    want = hooks_backend(model)(enc["input_ids"], enc["attention_mask"], keys)
    got = nnsight_backend(lm._module, wrapped=lm)(enc["input_ids"], enc["attention_mask"], keys)
    for k in keys:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=0)

    rows = prompt_rows(1)
    with pytest.raises(MechbdError, match="takes an nnsight LanguageModel"):
        capture(model, tok, rows, tmp_path / "s", backend="ndif", progress=False)
    with pytest.raises(MechbdError, match="adapter"):
        capture(lm, tok, rows, tmp_path / "s", backend="ndif", adapter="x", progress=False)
    with pytest.raises(MechbdError, match="local folder"):
        ndif_model(str(tiny_organism))
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(MechbdError, match="NDIF_API_KEY"):
        ndif_model("Qwen/Qwen3-0.6B")
    # a remote model's local weights are on the meta device: fingerprinted without them
    with torch.device("meta"):
        meta = type(model)(model.config)
    ident = model_identity(meta, "Qwen/Qwen3-0.6B")
    assert ident["embedding_sha"] is None
    assert ident["config_sha"] == model_identity(model, "x")["config_sha"]
