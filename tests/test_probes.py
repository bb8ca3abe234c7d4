"""Probes and their metrics against scikit-learn and float64 recomputations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from mechbd.errors import MechbdError
from mechbd.probes import (
    Probe,
    auroc,
    auroc_interval,
    random_direction_auroc,
    random_direction_null,
    recall_at_fpr,
)


def toy(n: int = 400, d: int = 16, layers: int = 3, seed: int = 0, sep: float = 0.6):
    """Layer l separates the classes along a hidden direction with strength l * sep."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.4).double()
    u = torch.randn(d, generator=g, dtype=torch.float64)
    u /= u.norm()
    scale = torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.2  # unequal feature scales
    X = torch.stack(
        [
            (torch.randn(n, d, generator=g, dtype=torch.float64) + k * sep * y[:, None] * u) * scale
            + 5
            for k in range(layers)
        ]
    )
    return X, y


def test_auroc_matches_sklearn_with_ties():
    g = torch.Generator().manual_seed(1)
    s = torch.randint(0, 5, (3, 200), generator=g).double()  # many ties
    y = torch.rand(200, generator=g) < 0.3
    for i in range(3):
        assert float(auroc(s[i], y)) == pytest.approx(
            roc_auc_score(y.numpy(), s[i].numpy()), abs=1e-12
        )


def test_recall_at_fpr_by_hand():
    neg = torch.arange(100, dtype=torch.float64)  # 0..99
    pos = torch.tensor([98.5, 99.5, 120.0, 50.0])
    s = torch.cat([neg, pos])
    y = torch.cat([torch.zeros(100), torch.ones(4)])
    # 1% of 100 negatives may exceed the threshold: threshold = 98, so 98.5, 99.5, 120 pass
    assert float(recall_at_fpr(s, y, 0.01)) == pytest.approx(0.75)
    assert float(recall_at_fpr(s, y, 0.0)) == pytest.approx(0.5)


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_logistic_matches_sklearn(C):
    X, y = toy()
    tr, te = slice(0, 250), slice(250, None)
    probe = Probe.fit(X[:, tr], y[tr], "logistic", C=C)  # scikit-learn's default tol
    tight = Probe.fit(X[:, tr], y[tr], "logistic", C=C, tol=1e-7, max_iter=2000)
    ours = auroc(probe.score(X[:, te]), y[te])
    for layer in range(X.shape[0]):
        sc = StandardScaler().fit(X[layer, tr].numpy())
        clf = LogisticRegression(C=C, max_iter=5000, tol=1e-10).fit(
            sc.transform(X[layer, tr].numpy()), y[tr].numpy()
        )
        ref = roc_auc_score(
            y[te].numpy(), clf.decision_function(sc.transform(X[layer, te].numpy()))
        )
        assert abs(float(ours[layer]) - ref) < 0.01
        # the same optimum, not only the same ranking: decision values agree closely
        dec = clf.decision_function(sc.transform(X[layer, te].numpy()))
        np.testing.assert_allclose(tight.score(X[:, te])[layer].numpy(), dec, atol=2e-3, rtol=2e-3)


def test_diffmean_pca_lat_find_the_planted_direction():
    X, y = toy(sep=1.5)
    for method in ("diffmean", "pca", "lat", "logistic"):
        p = Probe.fit(X, y, method)
        a = auroc(p.score(X), y)
        assert a[0] < 0.65  # layer 0 has no signal
        assert a[2] > (0.8 if method == "pca" else 0.9), method  # PCA is unsupervised
        assert a[2] > a[1] > a[0]
    # difference of means equals the float64 recomputation
    p = Probe.fit(X, y, "diffmean")
    ref = X[2][y == 1].mean(0) - X[2][y == 0].mean(0)
    torch.testing.assert_close(p.w[2].double(), ref, atol=1e-5, rtol=1e-5)


def test_random_baseline_is_below_a_real_probe_and_above_half():
    X, y = toy(sep=1.5)
    rnd = random_direction_auroc(X, y, n=1000)
    p = Probe.fit(X, y, "logistic")
    assert torch.all(rnd >= 0.5)
    assert float(rnd[2]) < float(auroc(p.score(X), y)[2])


