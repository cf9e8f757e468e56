"""The rule judge's verifiers: the bundled task a row belongs to, and the user's own (``judge.verifier``),
end to end through ``lit-idpo evaluate`` with a verifier written by the test, and every error it can give."""

import json
import sys
import textwrap

import pytest

from lit_idpo import evaluation as ev
from lit_idpo.data.tasks import instructions
from lit_idpo.errors import ConfigError, UserError, VerifierError
from lit_idpo.evaluation import Comparison, RuleJudge

CHECKS = '''
CALLS = []


def parity(row, response, truncated):
    CALLS.append((dict(row), response, truncated))
    return len(response) % 2 == row["parity"]


def explode(row, response, truncated):
    return 1 / 0


def score(row, response, truncated):
    return 1


def two_arguments(row, response):
    return True


NOT_A_FUNCTION = 3
'''


@pytest.fixture
def checks(tmp_path, monkeypatch):
    """A verifier module written into tmp_path, the working directory, under a name used nowhere else.

    The working directory is not on sys.path here, so loading it also shows that the verifier is looked
    for there; sys.path and sys.modules are restored afterwards."""
    name = "lit_idpo_test_checks"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(CHECKS))
    (tmp_path / "broken_checks.py").write_text("def oops(:\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield name
    sys.modules.pop(name, None)
    sys.modules.pop("broken_checks", None)


# --------------------------------------------------------------------------------------------------
# End to end: lit-idpo evaluate with the user's verifier, from a YAML config
# --------------------------------------------------------------------------------------------------

ROWS = [{"id": f"q{i}", "prompt": f"Say something about the number {i}.", "chosen": "It is small.",
         "rejected": "No.", "parity": i % 2, "note": "kept"} for i in range(4)]


def _run_cli(argv):
    from lit_idpo.cli import main

    main(argv)


def test_evaluate_uses_the_verifier_named_in_yaml(tmp_path, checks, capsys):
    import yaml

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    config = {"model": ["a=tiny-llama", "b=tiny-gpt2"], "output_dir": str(tmp_path / "out"),
              "cache_dir": str(tmp_path / "cache"), "data": {"source": str(data), "split": "train"},
              "generation": {"max_new_tokens": 3, "device": "cpu"},
              "judge": {"name": "rule", "verifier": f"{checks}:parity"}, "progress": False}
    (tmp_path / "evaluate.yaml").write_text(yaml.safe_dump(config))
    _run_cli(["evaluate", "--config", str(tmp_path / "evaluate.yaml")])

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["judge"] == {"name": "rule", "verifier": f"{checks}:parity"}
    assert f"verifier: `{checks}:parity`" in capsys.readouterr().out
    right = {}
    for model in ("a", "b"):
        lines = [json.loads(x) for x in (tmp_path / "out" / "responses" / f"{model}.jsonl").read_text().splitlines()]
        assert "readings" not in lines[0]  # the arithmetic readings are not the user's verifier's
        for line in lines:  # the score is the verifier's verdict, recomputed here from the row by hand
            expected = len(line["response"]) % 2 == ROWS[line["prompt_index"]]["parity"]
            assert line["score"] == (1.0 if expected else 0.0)
            right[model, line["prompt_index"]] = expected
    for verdict in map(json.loads, (tmp_path / "out" / "judgments.jsonl").read_text().splitlines()):
        p = verdict["prompt_index"]
        a, b = right[verdict["A"], p], right[verdict["B"], p]
        assert verdict["winner"] == ("tie" if a == b else ("A" if a else "B"))
    calls = sys.modules[checks].CALLS
    assert calls and all(row == ROWS[int(row["id"][1:])] for row, _, _ in calls)  # the whole source row
    assert {truncated for _, _, truncated in calls} <= {True, False}

    # The same generations (cached) with a verifier that raises, and one that returns no bool:
    # each is one line naming the prompt, the model, the verifier, the row and the exception.
    base = ["evaluate", "--config", str(tmp_path / "evaluate.yaml"), "--output_dir", str(tmp_path / "out2")]
    for function, message in (("explode", f"lit-idpo: error: prompt index 0 (model a): judge.verifier "
                                          f"'{checks}:explode' raised ZeroDivisionError: division by zero on a "
                                          f"response to the row (id 'q0', prompt 'Say something about the number "
                                          f"0.'); fix the verifier"),
                              ("score", f"lit-idpo: error: prompt index 0 (model a): judge.verifier '{checks}:score' "
                                        f"returned 1 (int) for a response to the row (id 'q0',")):
        with pytest.raises(SystemExit) as exit_info:
            _run_cli(base + ["--judge.verifier", f"{checks}:{function}"])
        assert exit_info.value.code == 2
        last = capsys.readouterr().err.splitlines()[-1]  # progress lines go to stderr before it
        assert last.startswith(message), last


# --------------------------------------------------------------------------------------------------
# Errors in naming the verifier: one ConfigError line each, before anything is generated
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ("lit_idpo_test_checks", r"judge.verifier='lit_idpo_test_checks' is not of the form package.module:function; "
                             r"write e.g. judge.verifier: my_checks:is_correct"),
    ("a:b:c", r"is not of the form package.module:function"),
    (":parity", r"is not of the form"),
    ("lit_idpo_test_checks:", r"is not of the form"),
    ("my checks:parity", r"is not of the form"),
    ("no_such_module_xyz:f", r"judge.verifier='no_such_module_xyz:f': module 'no_such_module_xyz' cannot be imported "
                             r"\(ModuleNotFoundError: No module named 'no_such_module_xyz'\); install it, or put its "
                             r"folder on PYTHONPATH"),
    ("broken_checks:oops", r"module 'broken_checks' cannot be imported \(SyntaxError: "),
    ("lit_idpo_test_checks:nope", r"module 'lit_idpo_test_checks' has no attribute 'nope'; name one of its functions "
                                  r"after the colon \(explode, parity, score, two_arguments\)"),
    ("lit_idpo_test_checks:parity.inner", r"lit_idpo_test_checks:parity has no attribute 'inner'"),
    ("lit_idpo_test_checks:NOT_A_FUNCTION", r"names an object of type 'int', not a function"),
    ("lit_idpo_test_checks:two_arguments", r"takes \(row, response\), but it is called as "
                                           r"function\(row, response, truncated\)"),
])
def test_a_verifier_that_cannot_be_loaded_is_a_config_error(checks, spec, message):
    with pytest.raises(ConfigError, match=message):
        RuleJudge(verifier=spec)


