"""lit-idpo evaluate audits its instrument (issue 19): the share of responses cut at max_new_tokens per model,
with a warning above 5 %, and how many responses the rule judge's two answer readings score differently.

The models' responses are scripted (generation is replaced), so every expected count is worked out by hand
from the scripts below.
"""

from __future__ import annotations

import json

import pytest

from lit_idpo import evaluation as ev
from lit_idpo.evaluation import RuleJudge
from lit_idpo.evaluation.generation import Generation

# The first four prompts of bundled:arithmetic's test split: 577 + 1, 26 * 7, 63 + 35, 42 * 3.
SCRIPTS = {
    "a": [("577 + 1 = 578.", "eos"), ("26 * 7 = 182.", "eos"), ("63 + 35 = 98.", "eos"), ("42 * 3 = 126.", "eos")],
    "b": [
        # right for 577 + 1; the old reading takes the last equation's 579: right only under asked_expression
        ("577 + 1 = 578\n578 + 1 = 579", "eos"),
        # cut at the limit: the "18" touching the end is ignored: right only under asked_expression
        ("26 * 7 = 182. 26 * 7 = 18", "length"),
        # a contradiction: wrong; the old reading takes the last 98: right only under last_equation
        ("63 + 35 = 97. Sorry, 63 + 35 = 98.", "eos"),
        ("42 * 3 = 126.", "eos"),  # right under both
    ],
}


@pytest.fixture
def scripted(monkeypatch):
    """Generation returns SCRIPTS[model name] instead of running the model."""
    from lit_idpo.evaluation import generation

    def fake(spec, todo, ids_list, keys, options, tokenizer, cache, done, progress):
        for i in todo:
            text, stopped = SCRIPTS[spec.name][i]
            done[keys[i]] = Generation(text, 5, stopped, len(ids_list[i]))

    monkeypatch.setattr(generation, "_generate_missing", fake)


def _evaluate(tmp_path, extraction):
    models = ev.parse_model_specs(["a=tiny-llama", "b=tiny-gpt2"])
    return ev.evaluate(models, tmp_path / extraction, judge=RuleJudge(extraction=extraction),
                       data=ev.DataOptions(limit=4), generation=ev.GenerationOptions(max_new_tokens=5, device="cpu"),
                       cache_dir=tmp_path / extraction / "cache", progress=False)


def test_truncation_share_warning_and_reading_disagreements(tmp_path, scripted, capsys):
    results = _evaluate(tmp_path, "asked_expression")
    models = {m["name"]: m for m in results["models"]}
    assert results["judge"]["extraction"] == "asked_expression"

    # Truncation: b stopped at the limit once in four (25 %), a never.
    assert models["a"]["generation"]["stopped_at_max_new_tokens_share"] == 0.0
    assert models["b"]["generation"]["stopped_at_max_new_tokens"] == 1
    assert models["b"]["generation"]["stopped_at_max_new_tokens_share"] == 0.25
    assert results["truncation"]["over"] == ["b"] and results["truncation"]["threshold"] == 0.05
    assert "b (25.0 %)" in results["truncation"]["warning"]
    stderr = capsys.readouterr().err
    assert "WARNING" in stderr and "b (25.0 %)" in stderr and "max_new_tokens=5" in stderr

    # Readings: b's prompts 0 and 1 are right only under asked_expression, prompt 2 only under last_equation.
    assert models["a"]["readings"]["disagree"] == 0
    assert models["b"]["readings"] == {
        "extraction": "asked_expression", "responses": 4, "correct": {"asked_expression": 3, "last_equation": 2},
        "disagree": 3, "right_only_under": {"asked_expression": 2, "last_equation": 1}}
    assert models["b"]["score"]["mean"] == 0.75  # 3 of 4 right under the judge's reading
    lines = (tmp_path / "asked_expression" / "responses" / "b.jsonl").read_text().splitlines()
    assert [json.loads(line)["readings"] for line in lines] == [
        {"asked_expression": 1.0, "last_equation": 0.0}, {"asked_expression": 1.0, "last_equation": 0.0},
        {"asked_expression": 0.0, "last_equation": 1.0}, {"asked_expression": 1.0, "last_equation": 1.0}]

    # The judge saw that b's second response was cut: both right there, a tie. Per prompt: tie, tie, a wins, tie.
    [pair] = results["pairs"]
    assert pair["win_rate"] == pytest.approx((0.5 + 0.5 + 1 + 0.5) / 4)

    report = (tmp_path / "asked_expression" / "results.md").read_text()
    assert "answer reading: `asked_expression`" in report
    assert "| b | 75.0 |" in report and "| 1 (25.0 %) | 3 of 4 (2 / 1) |" in report
    assert "| 0 (0.0 %) | 0 of 4 (0 / 0) |" in report
    assert "**Warning:**" in report and "b (25.0 %)" in report


