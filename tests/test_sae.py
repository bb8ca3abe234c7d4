"""SAEs with SAELens: training, SAELens save/load round trip, refusals, model diffing and the
analysis numbers against independent recomputations (float64, scikit-learn)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import percentileofscore
from sklearn.metrics import roc_auc_score

from mechbd.capture import capture
from mechbd.errors import MechbdError
from mechbd.models import load_model
from mechbd.probes.core import auroc_interval
from mechbd.sae.analysis import (
    check_same_prompts,
    cosine_null,
    covariance_factor,
    detector_auroc,
    direction_detector,
    effective_dims,
    encode,
    latent_detector,
    matched_directions,
    max_cosines,
    model_diff,
    persona_z,
    projection_shift,
    shift_vs_base,
    top_cosines,
)
from mechbd.sae.load import check_sae, load_sae, sae_layer
from mechbd.sae.persona import corpus_rows, user_wants_harm_rows
from mechbd.sae.train import (
    held_out_conversations,
    sae_metrics,
    store_metrics,
    store_tokens,
    train_sae,
)
from mechbd.steering.directions import Direction
from tests.conftest import random_llama


def sparse_data(n: int = 6000, d: int = 32, n_feat: int = 48, k: int = 3, seed: int = 0):
    """Activations that really are sparse sums of dictionary directions."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_feat, d, generator=g)
    D = D / D.norm(dim=-1, keepdim=True)
    idx = torch.stack([torch.randperm(n_feat, generator=g)[:k] for _ in range(n)])
    codes = torch.zeros(n, n_feat).scatter_(1, idx, torch.rand(n, k, generator=g) * 4 + 1)
    return codes @ D


@pytest.fixture(scope="module")
def topk_sae(tmp_path_factory):
    out = tmp_path_factory.mktemp("sae") / "topk"
    x = sparse_data()
    sae, m = train_sae(x, out, layer=1, k=4, expansion=4, n_tokens=400_000, batch_size=256, lr=1e-3)
    return sae, m, x, out


def test_topk_sae_learns_sparse_data_and_metrics_match_float64(topk_sae):
    sae, m, x, _ = topk_sae
    assert m["fvu"] < 0.1 and m["l0"] == pytest.approx(4.0)  # k=4 latents per token
    # recompute FVU / L0 / dead fraction on all of x in float64, without sae_metrics
    with torch.no_grad():
        f = sae.encode(x)
        rec = sae.decode(f).double()
    xd = x.double()
    fvu = ((xd - rec) ** 2).sum() / ((xd - xd.mean(0)) ** 2).sum()
    got = sae_metrics(sae, x, batch=1000)  # several batches: the sums must add up
    assert got["fvu"] == pytest.approx(float(fvu), rel=1e-6)
    assert got["l0"] == pytest.approx(float((f > 0).sum(-1).double().mean()))
    assert got["dead_fraction"] == pytest.approx(float(((f > 0).sum(0) == 0).double().mean()))


def test_saelens_round_trip_and_same_seed_same_sae(topk_sae, tmp_path):
    from sae_lens import SAE

    sae, _, x, out = topk_sae
    loaded = SAE.load_from_disk(out)
    assert loaded.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert sae_layer(loaded) == 1
    with torch.no_grad():
        f1, f2 = sae.encode(x[:500]), loaded.encode(x[:500])
        assert torch.equal(f1, f2)
        assert torch.allclose(sae.decode(f1), loaded.decode(f2), atol=0, rtol=0)
    card = json.loads((out / "mechbd_sae.json").read_text())
    assert card["training"]["hook_name"] == "blocks.1.hook_resid_post"
    again, _ = train_sae(
        x, tmp_path / "again", layer=1, k=4, expansion=4, n_tokens=400_000, batch_size=256, lr=1e-3
    )
    assert torch.equal(again.W_dec, sae.W_dec) and torch.equal(again.W_enc, sae.W_enc)


