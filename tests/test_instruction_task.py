"""The instruction-following task: each constraint and the real-answer gate on hand-written responses
(degenerate ones included; every expected value decided by reading the response), the rows' errors,
and the request generator (deterministic, train and test sharing no request)."""

import subprocess
import sys

import pytest

from lit_idpo.data.tasks import constraints as con
from lit_idpo.data.tasks import instructions as task
from lit_idpo.errors import ConfigError, DataError


def passes(spec, response, truncated=False):
    return task.is_correct({"id": "r1", "constraints": [spec]}, response, truncated)


# --------------------------------------------------------------------------------------------------
# The real-answer gate
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("response, real", [
    ("The sky looks blue because air scatters blue light most.", True),
    ("", False),
    ("   \n  ", False),
    ("Blue sky.", False),                        # two words
    ("1 2 3 4 5", False),                        # numbers only: no word with a letter
    ("42 is the answer", True),                  # three words with letters
    ("blue blue blue blue", False),              # one word repeated
    ("Blue sky blue", False),                    # 'blue' is 2 of 3 words
    ("Yes, yes, I agree.", True),                # 'yes' is 2 of 4 words: not more than half
    ("I like rain.\nI like rain.", False),       # the same line twice
    ("I like rain. I like rain. It is nice.", False),  # the same sentence twice in one line
    ("- Red apples.\n* red apples", False),      # the same item, whatever its marker and case
    ("Rain falls. Snow falls. Hail falls.", True),  # similar sentences, none the same
    ("Thanks! Thanks! I will come at noon.", True),  # a repeated one-word sentence is not a repeated unit
])
def test_real_answer_gate(response, real):
    assert (task.answer_problem(response) is None) == real


def test_a_truncated_response_never_passes():
    assert passes({"type": "lowercase"}, "rain falls from grey clouds.")
    assert not passes({"type": "lowercase"}, "rain falls from grey clouds.", truncated=True)
    assert task.verify({"constraints": [{"type": "lowercase"}]}, "rain falls", True).problem == "truncated"


def test_verify_reports_each_constraint_even_when_the_gate_fails():
    row = {"constraints": [{"type": "no_commas"}, {"type": "include_word", "word": "blue"}]}
    result = task.verify(row, "blue")
    assert result == task.Verification(False, "fewer than 3 words", (("no_commas", True), ("include_word", True)))
    result = task.verify(row, "The sea is blue, and calm.")
    assert result == task.Verification(False, None, (("no_commas", False), ("include_word", True)))


