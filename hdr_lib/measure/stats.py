"""Statistics for several runs, from scipy.stats: the mean with its exact Student-t 95 % interval, and Welch's
t-test for two groups. Reading side only (the book, the scorecard): the training side never imports scipy."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _scipy


def summarize(values) -> dict:
    """n, mean, sample std and the 95 % confidence interval of the mean (None where n < 2)."""
    values = np.asarray([float(v) for v in values], dtype=float)
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95_low": None, "ci95_high": None, "min": None, "max": None}
    mean = float(values.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "std": None, "ci95_low": None, "ci95_high": None, "min": mean, "max": mean}
    std = float(values.std(ddof=1))
    if std == 0:
        low = high = mean
    else:
        low, high = _scipy.t.interval(0.95, n - 1, loc=mean, scale=std / math.sqrt(n))
    return {"n": n, "mean": mean, "std": std, "ci95_low": float(low), "ci95_high": float(high),
            "min": float(values.min()), "max": float(values.max())}


def welch(a, b) -> dict:
    """Welch's t-test of mean(b) - mean(a) (scipy.stats.ttest_ind, equal_var=False): the difference, its 95 %
    interval, t and degrees of freedom. `significant` is True when the interval excludes zero. With fewer than two
    values in a group the test cannot be made and every statistic is None."""
    a, b = np.asarray([float(v) for v in a]), np.asarray([float(v) for v in b])
    if len(a) < 2 or len(b) < 2:
        return {"difference": None, "ci95_low": None, "ci95_high": None, "t": None, "df": None,
                "significant": None, "reason": "needs at least two runs per group"}
    diff = float(b.mean() - a.mean())
    if a.std(ddof=1) == 0 and b.std(ddof=1) == 0:
        return {"difference": diff, "ci95_low": diff, "ci95_high": diff, "t": None, "df": None,
                "significant": diff != 0, "reason": "no spread in either group"}
    result = _scipy.ttest_ind(b, a, equal_var=False)
    low, high = result.confidence_interval(0.95)
    return {"difference": diff, "ci95_low": float(low), "ci95_high": float(high), "t": float(result.statistic),
            "df": float(result.df), "significant": not (low <= 0 <= high), "reason": None}
