"""Judging every pair of models in both orders, and the win rate with its intervals.

Every pair of models (or the pairs asked for), every prompt, is asked in **both orders** (each model
shown first once), so a judge's position bias cancels; identical responses are a tie without asking
the judge. Each order gives the first model a score of 1 (win), 1/2 (tie) or 0 (loss); a prompt's
score is the mean over its two orders (0, 1/4, 1/2, 3/4 or 1). The win rate is the mean prompt
score; it equals (wins + ties/2) / judgments. The interval is a Student-t interval on the mean of the
per-prompt scores (:func:`lit_idpo.evaluation.statistics.mean_interval`): the prompt is the sampling
unit, so the two correlated orders of one prompt are not counted as independent evidence, and ties
narrow the interval as they should. A percentile bootstrap over prompts is reported alongside. The
interval covers the prompt sampling, not the judge's own noise.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from lit_idpo.evaluation._util import progress_bar, sha256
from lit_idpo.evaluation.judges import Comparison, Judge, Verdict
from lit_idpo.evaluation.prompts import PromptRecord
from lit_idpo.evaluation.statistics import bootstrap_interval, mean_interval
from lit_idpo.storage import JsonlCache

CI_METHOD = ("Student-t interval on the mean of per-prompt scores (each prompt's score averages its two "
             "orders; win 1, tie 1/2, loss 0; n-1 degrees of freedom); Wilson score interval for n prompts when "
             "all prompt scores are equal or n = 1")

_FIRST_SCORE = {"A": 1.0, "tie": 0.5, "B": 0.0}  # order 1: the first model is shown as A
_SECOND_ORDER_SCORE = {"A": 0.0, "tie": 0.5, "B": 1.0}  # order 2: the first model is shown as B


@dataclass
class PairResult:
    """Win rate of ``first`` against ``second`` (``win_rate`` > 0.5: ``first`` is better).

    Judgment counts (``wins`` / ``ties`` / ``losses``, from ``first``'s side) cover both orders;
    ``prompt_*`` counts classify each prompt by its averaged score (> 1/2, = 1/2, < 1/2).
    ``first_shown_preference``: among decisive judgments, how often the response shown first won
    (0.5 means no position bias). ``order_agreement``: prompts whose two orders gave the same outcome.
    """

    first: str
    second: str
    prompts: int
    judgments: int
    wins: int
    ties: int
    losses: int
    invalid: int
    identical: int
    prompt_wins: int
    prompt_ties: int
    prompt_losses: int
    win_rate: float
    ci_low: float
    ci_high: float
    ci_method: str
    bootstrap_low: float
    bootstrap_high: float
    confidence: float
    first_shown_preference: Optional[float]
    order_agreement: Optional[float]

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def summarize_verdicts(first: str, second: str, order1: Sequence[Optional[str]], order2: Sequence[Optional[str]],
                       *, identical: int = 0, confidence: float = 0.95, bootstrap_seed: int = 0) -> PairResult:
    """Win rate, counts and intervals of ``first`` vs ``second`` from both orders' verdicts per prompt.

    ``order1[p]`` is the verdict on prompt p with ``first``'s response shown as A; ``order2[p]`` with
    ``second``'s response shown as A. A verdict is ``"A"``, ``"B"``, ``"tie"`` or None (no verdict: left
    out; a prompt with neither order is left out of the prompt count).
    """
    if len(order1) != len(order2):
        raise ValueError("order1 and order2 must hold one verdict per prompt each")
    scores: List[float] = []
    wins = ties = losses = invalid = 0
    shown_first_won = decisive = agree = both_valid = 0
    for v1, v2 in zip(order1, order2):
        prompt_scores = []
        for verdict, table in ((v1, _FIRST_SCORE), (v2, _SECOND_ORDER_SCORE)):
            if verdict is None:
                invalid += 1
                continue
            if verdict not in table:
                raise ValueError(f"verdict {verdict!r}; expected 'A', 'B', 'tie' or None")
            s = table[verdict]
            prompt_scores.append(s)
            wins += s == 1.0
            ties += s == 0.5
            losses += s == 0.0
            if verdict != "tie":
                decisive += 1
                shown_first_won += verdict == "A"
        if len(prompt_scores) == 2:
            both_valid += 1
            agree += prompt_scores[0] == prompt_scores[1]
        if prompt_scores:
            scores.append(statistics.fmean(prompt_scores))
    if not scores:
        raise ValueError(f"{first} vs {second}: no prompt has a verdict; nothing to summarise")
    interval = mean_interval(scores, confidence)
    boot = bootstrap_interval(scores, confidence, seed=bootstrap_seed)
    return PairResult(
        first=first, second=second, prompts=len(scores), judgments=wins + ties + losses,
        wins=wins, ties=ties, losses=losses, invalid=invalid, identical=identical,
        prompt_wins=sum(s > 0.5 for s in scores), prompt_ties=sum(s == 0.5 for s in scores),
        prompt_losses=sum(s < 0.5 for s in scores), win_rate=statistics.fmean(scores),
        ci_low=interval.low, ci_high=interval.high, ci_method=interval.method,
        bootstrap_low=boot.low, bootstrap_high=boot.high, confidence=confidence,
        first_shown_preference=(shown_first_won / decisive) if decisive else None,
        order_agreement=(agree / both_valid) if both_valid else None,
    )


# --------------------------------------------------------------------------------------------------
# Pairwise judging
# --------------------------------------------------------------------------------------------------

class JudgmentCache:
    """Verdicts of one judge (by its secret-free description), keyed by prompt and both responses in order.

    File: ``<cache_dir>/judgments/<judge hash>.jsonl``, a :class:`lit_idpo.storage.JsonlCache`
    (appended and fsync'ed per chunk of verdicts; a torn last line is asked again). Only real
    verdicts are stored: a comparison without one is asked again next time.
    """

    def __init__(self, cache_dir: Path, judge: Judge):
        self.path = Path(cache_dir) / "judgments" / f"{sha256(json.dumps(judge.describe(), sort_keys=True))[:24]}.jsonl"
        self._store = JsonlCache(self.path)
        self.entries: Dict[str, Verdict] = {}
        for key, item in self._store.load().items():
            if item.get("winner") in ("A", "B", "tie"):
                self.entries[key] = Verdict(item["winner"], item.get("reason", ""))

    @staticmethod
    def key(c: Comparison) -> str:
        """The cache key of one comparison: the prompt and both responses, in the order shown."""
        return sha256(json.dumps([c.prompt, c.response_a, c.response_b], ensure_ascii=False))[:32]

    def add(self, items: Sequence[Tuple[Comparison, Verdict]]) -> None:
        """Remember the real verdicts among ``items`` (durably)."""
        new = [(self.key(c), v) for c, v in items if v.winner is not None]
        for key, v in new:
            self.entries[key] = v
        self._store.append((key, {"winner": v.winner, "reason": v.reason}) for key, v in new)


def judge_pairs(pairs: Sequence[Tuple[str, str]], responses: Mapping[str, Sequence[str]],
                prompts: Sequence[PromptRecord], judge: Judge, *, cache_dir: Optional[Path] = None,
                confidence: float = 0.95, progress: bool = True, chunk: int = 32,
                truncated: Optional[Mapping[str, Sequence[bool]]] = None,
                ) -> Tuple[List[PairResult], List[Dict[str, Any]]]:
    """Judge every prompt of every pair in both orders; return one :class:`PairResult` per pair and every verdict.

    Identical responses are a tie without asking the judge. With ``cache_dir`` and a judge that asks
    for it (``cache_verdicts``), verdicts are cached on disk, so an interrupted run asks again only
    what it had not asked. ``truncated[model][p]``: whether that response stopped at the length limit
    (passed to the judge in each :class:`Comparison`; absent means it did not).
    """
    cache = JudgmentCache(cache_dir, judge) if (cache_dir is not None and judge.cache_verdicts) else None
    asks: List[Tuple[int, int, int, Comparison]] = []  # (pair, prompt, order, comparison)
    verdicts: Dict[Tuple[int, int, int], Verdict] = {}
    for pi, (a, b) in enumerate(pairs):
        for p, record in enumerate(prompts):
            ra, rb = responses[a][p], responses[b][p]
            ta, tb = (bool(truncated[m][p]) if truncated and m in truncated else False for m in (a, b))
            for order, (x, y, tx, ty) in enumerate(((ra, rb, ta, tb), (rb, ra, tb, ta))):
                if ra == rb and ta == tb:
                    verdicts[(pi, p, order)] = Verdict("tie", "identical responses (judge not asked)")
                    continue
                c = Comparison(record.prompt, x, y, record.row, truncated_a=tx, truncated_b=ty)
                hit = cache.entries.get(cache.key(c)) if cache is not None else None
                if hit is not None:
                    verdicts[(pi, p, order)] = hit
                else:
                    asks.append((pi, p, order, c))
    bar = progress_bar(total=len(asks), desc=f"judge ({judge.name})", enabled=progress and bool(asks), unit="verdict")
    for start in range(0, len(asks), chunk):
        batch = asks[start: start + chunk]
        answers = judge.judge([c for *_, c in batch])
        if len(answers) != len(batch):
            raise RuntimeError(f"judge {judge.name!r} returned {len(answers)} verdicts for {len(batch)} comparisons")
        for (pi, p, order, _), v in zip(batch, answers):
            verdicts[(pi, p, order)] = v
        if cache is not None:
            cache.add([(c, v) for (*_, c), v in zip(batch, answers)])
        bar.update(len(batch))
    bar.close()
    results, records = [], []
    for pi, (a, b) in enumerate(pairs):
        order1 = [verdicts[(pi, p, 0)].winner for p in range(len(prompts))]
        order2 = [verdicts[(pi, p, 1)].winner for p in range(len(prompts))]
        identical = sum(responses[a][p] == responses[b][p] for p in range(len(prompts)))
        results.append(summarize_verdicts(a, b, order1, order2, identical=identical, confidence=confidence))
        for p, record in enumerate(prompts):
            for order, (shown_a, shown_b) in enumerate(((a, b), (b, a))):
                v = verdicts[(pi, p, order)]
                records.append({"pair": [a, b], "prompt_index": record.index, "A": shown_a, "B": shown_b,
                                "winner": v.winner,
                                "winner_model": {"A": shown_a, "B": shown_b}.get(v.winner, v.winner),
                                "reason": v.reason})
    return results, records