def test_the_old_reading_is_named_and_scores_as_before(tmp_path, scripted):
    results = _evaluate(tmp_path, "last_equation")
    models = {m["name"]: m for m in results["models"]}
    assert results["judge"]["extraction"] == "last_equation"
    assert models["b"]["score"]["mean"] == 0.5  # the old reading: prompts 2 and 3 right
    assert models["b"]["readings"]["disagree"] == 3  # the count does not depend on which reading judges
    # Per prompt under the old reading: a wins, a wins, tie, tie.
    assert results["pairs"][0]["win_rate"] == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)
    assert "answer reading: `last_equation`" in (tmp_path / "last_equation" / "results.md").read_text()


def test_truncation_check_warns_only_above_five_percent():
    models = [{"name": n, "generation": {"stopped_at_max_new_tokens_share": s}}
              for n, s in (("at", 0.05), ("over", 0.0501), ("none", 0.0))]
    check = ev.truncation_check(models, max_new_tokens=48)
    assert check["over"] == ["over"] and check["share"] == {"at": 0.05, "over": 0.0501, "none": 0.0}
    assert "max_new_tokens=48" in check["warning"] and "over (5.0 %)" in check["warning"]
    assert ev.truncation_check(models[:1], max_new_tokens=48)["warning"] is None
    assert ev.TRUNCATION_WARN_SHARE == 0.05


def test_reading_disagreements_only_with_the_rule_judge():
    records = [ev.PromptRecord(0, "What is 962 + 3? Answer briefly.", "", "", {"answer": 965})]
    assert ev.reading_disagreements(object.__new__(ev.OpenAIJudge), records, ["965"], [False]) is None
    found = ev.reading_disagreements(RuleJudge(), records, ["962 + 3 = 965\n965 + 3 = 968"], [False])
    assert (found["disagree"], found["right_only_under"]) == (1, {"asked_expression": 1, "last_equation": 0})


def test_a_report_from_before_the_audit_still_renders():
    old = {"prompts": {"prompts": 1, "split": "test", "source": "bundled:arithmetic"},
           "judge": {"name": "rule", "answer_field": "answer"},
           "generation": {"do_sample": False, "max_new_tokens": 48}, "confidence": 0.95, "pairs": [],
           "models": [{"name": "m", "score": {"mean": 1.0, "ci_low": 0.2, "ci_high": 1.0},
                       "generation": {"mean_new_tokens": 3.0, "stopped_at_max_new_tokens": 0}}]}
    report = ev.format_markdown(old)
    assert "| m | 100.0 | [20.0, 100.0] | 3.0 | 0 |" in report and "answer reading" not in report


def test_response_profile_gives_words_and_the_pass_rate_per_constraint_type():
    """Worked by hand: three instruction rows; the per-type counts follow from each response's checks."""
    from lit_idpo.evaluation.audit import response_profile
    from lit_idpo.evaluation.prompts import PromptRecord

    rows = [{"prompt": "Describe rain. Do not use any commas.", "task": "instructions",
             "constraints": [{"type": "no_commas"}]},
            {"prompt": "Describe snow. Do not use any commas. Include the word \"cold\".", "task": "instructions",
             "constraints": [{"type": "no_commas"}, {"type": "include_word", "word": "cold"}]},
            {"prompt": "Describe wind. Include the word \"cold\".", "task": "instructions",
             "constraints": [{"type": "include_word", "word": "cold"}]}]
    responses = ["Rain is water that falls from clouds in drops.",        # passes no_commas
                 "Snow is cold, white and soft when it falls in winter.",  # include_word yes, no_commas no: fails
                 "Wind is moving air that can feel cold on a winter day."]  # passes, but truncated: fails
    prompts = [PromptRecord(i, r["prompt"], None, None, r) for i, r in enumerate(rows)]
    profile = response_profile(prompts, responses, [False, False, True])
    assert profile["mean_words"] == pytest.approx((9 + 11 + 12) / 3)
    assert profile["constraints"] == {
        "include_word": {"responses": 2, "passed": 0, "satisfied": 2, "pass_rate": 0.0, "satisfied_rate": 1.0},
        "no_commas": {"responses": 2, "passed": 1, "satisfied": 1, "pass_rate": 0.5, "satisfied_rate": 0.5}}
    arithmetic = [PromptRecord(0, "What is 1 + 1?", None, None, {"prompt": "What is 1 + 1?", "answer": 2})]
    assert response_profile(arithmetic, ["2"], [False]) == {"mean_words": 1.0}  # no constraints: no table