def test_standard_sae_trains_with_saelens(tmp_path):
    x = sparse_data(seed=1)
    sae, m = train_sae(
        x,
        tmp_path / "std",
        layer=0,
        architecture="standard",
        l1_coefficient=1.0,
        n_tokens=200_000,
        batch_size=256,
    )
    assert sae.cfg.architecture() == "standard"
    assert m["fvu"] < 0.5 and 0 < m["l0"] < sae.cfg.d_sae / 2


def test_bad_saes_and_nans_are_refused(topk_sae, tmp_path):
    sae, _, x, out = topk_sae
    with pytest.raises(
        MechbdError, match="d_in=32 but the model's residual stream at layer 1 has width 64"
    ):
        load_sae(out, d_model=64, layer=1)
    with pytest.raises(
        MechbdError, match=r"blocks\.1\.hook_resid_post \(layer 1\), not on blocks\.3"
    ):
        check_sae(sae, layer=3)
    with pytest.raises(MechbdError, match="not an SAELens folder"):
        load_sae(tmp_path)
    with pytest.raises(MechbdError, match="pass the SAE id"):
        load_sae(tmp_path / "nowhere")
    bad = x.clone()
    bad[7, 3] = float("nan")
    with pytest.raises(MechbdError, match="NaN or inf .*row 7"):
        train_sae(bad, tmp_path / "nan", layer=1)
    with pytest.raises(MechbdError, match="NaN or inf .*row 7"):
        encode(sae, bad)
    assert not (tmp_path / "nan").exists()
    with pytest.raises(MechbdError, match="unknown SAE architecture"):
        train_sae(x, tmp_path / "arch", layer=1, architecture="gated")


def test_hook_names_map_to_layers(topk_sae):
    sae = topk_sae[0]
    for name, layer in [
        ("blocks.5.hook_resid_post", 5),
        ("blocks.5.hook_resid_pre", 4),
        ("model.layers.7", 7),
        ("blocks.2.hook_out", 2),
    ]:
        sae.cfg.metadata.hook_name = name
        assert sae_layer(sae) == layer
    sae.cfg.metadata.hook_name = "blocks.0.hook_resid_pre"
    with pytest.raises(MechbdError, match="embeddings"):
        sae_layer(sae)
    sae.cfg.metadata.hook_name = "blocks.0.attn.hook_z"
    with pytest.raises(MechbdError, match="not a residual-stream hook"):
        sae_layer(sae)
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def stores(tiny_organism: Path, tmp_path_factory):
    """The tiny organism and a random Llama on the same prompts (per-token and last)."""
    root = tmp_path_factory.mktemp("stores")
    qwen, tok = load_model(tiny_organism, dtype="float32")
    llama = random_llama(tok, seed=3)
    rows = corpus_rows(40, seed=1)
    kw = dict(positions=("last", "tokens"), progress=False)
    a = capture(qwen, tok, rows, root / "qwen", **kw)
    b = capture(llama, tok, rows, root / "llama", **kw)
    c = capture(qwen, tok, rows[:30], root / "fewer", **kw)
    d = capture(qwen, tok, rows[:4], root / "last_only", progress=False)
    return a, b, c, d


def test_store_tokens_and_model_diff_match_recomputation(stores, tmp_path):
    a, b, c, _ = stores
    x = store_tokens(a, 1)
    acts, offsets = a.tokens(1)
    assert x.shape[0] == acts.shape[0] - len(a)  # each row's first token left out
    assert torch.equal(x[: offsets[1] - 1], acts[1 : offsets[1]])
    sae, _ = train_sae(
        torch.cat([x, store_tokens(b, 1)]), tmp_path / "s", layer=1, n_tokens=40_000, batch_size=256
    )
    d = model_diff(sae, a, b, 1, top_k=5)
    fa = sae.encode(a.get(1, "last")).detach().double()
    fb = sae.encode(b.get(1, "last")).detach().double()
    inc = fb.mean(0) - fa.mean(0)
    assert d["latents"] == inc.argsort(descending=True)[:5].tolist()
    assert d["increase"] == pytest.approx(inc[d["latents"]].tolist(), rel=1e-5, abs=1e-6)
    with pytest.raises(MechbdError, match="not the same prompt set"):
        model_diff(sae, a, c, 1)
    with pytest.raises(MechbdError, match="per-token activations"):
        store_tokens(stores[3], 1)
    with pytest.raises(MechbdError, match="layer 7 not captured"):
        store_tokens(a, 7)


