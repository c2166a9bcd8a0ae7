"""Statistics of a comparison: the spread over seeds, the paired per-case difference and its bootstrap interval.

A method is run once per seed and scores every test case; for one organ (or the mean over organs) its scores form a
table ``(seeds, cases)``. CPS and the baseline of the same seed trained on the same labeled cases and are scored on the
same test cases, so their difference is taken pair by pair: ``d[s, c] = cps[s, c] - baseline[s, c]``. The estimate
is the mean of ``d`` over seeds and cases; its interval comes from a percentile bootstrap over the test cases (the
unit a new dataset would resample), each resample keeping every seed: with ``idx`` the resampled case indices,
one bootstrap value is ``d[:, idx].mean()``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

import numpy as np


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1) of ``values``; the deviation is None for a single value."""
    if not values:
        raise ValueError("no values")
    if len(values) == 1:
        return float(values[0]), None
    return float(statistics.mean(values)), float(statistics.stdev(values))


def score_table(scores: Mapping[int, Mapping[str, float]], seeds: Sequence[int], cases: Sequence[str]) -> np.ndarray:
    """``scores[seed][case]`` as an array ``(len(seeds), len(cases))``; KeyError naming a missing seed or case."""
    out = np.empty((len(seeds), len(cases)), np.float64)
    for i, s in enumerate(seeds):
        if s not in scores:
            raise KeyError(f"seed {s}: no scores")
        for j, c in enumerate(cases):
            if c not in scores[s]:
                raise KeyError(f"seed {s}: no score for case {c}")
            out[i, j] = scores[s][c]
    return out


def paired_differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` for two score tables ``(seeds, cases)`` of the same shape (a method and the baseline)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"paired tables must be non-empty (seeds, cases) arrays of one shape, got {a.shape} and "
                         f"{b.shape}")
    return a - b


def bootstrap_interval(diffs: np.ndarray, resamples: int = 10000, level: float = 0.95,
                       rng: np.random.Generator | int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` ``(seeds, cases)``, resampling cases.

    The case indices of all resamples are drawn at once, ``rng.integers(0, cases, size=(resamples, cases))``; the
    bounds are numpy's (linearly interpolated) ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled
    means. With a single case the interval is that case's mean difference on both ends.
    """
    diffs = np.asarray(diffs, np.float64)
    if diffs.ndim != 2 or diffs.size == 0:
        raise ValueError(f"diffs must be a non-empty (seeds, cases) array, got shape {diffs.shape}")
    rng = np.random.default_rng(rng)
    n_cases = diffs.shape[1]
    idx = rng.integers(0, n_cases, size=(resamples, n_cases))
    means = diffs[:, idx].mean(axis=(0, 2))  # (seeds, resamples, cases) -> (resamples,)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_summary(method: np.ndarray, baseline: np.ndarray, resamples: int = 10000, level: float = 0.95,
                   rng: np.random.Generator | int = 0) -> dict:
    """The paired comparison of two score tables ``(seeds, cases)``: ``{"mean", "ci": [lo, hi], "level",
    "per_seed": [mean difference of each seed], "pairs": seeds x cases, "wins": pairs with a positive difference}``."""
    d = paired_differences(method, baseline)
    lo, hi = bootstrap_interval(d, resamples, level, rng)
    return {"mean": float(d.mean()), "ci": [lo, hi], "level": level, "per_seed": [float(v) for v in d.mean(axis=1)],
            "pairs": int(d.size), "wins": int((d > 0).sum())}
