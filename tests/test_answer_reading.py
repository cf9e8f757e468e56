"""The rule judge's answer reading (issue 19): every clause of the specification, the responses the issue
quotes, real responses from the published studies, and the older ``last_equation`` reading.

Every expected verdict below was decided by reading the response against the specification by hand;
none comes from running the reader.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_idpo.data.tasks import arithmetic_data as bundled
from lit_idpo.evaluation import (
    EXTRACTIONS,
    is_correct,
    is_correct_last_equation,
    last_equation_answer,
    parse_question,
    read_answer,
    score_response,
)

ROOT = Path(__file__).resolve().parents[1]


def q(a, op, b):
    return f"What is {a} {op} {b}? Answer briefly."


# --------------------------------------------------------------------------------------------------
# The responses issue 19 quotes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt, answer, response, truncated, right", [
    # A correct answer followed by another equation: the second is for another expression.
    (q(962, "+", 3), 965, "962 + 3 = 965\n965 + 3 = 968", False, True),
    # A clause cut by the length limit: the cut "5" is ignored, the two complete results are right.
    (q(54, "*", 10), 540, "54 * 10 = 540. 54 * 10 = 540. 54 * 10 = 5", True, True),
    # The same text from a response that ended by itself states 5 for 54 * 10: a contradiction.
    (q(54, "*", 10), 540, "54 * 10 = 540. 54 * 10 = 540. 54 * 10 = 5", False, False),
    # No "=": "equals" introduces the result; the later "6 and 4" is no result.
    (q(6, "-", 4), 2, "6 - 4 equals 2. This is the difference between 6 and 4.", False, True),
    # A contradiction is wrong, whichever result comes last.
    (q(6, "*", 7), 42, "6 * 7 = 41. Sorry, 6 * 7 = 42.", False, False),
    # A restatement followed by another operator is a different expression: no result for 30 * 10.
    (q(30, "*", 10), 300, "30 * 10 + 30 = 300", False, False),
    (q(30, "*", 10), 330, "30 * 10 + 30 = 330", False, False),
    # Results for other expressions are ignored.
    (q(83, "+", 2), 85, "83 + 2 = 85\n85 + 2 = 87", False, True),
    # Negative results are read.
    (q(5, "-", 8), -3, "5 - 8 = -3", False, True),
    # A decimal equal to an integer counts as it.
    (q(6, "*", 7), 42, "6 * 7 = 42.0", False, True),
])
def test_the_issue_examples(prompt, answer, response, truncated, right):
    assert is_correct(response, answer, prompt=prompt, truncated=truncated) is right


def test_the_old_reading_misreads_the_issue_examples_as_the_issue_says():
    assert last_equation_answer("962 + 3 = 965\n965 + 3 = 968") == 968
    assert last_equation_answer("54 * 10 = 540. 54 * 10 = 540. 54 * 10 = 5") == 5
    assert last_equation_answer("6 - 4 equals 2. This is the difference between 6 and 4.") == 4


# --------------------------------------------------------------------------------------------------
# Clause by clause
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("response, right", [
    ("6 * 7 = 42", True),
    ("6*7=42", True),
    ("6 * 7 equals 42.", True),
    ("6 * 7 is 42.", True),
    ("6 * 7 is equal to 42.", True),
    ("6 * 7: 42", True),
    ("6 * 7, which is 42.", True),
    ("(6 * 7) = 42", True),
    ('The "6 * 7" is 42.', True),
    ("6 x 7 = 42", True),
    ("6 × 7 = 42", True),
    ("6 times 7 is 42", True),
    ("6 multiplied by 7 equals 42", True),
    ("7 * 6 = 42", True),                        # the commutative twin restates 6 * 7
    ("6 * 7 = 41", False),
    ("41 + 1 = 42. 6 * 7 = 41.", False),         # the result for the asked expression decides
    ("6 * 7 = 42. 6 * 7 = 42.", True),           # repeated, every one right
    ("6 * 7 = 42. 6 * 7 = 43.", False),          # every result must be right
    ("6 * 7 = 6 * 7 = 42", True),                # a chain is followed to its number
    ("6 * 7 = 40 + 2 = 42", True),
    ("6 * 7 = 40 + 3 = 43", False),
    ("6 * 7 = 6 * 7", False),                    # an expression left unevaluated states no result
    ("5 + 6 * 7 = 47. 6 * 7 = 42.", True),       # "5 + 6 * 7" is another expression
    ("6 * 7 * 2 = 84. 6 * 7 = 42.", True),       # so is "6 * 7 * 2"
    ("6 * 7 * 2 = 84.", False),                  # ... and it is the only one stated: no result for 6 * 7
    ("16 * 7 = 112", False),                     # not a restatement: 16 is no operand
    ("6 * 70 = 420", False),
    ("6 * 7.5 = 45", False),
    ("16 * 7 = 112. The answer is 42.", True),   # a statement of the answer is a result for the question
])
def test_results_for_the_asked_expression(response, right):
    assert is_correct(response, 42, prompt=q(6, "*", 7)) is right


def test_subtraction_is_not_commutative():
    # "4 - 9" does not restate 9 - 4; the result stated for 9 - 4 is 5.
    assert is_correct("4 - 9 = -5. 9 - 4 = 5.", 5, prompt=q(9, "-", 4))
    assert not is_correct("4 - 9 = 5.", 5, prompt=q(9, "-", 4))  # another expression's result, then no number


def test_a_statement_of_the_answer_counts_beside_the_restatements():
    # The model's own final answer contradicts its restated result: wrong (the restated 48 alone is right).
    response = "42 + 6 = 48\n42 + 6 = 48\n48 + 6 = 54\n\nThe answer is 54."
    assert not is_correct(response, 48, prompt=q(42, "+", 6))
    assert is_correct("42 + 6 = 48\n48 + 6 = 54", 48, prompt=q(42, "+", 6))
    assert is_correct("42 + 6 = 48.\n\nThe answer is 48.", 48, prompt=q(42, "+", 6))


@pytest.mark.parametrize("response, right", [
    ("The answer is 42.", True),
    ("The answer is 41.", False),
    ("Answer: 42", True),
    ("The product is 42.", True),
    ("It equals 42, or maybe 43.", True),            # the first number stated as a result counts
    ("The product is 41. It is 42.", False),
    ("3 + 4 = 7, so the product is 42.", True),      # 7 is the result of another expression
    ("3 + 4 = 42.", False),                          # ... even when it is the right number
    ("Six sevens: 42", True),
])
def test_without_a_restatement_the_first_stated_result(response, right):
    assert is_correct(response, 42, prompt=q(6, "*", 7)) is right


@pytest.mark.parametrize("response, right", [
    ("42", True),
    ("Multiplying 6 by 7 gives 42.", True),          # 6 and 7 are operands; 42 is the first other number
    ("Multiplying 6 by 7 gives 41, not 42.", False),
    ("Take 6 groups of 7.", False),                  # only operands: nothing stated
    ("I cannot say.", False),
    ("", False),
    ("3 + 4 = 7", False),                            # the result of another expression is no answer either
])
def test_without_a_stated_result_the_first_number_that_is_not_an_operand(response, right):
    assert is_correct(response, 42, prompt=q(6, "*", 7)) is right


@pytest.mark.parametrize("prompt, answer, response, right", [
    (q(123, "+", 892), 1015, "123 + 892 = 1,015.", True),
    (q(123, "+", 892), 1015, "123 + 892 = 1,016.", False),
    (q(6, "*", 7), 42, "6 * 7 = 42.00", True),
    (q(6, "*", 7), 42, "6 * 7 = 42.5", False),         # any other decimal is wrong
    (q(49, "*", 5), 245, "49 * 5 = 245.45", False),
    (q(5, "-", 8), -3, "5 - 8 = -3.", True),
    (q(5, "-", 8), -3, "5 - 8 = 3.", False),
    (q(5, "-", 8), -3, "5 \u2212 8 = \u22123", True),  # Unicode minus signs
    (q(5, "-", 8), -3, "The answer is -3.", True),
])
def test_numbers_commas_decimals_and_signs(prompt, answer, response, right):
    assert is_correct(response, answer, prompt=prompt) is right


@pytest.mark.parametrize("response, truncated, right", [
    ("6 * 7 = 4", True, False),                       # "4" may be the start of 42 or 49: ignored
    ("6 * 7 = 4", False, False),
    ("6 * 7 = 42", True, False),                      # touching the end: it could have been 420
    ("6 * 7 = 42", False, True),
    ("6 * 7 = 42.", True, True),                      # a full stop ends the number (hand audit)
    ("6 * 7 = 43.", True, False),                     # so a complete wrong answer stays wrong
    ("6 * 7 = 42,", True, False),                     # a comma may be a thousands group: 42,000
    ("6 * 7 = 42. 6 * 7 = 4", True, True),
    ("6 * 7 = 42 +", True, False),                    # a term cut after an operator
    ("6 * 7 = 42.\n\nIn other words, 6 * 7 =", True, True),    # a trailing clause with no result
    ("6 * 7 = 42.\n\nIn other words, 6 * 7 is", True, True),
    ("Multiplying 6 by 7 gives 42. It is often wr", True, True),
    ("Multiplying 6 by 7 gives 42 and", True, False),  # the only clause is cut and states no result
    ("Multiplying 6 by 7 gives 42 and", False, True),
    ("6 * 7 = 42. 6 * 7 = 43. 6 * 7 = 4", True, False),  # a complete wrong result is still wrong
])
def test_a_response_cut_at_the_length_limit(response, truncated, right):
    assert is_correct(response, 42, prompt=q(6, "*", 7), truncated=truncated) is right


def test_the_prompt_is_read_from_a_string_or_chat_messages():
    assert parse_question("What is 41 + 35? Answer briefly.") == (41, "+", 35)
    assert parse_question("What is 26 * 7? Answer briefly.") == (26, "*", 7)
    assert parse_question("What is 82 - 42? Answer briefly.") == (82, "-", 42)
    messages = [{"role": "system", "content": "Be brief. 1 + 1 = 2."},
                {"role": "user", "content": "What is 6 * 7?"}]
    assert parse_question(messages) == (6, "*", 7)
    assert is_correct("6 * 7 = 42", 42, prompt=messages)
    with pytest.raises(ValueError, match="last_equation"):
        is_correct("42", 42, prompt="Tell me a story.")


def test_every_bundled_prompt_parses_to_its_own_fact():
    for split in bundled.SPLITS:
        for row in bundled.load_rows("arithmetic", split):
            a, op, b = parse_question(row["prompt"])
            assert bundled.compute(a, op, b) == row["answer"], row["id"]
            assert is_correct(row["chosen"], row["answer"], prompt=row["prompt"]), row["id"]
            assert not is_correct(row["rejected"], row["answer"], prompt=row["prompt"]), row["id"]


def test_read_answer_says_which_clause_decided():
    prompt = q(6, "*", 7)
    assert read_answer("6 * 7 = 41. 6 * 7 = 42.", prompt=prompt).results == (41, 42)
    assert read_answer("6 * 7 = 41. 6 * 7 = 42.", prompt=prompt).rule == "restated"
    assert read_answer("It is 42.", prompt=prompt).rule == "stated_result"
    assert read_answer("Maybe 42?", prompt=prompt).rule == "first_number"
    assert read_answer("No idea.", prompt=prompt).rule == "none"
    assert read_answer("6 * 7 = 42.5", prompt=prompt).results == (None,)


# --------------------------------------------------------------------------------------------------
# Real responses from the published studies (benchmarks/*/responses), judged by hand
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt, answer, response, truncated, right", [
    (q(577, "+", 1), 578, "577 + 1 = 577 + 1 = 578", False, True),
    (q(88, "*", 10), 880, "88 * 10 = 88*10 = 880.", False, True),
    (q(31, "*", 2), 62, "31 * 2 = 63. 31 * 2 = 62. 63 + 62 = 105. 31 * 2 = 62.", False, False),
    (q(90, "+", 6), 96, "90 + 6 = 96\n90 + 6 = 96\n96 - 6 = 98\n\nSo, 90 + 6 = 96.", False, True),
    (q(7, "*", 7), 49, "7 * 7 = 49\n7 * 7 = 49\n\nSo, 7 * 7 = 44 seven is 7 times 7 is 49.", False, False),
    (q(49, "*", 5), 245, "49 * 5 = 245. 245 is 5 times 49. 245 is 1225.", False, True),
    (q(80, "*", 8), 640, "To calculate 80 * 8, you multiply 8 * 8, which equals 64. So, 80 * 8 equals 640.\n\n"
     "This is a common multiplication shortcut that can be applied to any number multiplied by itself.", False, True),
    (q(40, "+", 40), 80, "40 + 40 = 440.\n\nIn a logical thinking, 40 + 40 equals 80, which is the total sum of "
     "40 numbers.", False, False),
    (q(681, "+", 1), 682, "681 is equal to 681 + 1, which is 682. So, 681 + 1 equals 682.", False, True),
    (q(14, "+", 41), 55, "14 + 41 = 55\n\nThis is a classic example of a simple equation with a variable, where "
     "the result is the sum of two numbers. In this case, 14 + 41 =", True, True),
    (q(34, "*", 10), 340, "34 * 10 = 344.\n\nThis is a multi-digit multiplication problem, and 344 is equivalent "
     "to 34 x 10 + 3 x 10 + 4", True, False),
    (q(11, "+", 14), 25, '11 + 14 = 25\n\nThis is a classic example of the "11 + 14 = 125" identity, where the sum '
     "of 11 + 14 equals 2", True, False),
    (q(93, "+", 4), 97, "93 + 4 = 97\n93 + 4 = 97\n93 + 4 = 97\n93 + 4 = 97\n93 + 4 = 9", True, True),
    (q(97, "*", 8), 776, "97 * 8 = 1,054\n\nSo, 97 * 8 = 764.", False, False),
    (q(20, "*", 5), 100, "Two-hundred and five (20 * 5) is equal to two-hundred and five (20 * 5) which is equal "
     "to 100.\n\nIn a more precise way, 20 * 5 = 100.", False, True),
    (q(923, "+", 4), 927, "923 + 4 = 925\n923 + 4 = 925\n925 is 923 + 4 = 927", False, False),
    (q(30, "*", 10), 300, "To calculate 30 * 10, you multiply 30 by 10, which gives you 300.", False, True),
    (q(78, "*", 10), 780, "To calculate 78 * 10, you multiply 78 by 10, which gives you 78.\n\nThis is a common "
     "multiplication shortcut that can be applied to any number multiplied by a multiplier.", False, False),
    # Cut at the limit right after "86.": a finished statement of a wrong answer, a contradiction (hand audit).
    (q(32, "+", 17), 49, "32 + 17 = 49\n32 + 17 = 49\n32 + 17 = 49\n49 = 86\n\nThe answer is 86.", True, False),
    (q(60, "*", 8), 480, "60 * 8 = 400.", True, False),
    # The hand audit's clause-3 cases: numbers inside another written-out expression are no answer.
    (q(447, "+", 1), 448, "447 is the result of 1 + 448, which is 5 doublies.", False, False),
    (q(267, "+", 1), 268, "267 is the result of 1 + 268, which is 43, which is the sum of 267 and 1.", False, False),
    (q(32, "+", 5), 37, "37 + 5 = 39.37", False, False),
    (q(32, "+", 17), 49, "32 + 17 = 49\n32 + 17 = 49\n32 + 17 = 49\n49 = 86\n\nThe answer is 86.", False, False),
    (q(81, "+", 4), 85, "To add 81 and 4, you simply add them together: 81 + 4 = 85.\n\nIn a math problem, the answer "
     "is often rounded to the nearest integer, so 85 is 81 + 4 = 85 + 4 = 8", True, True),
    (q(68, "*", 2), 136, "68 * 2 is equal to 14. So, 68 * 2 is 14*2 = 12.\n\nThis is the result of multiplying 68 "
     "by itself, which is 682, and then adding 1.", False, False),
])
def test_published_responses(prompt, answer, response, truncated, right):
    assert is_correct(response, answer, prompt=prompt, truncated=truncated) is right


def _published(reading: str):
    """Every published response of the arithmetic studies whose judge used ``reading`` (their evaluation.json says
    which; the studies before issue 19 name none: the old reading). Studies of another task (their prompts come
    from another source) have no answer to read."""
    for path in sorted((ROOT / "benchmarks").glob("*/responses")):
        evaluation = json.loads((path.parent / "evaluation.json").read_text())
        if not evaluation["prompts"]["source"].startswith("bundled:arithmetic"):
            continue
        if evaluation["judge"].get("extraction", "last_equation") != reading:
            continue
        for jsonl in sorted(path.glob("*.jsonl")):
            for line in jsonl.read_text(encoding="utf-8").splitlines():
                yield json.loads(line)


def test_the_old_reading_is_unchanged_on_every_published_response():
    """The tables before issue 19 were scored by the old reading: it still gives each response its published score."""
    answers = {row["prompt"]: row["answer"] for row in bundled.load_rows("arithmetic", "test")}
    seen = 0
    for record in _published("last_equation"):
        old = is_correct_last_equation(record["response"], answers[record["prompt"]])
        assert old == (record["score"] == 1.0), record
        assert bundled.is_correct(record["response"], answers[record["prompt"]]) == old
        seen += 1
    assert seen >= 5000


def test_the_new_reading_gives_every_later_published_response_its_score():
    """The confirmation and the bf16 check were scored by the asked-expression reading, truncation included."""
    answers = {row["prompt"]: row["answer"] for row in bundled.load_rows("arithmetic", "test")}
    seen = 0
    for record in _published("asked_expression"):
        right = is_correct(record["response"], answers[record["prompt"]], prompt=record["prompt"],
                           truncated=record["stopped"] == "length")
        assert right == (record["score"] == 1.0), record
        seen += 1
    assert seen >= 4000


def test_score_response_selects_the_reading():
    prompt, response = q(962, "+", 3), "962 + 3 = 965\n965 + 3 = 968"
    assert EXTRACTIONS == ("asked_expression", "last_equation")
    assert score_response(response, 965, prompt=prompt) is True
    assert score_response(response, 965, prompt=prompt, extraction="asked_expression") is True
    assert score_response(response, 965, prompt=prompt, extraction="last_equation") is False
    with pytest.raises(ValueError, match="extraction='first'.*asked_expression, last_equation"):
        score_response(response, 965, prompt=prompt, extraction="first")
