"""Intervals for win rates and scores, in plain Python (and NumPy for the bootstrap); no torch.

- :func:`t_interval`: THE Student-t interval on a mean, ``mean +- t_{(1+c)/2, n-1} * s / sqrt(n)``
  (``s``: sample standard deviation, n - 1 in its denominator), clipped to the range the scores can
  take when that range is given (win-rate scores: [0, 1]; reward-model scores: unbounded, no clip).
- :func:`mean_interval`: interval on a mean of per-prompt scores in [0, 1]: the t-interval, or the
  Wilson score interval for n prompts when the sample variance says nothing (n = 1 or all equal).
- :func:`score_summary`: a model's mean absolute score with its interval (Wilson for right/wrong
  scores, else the t-interval).
- :func:`bootstrap_interval`: percentile bootstrap over prompts, reported as a cross-check.
- :func:`over_seeds`: mean of per-seed values (one per training run) with the t-interval over seeds.
- :func:`two_level_bootstrap`: percentile bootstrap over seeds, then prompts within each seed (a cross-check
  of :func:`over_seeds`); :func:`compare_over_seeds` gives both for per-prompt values per seed, with the
  :func:`verdict` that the t-interval supports.

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


def over_seeds(values: Sequence[float], confidence: float = 0.95,
               bounds: Optional[Tuple[float, float]] = None) -> Dict[str, Any]:
    """Mean of per-seed values (one per training run) with the Student-t interval over the seeds.

    The interval is :func:`t_interval` over the seeds' values (n - 1 degrees of freedom), so it
    covers the variation between training runs, not only between prompts. With one seed there is
    no interval: ``ci_low``/``ci_high``/``ci_method`` are None.
    """
    if not values:
        raise ValueError("no per-seed values: an interval over training runs needs at least one seed")
    summary: Dict[str, Any] = {"mean": statistics.fmean(values), "ci_low": None, "ci_high": None, "ci_method": None,
                               "seeds": len(values), "per_seed": [float(v) for v in values]}
    if len(values) >= 2:
        interval = t_interval(values, confidence, bounds)
        summary.update(ci_low=interval.low, ci_high=interval.high, ci_method="t over seeds")
    return summary


def two_level_bootstrap(per_seed_scores: Sequence[Sequence[float]], confidence: float = 0.95,
                        resamples: int = 2000, seed: int = 0) -> Optional[Interval]:
    """Percentile bootstrap of the mean over seeds of per-seed mean scores: resample seeds, then prompts.

    Each resample draws the seeds with replacement (the same draws :func:`bootstrap_interval` makes
    for the per-seed means with this ``seed``), then, for every drawn seed, its per-prompt scores
    with replacement, and averages the per-seed means. So with every seed's scores constant it
    equals :func:`bootstrap_interval` of the per-seed means. None with fewer than two seeds.
    """
    import numpy as np

    if len(per_seed_scores) < 2:
        return None
    seeds = [np.asarray(scores, dtype=np.float64) for scores in per_seed_scores]
    if any(len(s) == 0 for s in seeds):
        raise ValueError("every seed needs at least one prompt score")
    n = len(seeds)
    seed_rng = np.random.default_rng(seed)
    prompt_rng = np.random.default_rng([seed, 1])  # its own stream: the seed draws stay those of the one-level case
    means = []
    for start in range(0, resamples, 1000):
        count = min(1000, resamples - start)
        drawn = seed_rng.integers(0, n, size=(count, n))
        seed_means = np.empty((count, n))
        for s, scores in enumerate(seeds):
            where = drawn == s
            picks = prompt_rng.integers(0, len(scores), size=(int(where.sum()), len(scores)))
            seed_means[where] = scores[picks].mean(axis=1)
        means.append(seed_means.mean(axis=1))
    all_means = np.concatenate(means)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(all_means, [alpha, 1.0 - alpha])
    return Interval(float(low), float(high), "two-level bootstrap (seeds, then prompts)")


BOOTSTRAP_RESAMPLES = 2000


def verdict(ci_low: Optional[float], ci_high: Optional[float], null: float, versus: str) -> str:
    """What an interval over training runs supports, in words, against the value ``null`` of "no difference"."""
    if ci_low is None or ci_high is None:
        return "one seed: no interval over training runs (add seeds)"
    if ci_low > null:
        return f"better than {versus}"
    if ci_high < null:
        return f"worse than {versus}"
    return "no detectable difference"


def compare_over_seeds(per_seed: Sequence[Sequence[float]], *, null: float, versus: str,
                       bounds: Optional[Tuple[float, float]],
                       confidence: float = 0.95) -> Dict[str, Any]:
    """Mean over seeds of the per-seed means of ``per_seed`` (per-prompt values, one list per seed), the t-interval
    over seeds (:func:`over_seeds`), the two-level bootstrap (:func:`two_level_bootstrap`) as a cross-check
    (``bootstrap_low``/``bootstrap_high``), the prompts per seed and the :func:`verdict` of the t-interval."""
    out = over_seeds([sum(v) / len(v) for v in per_seed], confidence, bounds)
    boot = two_level_bootstrap(per_seed, confidence, resamples=BOOTSTRAP_RESAMPLES, seed=0)
    out["bootstrap_low"], out["bootstrap_high"] = (boot.low, boot.high) if boot else (None, None)
    out["prompts"] = [len(v) for v in per_seed]
    out["verdict"] = verdict(out["ci_low"], out["ci_high"], null, versus)
    return out