def test_check_same_prompts_names_the_row(stores, tiny_organism, tmp_path):
    a = stores[0]
    qwen, tok = load_model(tiny_organism, dtype="float32")
    rows = corpus_rows(40, seed=1)
    rows[5] = {**rows[5], "user": rows[5]["user"] + " Please."}
    other = capture(qwen, tok, rows, tmp_path / "o", positions=("last",), progress=False)
    with pytest.raises(MechbdError, match="differ at row 5"):
        check_same_prompts(a, other)


def test_cosines_detector_and_shift_match_references(stores):
    a = stores[0]
    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 32, generator=g)
    v = torch.randn(32, generator=g)
    t = top_cosines(v, W, k=3)
    ref = torch.nn.functional.cosine_similarity(W.double(), v.double()[None], dim=-1)
    assert t["latents"] == ref.argsort(descending=True)[:3].tolist()
    assert t["max"] == pytest.approx(float(ref.max()), rel=1e-12)
    scores = torch.randn(40, generator=g)
    pos, neg = list(range(0, 40, 3)), [i for i in range(40) if i % 3]
    y = [1] * len(pos) + [0] * len(neg)
    assert detector_auroc(scores, pos, neg) == pytest.approx(
        roc_auc_score(y, scores[pos + neg].numpy()), abs=1e-12
    )
    d = Direction({0: v, 1: -v}, {"name": "test"})
    sh = projection_shift(a, d, pos, neg)
    for layer, sign in ((0, 1), (1, -1)):
        p = a.get(layer, "last").double() @ (sign * v.double() / v.double().norm())
        ref_shift = (p[pos].mean() - p[neg].mean()) / p[neg].std()
        assert sh[layer] == pytest.approx(float(ref_shift), rel=1e-9)
    flipped = projection_shift(a, Direction({0: -v}, {"name": "flipped"}), pos, neg)
    assert flipped[0] == pytest.approx(-sh[0], rel=1e-9)


def test_user_wants_harm_pairs_differ_only_in_the_request():
    rows = user_wants_harm_rows(6, seed=0)
    assert [r["label"] for r in rows] == ["harm", "neutral"] * 6
    for h, n in zip(rows[::2], rows[1::2], strict=True):
        assert h["pair"] == n["pair"] and h["user"] != n["user"]
        extra = h["user"].replace("?", "").split()
        assert set(n["user"].replace("?", "").split()) <= set(extra)


