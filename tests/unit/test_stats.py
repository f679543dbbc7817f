"""sa2va_queue.report.stats: bootstrap intervals, describe, percentiles, paired tests."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sa2va_queue.report.stats import bootstrap_ci, describe, paired_comparison, percentiles


def test_bootstrap_ci_contains_mean_and_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    small = rng.normal(0.7, 0.1, 20)
    large = rng.normal(0.7, 0.1, 2000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s
    assert lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 4  # width shrinks like 1/sqrt(n): 10x here
    assert lo_l < 0.7 < hi_l


def test_bootstrap_ci_is_reproducible_and_level_matters() -> None:
    x = np.random.default_rng(1).random(50)
    assert bootstrap_ci(x, seed=5) == bootstrap_ci(x, seed=5)
    lo90, hi90 = bootstrap_ci(x, level=0.90)
    lo99, hi99 = bootstrap_ci(x, level=0.99)
    assert lo99 < lo90 < hi90 < hi99
    with pytest.raises(ValueError):
        bootstrap_ci(x, level=1.5)


def test_cached_resample_indices_give_the_intervals_of_a_fresh_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    """A report's metrics share n and seed, so their resample indices are drawn once: each metric's
    interval must equal the one computed from its own fresh draw, also across chunks."""
    from sa2va_queue.report import stats

    monkeypatch.setattr(stats, "_MAX_CELLS", 3000)  # chunks of 3 resamples of 1000 values
    rng = np.random.default_rng(2)
    metrics = [rng.random(1000) for _ in range(3)]

    def fresh(x: np.ndarray) -> tuple[float, float]:
        r = np.random.default_rng(0)
        means = np.concatenate([x[r.integers(0, 1000, size=(min(2000, s + 3) - s, 1000))].mean(axis=1)
                                for s in range(0, 2000, 3)])
        lo, hi = np.quantile(means, [0.025, 0.975])
        return float(lo), float(hi)

    stats._index_cache.clear()
    got = [bootstrap_ci(x) for x in metrics]
    assert len(stats._index_cache) == 1  # drawn once for the three
    assert got == [fresh(x) for x in metrics]


def test_bootstrap_ci_other_statistic_and_chunking() -> None:
    x = np.arange(101, dtype=float)
    lo, hi = bootstrap_ci(x, statistic=np.median, n_resamples=300)
    assert lo < 50 < hi
    lo2, hi2 = bootstrap_ci(x, statistic=lambda s: float(np.max(s) - np.min(s)), n_resamples=50)  # no axis=
    assert 0 < lo2 <= hi2 <= 100


def test_bootstrap_ci_nan_handling() -> None:
    x = [0.5, float("nan"), 0.7, None, 0.6]
    lo, hi = bootstrap_ci(x)
    assert 0.5 <= lo <= 0.6 <= hi <= 0.7
    assert all(math.isnan(v) for v in bootstrap_ci([0.3, float("nan")]))
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_describe_counts_undefined_and_uses_ddof1() -> None:
    d = describe([1.0, None, 2.0, float("nan"), 3.0, 6.0])
    assert d["n"] == 4 and d["n_undefined"] == 2
    assert d["mean"] == pytest.approx(3.0)
    assert d["std"] == pytest.approx(np.std([1, 2, 3, 6], ddof=1))
    assert d["median"] == pytest.approx(2.5)
    assert d["ci_low"] <= d["mean"] <= d["ci_high"]
    empty = describe([None, None])
    assert empty["n"] == 0 and empty["n_undefined"] == 2 and math.isnan(empty["mean"])
    one = describe([0.4])
    assert one["mean"] == 0.4 and math.isnan(one["std"]) and math.isnan(one["ci_low"])


def test_percentiles() -> None:
    p = percentiles(list(range(1, 101)) + [None])
    assert p["n"] == 100
    assert p["p50"] == pytest.approx(50.5)
    assert p["p95"] == pytest.approx(np.percentile(np.arange(1, 101), 95))
    assert p["p99"] == pytest.approx(99.01)
    assert set(percentiles([1.0], (10, 90))) == {"n", "p10", "p90"}
    assert math.isnan(percentiles([])["p95"])


def test_paired_consistent_shift_is_significant() -> None:
    rng = np.random.default_rng(2)
    b = rng.random(30)
    a = b + 0.05 + rng.normal(0, 0.01, 30)
    r = paired_comparison(a, b)
    assert r["n"] == 30
    assert r["mean_diff"] == pytest.approx(float(np.mean(a - b)))
    assert r["ci_low"] < r["mean_diff"] < r["ci_high"]
    assert r["ci_low"] > 0
    assert r["p_value"] < 1e-4


def test_paired_identical_arrays_give_p_one_with_a_note() -> None:
    x = np.linspace(0.1, 0.9, 12)
    r = paired_comparison(x, x.copy())
    assert r["p_value"] == 1.0 and r["mean_diff"] == 0.0
    assert "zero" in r["note"]


def test_paired_noise_is_not_significant() -> None:
    rng = np.random.default_rng(4)
    b = rng.random(40)
    r = paired_comparison(b + rng.normal(0, 0.05, 40), b)
    assert r["p_value"] > 0.01
    assert r["ci_low"] < 0 < r["ci_high"]


def test_paired_drops_pairs_with_an_undefined_side() -> None:
    r = paired_comparison([0.9, None, 0.8, float("nan"), 0.7], [0.5, 0.4, float("nan"), 0.3, 0.6])
    assert r["n"] == 2 and r["n_excluded"] == 3
    assert r["mean_diff"] == pytest.approx(((0.9 - 0.5) + (0.7 - 0.6)) / 2)
    small = paired_comparison([0.9], [0.5])
    assert small["p_value"] is None and small["n"] == 1
    with pytest.raises(ValueError, match="length"):
        paired_comparison([1.0, 2.0], [1.0])