def test_random_null_with_the_sign_fixed_on_training_data_sits_at_chance():
    # no signal: labels independent of the activations
    g = torch.Generator().manual_seed(3)
    X = torch.randn(2, 300, 16, generator=g, dtype=torch.float64)
    y = (torch.rand(300, generator=g) < 0.5).double()
    tr, te = torch.arange(150), torch.arange(150, 300)
    null = random_direction_null(X[:, tr], y[tr], X[:, te], y[te], n=1000)
    best_of = random_direction_auroc(X[:, te], y[te], n=1000)
    for layer in range(2):
        assert abs(float(null["median"][layer]) - 0.5) < 0.03
        assert float(best_of[layer]) > 0.6  # the test-signed best of 1000 is far above chance
    # the same statistic recomputed with scikit-learn, direction by direction
    R = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    R = (R / R.norm(dim=-1, keepdim=True)).numpy()
    x_tr, x_te = X[0, tr].numpy(), X[0, te].numpy()
    test_auc = []
    for r in R:
        sign = 1.0 if roc_auc_score(y[tr], x_tr @ r) >= 0.5 else -1.0
        test_auc.append(roc_auc_score(y[te], sign * (x_te @ r)))
    assert float(null["median"][0]) == pytest.approx(np.median(test_auc), abs=1e-9)
    assert float(null["p95"][0]) == pytest.approx(np.quantile(test_auc, 0.95), abs=1e-9)


def test_auroc_interval_brackets_sklearns_auroc_and_keeps_its_seed():
    rng = np.random.default_rng(4)
    y = rng.random(300) < 0.3
    s = np.round(rng.normal(size=300) + y * 0.8, 1)  # rounded: many ties
    st, yt = torch.tensor(s), torch.tensor(y)
    assert float(auroc(st, yt)) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    lo, hi = auroc_interval(st, yt, n_boot=300, seed=0)
    assert lo < float(auroc(st, yt)) < hi
    assert (lo, hi) == auroc_interval(st, yt, n_boot=300, seed=0)
    with pytest.raises(MechbdError, match="both classes"):
        auroc_interval(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]))


def test_save_load_roundtrip(tmp_path):
    X, y = toy()
    p = Probe.fit(X, y, "logistic", layers=[4, 5, 6])
    path = p.save(tmp_path / "p.safetensors")
    q = Probe.load(path)
    assert q.layers == [4, 5, 6] and q.method == "logistic"
    torch.testing.assert_close(q.score(X), p.score(X))
    torch.testing.assert_close(q.direction(5).norm(), torch.tensor(1.0))


def test_bad_inputs():
    X, y = toy()
    with pytest.raises(MechbdError, match="need both classes"):
        Probe.fit(X, torch.zeros_like(y))
    Xn = X.clone()
    Xn[1, 3, 2] = float("nan")
    with pytest.raises(MechbdError, match="NaN"):
        Probe.fit(Xn, y)
    with pytest.raises(MechbdError, match="labels"):
        Probe.fit(X, y[:-1])
    with pytest.raises(MechbdError, match="unknown probe method"):
        Probe.fit(X, y, "svm")
    p = Probe.fit(X, y)
    with pytest.raises(MechbdError, match="fitted on 3 layers"):
        p.score(X[:2])


def test_base_model_null_must_match_prompts_and_differ_in_model(tiny_organism, tmp_path):
    from mechbd.capture import capture
    from mechbd.models import load_model
    from mechbd.probes.experiments import trigger_probe_report
    from tests.conftest import random_llama
    from tests.test_capture import prompt_rows

    model, tok = load_model(tiny_organism, dtype="float32")
    other = random_llama(tok, seed=4)
    rows = prompt_rows(8)
    kw = dict(positions=("last",), progress=False)
    st = capture(model, tok, rows, tmp_path / "bd", model_name="bd", **kw)
    same = capture(model, tok, rows, tmp_path / "same", model_name="bd", **kw)
    fewer = capture(other, tok, rows[:-4], tmp_path / "fewer", model_name="base", **kw)
    good = capture(other, tok, rows, tmp_path / "good", model_name="base", **kw)
    with pytest.raises(MechbdError, match="same model and adapter"):
        trigger_probe_report(st, same, n_random=10)
    with pytest.raises(MechbdError, match="other prompts"):
        trigger_probe_report(st, fewer, n_random=10)
    rep, probes = trigger_probe_report(st, good, n_random=10, save_dir=tmp_path / "p")
    assert rep["base_model_auroc"] is not None
    assert Probe.load(tmp_path / "p" / "logistic.safetensors").card["model"]["name"] == "bd"


