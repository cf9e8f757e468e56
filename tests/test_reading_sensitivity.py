"""``benchmarks/reading_sensitivity.py``: its readings on hand-read responses, and the confirmation's numbers.

Each expected verdict below was read by hand from the response (which results it states for the asked
expression, in order); none comes from running the code under test.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sensitivity():
    spec = importlib.util.spec_from_file_location("reading_sensitivity", ROOT / "benchmarks" / "reading_sensitivity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


# (response, stopped, answer, {reading: verdict}) for "What is a op b? Answer briefly."
CASES = [
    ("9 - 1 = 8.\n\nIn a more formal mathematical context, 9 - 1 = 9.", "eos", "9 - 1", 8,
     dict(asked_expression=False, first_result=True, any_result=True, last_equation=False)),
    ("50 + 50 = 65. So, 50 + 50 equals 100.", "eos", "50 + 50", 100,
     dict(asked_expression=False, first_result=False, any_result=True, last_equation=False)),
    ("82 + 17 = 99.", "eos", "82 + 17", 99,
     dict(asked_expression=True, first_result=True, any_result=True, last_equation=True)),
    ("962 + 3 = 965\n965 + 3 = 968", "eos", "962 + 3", 965,
     dict(asked_expression=True, first_result=True, any_result=True, last_equation=False)),
    ("23 + 24 = 36.", "eos", "23 + 24", 47,
     dict(asked_expression=False, first_result=False, any_result=False, last_equation=False)),
    ("54 * 10 = 540. 54 * 10 = 540. 54 * 10 = 5", "length", "54 * 10", 540,
     dict(asked_expression=True, first_result=True, any_result=True, last_equation=False)),
]


@pytest.mark.parametrize("response, stopped, question, answer, expected", CASES)
def test_each_reading_on_hand_read_responses(sensitivity, response, stopped, question, answer, expected):
    row = {"prompt": f"What is {question}? Answer briefly.", "response": response, "stopped": stopped}
    assert {rule: sensitivity._reading(rule)(row, answer) for rule in sensitivity.READINGS} == expected


def test_the_preregistered_reading_reproduces_the_published_confirmation(sensitivity):
    published = json.loads((ROOT / "benchmarks" / "confirmation" / "sweep_results.json").read_text())
    l21 = next(r for r in published["rows"] if r["name"] == "L21")["vs_dpo"]
    ours = sensitivity.score()["asked_expression"]["vs_dpo"]
    assert ours["per_seed"] == pytest.approx(l21["per_seed"], abs=1e-12)
    assert (ours["mean"], ours["ci_low"], ours["ci_high"]) == pytest.approx(
        (l21["mean"], l21["ci_low"], l21["ci_high"]), abs=1e-12)
