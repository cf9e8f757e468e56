"""Intervals for win rates and scores, in plain Python (and NumPy for the bootstrap); no torch.

- :func:`t_interval`: THE Student-t interval on a mean, ``mean +- t_{(1+c)/2, n-1} * s / sqrt(n)``
  (``s``: sample standard deviation, n - 1 in its denominator), clipped to the range the scores can
  take when that range is given (win-rate scores: [0, 1]; reward-model scores: unbounded, no clip).
- :func:`mean_interval`: interval on a mean of per-prompt scores in [0, 1]: the t-interval, or the
  Wilson score interval for n prompts when the sample variance says nothing (n = 1 or all equal).
- :func:`score_summary`: a model's mean absolute score with its interval (Wilson for right/wrong
  scores, else the t-interval).
- :func:`bootstrap_interval`: percentile bootstrap over prompts, reported as a cross-check.

The t distribution is computed here (regularised incomplete beta by a continued fraction) so the
statistics need neither SciPy nor torch; tests check it against printed tables and closed forms.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple


def _continued_fraction_beta(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz evaluation)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _continued_fraction_beta(a, b, x) / a
    return 1.0 - math.exp(log_front) * _continued_fraction_beta(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t > 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile q={q} must be in (0, 1)")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < q:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < q:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def wilson_interval(p: float, n: float, confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson score interval for a proportion ``p`` observed over ``n`` trials."""
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2.0)
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Interval:
    """A confidence interval and the method that gave it."""

    low: float
    high: float
    method: str


def t_interval(values: Sequence[float], confidence: float = 0.95,
               bounds: Optional[Tuple[float, float]] = None) -> Interval:
    """Student-t interval on the mean of ``values`` (n >= 2), clipped to ``bounds`` when given.

    ``mean +- t_{(1+confidence)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation.
    ``bounds`` is the range the values can take (``(0, 1)`` for win-rate scores): the mean cannot
    leave it, so neither does the interval.
    """
    n = len(values)
    if n < 2:
        raise ValueError(f"a t-interval needs at least 2 values, got {n}")
    mean = statistics.fmean(values)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * statistics.stdev(values) / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(bounds[0], low), min(bounds[1], high)
    return Interval(low, high, "t")


def mean_interval(scores: Sequence[float], confidence: float = 0.95) -> Interval:
    """Interval on the mean of per-prompt scores in [0, 1]: Student-t, or Wilson when the variance is uninformative.

    The t-interval (:func:`t_interval`, clipped to [0, 1]); with n = 1 or all scores equal, the
    Wilson score interval for the mean over n prompts, the widest a [0, 1] score allows.
    """
    n = len(scores)
    if n == 0:
        raise ValueError("no scores: an interval needs at least one prompt with a verdict")
    if n == 1 or max(scores) == min(scores):
        low, high = wilson_interval(statistics.fmean(scores), n, confidence)
        return Interval(low, high, "wilson")
    return t_interval(scores, confidence, bounds=(0.0, 1.0))


def score_summary(values: Sequence[float], confidence: float = 0.95) -> Dict[str, Any]:
    """Mean absolute score of one model with its interval: Wilson for right/wrong (0/1) scores, else Student-t.

    Scores other than 0/1 (a reward model's logits) have no known range, so their t-interval is not
    clipped; with a single score there is no interval (``ci_low``/``ci_high`` None).
    """
    n, mean = len(values), statistics.fmean(values)
    summary: Dict[str, Any] = {"mean": mean, "n": n, "ci_low": None, "ci_high": None, "ci_method": None}
    if all(v in (0.0, 1.0) for v in values):
        summary["ci_low"], summary["ci_high"] = wilson_interval(mean, n, confidence)
        summary["ci_method"] = "wilson"
    elif n >= 2:
        interval = t_interval(values, confidence)
        summary.update(ci_low=interval.low, ci_high=interval.high, ci_method=interval.method)
    return summary


def bootstrap_interval(scores: Sequence[float], confidence: float = 0.95, resamples: int = 10_000,
                       seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean: resample prompts with replacement ``resamples`` times."""
    import numpy as np

    values = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, 1000):
        count = min(1000, resamples - start)
        means.append(values[rng.integers(0, len(values), size=(count, len(values)))].mean(axis=1))
    all_means = np.concatenate(means)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(all_means, [alpha, 1.0 - alpha])
    return Interval(float(low), float(high), "bootstrap-percentile")