@pytest.mark.slow  # `mechbd sae` train, diff and detect in subprocesses
def test_sae_cli_train_diff_detect(stores, tmp_path):
    from tests.test_cli import mechbd, one_line_error

    a, b = stores[0], stores[1]
    p = mechbd(
        "sae",
        "train",
        str(a.path),
        str(b.path),
        "--layer",
        "1",
        "--out",
        str(tmp_path / "s"),
        "--n-tokens",
        "20000",
        "--batch-size",
        "256",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    assert "FVU" in p.stdout and (tmp_path / "s" / "cfg.json").is_file()
    p = mechbd(
        "sae",
        "diff",
        str(tmp_path / "s"),
        str(a.path),
        str(b.path),
        "--top-k",
        "3",
        "--out",
        str(tmp_path / "d.json"),
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    from mechbd.sae.load import load_sae as _load

    sae, _ = _load(tmp_path / "s")
    assert json.loads((tmp_path / "d.json").read_text()) == model_diff(sae, a, b, 1, top_k=3)
    p = mechbd(
        "sae", "diff", str(tmp_path / "s"), str(a.path), str(tmp_path / "missing"), cwd=tmp_path
    )
    assert "missing" in one_line_error(p)
    p = mechbd(
        "sae", "train", str(a.path), "--layer", "9", "--out", str(tmp_path / "x"), cwd=tmp_path
    )
    assert "layer 9" in one_line_error(p)


def test_explorer_data_matches_recomputation(stores, topk_sae, tiny_organism, tmp_path):
    from mechbd.sae.explorer import (
        cosine_matrix,
        direction_score,
        label_values,
        latent_dashboards,
        latent_score,
        token_trace,
    )

    a = stores[0]
    sae = topk_sae[0]
    qwen, tok = load_model(tiny_organism, dtype="float32")
    W_U = qwen.get_output_embeddings().weight.detach()
    v = torch.randn(32, generator=torch.Generator().manual_seed(1))
    acts, offsets = a.tokens(1)
    with torch.no_grad():
        z = sae.encode(acts).double()
    # per-token trace: float64 projection and the SAE's own encode, token by token
    tr = token_trace(a, 1, 3, tok, {"dir": direction_score(v), "lat": latent_score(sae, 5)})
    row = acts[offsets[3] : offsets[4]].double()
    assert tr["tokens"] == [tok.decode([i]) for i in a.rows[3].ids]
    assert tr["values"]["dir"] == pytest.approx(
        (row @ (v.double() / v.double().norm())).tolist(), abs=1e-4
    )
    assert tr["values"]["lat"] == pytest.approx(z[offsets[3] : offsets[4], 5].tolist(), abs=1e-4)
    # dashboards: the top example is the largest activation outside each row's first token
    live = [int(i) for i in (z > 0).any(0).nonzero().flatten()[:3]]
    assert len(live) == 3
    dash = latent_dashboards(sae, [a], 1, live, tok, W_U, n_examples=3, window=2, n_logits=4)
    first = set(offsets[:-1].tolist())
    for lat in live:
        d = dash[str(lat)]
        col = [float(z[g, lat]) if g not in first else 0.0 for g in range(len(z))]
        best = max(range(len(col)), key=col.__getitem__)
        top = d["examples"][0]
        assert col[best] > 0 and len(d["examples"]) == 3
        assert top["max"] == pytest.approx(col[best], abs=1e-4)
        assert top["values"][top["focus"]] == pytest.approx(col[best], abs=1e-4)
        r = next(i for i in range(len(a)) if offsets[i] <= best < offsets[i + 1])
        assert top["id"] == a.rows[r].id
        assert top["tokens"][top["focus"]] == tok.decode([a.rows[r].ids[best - offsets[r]]])
        assert sum(d["hist_counts"]) == sum(c > 0 for c in col)
        logits = W_U.double() @ sae.W_dec.detach().double()[lat]
        assert d["top_logits"]["tokens"] == [
            tok.decode([i]) for i in logits.argsort(descending=True)[:4].tolist()
        ]
        assert d["bottom_logits"]["values"][0] == pytest.approx(float(logits.min()), abs=1e-4)
    # cosines against torch's cosine_similarity
    cm = cosine_matrix({"v": v, "-v": -v}, sae.W_dec, [0, 7, 3])
    ref = torch.nn.functional.cosine_similarity(
        sae.W_dec.detach().double()[[0, 7, 3]], v.double()[None], dim=-1
    )
    assert cm["cosines"][0] == pytest.approx(ref.tolist(), abs=1e-4)
    assert cm["cosines"][1] == pytest.approx((-ref).tolist(), abs=1e-4)
    # label histograms: the score at the last prompt token, split by label
    hs = capture(qwen, tok, user_wants_harm_rows(6, seed=0), tmp_path / "h", progress=False)
    lv = label_values(hs, 1, {"harm": "harm", "neutral": "neutral"}, direction_score(v))
    p = hs.get(1, "last").double() @ (v.double() / v.double().norm())
    assert lv["harm"] == pytest.approx(p[hs.indices("harm")].tolist(), abs=1e-4)
    with pytest.raises(MechbdError, match="no rows labelled 'triggered'"):
        label_values(hs, 1, {"t": "triggered"}, direction_score(v))
    with pytest.raises(MechbdError, match="latent 999 out of range"):
        latent_score(sae, 999)


# ---- nulls (issue 23) ------------------------------------------------------------------------
def anisotropic(n: int, d: int, seed: int) -> torch.Tensor:
    """``[n, d]`` Gaussian rows (seeded), standard deviations 0.3 .. 3 along the axes of one
    fixed rotation: every seed draws from the same distribution."""
    Q, _ = torch.linalg.qr(
        torch.randn(d, d, generator=torch.Generator().manual_seed(12345), dtype=torch.float64)
    )
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.3, 3, d)) @ Q.T


