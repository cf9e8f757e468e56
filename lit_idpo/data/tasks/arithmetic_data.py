"""The arithmetic task's rows (``bundled:arithmetic``): short questions with checkable answers, and the files.

Each row asks ``"What is 41 + 35? Answer briefly."``; ``chosen`` answers in the style
SmolLM2-135M-Instruct itself uses for such prompts (``"41 + 35 = 76."``) and ``rejected`` is the same
sentence with a plausible wrong result (a dropped carry or borrow, off by one or ten, swapped digits,
one multiple too many or too few). Because the true result is stored (``answer``), any response can
be judged by rule: :func:`lit_idpo.evaluation.is_correct` reads the result a response states for the
asked expression and compares it with the answer (this module's :func:`extract_answer` and :func:`is_correct`
are the older ``last_equation`` reading, kept for comparison). No model and no API are needed to build or
judge the task.

Generation is deterministic from a seed (pure-Python ``random.Random``): every arithmetic fact of each
category is enumerated in a fixed order, shuffled, and the first ``count`` are taken; no fact appears
twice in the data (``a + b`` and ``b + a`` count as the same fact), so no test prompt, nor its swapped
twin, is in the training split. The mix of categories (:data:`CATEGORIES`) was tuned so that the
untuned model is clearly imperfect: SmolLM2-135M-Instruct answers 59 of the 200 test prompts correctly
(29.5 %, greedy, 16 new tokens, by the ``last_equation`` reading; details in
``scripts/make_bundled_data.py``).

Row fields: ``id``, ``prompt``, ``chosen``, ``rejected``, ``answer`` (int), ``wrong_answer`` (int,
the result ``rejected`` states), ``category``, ``mistake`` (how the wrong result was made).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from lit_idpo.data.tasks import BUNDLED_SOURCES, DATA_DIR, SPLITS, dataset_path, load_rows  # noqa: F401 (re-exported)
from lit_idpo.data.tasks.arithmetic_reading import is_correct_last_equation, last_equation_answer

#: The shipped sources (the registry is :data:`lit_idpo.data.tasks.BUNDLED_SOURCES`): ``arithmetic``: templated
#: pairs built here; ``arithmetic_onpolicy``: the model's own sampled responses on the same prompts, labelled by
#: the answer checker (``scripts/make_onpolicy_data.py``; :mod:`.arithmetic_onpolicy`); ``instructions_onpolicy``:
#: the instruction-following task's (:mod:`.instructions_onpolicy`).
TASKS = tuple(BUNDLED_SOURCES)
SEED = 0
N_TRAIN = 2000
N_TEST = 200
PROMPT = "What is {a} {op} {b}? Answer briefly."
RESPONSE = "{a} {op} {b} = {result}."

Fact = Tuple[int, str, int]  # (a, op, b) as shown in the prompt


def _facts(pairs, op: str, keep: Callable[[int, int], bool] = lambda a, b: True) -> List[Fact]:
    return [(a, op, b) for a, b in pairs if keep(a, b)]


def _grid(first, second):
    return [(a, b) for a in first for b in second]


def _canonical_grid(values):
    """Unordered pairs (a <= b): one per commutative fact."""
    return [(a, b) for a in values for b in values if a <= b]


def _no_carry(a: int, b: int) -> bool:
    while a or b:
        if a % 10 + b % 10 >= 10:
            return False
        a, b = a // 10, b // 10
    return True


TWO_DIGIT = range(10, 100)
TENS = range(10, 100, 10)


@dataclass(frozen=True)
class Category:
    """One kind of question: every fact it holds (fixed order), how many to use, whether to shuffle operands."""

    name: str
    facts: Callable[[], List[Fact]]
    count: int
    swap_operands: bool  # commutative facts stored once (a <= b): show them in a random order


#: The question mix (2,200 facts: 2,000 train + 200 test). The percentages are SmolLM2-135M-Instruct's
#: greedy accuracy on 25 prompts per category, measured while tuning the mix (noisy: +-10 points).
#: Categories never share a fact: "x + 1" facts live only in add_one, "x * 2" only in mul_two, and so on.
CATEGORIES: Tuple[Category, ...] = (
    Category("add_1x1", lambda: _facts(_canonical_grid(range(1, 10)), "+"), 40, True),  # ~76 %
    Category("sub_1x1", lambda: _facts(_grid(range(2, 10), range(1, 10)), "-", lambda a, b: b < a),
             30, False),  # ~64 %
    Category("mul_1x1", lambda: _facts(_canonical_grid(range(2, 10)), "*"), 32, True),  # ~80 %
    Category("mul_tens", lambda: _facts(_grid(TENS, range(2, 10)), "*"), 66, False),  # ~84 %
    Category("mul_by_ten", lambda: _facts(_grid(range(11, 100), [10]), "*"), 80, False),  # ~60 %
    Category("mul_two", lambda: _facts(_grid(TWO_DIGIT, [2]), "*", lambda a, b: a % 10 != 0), 70, False),  # ~48 %
    Category("add_one", lambda: _facts(_grid(range(10, 1000), [1]), "+", _no_carry), 360, False),  # ~44 %
    Category("add_tens", lambda: _facts(_canonical_grid(TENS), "+"), 42, True),  # ~28 %
    Category("add_2x1_no_carry", lambda: _facts(_grid(TWO_DIGIT, range(2, 10)), "+", _no_carry),
             250, False),  # ~30 %
    Category("add_3x1_no_carry", lambda: _facts(_grid(range(100, 1000), range(2, 10)), "+", _no_carry),
             150, False),  # ~24 %
    Category("add_2x2_no_carry",
             lambda: _facts(_canonical_grid(TWO_DIGIT), "+", lambda a, b: _no_carry(a, b) and a % 10 and b % 10),
             500, True),  # ~22 %
    Category("mul_2x1", lambda: _facts(_grid(TWO_DIGIT, range(3, 10)), "*", lambda a, b: a % 10 != 0),
             420, False),  # ~18 %
    Category("add_2x2_carry",
             lambda: _facts(_canonical_grid(TWO_DIGIT), "+", lambda a, b: not _no_carry(a, b) and a % 10 and b % 10),
             80, True),  # ~5 %
    Category("sub_2x2", lambda: _facts(_grid(TWO_DIGIT, TWO_DIGIT), "-", lambda a, b: b < a), 80, False),  # ~3 %
)


def compute(a: int, op: str, b: int) -> int:
    """The true result of ``a op b`` for ``op`` in ``+ - *``."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operator {op!r}")