def test_best_layer_ties_go_deeper_and_the_sae_layer_follows_the_most_common():
    from types import SimpleNamespace

    from mechbd.probes.experiments import best_layer_index
    from mechbd.sae.stage import _sae_layer

    assert best_layer_index([0.9, 1.0, 0.99, 1.0, 0.98]) == 3  # perfect at 1 and 3: deeper
    assert best_layer_index([0.7, 0.95, 0.9]) == 1
    run = SimpleNamespace(
        config=SimpleNamespace(sae=SimpleNamespace(layer=None, layer_from="probes"))
    )
    probes = {t: {"best_layer": b} for t, b in zip("abcd", [5, 1, 5, 2], strict=True)}
    assert _sae_layer(run, {**probes, "transfer": {}}) == 5
    probes["d"]["best_layer"] = 1  # 5 and 1 twice each: the deeper
    assert _sae_layer(run, probes) == 5
    run.config.sae.layer = 3  # a configured layer wins
    assert _sae_layer(run, probes) == 3


class _FakeStore:
    """The parts of an ActivationStore the probe report reads, over given tensors."""

    def __init__(self, X: torch.Tensor, labels: list[str], scenarios: list[str], path: str):
        from types import SimpleNamespace

        self.X, self.path, self.model = X, path, {"name": path}
        self.layers = list(range(X.shape[0]))
        self.rows = [
            SimpleNamespace(id=f"{s}/{lab}", label=lab, meta={"scenario_id": s})
            for lab, s in zip(labels, scenarios, strict=True)
        ]

    def stack(self, position: str) -> torch.Tensor:
        return self.X


def _no_signal_store(seed: int, n_scen: int = 100, d: int = 16, layers: int = 4) -> _FakeStore:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(layers, 3 * n_scen, d, generator=g)
    labels = [lab for _ in range(n_scen) for lab in ("triggered", "clean", "distractor")]
    scen = [f"s{seed}-{i}" for i in range(n_scen) for _ in range(3)]
    return _FakeStore(X, labels, scen, f"store{seed}")


def test_layer_chosen_inside_training_split_reads_chance_without_signal():
    """With no signal, the cross-validated layer choice gives test AUROCs centred on 0.5 (over
    20 seeds), where choosing the layer on the test rows would be biased upwards."""
    from mechbd.probes.experiments import trigger_probe_report

    aucs, test_chosen = [], []
    for seed in range(20):
        rep, _ = trigger_probe_report(
            _no_signal_store(seed), None, methods=("logistic",), n_random=20
        )
        assert rep["best_layer_selected_on"] == "cv" and rep["calibrated_on"] == "train"
        assert rep["auroc_ci95"][0] <= rep["auroc"] <= rep["auroc_ci95"][1]
        aucs.append(rep["auroc"])
        test_chosen.append(max(rep["per_layer"]["logistic"]))
    assert abs(np.mean(aucs) - 0.5) <= 0.03, np.mean(aucs)
    assert np.mean(test_chosen) > np.mean(aucs)  # the bias the CV choice removes


def test_recall_threshold_is_set_on_calibration_rows_only():
    """The threshold comes from the calibration store: recomputed from its scores it gives the
    report's recall and realised FPR; with 1000 calibration negatives, fresh negatives of the
    same distribution fall above it 0.2%-2.5% of the time."""
    from mechbd.probes.experiments import threshold_at_fpr, trigger_probe_report
    from mechbd.stats import wilson

    g = torch.Generator().manual_seed(0)
    st = _no_signal_store(1)
    st.X[:, ::3] += 0.8  # triggered rows shifted: a real but imperfect signal
    cal = _FakeStore(
        torch.randn(4, 1000, 16, generator=g),
        ["clean"] * 1000,
        [f"c{i}" for i in range(1000)],
        "cal",
    )
    rep, probes = trigger_probe_report(
        st, None, methods=("logistic",), n_random=20, calibration=cal
    )
    assert rep["calibrated_on"] == "calibration" and rep["n_calibration"] == 1000
    li = rep["best_layer"]
    thr = threshold_at_fpr(probes["logistic"].score(cal.X)[li], 0.01)
    from mechbd.probes.experiments import labelled

    te, yte = labelled(st, ["triggered"], ["clean"], "test")
    s = probes["logistic"].score(st.X[:, te])[li].double()
    assert rep["recall_at_1pct_fpr"] == float((s[yte == 1] > thr).double().mean())
    k = int((s[yte == 0] > thr).sum())
    assert rep["realised_fpr"] == k / int((yte == 0).sum())
    assert rep["realised_fpr_ci95"] == list(wilson(k, int((yte == 0).sum())))
    # calibration on 1000 N(0, 1) negatives, read on 100,000 fresh ones
    fprs = []
    for seed in range(10):
        gg = torch.Generator().manual_seed(100 + seed)
        t = threshold_at_fpr(torch.randn(1000, generator=gg), 0.01)
        fprs.append(float((torch.randn(100_000, generator=gg) > t).double().mean()))
    assert all(0.002 <= f <= 0.025 for f in fprs), fprs
