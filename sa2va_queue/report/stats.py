"""Summary statistics for per-frame metrics: bootstrap intervals, percentiles, paired tests.

Undefined per-frame values arrive as None or NaN; every function drops them first and says how
many it dropped, so a mean is never silently taken over a different set of frames than claimed.
Seeds are fixed: the same run gives the same report twice.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np

_MAX_CELLS = 2_000_000  # resample matrix size per chunk: bounds memory for large runs


def _as_float(values: Iterable[float | None] | np.ndarray) -> np.ndarray:
    """1-D float64 with None as NaN (positions kept: paired arrays stay aligned)."""
    if isinstance(values, np.ndarray):
        return values.astype(np.float64).ravel()
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64).ravel()


def _clean(values: Iterable[float | None] | np.ndarray) -> tuple[np.ndarray, int]:
    """(defined values, number of NaN / None dropped)."""
    arr = _as_float(values)
    keep = ~np.isnan(arr)
    return arr[keep], int(arr.size - keep.sum())


def bootstrap_ci(
    values: Iterable[float | None] | np.ndarray,
    *,
    statistic: Callable[..., Any] = np.mean,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic`; NaN dropped first; (nan, nan) below 2 values.

    `statistic` is called as statistic(sample_matrix, axis=1) when it accepts `axis` (numpy
    reductions do), else once per resample.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    x, _ = _clean(values)
    n = x.size
    if n < 2:
        return (math.nan, math.nan)
    out = np.empty(n_resamples, dtype=np.float64)
    start = 0
    for rows in _resample_indices(n, n_resamples, seed):
        stop = start + rows.shape[0]
        sample = x[rows]
        try:
            out[start:stop] = np.asarray(statistic(sample, axis=1), dtype=np.float64)
        except TypeError:
            out[start:stop] = [float(statistic(row)) for row in sample]
        start = stop
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(out, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


_INDEX_CACHE_CELLS = 8_000_000  # at most 32 MB of cached resample indices (int32)
_index_cache: dict[tuple[int, int, int], list[np.ndarray]] = {}


def _resample_indices(n: int, n_resamples: int, seed: int) -> Iterable[np.ndarray]:
    """The bootstrap's resample indices, in chunks of at most _MAX_CELLS. A report calls
    bootstrap_ci with the same n and seed for every metric: drawing them once (the last key is kept)
    gives the same intervals as drawing them per call, at about half the cost. Too many to keep:
    drawn a chunk at a time, as before."""
    key = (n, n_resamples, seed)
    cached = _index_cache.get(key)  # get: a report in another thread may clear it meanwhile
    if cached is not None:
        return cached
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_CELLS // n)
    rows = (rng.integers(0, n, size=(min(n_resamples, start + chunk) - start, n))
            for start in range(0, n_resamples, chunk))
    if n * n_resamples > _INDEX_CACHE_CELLS:
        return rows
    kept = [r.astype(np.int32) for r in rows]  # the same indices in half the memory
    _index_cache.clear()
    _index_cache[key] = kept
    return kept


def describe(values: Iterable[float | None] | np.ndarray, *, seed: int = 0) -> dict[str, float | int]:
    """n (defined values), n_undefined, mean, std (ddof=1), median, ci_low / ci_high (95% bootstrap)."""
    x, dropped = _clean(values)
    n = int(x.size)
    lo, hi = bootstrap_ci(x, seed=seed)
    return {
        "n": n,
        "n_undefined": dropped,
        "mean": float(x.mean()) if n else math.nan,
        "std": float(x.std(ddof=1)) if n >= 2 else math.nan,
        "median": float(np.median(x)) if n else math.nan,
        "ci_low": lo,
        "ci_high": hi,
    }


def percentiles(
    values: Iterable[float | None] | np.ndarray, qs: Sequence[float] = (50, 95, 99)
) -> dict[str, float | int]:
    """{'n': count, 'p50': ..., 'p95': ..., 'p99': ...} over the defined values (NaN when none)."""
    x, _ = _clean(values)
    out: dict[str, float | int] = {"n": int(x.size)}
    got = np.percentile(x, qs) if x.size else [math.nan] * len(qs)
    for q, v in zip(qs, got):
        out[f"p{int(q) if float(q).is_integer() else q}"] = float(v)
    return out


def paired_comparison(
    a: Iterable[float | None] | np.ndarray, b: Iterable[float | None] | np.ndarray, *, seed: int = 0
) -> dict[str, Any]:
    """Paired difference a - b over pairs where both are defined.

    Keys: n, n_excluded (pairs with an undefined side), mean_a, mean_b, mean_diff, ci_low, ci_high
    (95% bootstrap of the mean difference), p_value (Wilcoxon signed-rank, two-sided; None when
    n < 2), test, note (why p_value is what it is, when special).
    """
    xa, xb = _as_float(a), _as_float(b)
    if xa.shape != xb.shape:
        raise ValueError(f"paired arrays differ in length: {xa.size} vs {xb.size}")
    keep = ~(np.isnan(xa) | np.isnan(xb))
    xa, xb = xa[keep], xb[keep]
    d = xa - xb
    n = int(d.size)
    lo, hi = bootstrap_ci(d, seed=seed)
    result: dict[str, Any] = {
        "n": n,
        "n_excluded": int((~keep).sum()),
        "mean_a": float(xa.mean()) if n else math.nan,
        "mean_b": float(xb.mean()) if n else math.nan,
        "mean_diff": float(d.mean()) if n else math.nan,
        "ci_low": lo,
        "ci_high": hi,
        "p_value": None,
        "test": "wilcoxon signed-rank (two-sided)",
        "note": None,
    }
    if n < 2:
        result["note"] = f"only {n} paired value(s): no test"
    elif np.all(d == 0):
        result["p_value"] = 1.0
        result["note"] = "all paired differences are zero: the Wilcoxon test is undefined, p set to 1.0"
    else:
        from scipy import stats as sps  # here, not at the top: 0.35 s of import a report without a comparison skips

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small-sample / ties notices; the p-value is still returned
            result["p_value"] = float(sps.wilcoxon(xa, xb).pvalue)
        if np.count_nonzero(d) < 6:
            result["note"] = f"only {np.count_nonzero(d)} non-zero differences: the test has little power"
    return result