# --------------------------------------------------------------------------------------------------
# Each constraint: right, wrong, and degenerate ways to satisfy it
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, response, expected", [
    # all lowercase
    ({"type": "lowercase"}, "rain falls when clouds get heavy.", True),
    ({"type": "lowercase"}, "Rain falls when clouds get heavy.", False),
    ({"type": "lowercase"}, "rain falls, i think, when it's ÉTÉ.", False),  # a capital outside ASCII
    ({"type": "lowercase"}, "", False),
    ({"type": "lowercase"}, "rain", False),                     # one word: no real answer
    ({"type": "lowercase"}, "123 456 789", False),              # no letters at all
    # no commas
    ({"type": "no_commas"}, "Rain falls when the clouds are full.", True),
    ({"type": "no_commas"}, "Rain falls, then it stops.", False),
    ({"type": "no_commas"}, "Rain falls，then it stops.", False),  # the full-width comma
    ({"type": "no_commas"}, "Rain", False),                     # one word has no commas, and is no answer
    # exactly N bullet points
    ({"type": "bullets", "n": 3}, "Pack these:\n- a water bottle\n- a warm hat\n* some snacks", True),
    ({"type": "bullets", "n": 3}, "- a water bottle\n- a warm hat", False),
    ({"type": "bullets", "n": 3}, "- water\n- hat\n- snacks\n- map", False),
    ({"type": "bullets", "n": 3}, "- \n- \n- ", False),                              # three empty bullets
    ({"type": "bullets", "n": 3}, "Pack these:\n- water\n-\n- snacks", False),      # one empty bullet
    ({"type": "bullets", "n": 3}, "Bring a bag.\n- water\n- water\n- water", False),  # the same item thrice
    ({"type": "bullets", "n": 3}, "Pack these:\n1. water\n2. hat\n3. snacks", False),  # numbered, not bullets
    ({"type": "bullets", "n": 2}, "**Pack** these two:\n---\n- water bottle\n- warm hat", True),  # rule, bold
    # a numbered list of exactly N items
    ({"type": "numbered", "n": 3}, "1. Apples\n2. Pears\n3) Plums", True),
    ({"type": "numbered", "n": 3}, "1. Apples\n3. Pears\n2. Plums", False),         # not in order
    ({"type": "numbered", "n": 3}, "1. Apples\n2. Pears", False),
    ({"type": "numbered", "n": 3}, "Fruits I like:\n1.\n2.\n3.", False),              # empty items
    ({"type": "numbered", "n": 2}, "Use 1.5 cups of flour.\n1. Mix well\n2. Bake it", True),  # 1.5 is no item
    # at most / at least N words
    ({"type": "max_words", "n": 10}, "Rain is water falling from clouds.", True),
    ({"type": "max_words", "n": 5}, "Rain is water falling from clouds.", False),   # six words
    ({"type": "max_words", "n": 5}, "Rain isn't well-known here.", True),           # four words
    ({"type": "max_words", "n": 10}, "Rain", False),                                # too short to be an answer
    ({"type": "min_words", "n": 8}, "Rain is water that falls from the clouds above.", True),
    ({"type": "min_words", "n": 8}, "Rain is water from clouds.", False),
    ({"type": "min_words", "n": 8}, "rain rain rain rain rain rain rain rain falls", False),  # padded by repeats
    # include the word X / at least N times
    ({"type": "include_word", "word": "blue"}, "The sea looks Blue at noon.", True),
    ({"type": "include_word", "word": "blue"}, "The sea looks bluish at noon.", False),
    ({"type": "include_word", "word": "blue"}, "The sea looks blue-green at noon.", False),  # one word, not blue
    ({"type": "include_word", "word": "blue"}, "blue blue blue blue", False),
    ({"type": "include_word", "word": "blue"}, "blue", False),
    ({"type": "keyword_count", "word": "good", "n": 2}, "Good food and good friends make a day.", True),
    ({"type": "keyword_count", "word": "good", "n": 2}, "Good food makes a day.", False),
    ({"type": "keyword_count", "word": "good", "n": 2}, "good good good day", False),  # one word is 3 of 4
    # start with the word X
    ({"type": "start_word", "word": "Sure"}, "Sure, here is a simple idea for dinner.", True),
    ({"type": "start_word", "word": "Sure"}, '**"sure** thing, here it is."', True),   # markup before it
    ({"type": "start_word", "word": "Sure"}, "Surely this is a simple dinner.", False),
    ({"type": "start_word", "word": "Sure"}, "Here is a simple dinner. Sure.", False),
    ({"type": "start_word", "word": "Sure"}, "Sure.", False),
    # end with the exact phrase X
    ({"type": "end_phrase", "phrase": "That is all."}, "Rain falls from clouds. That is all.", True),
    ({"type": "end_phrase", "phrase": "That is all."}, "Rain falls from clouds. that is all.  \n", True),
    ({"type": "end_phrase", "phrase": "That is all."}, '"Rain falls from clouds. That is all."', True),
    ({"type": "end_phrase", "phrase": "That is all."}, "Rain falls from clouds. That is all. Bye!", False),
    ({"type": "end_phrase", "phrase": "That is all."}, "Rain falls from clouds. That is all", False),
    ({"type": "end_phrase", "phrase": "Is there anything else I can help with?"},
     "Is there anything else I can help with?", False),                              # the phrase alone
    ({"type": "end_phrase", "phrase": "That is all."}, "Rain. That is all.", False),  # one word before it
    # wrap the whole answer in double quotes
    ({"type": "quotes"}, '"The sea is calm today."', True),
    ({"type": "quotes"}, '  “The sea is calm today.”\n', True),
    ({"type": "quotes"}, 'The sea is "calm" today.', False),
    ({"type": "quotes"}, '"The sea is calm today.', False),
    ({"type": "quotes"}, '""', False),
    ({"type": "quotes"}, '"   "', False),
    ({"type": "quotes"}, '"calm"', False),                                            # one word
    # exactly N sentences
    ({"type": "sentences", "n": 2}, "Rain falls from clouds. It waters the fields!", True),
    ({"type": "sentences", "n": 2}, "Sure! Rain falls from clouds when they are heavy.", True),  # one short one
    ({"type": "sentences", "n": 2}, "Rain falls from clouds, e.g. in spring. It waters the fields.", True),
    ({"type": "sentences", "n": 2}, "Rain falls from clouds.", False),
    ({"type": "sentences", "n": 2}, "Rain falls. It waters fields. It stops.", False),
    ({"type": "sentences", "n": 3}, "Yes. No. Rain falls from grey clouds.", False),  # two of three too short
    ({"type": "sentences", "n": 1}, "Rain falls from clouds", True),                  # no full stop needed
    ({"type": "sentences", "n": 2}, "Rain falls from clouds\nIt waters the fields", True),  # a line ends one
    # a title in <<double angular brackets>>
    ({"type": "title"}, "<<Rainy Days>>\nRain falls from grey clouds.", True),
    ({"type": "title"}, "<<Rainy Days>>", False),                                     # a title and no answer
    ({"type": "title"}, "<<>> Rain falls from grey clouds.", False),                  # an empty title
    ({"type": "title"}, "<Rainy Days> Rain falls from grey clouds.", False),
    # no word longer than N letters
    ({"type": "max_word_length", "n": 6}, "I like well-known cats and dogs.", True),  # 'well', 'known'
    ({"type": "max_word_length", "n": 6}, "I like beautiful cats and dogs.", False),
    ({"type": "max_word_length", "n": 6}, "I like 1234567 cats and dogs.", True),     # digits are no letters
])
def test_constraint(spec, response, expected):
    assert passes(spec, response) is expected