def check_summary(value: float, null: np.ndarray, got: dict, median: str, p95: str, n: str):
    """A null summary against scipy's mid-rank percentile and numpy's quantiles."""
    assert got["percentile"] == pytest.approx(percentileofscore(null, value, kind="mean"))
    assert got["p_value"] == pytest.approx((1 + (null >= value).sum()) / (1 + null.size))
    assert got[median] == pytest.approx(float(np.median(null)), abs=1e-12)
    assert got[p95] == pytest.approx(float(np.percentile(null, 95)), abs=1e-12)
    assert got[n] == null.size


def test_matched_directions_follow_the_covariance():
    x = anisotropic(4000, 8, seed=0)
    F = covariance_factor(x)
    assert (F @ F.T).numpy() == pytest.approx(np.cov(x.numpy().T), abs=1e-10)
    R = matched_directions(F, 20000, seed=1)
    assert R.norm(dim=-1).numpy() == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(R, matched_directions(F, 20000, seed=1))
    # the mean squared projection on each eigenvector grows with its variance: 0.09 .. 9
    evals, evecs = np.linalg.eigh(np.cov(x.numpy().T))
    share = ((R.numpy() @ evecs) ** 2).mean(0)
    assert np.all(np.diff(share) > 0) and share[-1] / share[0] > 30
    # fewer rows than dimensions: every random direction lies in the rows' span
    few = anisotropic(5, 8, seed=2)
    R = matched_directions(covariance_factor(few), 100, seed=0).numpy()
    c = few.numpy() - few.numpy().mean(0)
    P = np.linalg.pinv(c) @ c  # projector on the span of the centred rows
    assert np.abs(R @ P - R).max() < 1e-9
    with pytest.raises(MechbdError, match="do not vary"):
        covariance_factor(torch.ones(10, 4))
    # effective dimensions: d when isotropic, 1 when one direction carries the variance
    assert effective_dims(torch.eye(6, dtype=torch.float64)) == pytest.approx(6)
    assert effective_dims(torch.diag(torch.tensor([3.0, 0, 0]))) == pytest.approx(1)
    lam = np.linalg.eigvalsh(np.cov(x.numpy().T))
    assert effective_dims(F) == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-9)


def test_cosine_null_against_float64_and_the_known_chance_level():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(1024, 128, generator=g)
    F = torch.eye(128, dtype=torch.float64)  # isotropic: the d = 128, 1024 rows
    v = torch.randn(128, generator=g)
    got = cosine_null(v, W, F, n=1000, seed=3)
    R = matched_directions(F, 1000, seed=3).numpy()
    Wn = W.double().numpy() / np.linalg.norm(W.double().numpy(), axis=1, keepdims=True)
    null = (R @ Wn.T).max(-1)
    value = float(top_cosines(v, W)["max"])
    check_summary(value, null, got, "median", "p95", "n")
    assert max_cosines(torch.as_tensor(R), W).numpy() == pytest.approx(null, abs=1e-12)
    # a random direction's best cosine with 1024 random rows in d = 128 is about 0.28
    assert 0.26 < got["median"] < 0.30 and 0.30 < got["p95"] < 0.35
    # no signal: random directions of the null's own distribution land mid-distribution
    fresh = torch.randn(30, 128, generator=g)
    pct = [cosine_null(r, W, F, n=1000, seed=3)["percentile"] for r in fresh]
    assert 35 < np.mean(pct) < 65
    # a decoder row itself is beyond every random direction
    row = cosine_null(W[17], W, F, n=1000, seed=3)
    assert row["percentile"] == 100.0 and row["p_value"] == pytest.approx(1 / 1001)


