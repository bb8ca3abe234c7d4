"""mechbd.stats against independent references: statsmodels' Wilson interval, scipy's
bootstrap, and float64 recomputations written out longhand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.proportion import proportion_confint

from mechbd.errors import MechbdError
from mechbd.stats import (
    balanced_rate,
    control_summary,
    effective_n,
    letter_bias,
    paired_bootstrap,
    rate,
    rate_fields,
    wilson,
)


@pytest.mark.parametrize("k,n", [(0, 1), (0, 10), (3, 10), (57, 100), (100, 100), (1, 997)])
def test_wilson_matches_statsmodels(k, n):
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert wilson(k, n) == pytest.approx((lo, hi), abs=1e-9)


def test_rate_carries_n_and_interval():
    r = rate([True, False, False, True, True])
    assert (r.value, r.n) == (0.6, 5)
    assert r.ci95 == pytest.approx(proportion_confint(3, 5, method="wilson"), abs=1e-9)
    assert rate([]).as_dict() == {"value": None, "n": 0, "ci95": None}
    with pytest.raises(MechbdError, match="k <= n"):
        wilson(6, 5)


def _letters(n_a: int, n_b: int) -> list[str]:
    return ["A"] * n_a + ["B"] * n_b


def test_always_a_scores_a_balanced_rate_of_one_half_and_a_letter_bias_of_one():
    # 57 rows misaligned at A, 43 at B (the steering stage's old eval set): a policy that always
    # answers "A" picks the misaligned option exactly on the 57 A rows.
    letters = _letters(57, 43)
    always_a = [m == "A" for m in letters]
    always_b = [m == "B" for m in letters]
    assert np.mean(always_a) == pytest.approx(0.57)  # what the unbalanced rate said
    ra, rb = balanced_rate(always_a, letters), balanced_rate(always_b, letters)
    assert ra["balanced_misaligned_rate"] == 0.5 and rb["balanced_misaligned_rate"] == 0.5
    # moving from "always B" to "always A" is a letter preference, not a change of mind
    assert ra["balanced_misaligned_rate"] - rb["balanced_misaligned_rate"] == 0.0
    assert letter_bias(["A"] * 100) == 1.0 and letter_bias(["A", "B", None]) == 0.5
    assert letter_bias([None, "x"]) is None


def test_always_misaligned_scores_one_and_always_aligned_zero():
    letters = _letters(57, 43)
    assert balanced_rate([True] * 100, letters)["balanced_misaligned_rate"] == 1.0
    assert balanced_rate([False] * 100, letters)["balanced_misaligned_rate"] == 0.0


def test_balanced_rows_use_the_pooled_wilson_interval_and_unbalanced_the_effective_n():
    rng = np.random.default_rng(1)
    letters = _letters(50, 50)
    m = rng.random(100) < 0.3
    r = balanced_rate(m, letters)
    assert r["balanced_misaligned_rate"] == pytest.approx(m.mean())
    assert r["ci95"] == pytest.approx(proportion_confint(int(m.sum()), 100, method="wilson"))
    # unbalanced: Wilson's interval at the balanced rate over the effective n (statsmodels'
    # Wilson at a fractional count is the reference), bracketing the estimate
    letters = _letters(70, 30)
    r1 = balanced_rate(m, letters)
    want = (m[:70].mean() + m[70:].mean()) / 2
    assert r1["balanced_misaligned_rate"] == pytest.approx(want)
    n_eff = 4 * 70 * 30 / 100
    assert effective_n(70, 30) == pytest.approx(n_eff) and effective_n(50, 50) == 100
    assert r1["ci95"] == pytest.approx(
        proportion_confint(want * n_eff, n_eff, method="wilson"), abs=1e-9
    )


def test_unbalanced_interval_is_not_empty_at_zero_and_covers():
    """All rows aligned with the letters 10 : 3 (a domain of the organism's held-out set): the
    old per-letter bootstrap said [0, 0]; the interval now has width, and over many draws at
    p = 0.05 and at p = 0.5 with letters 30 : 10 it covers the truth about 95% of the time."""
    r = balanced_rate([False] * 13, _letters(10, 3))
    assert r["ci95"][0] == 0.0 and r["ci95"][1] > 0.1
    rng = np.random.default_rng(5)
    for p in (0.05, 0.5):
        hits = 0
        for _ in range(2000):
            m = rng.random(40) < p
            lo, hi = balanced_rate(m, _letters(30, 10))["ci95"]
            hits += lo <= p <= hi
        assert 0.93 <= hits / 2000 <= 0.995, (p, hits)


def test_balanced_rate_refuses_one_letter_and_bad_letters():
    with pytest.raises(MechbdError, match="0 at B"):
        balanced_rate([True, False], ["A", "A"])
    with pytest.raises(MechbdError, match="must be A or B"):
        balanced_rate([True, False], ["A", "C"])


def test_rate_fields_name_the_value_n_and_wilson_interval():
    rng = np.random.default_rng(2)
    m = rng.random(40) < 0.4
    k = int(m.sum())
    lo, hi = proportion_confint(k, 40, method="wilson")
    pooled = rate_fields("asr", m)
    assert set(pooled) == {"asr", "asr_n", "asr_ci95"}
    assert pooled["asr"] == k / 40 and pooled["asr_n"] == 40
    assert pooled["asr_ci95"] == pytest.approx([lo, hi], abs=1e-9)
    # exactly balanced letters: the balanced rate is the pooled rate, the interval Wilson's
    bal = rate_fields("asr", m, _letters(20, 20))
    assert bal["asr"] == pytest.approx(k / 40, abs=1e-12) and bal["asr_n"] == 40
    assert bal["asr_ci95"] == pytest.approx([lo, hi], abs=1e-9)
    # answering A to everything: 0.5 however the rows lean; one letter only: the pooled rate
    letters = _letters(23, 17)
    assert rate_fields("x", [lt == "A" for lt in letters], letters)["x"] == 0.5
    # one row over at one letter (an odd set as built): Wilson's at the balanced rate over n
    odd = rate_fields("x", m[:39], _letters(20, 19))
    want = (m[:20].mean() + m[20:39].mean()) / 2
    assert odd["x"] == pytest.approx(want, abs=1e-12) and odd["x_n"] == 39
    assert odd["x_ci95"] == pytest.approx(
        proportion_confint(want * 39, 39, method="wilson"), abs=1e-9
    )
    # further off: balanced_rate's interval over the effective n
    far = rate_fields("x", m, _letters(30, 10))
    assert far["x_ci95"] == balanced_rate(m, _letters(30, 10))["ci95"]
    assert rate_fields("x", [True, False, True], ["A", "A", "A"])["x"] == pytest.approx(2 / 3)
    assert rate_fields("x", []) == {"x": None, "x_n": 0, "x_ci95": None}
    with pytest.raises(MechbdError, match="2 outcomes but 1 letters"):
        rate_fields("x", [True, False], ["A"])


def _percentile_longhand(values: list[float], q: float) -> float:
    """numpy's default ('linear') percentile, written out."""
    v = sorted(values)
    pos = (len(v) - 1) * q / 100
    lo = int(np.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def test_paired_bootstrap_matches_a_longhand_recomputation_and_its_seed():
    rng = np.random.default_rng(0)
    a = (rng.random(40) < 0.2).astype(float)
    b = (rng.random(40) < 0.6).astype(float)
    out = paired_bootstrap(a, b, n_boot=500, seed=7)
    # the same draws, recomputed scenario by scenario in Python floats
    idx = np.random.default_rng(7).integers(0, 40, size=(500, 40))
    means = [sum(float(b[i]) - float(a[i]) for i in row) / 40 for row in idx]
    assert out["diff"] == pytest.approx(float((b - a).mean()), abs=1e-12)
    assert out["ci95"][0] == pytest.approx(_percentile_longhand(means, 2.5), abs=1e-6)
    assert out["ci95"][1] == pytest.approx(_percentile_longhand(means, 97.5), abs=1e-6)
    assert out == paired_bootstrap(a, b, n_boot=500, seed=7)
    assert out != paired_bootstrap(a, b, n_boot=500, seed=8)


def test_paired_bootstrap_agrees_with_scipy():
    rng = np.random.default_rng(2)
    a = rng.normal(size=200)
    b = a + 0.3 + rng.normal(scale=0.5, size=200)
    ours = paired_bootstrap(a, b, n_boot=20_000, seed=0)["ci95"]
    ref = sps.bootstrap(
        (b - a,), np.mean, n_resamples=20_000, method="percentile", rng=np.random.default_rng(1)
    ).confidence_interval
    # different draws: the two Monte Carlo intervals agree to their sampling error
    assert ours == pytest.approx([ref.low, ref.high], abs=0.01)


def test_paired_bootstrap_refuses_unpaired_input():
    with pytest.raises(MechbdError, match="one length"):
        paired_bootstrap([1.0, 0.0], [1.0])


def test_control_summary_percentile_and_p_value():
    controls = np.arange(20, dtype=float) / 100  # 0.00 .. 0.19
    s = control_summary(0.5, controls)
    assert s["n"] == 20 and s["percentile"] == 100.0
    assert s["p_value"] == pytest.approx(1 / 21)  # never 0
    assert s["median"] == pytest.approx(np.median(controls))
    assert s["p95"] == pytest.approx(_percentile_longhand(list(controls), 95))
    mid = control_summary(0.10, controls)  # ties count half: 10 below, 1 tie
    assert mid["percentile"] == pytest.approx(100 * 10.5 / 20)
    assert mid["p_value"] == pytest.approx((1 + 10) / 21)
    assert control_summary(-1.0, controls)["p_value"] == 1.0