def _digitwise(a: int, b: int, combine: Callable[[int, int], int]) -> int:
    """Combine digit by digit, ignoring carries and borrows (the classic column mistake)."""
    result, place = 0, 1
    while a or b:
        result += combine(a % 10, b % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return result


def _swap_last_digits(n: int) -> Optional[int]:
    s = str(n)
    if len(s) < 2 or s[-1] == s[-2]:
        return None
    return int(s[:-2] + s[-1] + s[-2])


def wrong_results(a: int, op: str, b: int) -> Dict[str, int]:
    """Plausible wrong results for ``a op b``, by mistake name (all distinct from the truth and >= 0)."""
    truth = compute(a, op, b)
    candidates: Dict[str, Optional[int]] = {
        "off_by_one_up": truth + 1,
        "off_by_one_down": truth - 1,
        "off_by_ten_up": truth + 10,
        "off_by_ten_down": truth - 10,
        "swapped_digits": _swap_last_digits(truth),
    }
    if op == "+":
        candidates["dropped_carry"] = _digitwise(a, b, lambda x, y: (x + y) % 10)
    elif op == "-":
        candidates["borrow_error"] = _digitwise(a, b, lambda x, y: abs(x - y))
    else:
        candidates["one_multiple_more"] = a * (b + 1)
        candidates["one_multiple_less"] = a * (b - 1)
        if a >= 10:  # column multiplication with the carry from the units dropped
            candidates["dropped_carry"] = (a // 10) * b * 10 + (a % 10) * b % 10
    return {k: v for k, v in candidates.items() if v is not None and v >= 0 and v != truth}


def make_rows(seed: int = SEED, n_train: int = N_TRAIN, n_test: int = N_TEST) -> Dict[str, List[dict]]:
    """Generate the ``train`` and ``test`` rows (deterministic in ``seed``; no fact in both splits)."""
    total = sum(c.count for c in CATEGORIES)
    if n_train + n_test != total:
        raise ValueError(f"n_train + n_test must equal the number of facts in CATEGORIES ({total})")
    rng = random.Random(seed)
    problems: List[Tuple[str, Fact]] = []
    for category in CATEGORIES:
        facts = category.facts()
        if len(facts) < category.count:
            raise ValueError(f"category {category.name!r} has {len(facts)} facts, fewer than its count "
                             f"{category.count}")
        rng.shuffle(facts)
        for a, op, b in facts[: category.count]:
            if category.swap_operands and rng.random() < 0.5:
                a, b = b, a
            problems.append((category.name, (a, op, b)))
    keys = [(op, min(a, b), max(a, b)) if op in "+*" else (op, a, b) for _, (a, op, b) in problems]
    if len(set(keys)) != len(keys):
        raise ValueError("CATEGORIES share facts; make their ranges disjoint")
    rng.shuffle(problems)
    rows = []
    for name, (a, op, b) in problems:
        truth = compute(a, op, b)
        wrong = wrong_results(a, op, b)
        mistake = rng.choice(sorted(wrong))
        rows.append({
            "prompt": PROMPT.format(a=a, op=op, b=b),
            "chosen": RESPONSE.format(a=a, op=op, b=b, result=truth),
            "rejected": RESPONSE.format(a=a, op=op, b=b, result=wrong[mistake]),
            "answer": truth,
            "wrong_answer": wrong[mistake],
            "category": name,
            "mistake": mistake,
        })
    splits = {"test": rows[:n_test], "train": rows[n_test:]}
    for split, split_rows in splits.items():
        for i, row in enumerate(split_rows):
            split_rows[i] = {"id": f"arithmetic-{split}-{i:05d}", **row}
    return splits


def dumps_jsonl(rows: List[dict]) -> str:
    """The exact text of a JSON-lines file of ``rows`` (stable: key order kept, ASCII, ``\\n`` endings)."""
    return "".join(json.dumps(row, ensure_ascii=True) + "\n" for row in rows)


# --------------------------------------------------------------------------------------------------
# Judging
# --------------------------------------------------------------------------------------------------

# The reading before issue 19 (``last_equation``), under its old names: the published tables were scored with
# it, and it stays selectable for comparison (``judge.extraction: last_equation``). The rule judge's default
# reading, the result stated for the asked expression, is :func:`lit_idpo.evaluation.is_correct`.
extract_answer = last_equation_answer
is_correct = is_correct_last_equation