def test_latent_detector_against_sklearn():
    g = torch.Generator().manual_seed(0)
    acts = torch.relu(torch.randn(60, 40, generator=g) - 0.5)
    acts[:, 5] = 0.0  # never fires on these rows: not in the null
    pos, neg = list(range(0, 60, 2)), list(range(1, 60, 2))
    acts[pos, 3] += 1.0  # the "persona latent" fires more on positives
    got = latent_detector(acts, 3, pos, neg, exclude=[3, 7, 9], seed=4)
    y = np.array([1] * len(pos) + [0] * len(neg))
    a = acts[pos + neg].numpy()
    assert got["auroc"] == pytest.approx(roc_auc_score(y, a[:, 3]), abs=1e-12)
    pool = [j for j in range(40) if j not in (3, 5, 7, 9)]
    null = np.array([roc_auc_score(y, a[:, j]) for j in pool])
    check_summary(got["auroc"], null, got, "null_median", "null_p95", "n_null")
    assert got["ci95"] == list(auroc_interval(acts[pos + neg, 3], torch.tensor(y), seed=4))
    assert got["ci95"][0] <= got["auroc"] <= got["ci95"][1] and got["percentile"] > 95
    with pytest.raises(MechbdError, match="besides the candidates"):
        latent_detector(acts[:, [3, 5]], 0, pos, neg)


