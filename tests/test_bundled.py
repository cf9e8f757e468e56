"""The bundled arithmetic task: determinism, committed files, sizes, split disjointness, judging."""

import importlib.util
import operator
import re
from pathlib import Path

import pytest

from lit_idpo.data.tasks import arithmetic_data as bundled
from lit_idpo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PROMPT_RE = re.compile(r"^What is (\d+) ([-+*]) (\d+)\? Answer briefly\.$")
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


@pytest.fixture(scope="module")
def rows():
    return bundled.make_rows(bundled.SEED)


def _script():
    spec = importlib.util.spec_from_file_location("make_bundled_data", ROOT / "scripts" / "make_bundled_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_same_seed_same_files_and_committed_files_are_fresh(tmp_path, rows):
    script = _script()
    for out in ("a", "b"):
        assert script.main(["--out-dir", str(tmp_path / out)]) == 0
    for split in bundled.SPLITS:
        name = f"arithmetic_{split}.jsonl"
        first = (tmp_path / "a" / name).read_bytes()
        assert first == (tmp_path / "b" / name).read_bytes()
        # The package data shipped in the repo equals a fresh generation with the default seed.
        assert first == (ROOT / "lit_idpo" / "data" / name).read_bytes()
        assert bundled.load_rows("arithmetic", split) == rows[split]
    assert script.main(["--check"]) == 0


def test_other_seed_gives_other_data(rows):
    assert bundled.make_rows(1)["train"] != rows["train"]


def test_sizes_ids_and_no_shared_prompts(rows):
    train, test = rows["train"], rows["test"]
    assert len(train) >= 2000 and len(test) >= 200
    ids = [r["id"] for r in train + test]
    assert len(set(ids)) == len(ids)
    assert len({r["prompt"] for r in test}) == len(test)

    def fact(prompt):  # commutative facts compare equal whatever the operand order
        a, op, b = PROMPT_RE.match(prompt).groups()
        a, b = int(a), int(b)
        return (op, min(a, b), max(a, b)) if op in "+*" else (op, a, b)

    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    facts = [fact(r["prompt"]) for r in train + test]
    assert len(set(facts)) == len(facts)  # no fact twice, not even as its swapped twin
    # Every category of the mix appears in both splits.
    assert {r["category"] for r in test} == {r["category"] for r in train} == {c.name for c in bundled.CATEGORIES}


def test_rows_are_consistent_and_judged_right(rows):
    for row in rows["train"] + rows["test"]:
        match = PROMPT_RE.match(row["prompt"])
        assert match, row
        a, op, b = match.groups()
        truth = OPS[op](int(a), int(b))
        assert row["answer"] == truth and truth >= 0
        assert row["chosen"] == f"{a} {op} {b} = {truth}."
        assert row["rejected"] == f"{a} {op} {b} = {row['wrong_answer']}."
        assert row["wrong_answer"] != truth and row["wrong_answer"] >= 0
        assert bundled.is_correct(row["chosen"], row["answer"])
        assert not bundled.is_correct(row["rejected"], row["answer"])


def test_mistakes_are_plausible():
    assert bundled.wrong_results(47, "+", 38)["dropped_carry"] == 75
    assert bundled.wrong_results(52, "-", 37)["borrow_error"] == 25
    assert bundled.wrong_results(76, "*", 6)["dropped_carry"] == 426  # 70*6 + (6*6 mod 10)
    wrong = bundled.wrong_results(23, "*", 4)
    assert wrong["one_multiple_more"] == 115 and wrong["one_multiple_less"] == 69 and wrong["swapped_digits"] == 29
    assert "swapped_digits" not in bundled.wrong_results(5, "+", 6)  # 11: swapping changes nothing


def test_sequences_are_short(rows):
    from lit_idpo.models import load_tokenizer

    tok = load_tokenizer("embedded:smollm2-135m-instruct")
    longest = max(rows["train"] + rows["test"], key=lambda r: len(r["prompt"]) + len(r["rejected"]))
    text = tok.apply_chat_template([{"role": "user", "content": longest["prompt"]},
                                    {"role": "assistant", "content": longest["rejected"]}], tokenize=False)
    assert len(tok(text, add_special_tokens=False)["input_ids"]) <= 70


@pytest.mark.parametrize("response, expected", [
    ("17 + 25 = 42.", 42),
    ("17 + 25 = 32.", 32),
    ("The answer is 42.", 42),
    ("17 + 25 = 40 + 2 = 42", 42),
    ("42", 42),
    ("x = -5", -5),
    ("10-5", 5),  # a minus after a digit is subtraction, not a sign
    ("17 + 25 = 42.\n\nThis is a classic example of 2 numbers", 42),  # the stated result, not a later number
    ("The sum of 93 and 58 is 151", 151),
    ("123 + 892 = 1,015.", 1015),
    ("8 / 4 = 2.0", 2),
    ("5 / 2 = 2.5", None),
    ("I cannot compute that.", None),
    ("17 + 25 =", 25),  # nothing after '=': falls back to the last number stated
    ("", None),
])
def test_extract_answer(response, expected):
    assert bundled.extract_answer(response) == expected


def test_is_correct():
    assert bundled.is_correct("17 + 25 = 42.", 42)
    assert not bundled.is_correct("17 + 25 = 32.", 42)
    assert not bundled.is_correct("To add 17 and 25, we need", 42)
    assert not bundled.is_correct("", 0)


def test_unknown_task_or_split():
    with pytest.raises(ConfigError, match="data.source='bundled:algebra' is unknown.*bundled:arithmetic"):
        bundled.dataset_path("algebra", "train")
    with pytest.raises(ConfigError, match="'validation'.*data.train_split / data.val_split"):
        bundled.dataset_path("arithmetic", "validation")