def test_every_constraint_describes_itself_and_round_trips_its_spec():
    examples = [{"type": "lowercase"}, {"type": "no_commas"}, {"type": "bullets", "n": 3},
                {"type": "numbered", "n": 3}, {"type": "max_words", "n": 10}, {"type": "min_words", "n": 30},
                {"type": "include_word", "word": "blue"}, {"type": "keyword_count", "word": "good", "n": 2},
                {"type": "start_word", "word": "Sure"}, {"type": "end_phrase", "phrase": "That is all."},
                {"type": "quotes"}, {"type": "sentences", "n": 2}, {"type": "title"},
                {"type": "max_word_length", "n": 6}]
    assert sorted(s["type"] for s in examples) == sorted(con.CONSTRAINTS)
    for spec in examples:
        c = con.constraint_from_spec(spec)
        assert c.spec() == spec and c.describe().endswith(".")
    assert con.constraint_from_spec({"type": "bullets", "n": 3}).describe() == (
        'Answer with exactly 3 bullet points, each on its own line starting with "- ".')
    assert con.constraint_from_spec({"type": "sentences", "n": 1}).describe() == "Answer in exactly one sentence."


@pytest.mark.parametrize("row, message", [
    ({"id": "r7"}, r"row 'r7' has constraints=None; it needs a non-empty list"),
    ({"id": "r7", "constraints": []}, r"row 'r7' has constraints=\[\]"),
    ({"id": "r7", "constraints": [{"type": "shout"}]}, r"row 'r7', field 'constraints': constraint 'shout' is unknown"),
    ({"id": "r7", "constraints": [{"type": "bullets"}]}, r"'bullets' takes the parameters \['n'\], got \[\]"),
    ({"id": "r7", "constraints": [{"type": "max_words", "n": 2}]}, r"n=2; it must be an integer >= 3"),
    ({"id": "r7", "constraints": [{"type": "bullets", "n": True}]}, r"n=True; it must be an integer >= 1"),
    ({"id": "r7", "constraints": [{"type": "include_word", "word": "two words"}]}, r"it must be one word"),
    ({"id": "r7", "constraints": ["lowercase"]}, r"constraint 'lowercase' is unknown; each constraint is a mapping"),
])
def test_a_bad_row_names_the_row_and_the_field(row, message):
    with pytest.raises(DataError, match=message):
        task.is_correct(row, "some real answer here")