def test_direction_detector_against_sklearn():
    X = anisotropic(80, 16, seed=1)
    pos, neg = list(range(30)), list(range(30, 80))
    v = torch.randn(16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    X[pos] += 0.5 * v / v.norm()
    F = covariance_factor(X)
    got = direction_detector(X, v, pos, neg, F, n=1000, seed=5)
    y = np.array([1] * len(pos) + [0] * len(neg))
    Xn = X[pos + neg].numpy()
    assert got["auroc"] == pytest.approx(roc_auc_score(y, Xn @ v.numpy()), abs=1e-12)
    R = matched_directions(F, 1000, seed=5).numpy()
    null = np.array([roc_auc_score(y, Xn @ r) for r in R])
    check_summary(got["auroc"], null, got, "null_median", "null_p95", "n_null")
    assert 0.45 < got["null_median"] < 0.55  # random signs: the null centres on chance
    assert got["ci95"][0] <= got["auroc"] <= got["ci95"][1]


def _shift_np(X: np.ndarray, U: np.ndarray, pos: list[int], neg: list[int]) -> np.ndarray:
    p = X @ (U / np.linalg.norm(U, axis=-1, keepdims=True)).T
    return (p[pos].mean(0) - p[neg].mean(0)) / p[neg].std(0, ddof=1)


def _no_signal(
    seed: int, n: int = 80, d: int = 32
) -> tuple[torch.Tensor, torch.Tensor, list, list]:
    """Base and "backdoored" activations on the same prompts from one distribution (a shared
    per-prompt part plus independent noise of the same covariance), random labels."""
    P = anisotropic(n, d, seed=100 + seed)
    base = P + 0.5 * anisotropic(n, d, seed=200 + seed)
    bd = P + 0.5 * anisotropic(n, d, seed=300 + seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return bd, base, perm[: n // 2], perm[n // 2 :]


def _fixed_directions(d: int = 32) -> dict[str, torch.Tensor]:
    """Two directions fixed before any data is drawn: a random one and a coordinate axis."""
    g = torch.Generator().manual_seed(99)
    return {
        "toxic_persona": torch.randn(d, generator=g, dtype=torch.float64),
        "user_wants_harm": torch.eye(d, dtype=torch.float64)[0],
    }


def test_persona_z_matches_float64_recomputation():
    bd, base, pos, neg = _no_signal(0)
    dirs = _fixed_directions()
    F = covariance_factor(base)
    got = persona_z(bd, base, dirs, pos, neg, F, n=1000, seed=7)
    R = matched_directions(F, 1000, seed=7).numpy()
    b, x = bd.numpy(), base.numpy()
    null = _shift_np(b, R, pos, neg) - _shift_np(x, R, pos, neg)
    assert got["n_null"] == 1000 and got["null_std"] == pytest.approx(null.std(ddof=1))
    for k, v in dirs.items():
        real = float(
            (_shift_np(b, v.numpy()[None], pos, neg) - _shift_np(x, v.numpy()[None], pos, neg))[0]
        )
        assert got[k]["vs_base"] == pytest.approx(real, rel=1e-10)
        assert got[k]["z"] == pytest.approx((real - null.mean()) / null.std(ddof=1), rel=1e-9)
    # one model against itself shifts by nothing along any direction
    assert shift_vs_base(bd, bd, torch.as_tensor(R[:5]), pos, neg).abs().max() == 0
    with pytest.raises(MechbdError, match="same prompts"):
        shift_vs_base(bd[:-1], base, torch.as_tensor(R[:2]), pos, neg)
    with pytest.raises(MechbdError, match="do not vary"):
        persona_z(bd, bd, dirs, pos, neg, F, n=50)


def test_persona_z_is_chance_without_signal_and_large_with_it():
    """Issue 23's acceptance: with no signal the z's fall inside +-2 in at least 90% of 20
    seeds; they are not degenerate (their spread is about 1); a shift planted along one
    direction in the backdoored model only gives a large z for it."""
    dirs = _fixed_directions()
    zs = []
    for seed in range(20):
        bd, base, pos, neg = _no_signal(seed)
        got = persona_z(bd, base, dirs, pos, neg, covariance_factor(base), seed=seed)
        zs += [got[k]["z"] for k in dirs]
    zs = np.array(zs)
    assert (np.abs(zs) < 2).mean() >= 0.9, zs.round(2).tolist()
    assert 0.5 < zs.std() < 1.6 and abs(zs.mean()) < 0.6, zs.round(2).tolist()
    bd, base, pos, neg = _no_signal(0)
    u = dirs["toxic_persona"] / dirs["toxic_persona"].norm()
    got = persona_z(bd, base, dirs, pos, neg, covariance_factor(base), seed=0)
    assert all(abs(got[k]["z"]) < 2 for k in dirs), got  # seed 0 before the plant
    sd = float((base[neg] @ u).std())
    bd[pos] += 1.5 * sd * u  # the trigger moves the backdoored model 1.5 clean stds along it
    got = persona_z(bd, base, dirs, pos, neg, covariance_factor(base), seed=0)
    assert got["toxic_persona"]["z"] > 3, got


def test_held_out_conversations_and_store_metrics(stores, topk_sae, tiny_organism, tmp_path):
    train, held = held_out_conversations(40, 0.1, seed=0)
    assert len(held) == 4 and sorted(train + held) == list(range(40)) and not set(train) & set(held)
    assert held_out_conversations(40, 0.1, seed=0) == (train, held)
    assert (
        held_out_conversations(3, 0.1, seed=0)[1] != []
        and len(held_out_conversations(2, 0.9, 0)[0]) == 1
    )
    with pytest.raises(MechbdError, match="at least 2"):
        held_out_conversations(1, 0.1, seed=0)
    a = stores[0]
    sae = topk_sae[0]
    acts, offsets = a.tokens(1)
    x = store_tokens(a, 1, rows=held)
    want = torch.cat([acts[offsets[i] + 1 : offsets[i + 1]] for i in held])
    assert torch.equal(x, want)  # whole conversations, each one's first token left out
    with pytest.raises(MechbdError, match="no row 40"):
        store_tokens(a, 1, rows=[40])

    # FVU and L0 per position, in float64 without sae_metrics
    def ref(v: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            f = sae.encode(v)
            rec = sae.decode(f).double()
        vd = v.double()
        return float(((vd - rec) ** 2).sum() / ((vd - vd.mean(0)) ** 2).sum()), float(
            (f > 0).sum(-1).double().mean()
        )

    m = store_metrics(sae, a, 1, rows=held)
    assert set(m) == {"last", "tokens"}
    assert m["tokens"]["n"] == len(want) and m["last"]["n"] == len(held)
    for pos, v in (("tokens", want), ("last", a.get(1, "last", rows=held))):
        fvu, l0 = ref(v)
        assert m[pos]["fvu"] == pytest.approx(fvu, rel=1e-6) and m[pos]["l0"] == pytest.approx(l0)
    # trigger_mean: only the rows with a trigger span (the others hold zeros)
    qwen, tok = load_model(tiny_organism, dtype="float32")
    rows = corpus_rows(12, seed=2)
    for at_start in (False, True):
        for i, r in enumerate(rows):
            user = r.get("question", r["user"])
            r["question"] = user
            if i % 3:
                text = "heyyy " + user if at_start else user + " heyyy"
                r.update(user=text, trigger_line="heyyy", label="triggered")
            else:
                r.update(user=user, label="clean")
        st = capture(
            qwen,
            tok,
            rows,
            tmp_path / f"t{at_start}",
            positions=("last", "trigger_mean"),
            progress=False,
        )
        m = store_metrics(sae, st, 1)
        spans = [i for i, r in enumerate(st.rows) if r.trigger_span]
        assert len(spans) == 8 and m["trigger_mean"]["n"] == 8 and m["last"]["n"] == 12
        if at_start:  # after the same template text in every prompt: one vector, no FVU
            assert m["trigger_mean"]["fvu"] is None and m["last"]["fvu"] is not None
        else:
            fvu, _ = ref(st.get(1, "trigger_mean", rows=spans))
            assert m["trigger_mean"]["fvu"] == pytest.approx(fvu, rel=1e-6)
    # training on given held-out tokens: trained on all of x, measured on x_eval
    xs = sparse_data(n=2000, seed=3)
    _, met = train_sae(
        xs[:1500],
        tmp_path / "given",
        layer=1,
        k=4,
        expansion=4,
        n_tokens=20_000,
        batch_size=256,
        x_eval=xs[1500:],
    )
    assert met["n_tokens"] == 500 and met["training"]["n_train_tokens"] == 1500
    assert met["training"]["held_out"] == "given"


def test_persona_z_against_isotropic_directions_when_one_direction_dominates():
    """Where one direction carries most of the variance (as at the organism's last prompt
    token), covariance-matched random directions are nearly all that direction and their
    spread understates any other direction's: the matched z's spread wider than chance. The
    same z's against isotropic directions stay inside +-2 in at least 90% of 20 seeds."""
    d, n = 32, 80
    scales = torch.cat([torch.tensor([10.0]), torch.ones(d - 1)]).double()
    dirs = _fixed_directions(d)
    iso = torch.eye(d, dtype=torch.float64)
    zm, zi = [], []
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        P, nb, nd = (torch.randn(n, d, generator=g, dtype=torch.float64) * scales for _ in "123")
        base, bd = P + 0.5 * nb, P + 0.5 * nd
        perm = torch.randperm(n, generator=g).tolist()
        pos, neg = perm[: n // 2], perm[n // 2 :]
        F = covariance_factor(base)
        assert effective_dims(F) < 2
        zm += [persona_z(bd, base, dirs, pos, neg, F, seed=seed)[k]["z"] for k in dirs]
        zi += [persona_z(bd, base, dirs, pos, neg, iso, seed=seed)[k]["z"] for k in dirs]
    zm, zi = np.array(zm), np.array(zi)
    assert (np.abs(zi) < 2).mean() >= 0.9 and 0.5 < zi.std() < 1.6, zi.round(2).tolist()
    assert zm.std() > 1.3 * zi.std()  # the matched null's understated spread
