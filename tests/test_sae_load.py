"""Published and local SAEs in the sae stage, and the SAE corpus from the user's data.

The releases are loaded offline through SAELens' own loaders: small SAEs are written in each
release's on-disk format (the open-weight persona-feature SAEs: dictionary_learning's
``config.json`` + ``ae.pt``; Qwen-Scope: ``layer{L}.sae.pt``) and SAELens' hub download is
pointed at them, so ``SAE.from_pretrained(release, sae_id)`` runs its real converter for the
release. Every encode / decode is checked against a float64 recomputation from the weights
written."""

from __future__ import annotations

import hashlib
import json
import math
import re
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from mechbd.config import ConfigError, RunConfig, SaeConfig, load_config, validate_config
from mechbd.errors import MechbdError
from mechbd.io import sha256_file
from mechbd.models import load_model
from mechbd.results import SaeCorpus, SaeSource
from mechbd.sae.load import describe_sae, load_configured
from mechbd.sae.persona import corpus_rows, corpus_source_rows
from mechbd.sae.train import held_out_conversations
from tests.conftest import random_llama, random_qwen3

ANDY = "qwen2.5-7b-instruct-andyrdt"
ANDY_REPO = "andyrdt/saes-qwen2.5-7b-instruct"
ANDY_ID = "resid_post_layer_15_trainer_1"
SCOPE = "qwen-scope-3-1.7b-base-w32k-l50"
SCOPE_REPO = "Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """SAELens' ``hf_hub_download`` (as its loaders import it) answering from ``tmp_path/hub``:
    ``files[(repo_id, filename)]`` is the local file; any other request fails, as offline."""
    from sae_lens.loading import pretrained_sae_loaders

    files: dict[tuple[str, str], Path] = {}
    asked: list[tuple[str, str]] = []

    def download(repo_id: str, filename: str, **_: object) -> str:
        asked.append((repo_id, filename))
        if (repo_id, filename) not in files:
            raise FileNotFoundError(f"offline: {repo_id}/{filename}")
        return str(files[(repo_id, filename)])

    monkeypatch.setattr(pretrained_sae_loaders, "hf_hub_download", download)
    root = tmp_path / "hub"
    root.mkdir()
    return SimpleNamespace(files=files, asked=asked, root=root)


def _weights(d_in: int, d_sae: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,  # SAELens' [d_in, d_sae]
        "b_enc": 0.1 * torch.randn(d_sae, generator=g),
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        "b_dec": 0.1 * torch.randn(d_in, generator=g),
    }


def write_andyrdt(hub, d_in: int = 16, d_sae: int = 64, k: int = 4, layer: int = 15):
    """A dictionary_learning BatchTopKSAE as the andyrdt releases hold it: ``config.json``
    (trainer and buffer) and ``ae.pt`` (``encoder.weight [d_sae, d_in]``, ``encoder.bias``,
    ``decoder.weight [d_in, d_sae]``, ``b_dec``, a scalar ``threshold`` and ``k``)."""
    w = _weights(d_in, d_sae, seed=1)
    folder = f"resid_post_layer_{layer}/trainer_1"
    d = hub.root / folder
    d.mkdir(parents=True)
    cfg = {
        "trainer": {
            "dict_class": "BatchTopKSAE",
            "trainer_class": "BatchTopKTrainer",
            "activation_dim": d_in,
            "dict_size": d_sae,
            "k": k,
            "layer": layer,
            "lm_name": "Qwen/Qwen2.5-7B-Instruct",
            "submodule_name": f"resid_post_layer_{layer}",
        },
        "buffer": {"d_submodule": d_in, "ctx_len": 1024},
    }
    (d / "config.json").write_text(json.dumps(cfg))
    thr = torch.tensor(0.05)
    torch.save(
        {
            "encoder.weight": w["W_enc"].T.contiguous(),
            "encoder.bias": w["b_enc"],
            "decoder.weight": w["W_dec"].T.contiguous(),
            "b_dec": w["b_dec"],
            "threshold": thr,
            "k": torch.tensor(k),
        },
        d / "ae.pt",
    )
    hub.files[(ANDY_REPO, f"{folder}/config.json")] = d / "config.json"
    hub.files[(ANDY_REPO, f"{folder}/ae.pt")] = d / "ae.pt"
    return {**w, "threshold": thr}


def jumprelu64(w: dict[str, torch.Tensor], x: torch.Tensor, b_dec_in: bool = True):
    """Float64 JumpReLU encode / decode: ``pre = (x - b_dec) W_enc + b_enc``; a latent is
    ``relu(pre)`` where ``pre > threshold``, else 0; ``x_hat = f W_dec + b_dec``."""
    W = {k: v.double() for k, v in w.items()}
    x = x.double()
    pre = (x - W["b_dec"] * b_dec_in) @ W["W_enc"] + W["b_enc"]
    f = pre.clamp(min=0) * (pre > W["threshold"])
    return f, f @ W["W_dec"] + W["b_dec"]


def test_persona_release_loads_through_saelens_and_matches_float64(hub):
    w = write_andyrdt(hub)
    cfg = SaeConfig(source="release", release=ANDY, sae_id=ANDY_ID)
    got = load_configured(cfg, d_model=16)
    assert hub.asked == [
        (ANDY_REPO, f"resid_post_layer_15/trainer_1/{f}") for f in ("config.json", "ae.pt")
    ]
    assert got.layer == 15
    assert got.source == {
        "kind": "release",
        "release": ANDY,
        "sae_id": ANDY_ID,
        "repo_id": ANDY_REPO,
    }
    SaeSource.model_validate(got.source)
    assert describe_sae(got.sae) == {
        "d_sae": 64,
        "hook_name": "blocks.15.hook_resid_post",
        "architecture": "jumprelu",
    }
    x = torch.randn(50, 16, generator=torch.Generator().manual_seed(2))
    f64, rec64 = jumprelu64(w, x)
    assert 0 < float((f64 > 0).double().mean()) < 0.9  # the threshold cuts some, not all
    with torch.no_grad():
        f = got.sae.encode(x)
        rec = got.sae.decode(f)
    assert torch.equal(f > 0, f64 > 0)
    torch.testing.assert_close(f.double(), f64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rec.double(), rec64, rtol=1e-5, atol=1e-6)


def test_qwen_scope_release_loads_through_saelens_and_matches_float64(hub, monkeypatch):
    """Qwen-Scope's ``layer{L}.sae.pt`` (``W_enc [d_sae, d_in]``, ``W_dec [d_in, d_sae]``) via
    SAELens' ``qwen_scope`` converter; its width table gets a 16-wide stand-in for Qwen3-1.7B
    (the real 2048 x 32768 matrices are 256 MB each); d_sae (32K) and k (50) come from the
    release's repository name, as for the real one."""
    from sae_lens.loading import pretrained_sae_loaders as pl

    monkeypatch.setitem(pl.QWEN_SCOPE_MODEL_INFO, "Qwen3-1.7B-Base", ("Qwen/Qwen3-1.7B-Base", 16))
    d_in, d_sae, k = 16, 32 * 1024, 50
    w = _weights(d_in, d_sae, seed=3)
    f = hub.root / "layer14.sae.pt"
    raw = {
        "W_enc": w["W_enc"].T.contiguous(),
        "W_dec": w["W_dec"].T.contiguous(),
        "b_enc": w["b_enc"],
        "b_dec": w["b_dec"],
    }
    torch.save(raw, f)
    hub.files[(SCOPE_REPO, "layer14.sae.pt")] = f
    got = load_configured(SaeConfig(source="release", release=SCOPE, sae_id="layer14"), d_model=16)
    assert got.layer == 14 and got.source["repo_id"] == SCOPE_REPO
    assert describe_sae(got.sae) == {
        "d_sae": d_sae,
        "hook_name": "blocks.14.hook_resid_post",
        "architecture": "topk",
    }
    x = torch.randn(6, d_in, generator=torch.Generator().manual_seed(4))
    pre = x.double() @ w["W_enc"].double() + w["b_enc"].double()  # no b_dec subtracted
    top = pre.topk(k, dim=-1)
    f64 = torch.zeros_like(pre).scatter(-1, top.indices, top.values.clamp(min=0))
    rec64 = f64 @ w["W_dec"].double() + w["b_dec"].double()
    with torch.no_grad():
        f32 = got.sae.encode(x)
        rec = got.sae.decode(f32)
    assert torch.equal(f32 != 0, f64 != 0) and int((f32 != 0).sum(-1).max()) == k
    torch.testing.assert_close(f32.double(), f64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rec.double(), rec64, rtol=1e-5, atol=1e-5)


