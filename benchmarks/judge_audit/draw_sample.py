"""Draw the issue-19 hand-audit sample: 50 published responses where the two answer readings disagree.

Collects every published response (``benchmarks/seed_study``, ``seed_study_l21``, ``reproduction``,
``reproduction_seed1``: ``responses/*.jsonl``), computes the true answer from the prompt (checked
against ``lit_idpo/data/arithmetic_test.jsonl``), scores each response under both readings
(``asked_expression`` with ``truncated = stopped == "length"``, and the old ``last_equation``), keeps
those where the verdicts differ, and draws 50 of them by plain (unstratified) random sampling with
``random.Random(19)`` from the disagreements in a fixed order (study, file name, line). Writes
``benchmarks/judge_audit/sample.jsonl`` and prints the population counts.

    python benchmarks/judge_audit/draw_sample.py
"""

from __future__ import annotations

import collections
import json
import random
from pathlib import Path

from lit_idpo.data.tasks.arithmetic_reading import parse_question, score_response

ROOT = Path(__file__).resolve().parents[2]
STUDIES = ("seed_study", "seed_study_l21", "reproduction", "reproduction_seed1")
SEED = 19
SIZE = 50
OUT = Path(__file__).resolve().parent / "sample.jsonl"


def true_answer(prompt: str) -> int:
    a, op, b = parse_question(prompt)
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def main() -> None:
    reference = {}
    with open(ROOT / "lit_idpo" / "data" / "arithmetic_test.jsonl") as f:
        for line in f:
            row = json.loads(line)
            reference[row["prompt"]] = int(row["answer"])

    total = 0
    disagreements = []
    by_file = collections.Counter()
    by_direction = collections.Counter()
    for study in STUDIES:
        for path in sorted((ROOT / "benchmarks" / study / "responses").glob("*.jsonl")):
            with open(path) as f:
                for number, line in enumerate(f, start=1):
                    row = json.loads(line)
                    total += 1
                    prompt, response = row["prompt"], row["response"]
                    answer = true_answer(prompt)
                    if prompt in reference and reference[prompt] != answer:
                        raise SystemExit(f"{path}:{number}: answer {answer} != test set's {reference[prompt]}")
                    truncated = row["stopped"] == "length"
                    old = score_response(response, answer, prompt=prompt, extraction="last_equation")
                    new = score_response(response, answer, prompt=prompt, truncated=truncated,
                                         extraction="asked_expression")
                    if old == new:
                        continue
                    source = str(path.relative_to(ROOT))
                    by_file[source] += 1
                    by_direction["old right, new wrong" if old else "old wrong, new right"] += 1
                    disagreements.append({
                        "source": source, "line": number, "prompt": prompt, "answer": answer,
                        "response": response, "stopped": row["stopped"], "new_tokens": row.get("new_tokens"),
                        "old_correct": old, "new_correct": new,
                    })

    sample = random.Random(SEED).sample(disagreements, SIZE)
    with open(OUT, "w") as f:
        for i, item in enumerate(sample, start=1):
            f.write(json.dumps({"id": i, **item}) + "\n")

    print(f"responses read: {total}")
    print(f"disagreements between the readings: {len(disagreements)}")
    for direction, count in sorted(by_direction.items()):
        print(f"  {direction}: {count}")
    for source, count in sorted(by_file.items()):
        print(f"  {source}: {count}")
    print(f"sample of {SIZE} (random.Random({SEED}).sample, unstratified) written to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
