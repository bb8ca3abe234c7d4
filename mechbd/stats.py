"""Intervals and nulls for reported numbers: pure functions on arrays, float64 inside.

* **Wilson score interval** for a rate ``k / n`` (Wilson 1927; the interval Brown, Cai and
  DasGupta 2001 recommend for small ``n``): :func:`wilson`, :func:`rate`.
* **Balanced misaligned rate** for two-option multiple choice: the mean of the misaligned rate
  over rows whose misaligned option is ``A`` and over rows whose misaligned option is ``B``, so a
  model (or a steering direction) that answers one letter to everything scores exactly 0.5
  whatever the rows' letter mix, and a change in letter preference alone moves it by 0:
  :func:`balanced_rate`. :func:`letter_bias` is the larger share of ``A`` or ``B`` among
  readable answers, reported beside it. :func:`rate_fields` writes a rate as results.json
  keeps it: ``x``, ``x_n`` and ``x_ci95``; :func:`share_fields` the same over prompts that
  each carry a share of several sampled replies (n = prompts, a conservative Wilson interval).
* **Paired bootstrap** over scenarios (Efron and Tibshirani 1993, percentile interval) for the
  difference between two conditions measured on the same scenarios: :func:`paired_bootstrap`.
  Seeded: the same inputs and seed give the same interval.
* **Control distributions**: a value's mid-rank percentile among controls (random directions
  or latents maximised exactly as the real one was), their median and 95th percentile, and the
  empirical p-value ``(1 + #{controls >= value}) / (1 + n)`` (North, Curtis and Sham 2002;
  Phipson and Smyth 2010, which never reports 0): :func:`control_summary`.

AUROC and its bootstrap interval live with the probes (``mechbd.probes.core.auroc``,
``auroc_interval``), batched over layers in torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mechbd.errors import MechbdError

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal
N_BOOT = 10_000


@dataclass(frozen=True)
class Rate:
    """A rate with its sample size and Wilson 95% interval."""

    value: float | None
    n: int
    ci95: tuple[float, float] | None

    def as_dict(self) -> dict[str, Any]:
        lo_hi = None if self.ci95 is None else [self.ci95[0], self.ci95[1]]
        return {"value": self.value, "n": self.n, "ci95": lo_hi}


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials."""
    if n <= 0:
        raise MechbdError("a Wilson interval needs n >= 1")
    if not 0 <= k <= n:
        raise MechbdError(f"a Wilson interval needs 0 <= k <= n, got k={k}, n={n}")
    return _wilson_at(k / n, n, z)


