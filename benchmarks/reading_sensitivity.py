"""The confirmation's primary comparison under alternative answer readings (issue 19's sensitivity check).

What: the pre-registered reading (``asked_expression``) counts a response right when it states at least one
result for the asked expression and **every** one is the true answer, so a response that states the right
result and then contradicts it (``9 - 1 = 8. ... 9 - 1 = 9``) is wrong. That clause was a choice, and it bears
harder on the arm that runs on (DPO: 28.5 new tokens on average against 12.5 for layer 21). This script scores
the confirmation's published responses (``benchmarks/confirmation/responses/``) under that reading and two
more lenient ones, from the same parse (:func:`lit_idpo.data.tasks.arithmetic_reading.read_answer`):

- ``first_result``: right when the **first** result the response states for the asked expression is right;
- ``any_result``: right when **any** stated result is right (the most lenient; rewards hedging);
- ``last_equation``: the pre-issue-19 reading (the last ``=``), for reference.

For each: accuracy per arm and the win rate of layer 21 against the same seed's DPO with its 95 % Student-t
interval over the ten seeds, as the pre-registration defines it (per prompt 1 / 1/2 / 0). The primary result
stays the pre-registered one; these rows only show how much it depends on the reading.

How: ``python benchmarks/reading_sensitivity.py`` (no model; seconds) writes
``benchmarks/confirmation/READING_SENSITIVITY.md`` and ``reading_sensitivity.json``. Another seeded study with a
``responses/`` folder: ``--folder benchmarks/bf16_equivalence --arm dpo-bf16 --seeds 100-104`` (the arm against
the same seed's ``dpo``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from lit_idpo.data.tasks.arithmetic_reading import is_correct_last_equation, parse_question, read_answer
from lit_idpo.evaluation.statistics import compare_over_seeds, over_seeds

FOLDER = Path(__file__).resolve().parent / "confirmation"
SEEDS = tuple(range(100, 110))
BASELINE, ARM = "dpo", "L21"
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


def score(folder: Path = FOLDER, arm: str = ARM, seeds: Sequence[int] = SEEDS) -> Dict[str, Dict]:
    """Per reading: per-arm accuracy over seeds, and ``arm``'s win rate against the same seed's DPO."""
    arms = (BASELINE, arm)
    runs = {a: [[json.loads(line) for line in (folder / "responses" / f"{a}_seed{s}.jsonl").open()]
                for s in seeds] for a in arms}
    out: Dict[str, Dict] = {}
    for rule, meaning in READINGS.items():
        judge = _reading(rule)
        correct: Dict[str, List[List[float]]] = {a: [] for a in arms}
        for a in arms:
            for rows in runs[a]:
                marks = []
                for row in rows:
                    x, op, y = parse_question(row["prompt"])
                    marks.append(float(judge(row, OPS[op](x, y))))
                correct[a].append(marks)
        wins = [[0.5 + (x - y) / 2 for x, y in zip(mine, dpo)] for mine, dpo in zip(correct[arm], correct[BASELINE])]
        out[rule] = {"meaning": meaning, "arm": arm, "seeds": list(seeds),
                     "accuracy": {a: over_seeds([statistics.fmean(m) for m in correct[a]]) for a in arms},
                     "vs_dpo": compare_over_seeds(wins, null=0.5, versus="DPO", bounds=(0.0, 1.0))}
    return out


def render(results: Dict[str, Dict], title: str) -> str:
    def pct(c: Dict) -> str:
        return f"{100 * c['mean']:.1f} [{100 * c['ci_low']:.1f}, {100 * c['ci_high']:.1f}]"

    first = next(iter(results.values()))
    arm, seeds = first["arm"], first["seeds"]
    lines = [f"# {title}: the comparison under alternative answer readings", "",
             "Written by `python benchmarks/reading_sensitivity.py` from the published responses (no model). The "
             "first row is the reading the study used; the others show how much its result depends on the reading. "
             f"Intervals: 95 %, Student-t over the {len(seeds)} seeds ({seeds[0]}-{seeds[-1]}).", "",
             f"| reading | what counts as right | DPO accuracy (%) | {arm} accuracy (%) | {arm} win rate vs DPO (%) | "
             "verdict |", "|---|---|---|---|---|---|"]
    for rule, r in results.items():
        c = r["vs_dpo"]
        lines.append(f"| `{rule}` | {r['meaning']} | {pct(r['accuracy'][BASELINE])} | {pct(r['accuracy'][arm])} | "
                     f"{pct(c)} | {c['verdict']} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=FOLDER, help="a study folder with responses/<arm>_seed<k>.jsonl")
    parser.add_argument("--arm", default=ARM, help="the arm compared with the same seed's dpo")
    parser.add_argument("--seeds", default=f"{SEEDS[0]}-{SEEDS[-1]}", help="first-last, inclusive")
    parser.add_argument("--title", default="Confirmation")
    args = parser.parse_args(argv)
    first, last = map(int, args.seeds.split("-"))
    results = score(args.folder, args.arm, range(first, last + 1))
    (args.folder / "reading_sensitivity.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.folder / "READING_SENSITIVITY.md").write_text(render(results, args.title))
    print(render(results, args.title))


if __name__ == "__main__":
    main()
