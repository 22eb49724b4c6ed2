"""Small statistics for several runs: mean with a Student-t 95 % interval, Welch's test for two groups, and a
percentile (of NVML's utilisation samples)."""

from __future__ import annotations

import math
import statistics

# Two-sided 97.5 % quantiles of Student's t for 1..30 degrees of freedom (beyond 30, the normal 1.96 is close).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def t975(df: float) -> float:
    if df < 1:
        return math.nan
    if df >= 30:
        return 1.96 + 2.4 / df  # within 0.01 of the exact quantile for df >= 30
    lo = int(math.floor(df))
    hi = min(lo + 1, 30)
    frac = df - lo
    return _T975[lo - 1] * (1 - frac) + _T975[hi - 1] * frac


def summarize(values) -> dict:
    """n, mean, sample std and the 95 % confidence interval of the mean (None where n < 2)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95_low": None, "ci95_high": None, "min": None, "max": None}
    mean = statistics.fmean(values)
    if n < 2:
        return {"n": 1, "mean": mean, "std": None, "ci95_low": None, "ci95_high": None, "min": mean, "max": mean}
    std = statistics.stdev(values)
    half = t975(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half,
            "min": min(values), "max": max(values)}


def welch(a, b) -> dict:
    """Welch's t-test of mean(b) - mean(a): the difference, its 95 % interval, t and degrees of freedom.

    `significant` is True when the interval excludes zero. With fewer than two values in a group the test
    cannot be made and every statistic is None.
    """
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) < 2 or len(b) < 2:
        return {"difference": None, "ci95_low": None, "ci95_high": None, "t": None, "df": None,
                "significant": None, "reason": "needs at least two runs per group"}
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(b) - statistics.fmean(a)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"difference": diff, "ci95_low": diff, "ci95_high": diff, "t": None, "df": None,
                "significant": diff != 0, "reason": "no spread in either group"}
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t975(df) * se
    return {"difference": diff, "ci95_low": diff - half, "ci95_high": diff + half, "t": diff / se, "df": df,
            "significant": not (diff - half <= 0 <= diff + half), "reason": None}


def percentile(values: list, q: float) -> float:
    """The q-th percentile (0..100) of `values`, linear between the two nearest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