# --------------------------------------------------------------------------------------------------
# The request generator
# --------------------------------------------------------------------------------------------------


def test_requests_are_distinct_and_the_splits_share_none():
    assert len(task.REQUESTS) == len(set(task.REQUESTS)) >= 60
    split = task.split_requests(seed=0)
    assert not set(split["train"]) & set(split["test"])
    assert sorted(split["train"] + split["test"]) == sorted(task.REQUESTS)
    assert len(split["test"]) == 20  # a quarter of 80
    train, test = task.make_requests("train", 300), task.make_requests("test", 100)
    assert not {r["request"] for r in train} & {r["request"] for r in test}
    assert {r["request"] for r in test} == set(split["test"])  # 100 rows cycle through all 20 test requests


def test_rows_are_deterministic_well_formed_and_unique():
    rows = task.make_requests("train", 200, seed=3)
    assert rows == task.make_requests("train", 200, seed=3)
    assert rows != task.make_requests("train", 200, seed=4)
    assert [r["id"] for r in rows[:2]] == ["instructions-train-00000", "instructions-train-00001"]
    keys = set()
    for row in rows:
        assert row["task"] == "instructions" and 1 <= len(row["constraints"]) <= 2
        cs = [con.constraint_from_spec(s) for s in row["constraints"]]
        assert row["prompt"] == " ".join([row["request"]] + [c.describe() for c in cs])
        types = [c.type for c in cs]
        assert len(set(types)) == len(types) and frozenset(types) not in task.CONFLICTS
        keys.add((row["request"], str(sorted(map(str, row["constraints"])))))
    assert len(keys) == len(rows)
    assert 0.3 < sum(len(r["constraints"]) == 2 for r in rows) / len(rows) < 0.7  # two_share 0.5


def test_the_generator_draws_only_the_allowed_types_and_parameters():
    rows = task.make_requests("test", 60, constraint_types=["no_commas", "max_words"],
                              menu={"no_commas": [{}], "max_words": [{"n": 12}]})
    specs = [s for r in rows for s in r["constraints"]]
    assert {s["type"] for s in specs} == {"no_commas", "max_words"}
    assert all(s == {"type": "max_words", "n": 12} for s in specs if s["type"] == "max_words")
    only_one = task.make_requests("test", 10, constraint_types=["lowercase"], two_share=1.0)
    assert all(r["constraints"] == [{"type": "lowercase"}] for r in only_one)
    # A set of types (whose order follows the hash seed) gives the rows of its sorted list.
    assert (task.make_requests("test", 30, constraint_types={"title", "quotes", "no_commas"})
            == task.make_requests("test", 30, constraint_types=["no_commas", "quotes", "title"]))


@pytest.mark.parametrize("kwargs, message", [
    ({"constraint_types": ["shout"]}, r"constraint_types \['shout'\]: each must be one of lowercase"),
    ({"constraint_types": []}, r"constraint_types \[\]"),
    ({"menu": {"max_words": [{"n": 1}]}, "constraint_types": ["max_words"]}, r"menu: n=1; it must be an integer >= 3"),
    ({"split": "dev"}, r"split='dev'; choose train or test"),
    ({"two_share": 1.5}, r"two_share=1.5; it must be in \[0, 1\]"),
    ({"count": 21, "constraint_types": ["lowercase"]}, r"21 distinct test rows asked, but only 20"),
])
def test_generator_errors_name_the_fix(kwargs, message):
    kwargs = {"split": "test", "count": 5, **kwargs}
    with pytest.raises(ConfigError, match=message):
        task.make_requests(**kwargs)


def test_the_task_imports_no_torch():
    code = ("import sys, lit_idpo.data.tasks.instructions, lit_idpo.data.tasks; "
            "lit_idpo.data.tasks.task_verifier('arithmetic'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'transformers')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