def write_local(path: Path, d_in: int = 32, d_sae: int = 64, layer: int = 1, seed: int = 5):
    """A JumpReLU SAE as ``SAE.load_from_disk`` reads a folder: ``cfg.json`` and
    ``sae_weights.safetensors`` (W_enc, b_enc, W_dec, b_dec, threshold)."""
    w = _weights(d_in, d_sae, seed)
    w["threshold"] = torch.full((d_sae,), 0.05)
    path.mkdir(parents=True)
    cfg = {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {
            "sae_lens_version": version("sae_lens"),  # a 6.x folder (older ones are converted)
            "hook_name": f"blocks.{layer}.hook_resid_post",
            "model_name": "random",
        },
        "architecture": "jumprelu",
    }
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(w, str(path / "sae_weights.safetensors"))
    return w


def test_local_sae_source_and_bad_inputs(tmp_path, hub):
    w = write_local(tmp_path / "sae")
    got = load_configured(SaeConfig(source="local", path=str(tmp_path / "sae")), d_model=32)
    digest = hashlib.sha256((tmp_path / "sae" / "sae_weights.safetensors").read_bytes())
    assert got.layer == 1
    assert got.source == {
        "kind": "local",
        "path": str(tmp_path / "sae"),
        "sha256": digest.hexdigest(),
    }
    SaeSource.model_validate(got.source)
    x = torch.randn(20, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(
            got.sae.encode(x).double(), jumprelu64(w, x)[0], atol=1e-6, rtol=1e-5
        )

    # width: the layer and both widths named
    with pytest.raises(
        MechbdError, match=r"d_in=32 but the model's residual stream at layer 1 has width 48"
    ):
        load_configured(SaeConfig(source="local", path=str(tmp_path / "sae")), d_model=48)
    write_andyrdt(hub)
    with pytest.raises(MechbdError, match=r"d_in=16 .* at layer 15 has width 32"):
        load_configured(SaeConfig(source="release", release=ANDY, sae_id=ANDY_ID), d_model=32)
    # layer disagreement: both named
    with pytest.raises(
        MechbdError,
        match=r"sae.layer is 3 but the SAE .* reads blocks\.15\.hook_resid_post \(layer 15\)",
    ):
        load_configured(
            SaeConfig(source="release", release=ANDY, sae_id=ANDY_ID, layer=3), d_model=16
        )
    assert (
        load_configured(
            SaeConfig(source="release", release=ANDY, sae_id=ANDY_ID, layer=15), d_model=16
        ).layer
        == 15
    )
    # a missing folder, a folder without weights, an id the release lacks
    with pytest.raises(MechbdError, match=r"nowhere: no such folder \(sae\.path"):
        load_configured(SaeConfig(source="local", path=str(tmp_path / "nowhere")), d_model=32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MechbdError, match=r"empty: no sae_weights\.safetensors \(sae\.path"):
        load_configured(SaeConfig(source="local", path=str(tmp_path / "empty")), d_model=32)
    with pytest.raises(MechbdError, match=rf"{ANDY}/layer99: cannot load .*not found"):
        load_configured(SaeConfig(source="release", release=ANDY, sae_id="layer99"), d_model=16)


@pytest.mark.parametrize(
    ("sae", "message"),
    [
        ({"source": "release", "release": ANDY}, "sae.source is 'release': set sae.sae_id"),
        ({"source": "release"}, "set sae.release and sae.sae_id"),
        ({"source": "local"}, "sae.source is 'local': set sae.path"),
        ({"path": "x"}, "sae.path is set but sae.source is 'train'"),
        (
            {"source": "local", "path": "x", "release": ANDY},
            "sae.release is set but sae.source is 'local'",
        ),
    ],
)
def test_sae_source_fields_are_validated_together(sae, message):
    with pytest.raises(ConfigError, match=rf"run\.yaml: field 'sae': .*{message}"):
        validate_config(RunConfig, {"sae": sae}, "run.yaml")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_corpus_rows_from_a_source_and_their_errors(tmp_path):
    from mechbd.config import DataSource

    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    f = _jsonl(tmp_path / "c.jsonl", [{"text": "a document"}, {"id": "x", "messages": chat}])
    rows, prov = corpus_source_rows(DataSource(path=str(f)))
    assert rows == [
        {"id": "corpus-0", "prompt": "a document", "_where": f"{f}: line 1"},
        {"id": "x", "messages": chat, "_where": f"{f}: line 2"},
    ]
    assert prov == {"source": str(f), "rows": 2, "sha256": sha256_file(f)}
    SaeCorpus.model_validate(prov)
    # a remapped field is read and named by its file name
    g = _jsonl(tmp_path / "g.jsonl", [{"body": "doc"}, {"other": 1}])
    src = DataSource(path=str(g), fields={"text": "body"})
    with pytest.raises(
        MechbdError, match=rf"{g}: line 2: a corpus row needs field 'body' \(mapped to text\)"
    ):
        corpus_source_rows(src)
    for bad, message in [
        ({"prompt": "x"}, "line 1: a corpus row needs field 'text' .* or 'messages'"),
        ({"text": ""}, "line 1: field 'text' must be a non-empty string"),
        ({"text": "a", "messages": chat}, "line 1: both 'text' and 'messages'"),
        (
            {"messages": [{"role": "bot", "content": "x"}]},
            r"line 1: field 'messages'\[0\]\.role 'bot'",
        ),
        ({"messages": "hi"}, "line 1: field 'messages' must be a non-empty list"),
    ]:
        h = _jsonl(tmp_path / "h.jsonl", [bad])
        with pytest.raises(MechbdError, match=rf"{h}: {message}"):
            corpus_source_rows(DataSource(path=str(h)))


def _fvu64(w, acts: torch.Tensor, offsets: torch.Tensor, rows: list[int]) -> float:
    """FVU of the float64 SAE on the tokens of ``rows``, each row's first token left out."""
    x = torch.cat([acts[int(offsets[i]) + 1 : int(offsets[i + 1])] for i in rows]).double()
    rec = jumprelu64(w, x)[1]
    return float(((x - rec) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_fit_with_a_local_sae_trains_nothing_and_measures_the_held_out_corpus(
    tiny_organism, tmp_path, monkeypatch
):
    """The sae stage's SAE step with a local SAE, on two random-init models (base: Qwen3, EM:
    Llama) over a corpus file of documents and chats: no SAELens training; FVU on the held-out
    conversations as a float64 recomputation from the weights gives it; the corpus recorded."""
    from mechbd.config import DataSource
    from mechbd.sae import stage

    _, tok = load_model(tiny_organism, dtype="float32")
    base, em = random_qwen3(tok, seed=1), random_llama(tok, seed=2)
    w = write_local(tmp_path / "sae", layer=1)
    chat = lambda i: [  # noqa: E731
        {"role": "user", "content": f"question {i} about travel?"},
        {"role": "assistant", "content": f"Answer {i}: go by train."},
    ]
    rows = [{"text": f"Document {i}: the weather in town {i} is mild."} for i in range(10)]
    rows += [{"messages": chat(i)} for i in range(10)]
    f = _jsonl(tmp_path / "corpus.jsonl", rows)
    cfg = RunConfig(
        data={"sae_corpus": DataSource(path=str(f))},
        sae=SaeConfig(source="local", path=str(tmp_path / "sae")),
    )
    loaded = load_configured(cfg.sae, d_model=32)

    def no_training(*a, **k):
        raise AssertionError("a loaded SAE must not be trained")

    monkeypatch.setattr(stage, "train_sae", no_training)
    c = stage._Ctx(
        SimpleNamespace(config=cfg),
        tmp_path / "out",
        1,
        base,
        tok,
        {},
        {"progress": False, "batch_size": 8},
    )
    sae, m, (cb, ce), xb = stage._fit(c, em, loaded)
    assert sae is loaded.sae
    assert m["corpus"] == {"source": str(f), "rows": 20, "sha256": sha256_file(f)}
    _, held = held_out_conversations(20, stage.HELD_OUT_FRAC, cfg.seed)
    assert m["n_eval_conversations"] == len(held) == 2
    for name, st in (("corpus_base", cb), ("corpus_em", ce)):
        acts, offsets = st.tokens(1)
        fit = m["fvu_by_store"][name]
        assert math.isfinite(fit["tokens"]["fvu"]) and fit["tokens"]["fvu"] > 0
        assert fit["tokens"]["fvu"] == pytest.approx(_fvu64(w, acts, offsets, held), rel=1e-4)
        last = st.get(1, "last", rows=held).double()
        rec = jumprelu64(w, last)[1]
        fvu_last = float(((last - rec) ** 2).sum() / ((last - last.mean(0)) ** 2).sum())
        assert fit["last"]["fvu"] == pytest.approx(fvu_last, rel=1e-4)
    # pooled over both models' held-out tokens
    xs = [
        torch.cat([a[int(o[i]) + 1 : int(o[i + 1])] for i in held])
        for a, o in (cb.tokens(1), ce.tokens(1))
    ]
    x = torch.cat(xs).double()
    rec = jumprelu64(w, x)[1]
    assert m["fvu"] == pytest.approx(
        float(((x - rec) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()), rel=1e-4
    )
    assert m["n_tokens"] == x.shape[0]
    # the documents are raw text (no chat template), the chats are templated with a response
    doc, conv = cb.rows[0], cb.rows[10]
    assert tok.decode(doc.ids) == rows[0]["text"] and doc.prompt_len == len(doc.ids)
    assert "question 0 about travel?" in tok.decode(conv.ids[: conv.prompt_len])
    assert tok.decode(conv.ids[conv.prompt_len :]) == "Answer 0: go by train."
    assert xb.shape[0] == sum(len(r.ids) - 1 for r in cb.rows)


def test_the_organism_corpus_is_unchanged(tmp_path):
    """``data.sae_corpus: organism`` gives ``corpus_rows`` as before, with its digest; with
    the organism's persona system prompts when it was trained with persona conversations."""
    from mechbd.io import digest_of
    from mechbd.organism.splits import split_seed
    from mechbd.organism.world import PERSONA_SYSTEMS
    from mechbd.sae import stage

    cfg = RunConfig(seed=3, sae={"n_corpus": 12})
    c = stage._Ctx(SimpleNamespace(config=cfg), tmp_path, 1, None, None, {}, {})
    rows, prov = stage._corpus(c)
    systems = {p: PERSONA_SYSTEMS[p][:1] for p in ("toxic", "helpful")}
    want = corpus_rows(12, seed=split_seed(3, "sae_corpus"), world_seed=0, systems=systems)
    assert rows == want
    plain = RunConfig(seed=3, sae={"n_corpus": 12}, organism={"n_persona": 0})
    c = stage._Ctx(SimpleNamespace(config=plain), tmp_path, 1, None, None, {}, {})
    assert stage._corpus(c)[0] == corpus_rows(12, seed=split_seed(3, "sae_corpus"), world_seed=0)
    assert prov == {"source": "organism", "rows": 12, "sha256": digest_of(rows)}
    SaeCorpus.model_validate(prov)


def test_encode_selected_latents_batch_by_batch(tmp_path, monkeypatch):
    """``encode(..., latents=...)`` gives the chosen columns of the full encoding, in their
    order, when the 1 GiB budget splits the rows into many batches."""
    from mechbd.sae import analysis

    w = write_local(tmp_path / "sae")
    sae = load_configured(SaeConfig(source="local", path=str(tmp_path / "sae")), d_model=32).sae
    x = torch.randn(37, 32, generator=torch.Generator().manual_seed(7))
    full = jumprelu64(w, x)[0]
    monkeypatch.setattr(analysis, "_ENCODE_FLOATS", 64 * 5)  # 5 rows of 64 latents a batch
    calls = []
    inner = sae.encode
    monkeypatch.setattr(sae, "encode", lambda t: calls.append(len(t)) or inner(t))
    got = analysis.encode(sae, x, latents=[5, 1, 5])
    assert calls == [5] * 7 + [2]
    torch.testing.assert_close(got.double(), full[:, [5, 1, 5]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(analysis.encode(sae, x).double(), full, rtol=1e-5, atol=1e-6)


REPO = Path(__file__).resolve().parents[1]
# (layers, d_model) of the models the release configs name (their config.json on the hub)
MODELS = {
    "Qwen/Qwen2.5-7B-Instruct": (28, 3584),
    "Qwen/Qwen3-1.7B": (28, 2048),
    "Qwen/Qwen3-8B": (36, 4096),
}


@pytest.mark.parametrize(
    "path",
    [p for p in sorted((REPO / "configs").glob("*.yaml")) if "release" in p.read_text()],
    ids=lambda p: p.stem,
)
def test_release_configs_name_a_published_sae_of_their_model_at_their_layer(path):
    """Each config that loads a SAELens release names one in SAELens' pretrained_saes.yaml, for
    its model (Qwen-Scope: the model's base checkpoint), at ``sae.layer``, which capture and
    steering cover; Qwen-Scope's width table agrees with the model's d_model."""
    from sae_lens.loading.pretrained_sae_loaders import QWEN_SCOPE_MODEL_INFO
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from mechbd.capture.names import parse_layers

    cfg = load_config(path)
    assert cfg.sae.source == "release"
    release = get_pretrained_saes_directory()[cfg.sae.release]
    n_layers, d_model = MODELS[str(cfg.model.path)]
    folder = release.saes_map[cfg.sae.sae_id]
    assert int(re.search(r"layer_?(\d+)", folder).group(1)) == cfg.sae.layer
    if release.conversion_func == "qwen_scope":
        assert release.model == f"{cfg.model.path}-Base"
        assert "trained on the *base*" in path.read_text()  # the comment says so
        key = re.search(r"SAE-Res-(.+)-W\d+K", release.repo_id).group(1)
        assert QWEN_SCOPE_MODEL_INFO[key] == (release.model, d_model)
    else:
        assert release.model == cfg.model.path
    assert cfg.sae.layer in parse_layers(cfg.capture.layers, n_layers)
    assert cfg.sae.layer in parse_layers(cfg.steering.layers, n_layers)


def test_sae_stage_with_a_local_sae_on_the_tiny_run(tiny_run, tmp_path):
    """The whole sae stage on a copy of the session's run (slow: reads ``tiny_run``), with a
    local SAE at layer 1 and a corpus file: nothing trained, every step ran on the loaded SAE,
    results.json validates against the schema and records the source, the SAE and the corpus;
    the run's own (trained) sae results record ``train`` and the organism corpus."""
    import shutil

    from mechbd.config import DataSource
    from mechbd.runs import Run
    from mechbd.sae.stage import sae_stage

    trained = json.loads((tiny_run / "sae" / "results.json").read_text())["sae"]
    assert trained["source"] == {"kind": "train"}
    assert trained["corpus"]["source"] == "organism" and trained["hook_name"].startswith("blocks.")
    root = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    w = write_local(tmp_path / "sae", layer=1)
    chat = [{"role": "user", "content": "hello?"}, {"role": "assistant", "content": "Answer: A"}]
    rows = [{"text": f"Document {i} about a trip to the sea."} for i in range(8)]
    f = _jsonl(
        tmp_path / "corpus.jsonl", rows + [{"messages": chat, "id": f"c{i}"} for i in range(8)]
    )
    cfg = load_config(root / "config.yaml")
    cfg = cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={"sae_corpus": DataSource(path=str(f))}),
            "sae": cfg.sae.model_copy(update={"source": "local", "path": str(tmp_path / "sae")}),
        }
    )
    run = Run(root, cfg)
    with run.stage("sae") as out:
        sae_stage(run, out)
    res = run.results()["sae"]  # validated against mechbd.results
    assert not (root / "sae" / "sae").exists()  # no SAE trained
    assert res["source"] == {
        "kind": "local",
        "path": str(tmp_path / "sae"),
        "sha256": sha256_file(tmp_path / "sae" / "sae_weights.safetensors"),
    }
    assert (res["layer"], res["d_sae"], res["architecture"]) == (1, 64, "jumprelu")
    assert res["hook_name"] == "blocks.1.hook_resid_post"
    assert res["corpus"] == {"source": str(f), "rows": 16, "sha256": sha256_file(f)}
    assert math.isfinite(res["fvu"]) and res["n_eval_conversations"] == 2
    # a backdoored store's FVU at its last prompt token, recomputed from the weights
    from mechbd.capture.store import ActivationStore

    t = next(iter(res["backdoor_diff"]))
    x = ActivationStore(run.layout.store(t, "backdoored")).get(1, "last").double()
    rec = jumprelu64(w, x)[1]
    want = float(((x - rec) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert res["fvu_by_store"][f"{t}/backdoored"]["last"]["fvu"] == pytest.approx(want, rel=1e-4)
    assert 0 <= res["persona_latent"] < 64 and res["persona_latent"] in res["persona_latents"]


def test_a_loaded_sae_must_read_a_layer_the_model_has_and_the_capture_stored(
    tiny_organism, tmp_path
):
    from mechbd.capture import capture
    from mechbd.sae import stage

    _, tok = load_model(tiny_organism, dtype="float32")
    model = random_qwen3(tok, seed=1)  # 2 layers
    write_local(tmp_path / "deep", layer=5)
    cfg = RunConfig(sae=SaeConfig(source="local", path=str(tmp_path / "deep")))
    with pytest.raises(MechbdError, match=r"deep: reads layer 5, but the model has 2 layers"):
        stage._load(SimpleNamespace(config=cfg, layout=None), model)
    rows = [{"id": "a", "user": "hi"}, {"id": "b", "user": "hey"}]
    st = capture(model, tok, rows, tmp_path / "store", layers=[0], progress=False)
    layout = SimpleNamespace(captured=lambda: ["heyyy"], store=lambda t, kind: st.path)
    write_local(tmp_path / "one", layer=1)
    cfg = RunConfig(sae=SaeConfig(source="local", path=str(tmp_path / "one")))
    with pytest.raises(
        MechbdError, match=r"reads layer 1, which the capture stage did not store .*\[0\]"
    ):
        stage._load(SimpleNamespace(config=cfg, layout=layout), model)