def _wilson_at(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a share ``p`` observed over ``n`` trials (``n`` may be an
    effective, fractional sample size)."""
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # the bounds bracket p exactly (at p = 0 or 1 rounding could leave them 1e-17 inside it)
    return max(0.0, min(p, float(centre - half))), min(1.0, max(p, float(centre + half)))


def rate(flags: Sequence[bool] | np.ndarray) -> Rate:
    """The share of true ``flags`` with ``n`` and its Wilson interval (``None`` when empty)."""
    a = np.asarray(flags, dtype=bool)
    n = int(a.size)
    if n == 0:
        return Rate(None, 0, None)
    k = int(a.sum())
    return Rate(k / n, n, wilson(k, n))


def letter_bias(letters: Sequence[str | None]) -> float | None:
    """The larger share of ``A`` or ``B`` among readable answers (``None`` when none is)."""
    read = [x for x in letters if x in ("A", "B")]
    if not read:
        return None
    a = sum(x == "A" for x in read) / len(read)
    return max(a, 1 - a)


def effective_n(n_a: int, n_b: int) -> float:
    """The sample size a balanced rate over ``n_a`` and ``n_b`` rows is worth: the mean of two
    letters' rates at a common p has variance p (1 - p) (1 / n_a + 1 / n_b) / 4 = p (1 - p) /
    n_eff, so n_eff = 4 n_a n_b / (n_a + n_b); n_a + n_b when they are equal, less otherwise."""
    return 4.0 * n_a * n_b / (n_a + n_b)


def balanced_rate(
    misaligned: Sequence[bool] | np.ndarray,
    misaligned_letter: Sequence[str],
) -> dict[str, Any]:
    """Balanced misaligned rate of rows ``misaligned [n]`` (did the reply pick the misaligned
    option) whose misaligned option is ``misaligned_letter [n]`` (``"A"`` or ``"B"``).

    Returns ``balanced_misaligned_rate`` (the mean of the two per-letter rates), ``ci95``,
    ``n``, ``n_misaligned_A``, ``n_misaligned_B``, ``rate_misaligned_A``,
    ``rate_misaligned_B``. With exactly balanced letters the balanced rate is the pooled rate
    and ``ci95`` is its Wilson interval; otherwise ``ci95`` is Wilson's interval at the balanced
    rate over :func:`effective_n` rows. (Until 2026-12-02 it was a percentile bootstrap over
    each letter's rows, whose width is 0 when every row agrees: a domain at 0 of 13 rows read
    [0.00, 0.00].)"""
    m = np.asarray(misaligned, dtype=bool)
    letters = np.asarray(misaligned_letter)
    if m.shape != letters.shape:
        raise MechbdError(f"balanced_rate: {m.size} outcomes but {letters.size} letters")
    bad = set(letters.tolist()) - {"A", "B"}
    if bad:
        raise MechbdError(f"balanced_rate: misaligned letters must be A or B, got {sorted(bad)}")
    is_a = letters == "A"
    n_a, n_b = int(is_a.sum()), int((~is_a).sum())
    if n_a == 0 or n_b == 0:
        raise MechbdError(
            f"balanced_rate needs rows with the misaligned option at A and at B; got "
            f"{n_a} at A and {n_b} at B"
        )
    r_a, r_b = float(m[is_a].mean()), float(m[~is_a].mean())
    value = (r_a + r_b) / 2
    ci = wilson(int(m.sum()), m.size) if n_a == n_b else _wilson_at(value, effective_n(n_a, n_b))
    return {
        "balanced_misaligned_rate": value,
        "ci95": [ci[0], ci[1]],
        "n": int(m.size),
        "n_misaligned_A": n_a,
        "n_misaligned_B": n_b,
        "rate_misaligned_A": r_a,
        "rate_misaligned_B": r_b,
    }


def rate_fields(
    key: str,
    flags: Sequence[bool] | np.ndarray,
    misaligned_letter: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A rate as results.json keeps it: ``{key: value, key_n: n, key_ci95: [lo, hi]}`` over
    ``flags [n]`` (``None``, 0 and ``None`` when ``n`` is 0).

    With ``misaligned_letter [n]`` (each row's misaligned option) the value is the
    :func:`balanced_rate`. Its interval is Wilson's at that value over the ``n`` rows when the
    two letters' row counts differ by at most one (as the data builders make them; exactly
    :func:`balanced_rate`'s Wilson interval when they are equal, and, unlike a bootstrap, not
    of width 0 at a rate of 0 or 1), and Wilson's over :func:`effective_n` rows when they differ
    more. Where every row has the misaligned option at one letter no balanced rate
    exists, and the pooled rate with its Wilson interval is given, as without letters."""
    f = np.asarray(flags, dtype=bool)
    if misaligned_letter is not None:
        letters = list(misaligned_letter)
        if len(letters) != f.size:
            raise MechbdError(f"rate_fields({key}): {f.size} outcomes but {len(letters)} letters")
        if "A" in letters and "B" in letters:
            b = balanced_rate(f, letters)
            value, ci = b["balanced_misaligned_rate"], b["ci95"]
            if abs(b["n_misaligned_A"] - b["n_misaligned_B"]) == 1:
                ci = list(_wilson_at(value, b["n"]))
            return {key: value, f"{key}_n": b["n"], f"{key}_ci95": ci}
    r = rate(f)
    ci = None if r.ci95 is None else [r.ci95[0], r.ci95[1]]
    return {key: r.value, f"{key}_n": r.n, f"{key}_ci95": ci}


def share_fields(
    key: str,
    shares: Sequence[float] | np.ndarray,
    misaligned_letter: Sequence[str] | None = None,
) -> dict[str, Any]:
    """:func:`rate_fields` over units that each carry a share in [0, 1]: prompts with several
    sampled replies, each prompt scored by the share of its replies with the property.

    ``key_n`` is the number of units (prompts, not replies: replies to one prompt are not
    independent). The value is the mean share (the pooled share of all replies when every
    prompt has as many; balanced over the letters with ``misaligned_letter [n]``, as
    :func:`balanced_rate`). ``key_ci95`` is Wilson's interval at that value over the ``n``
    units: conservative, since a share in [0, 1] with mean p has variance at most p (1 - p),
    the binomial variance Wilson's interval assumes. Where the letters' unit counts differ by
    more than one it is Wilson's at that value over :func:`effective_n` units. When
    every share is 0 or 1 (one reply per prompt) the result is exactly :func:`rate_fields`."""
    s = np.asarray(shares, dtype=np.float64)
    if s.ndim != 1 or ((s < 0) | (s > 1)).any():
        raise MechbdError(f"share_fields({key}): shares must be a 1-d array in [0, 1]")
    if ((s == 0) | (s == 1)).all():
        return rate_fields(key, s == 1, misaligned_letter)
    n = int(s.size)
    letters = None if misaligned_letter is None else np.asarray(list(misaligned_letter))
    if letters is not None and letters.size != n:
        raise MechbdError(f"share_fields({key}): {n} shares but {letters.size} letters")
    if letters is not None and {"A", "B"} <= set(letters.tolist()):
        bad = set(letters.tolist()) - {"A", "B"}
        if bad:
            raise MechbdError(f"share_fields({key}): letters must be A or B, got {sorted(bad)}")
        a, b = s[letters == "A"], s[letters == "B"]
        value = float((a.mean() + b.mean()) / 2)
        if abs(a.size - b.size) > 1:
            ci = _wilson_at(value, effective_n(int(a.size), int(b.size)))
            return {key: value, f"{key}_n": n, f"{key}_ci95": list(ci)}
    else:
        value = float(s.mean())
    return {key: value, f"{key}_n": n, f"{key}_ci95": list(_wilson_at(value, n))}


def paired_bootstrap(
    before: Sequence[float] | np.ndarray,
    after: Sequence[float] | np.ndarray,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean of ``after - before`` over paired scenarios ``[n]`` and its 95% percentile
    bootstrap interval (scenarios resampled with replacement, ``n_boot`` times, seeded)."""
    a = np.asarray(before, dtype=np.float64)
    b = np.asarray(after, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise MechbdError(
            f"paired_bootstrap needs two 1-d arrays of one length, got {a.shape} and {b.shape}"
        )
    if a.size == 0:
        raise MechbdError("paired_bootstrap needs at least one scenario")
    d = b - a
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))
    lo, hi = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
    return {
        "diff": float(d.mean()),
        "ci95": [float(lo), float(hi)],
        "n": int(d.size),
        "n_boot": n_boot,
        "seed": seed,
    }


def control_summary(value: float, controls: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """Where ``value`` falls among ``controls [n]``: ``n``, ``median``, ``p95``, the mid-rank
    ``percentile`` (0-100; ties count half) and the empirical one-sided ``p_value``."""
    c = np.asarray(controls, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise MechbdError("control_summary needs at least one control value")
    below = float((c < value).sum())
    ties = float((c == value).sum())
    return {
        "n": int(c.size),
        "median": float(np.median(c)),
        "p95": float(np.percentile(c, 95)),
        "percentile": 100.0 * (below + 0.5 * ties) / c.size,
        "p_value": (1.0 + float((c >= value).sum())) / (1.0 + c.size),
    }


def drop_controls(value: float, drops: Sequence[float]) -> dict[str, Any]:
    """Where an ablation's drop ``value`` falls among the ``drops`` of random directions
    ablated the same way: ``n``, ``drop_median``, ``drop_p95``, ``percentile``, ``p_value``
    (:func:`control_summary`) and the ``drops`` themselves."""
    cs = control_summary(value, drops)
    return {
        "n": cs["n"],
        "drop_median": cs["median"],
        "drop_p95": cs["p95"],
        "percentile": cs["percentile"],
        "p_value": cs["p_value"],
        "drops": list(drops),
    }


def normal_sf(z: float) -> float:
    """One-sided p-value of a z-score, P(Z >= z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input's order: the i-th smallest p becomes
    max over j <= i of min(1, (m - j + 1) p_(j)). A test is significant at family-wise level
    alpha when its adjusted p is <= alpha, whatever the dependence between the tests."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out