def test_the_cli_names_a_bad_verifier_in_one_line(checks, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _run_cli(["evaluate", "--model", "a=tiny-llama", "--model", "b=tiny-gpt2", "--output_dir", "x",
                  "--judge.verifier", "no_such_module_xyz:f"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lit-idpo: error: judge.verifier='no_such_module_xyz:f': module") and err.count("\n") == 1


def test_the_verifier_excludes_the_arithmetic_options(checks):
    with pytest.raises(ConfigError, match=r"judge.verifier is set, so judge.extraction \(read only by the bundled "
                                          r"arithmetic task\) would be ignored; remove it"):
        ev.JudgeOptions(verifier=f"{checks}:parity", extraction="last_equation").build()
    judge = ev.JudgeOptions(verifier=f"{checks}:parity").build()
    assert judge.describe() == {"name": "rule", "verifier": f"{checks}:parity"}
    assert judge.score("q", "ab", {"parity": 0}) == 1.0 and judge.score("q", "abc", {"parity": 0}) == 0.0


def test_a_verifier_that_raises_or_returns_no_bool_is_a_verifier_error(checks):
    row = {"id": "r9", "prompt": "Name a colour.", "parity": 0}
    with pytest.raises(VerifierError, match=r"judge.verifier 'lit_idpo_test_checks:explode' raised ZeroDivisionError: "
                                            r"division by zero on a response to the row \(id 'r9', prompt "
                                            r"'Name a colour.'\)"):
        RuleJudge(verifier=f"{checks}:explode").judge([Comparison("Name a colour.", "red", "blue", row)])
    with pytest.raises(VerifierError, match=r"returned 1 \(int\) .* it must return True or False"):
        RuleJudge(verifier=f"{checks}:score").score("Name a colour.", "red", row)


# --------------------------------------------------------------------------------------------------
# Without judge.verifier: the bundled task each row belongs to
# --------------------------------------------------------------------------------------------------


def test_rows_with_constraints_are_judged_by_the_instructions_task():
    row = {"id": "i1", "prompt": "Describe rain. Answer in all lowercase letters.",
           "constraints": [{"type": "lowercase"}]}
    good, bad = "rain falls from grey clouds.", "Rain falls from grey clouds."
    judge = RuleJudge()
    assert judge.task_of(row) == "instructions"
    assert judge.score(row["prompt"], good, row) == 1.0 and judge.score(row["prompt"], bad, row) == 0.0
    assert judge.score(row["prompt"], good, row, truncated=True) == 0.0
    [verdict] = judge.judge([Comparison(row["prompt"], bad, good, row)])
    assert verdict.winner == "B"
    # The task field names the task outright; arithmetic rows keep their reading.
    assert judge.task_of({"task": "instructions", "constraints": []}) == "instructions"
    assert judge.task_of({"answer": 5}) == "arithmetic"
    assert judge.score("What is 2 + 3?", "2 + 3 = 5", {"answer": 5}) == 1.0
    assert instructions.is_correct(row, good, False)


@pytest.mark.parametrize("row, message", [
    ({"id": 3, "prompt": "Tell me a joke."},
     r"rule judge: the prompt row \(id 3, prompt 'Tell me a joke.'\) belongs to no bundled task \(fields: "
     r"\['id', 'prompt'\]\): it has no 'task' field naming one of arithmetic, instructions, no 'constraints' "
     r"\(instructions\) and no 'answer' field \(arithmetic\). Name your own verifier with "
     r"judge.verifier: my_checks:is_correct"),
    ({"task": "poetry"}, r"the row's 'task' field is 'poetry', which names no bundled task \(they are arithmetic, "
                         r"instructions\).*judge.verifier"),
    ({"answer": 3, "constraints": []}, r"has both 'constraints' \(the instructions task\) and 'answer'.*add a 'task' "
                                       r"field"),
    ({"answer": "three"}, r"rule judge \(arithmetic task\): field 'answer' is 'three'; it must be an integer"),
    ({"constraints": [{"type": "shout"}]}, r"instructions task: a row, field 'constraints': constraint 'shout'"),
])
def test_a_row_of_no_known_task_names_the_fix(row, message):
    with pytest.raises(UserError, match=message):  # a ConfigError, or a DataError for a bad constraint
        RuleJudge().score("What is 1 + 1?", "2", row)


def test_a_non_arithmetic_prompt_with_an_answer_points_to_the_verifier():
    with pytest.raises(ConfigError, match=r"asks no arithmetic expression.*judge.extraction: last_equation.*"
                                          r"judge.verifier: package.module:function"):
        RuleJudge().score("Tell me a story.", "42", {"answer": 42})


def test_help_documents_the_verifier_with_an_example(capsys):
    with pytest.raises(SystemExit):
        ev.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--judge.verifier VERIFIER" in text
    assert "``function(row, response, truncated) -> bool``" in text and "verifier: my_checks:is_correct" in text
