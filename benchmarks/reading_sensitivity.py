"""The confirmation's primary comparison under alternative answer readings (issue 19's sensitivity check).

What: the pre-registered reading (``asked_expression``) counts a response right when it states at least one
result for the asked expression and **every** one is the true answer, so a response that states the right
result and then contradicts it (``9 - 1 = 8. ... 9 - 1 = 9``) is wrong. That clause was a choice, and it bears
harder on the arm that runs on (DPO: 28.5 new tokens on average against 12.5 for layer 21). This script scores
the confirmation's published responses (``benchmarks/confirmation/responses/``) under that reading and two
more lenient ones, from the same parse (:func:`lit_idpo.evaluation.answer_reading.read_answer`):

- ``first_result``: right when the **first** result the response states for the asked expression is right;
- ``any_result``: right when **any** stated result is right (the most lenient; rewards hedging);
- ``last_equation``: the pre-issue-19 reading (the last ``=``), for reference.

For each: accuracy per arm and the win rate of layer 21 against the same seed's DPO with its 95 % Student-t
interval over the ten seeds, as the pre-registration defines it (per prompt 1 / 1/2 / 0). The primary result
stays the pre-registered one; these rows only show how much it depends on the reading.

How: ``python benchmarks/reading_sensitivity.py`` (no model; seconds) writes
``benchmarks/confirmation/READING_SENSITIVITY.md`` and ``reading_sensitivity.json``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Callable, Dict, List

from lit_idpo.evaluation.answer_reading import is_correct_last_equation, parse_question, read_answer
from lit_idpo.evaluation.statistics import compare_over_seeds, over_seeds

FOLDER = Path(__file__).resolve().parent / "confirmation"
SEEDS = tuple(range(100, 110))
ARMS = ("dpo", "L21")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _reading(rule: str) -> Callable[[dict, int], bool]:
    def judge(row: dict, answer: int) -> bool:
        if rule == "last_equation":
            return is_correct_last_equation(row["response"], answer)
        found = read_answer(row["response"], prompt=row["prompt"], truncated=row["stopped"] == "length").results
        if rule == "asked_expression":
            return bool(found) and all(r == answer for r in found)
        if rule == "first_result":
            return bool(found) and found[0] == answer
        return answer in found  # any_result
    return judge


READINGS = {
    "asked_expression": "pre-registered: at least one result for the asked expression, every one right",
    "first_result": "the first result stated for the asked expression is right (a later contradiction is ignored)",
    "any_result": "any stated result is right (most lenient; rewards hedging)",
    "last_equation": "before issue 19: the first number after the last '=', else the last number",
}


def score(folder: Path = FOLDER) -> Dict[str, Dict]:
    """Per reading: per-arm accuracy over seeds, and L21's win rate and accuracy difference against DPO."""
    runs = {arm: [[json.loads(line) for line in (folder / "responses" / f"{arm}_seed{s}.jsonl").open()]
                  for s in SEEDS] for arm in ARMS}
    out: Dict[str, Dict] = {}
    for rule, meaning in READINGS.items():
        judge = _reading(rule)
        correct: Dict[str, List[List[float]]] = {arm: [] for arm in ARMS}
        for arm in ARMS:
            for rows in runs[arm]:
                marks = []
                for row in rows:
                    a, op, b = parse_question(row["prompt"])
                    marks.append(float(judge(row, OPS[op](a, b))))
                correct[arm].append(marks)
        wins = [[0.5 + (x - y) / 2 for x, y in zip(l21, dpo)] for l21, dpo in zip(correct["L21"], correct["dpo"])]
        out[rule] = {"meaning": meaning,
                     "accuracy": {arm: over_seeds([statistics.fmean(m) for m in correct[arm]]) for arm in ARMS},
                     "L21_vs_dpo": compare_over_seeds(wins, null=0.5, versus="DPO", bounds=(0.0, 1.0))}
    return out


def render(results: Dict[str, Dict]) -> str:
    def pct(c: Dict, signed: bool = False) -> str:
        f = (lambda x: f"{100 * x:+.1f}") if signed else (lambda x: f"{100 * x:.1f}")
        return f"{f(c['mean'])} [{f(c['ci_low'])}, {f(c['ci_high'])}]"

    lines = ["# Confirmation: the primary comparison under alternative answer readings", "",
             "Written by `python benchmarks/reading_sensitivity.py` from the published responses (no model). The "
             "primary result is the pre-registered reading's (first row); the others show how much it depends on "
             "the reading. Intervals: 95 %, Student-t over the ten seeds.", "",
             "| reading | what counts as right | DPO accuracy (%) | L21 accuracy (%) | L21 win rate vs DPO (%) | "
             "verdict |", "|---|---|---|---|---|---|"]
    for rule, r in results.items():
        c = r["L21_vs_dpo"]
        lines.append(f"| `{rule}` | {r['meaning']} | {pct(r['accuracy']['dpo'])} | {pct(r['accuracy']['L21'])} | "
                     f"{pct(c)} | {c['verdict']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    results = score()
    (FOLDER / "reading_sensitivity.json").write_text(json.dumps(results, indent=1) + "\n")
    (FOLDER / "READING_SENSITIVITY.md").write_text(render(results))
    print(render(results))


if __name__ == "__main__":
    main()
