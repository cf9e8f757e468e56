"""The on-policy instruction-following task: labels, the pairing rule, the statistics, the build script's
CPU-side logic (no model), and the shipped files (rebuilt from their samples, verified by the task, loaded as
a data source and read by ``lit-idpo evaluate``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lit_idpo.data import load_split
from lit_idpo.data.tasks import DATA_DIR, dataset_path, instructions, load_rows
from lit_idpo.data.tasks import instructions_onpolicy as onpolicy
from lit_idpo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
ROW = {"id": "instructions-train-00007", "task": "instructions", "request": "Describe a thunderstorm.",
       "prompt": "Describe a thunderstorm. Do not use any commas in your answer.",
       "constraints": [{"type": "no_commas"}]}
GOOD = "Dark clouds roll in and thunder shakes the windows."
COMMAS = "Dark clouds roll in, and thunder shakes the windows."


def _script():
    path = ROOT / "scripts" / "make_instructions_data.py"
    spec = importlib.util.spec_from_file_location("make_instructions_data", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def _sample(i, response, complete=True, row=ROW, split="train"):
    return {"split": split, "prompt_id": row["id"], "sample": i, "response": response, "complete": complete,
            "tokens": 10 + i, **onpolicy.label(row, response, complete=complete)}


# --------------------------------------------------------------------------------------------------
# Labels and the pairing rule
# --------------------------------------------------------------------------------------------------


def test_label_says_what_failed_and_why():
    assert onpolicy.label(ROW, GOOD, complete=True) == {"passed": True, "problem": None, "failed": []}
    assert onpolicy.label(ROW, COMMAS, complete=True) == {"passed": False, "problem": None, "failed": ["no_commas"]}
    # Cut at the limit: never passes, whatever it says; the constraint's own check is still reported.
    assert onpolicy.label(ROW, GOOD, complete=False) == {"passed": False, "problem": "truncated", "failed": []}
    assert onpolicy.label(ROW, "Thunder", complete=True) == {"passed": False, "problem": "too_few_words",
                                                             "failed": []}


@pytest.mark.parametrize("response, kind", [
    ("", "empty"), ("Rain falls", "too_few_words"), ("rain rain rain sky", "repeated_word"),
    ("I like rain.\nI like rain.", "repeated_unit"), (GOOD, None),
])
def test_every_gate_problem_has_a_kind(response, kind):
    assert onpolicy.problem_kind(instructions.answer_problem(response)) == kind
    with pytest.raises(ValueError, match="unknown real-answer problem"):
        onpolicy.problem_kind("something new")


def test_pair_takes_a_passing_and_a_failing_complete_response():
    samples = [_sample(0, GOOD), _sample(1, COMMAS), _sample(2, "Thunder rolls over the hills", complete=False),
               _sample(3, "Thunder")]
    pair, outcome = onpolicy.pair_for_prompt(ROW, samples, seed=0)
    assert outcome == "pair"
    assert pair["chosen"] == GOOD and pair["chosen_sample"] == 0
    assert pair["rejected"] in {COMMAS, "Thunder"}
    assert (pair["passing_samples"], pair["failing_samples"]) == (1, 2)  # the cut one is in neither
    expected = {COMMAS: (["no_commas"], None), "Thunder": ([], "too_few_words")}[pair["rejected"]]
    assert (pair["rejected_failed"], pair["rejected_problem"]) == expected
    assert {k: pair[k] for k in ("task", "prompt", "request", "constraints", "source_id")} == {
        "task": "instructions", "prompt": ROW["prompt"], "request": ROW["request"],
        "constraints": ROW["constraints"], "source_id": ROW["id"]}
    # The pick is fixed by the seed and the prompt id, whatever the samples' order.
    assert onpolicy.pair_for_prompt(ROW, list(reversed(samples)), seed=0) == (pair, "pair")
    picks = {onpolicy.pair_for_prompt(ROW, samples, seed=s)[0]["rejected"] for s in range(20)}
    assert picks == {COMMAS, "Thunder"}  # and the seed does choose


@pytest.mark.parametrize("responses, complete, reason", [
    ([GOOD, COMMAS], [True, False], "too_few_complete"),
    ([COMMAS, "Thunder", ""], [True, True, True], "no_pass"),
    ([GOOD, "Lightning flashes across the sky."], [True, True], "no_fail"),
])
def test_prompts_without_a_pair_say_why(responses, complete, reason):
    samples = [_sample(i, r, c) for i, (r, c) in enumerate(zip(responses, complete))]
    assert onpolicy.pair_for_prompt(ROW, samples, seed=0) == (None, reason)


def test_build_pairs_counts_every_prompt_and_refuses_missing_samples():
    other = {**ROW, "id": "instructions-train-00008", "constraints": [{"type": "no_commas"},
                                                                        {"type": "include_word", "word": "rain"}]}
    samples = [_sample(0, GOOD), _sample(1, COMMAS)]
    samples += [_sample(0, "Rain falls, soft and slow.", row=other), _sample(1, "Rain, rain, go away now.", row=other),
                _sample(2, "Snow falls on the hills", complete=False, row=other)]
    pairs, stats = onpolicy.build_pairs("train", [ROW, other], samples, seed=0)
    assert [p["id"] for p in pairs] == ["instructions_onpolicy-train-00000"]
    assert stats["pairs"] == 1 and stats["no_pair"] == {"too_few_complete": 0, "no_pass": 1, "no_fail": 0}
    assert (stats["samples"], stats["complete_samples"], stats["passing_samples"]) == (5, 4, 1)
    assert stats["problems"]["truncated"] == 1 and stats["problems"]["repeated_word"] == 0
    # Over the complete samples of the prompts that ask each type: no_commas 1 of 4, include_word 2 of 2.
    assert stats["constraint_satisfied"] == {"include_word": {"samples": 2, "satisfied": 2, "share": 1.0},
                                             "no_commas": {"samples": 4, "satisfied": 1, "share": 0.25}}
    assert stats["by_types"] == {"include_word+no_commas": {"no_pass": 1}, "no_commas": {"pair": 1}}
    assert "1 of 2 prompts (50%) gave a pair" in onpolicy.describe(stats)
    with pytest.raises(ValueError, match="have no samples.*make_instructions_data.py"):
        onpolicy.build_pairs("train", [ROW, {**ROW, "id": "instructions-train-09999"}], samples, seed=0)


def test_the_menu_is_valid_and_the_dropped_entries_say_why():
    rows = instructions.make_requests("train", 30, constraint_types=tuple(onpolicy.ONPOLICY_MENU),
                                      menu=onpolicy.ONPOLICY_MENU, two_share=onpolicy.TWO_SHARE)
    assert {c["type"] for row in rows for c in row["constraints"]} <= set(onpolicy.ONPOLICY_MENU)
    assert all(isinstance(why, str) and why for why in onpolicy.DROPPED.values())


# --------------------------------------------------------------------------------------------------
# The script, without the model
# --------------------------------------------------------------------------------------------------


def test_a_rebuild_relabels_the_samples_and_carries_their_rows():
    script = _script()
    stale = [{**_sample(0, GOOD), "passed": False, "problem": "truncated"},      # an old verifier's labels
             {**_sample(1, COMMAS), "passed": True, "failed": []}]
    texts = script.build(stale, {"train": [ROW]}, seed=0)
    samples = [json.loads(line) for line in texts["samples"].splitlines()]
    assert [(s["passed"], s["problem"], s["failed"]) for s in samples] == [(True, None, []),
                                                                           (False, None, ["no_commas"])]
    assert all(s["prompt"] == ROW["prompt"] and s["constraints"] == ROW["constraints"] for s in samples)
    [pair] = map(json.loads, texts["train"].splitlines())
    assert (pair["chosen"], pair["rejected"]) == (GOOD, COMMAS)
    stats = json.loads(texts["stats"])
    assert stats["train"]["pairs"] == 1 and stats["samples_per_prompt"] == 2
    # The rebuild from its own samples gives the same files.
    assert script.build(samples, {"train": [ROW]}, seed=0) == texts


def test_measurement_reads_the_lower_limit_from_the_same_samples():
    script = _script()
    row = {**ROW, "candidate": 0, "wording": "own", "id": "measure-0000"}
    limit = script.MEASURE_TOKENS - 64  # a build limit below the measurement's (the script's may equal it)
    script.SAMPLING = {**script.SAMPLING, "max_new_tokens": limit}
    samples = [{**_sample(0, GOOD, row=row), "tokens": limit, "row": row},            # stops at the limit: kept
               {**_sample(1, GOOD, row=row), "tokens": limit + 1, "row": row},        # longer: cut at the limit
               {**_sample(2, COMMAS, row=row), "tokens": 20, "row": row},
               {**_sample(3, GOOD, complete=False, row=row), "tokens": script.MEASURE_TOKENS, "row": row}]

    class Args:
        seed, samples, threads, measure_requests, measure_type_requests, sampling_seconds = 0, 4, 1, 2, 6, 1.0

    m = script.measurement(samples, Args)
    [entry] = m["candidates"]
    assert entry["instruction"] == "Do not use any commas in your answer."
    wide, build = entry[f"at_{script.MEASURE_TOKENS}"], entry[f"at_{limit}"]
    assert (wide["passed"], build["passed"]) == (2, 1)
    assert build["truncated_share"] == 0.5 and build["problems"] == {"truncated": 2}
    assert wide["pass_rate"] == 0.5 and wide["satisfied_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["by_type"]["own"]["no_commas"] == build
    text = script.measurement_markdown(m)
    assert "| no_commas |" in text and "## Dropped" in text


def test_measurement_prompts_cover_every_menu_entry_with_training_requests_only():
    script = _script()
    rows = script.measure_rows(6, 2)
    test_requests = set(instructions.split_requests()["test"])
    assert not {r["request"] for r in rows} & test_requests
    for ctype, options in instructions.DEFAULT_MENU.items():
        asked = [r for r in rows if r["constraints"][0]["type"] == ctype and r["wording"] == "own"]
        assert len(asked) >= 6
        for params in options:
            assert sum(r["constraints"][0] == {"type": ctype, **params} for r in asked) >= 2
    assert all(r["prompt"] == f"{r['request']} {script.measure_candidates()[r['candidate']]['instruction']}"
               for r in rows)


def test_the_registry_knows_the_source():
    assert dataset_path("instructions_onpolicy", "test") == DATA_DIR / "instructions_onpolicy_test.jsonl"
    with pytest.raises(ConfigError, match="bundled:instructions_onpolicy"):
        dataset_path("nope", "train")



def test_rates_by_type_counts_each_constraint_over_the_rows_that_ask_it():
    two = {**ROW, "constraints": [{"type": "no_commas"}, {"type": "include_word", "word": "rain"}]}
    rates = instructions.rates_by_type([ROW, two, two], [GOOD, "Rain falls on the roof.", "Rain, rain and rain."],
                                       truncated=[False, True, False])
    # no_commas: satisfied by all three (the second is cut, so it does not pass); include_word: both have 'rain'
    # (the third fails the gate: 'rain' is 3 of its 4 words).
    assert rates == {
        "include_word": {"responses": 2, "passed": 0, "satisfied": 2, "pass_rate": 0.0, "satisfied_rate": 1.0},
        "no_commas": {"responses": 3, "passed": 1, "satisfied": 2, "pass_rate": 1 / 3, "satisfied_rate": 2 / 3}}
    with pytest.raises(ValueError, match="2 rows, 1 responses"):
        instructions.rates_by_type([ROW, ROW], [GOOD])


def test_sampling_is_seeded_per_batch_resumable_and_the_same_in_any_order(tmp_path, monkeypatch):
    """sample_responses on a tiny random model: the records are the same whatever split is sampled first, and a
    finished cache is read back without loading the model; a cache of other prompts is refused."""
    import torch

    from lit_idpo import models
    from lit_idpo.data.tasks import sampling

    rows = {"train": [{**ROW, "id": f"t{i}", "prompt": f"Describe rain number {i}."} for i in range(3)],
            "test": [{**ROW, "id": "h0"}]}
    threads = torch.get_num_threads()
    kwargs = dict(model_source="tiny-llama", settings={"max_new_tokens": 3, "temperature": 0.7, "top_k": 0},
                  samples=2, batch_prompts=2, seed=0, threads=1, labeller=lambda row, response, complete: {"n": 1})
    try:
        first = sampling.sample_responses(rows, cache_path=tmp_path / "a.jsonl", **kwargs)
        second = sampling.sample_responses(rows, cache_path=tmp_path / "b.jsonl", first=("test",), **kwargs)
        assert first == second
        assert [(r["split"], r["prompt_id"], r["sample"]) for r in first] == [
            ("train", "t0", 0), ("train", "t0", 1), ("train", "t1", 0), ("train", "t1", 1), ("train", "t2", 0),
            ("train", "t2", 1), ("test", "h0", 0), ("test", "h0", 1)]
        assert all(r["tokens"] <= 3 and r["n"] == 1 for r in first)
        monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the cache was not used"))
        assert sampling.sample_responses(rows, cache_path=tmp_path / "a.jsonl", **kwargs) == first
        assert sampling.sampling_seconds(tmp_path / "a.jsonl", rows, 2) >= 0.0  # each batch records its time
        other = {**rows, "train": list(reversed(rows["train"]))}
        with pytest.raises(SystemExit, match="batch train:0 holds other prompts"):
            sampling.sample_responses(other, cache_path=tmp_path / "a.jsonl", **kwargs)
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# The shipped files
# --------------------------------------------------------------------------------------------------

SPLITS = ("train", "test")


@pytest.fixture(scope="module")
def shipped():
    return {split: load_rows(onpolicy.TASK, split) for split in SPLITS}


@pytest.fixture(scope="module")
def shipped_samples():
    text = (DATA_DIR / f"{onpolicy.TASK}_samples.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_shipped_pairs_are_labelled_by_the_verifier(shipped):
    for split, rows in shipped.items():
        assert rows, split
        for row in rows:
            assert instructions.is_correct(row, row["chosen"]), row["id"]
            assert not instructions.is_correct(row, row["rejected"]), row["id"]
            assert row["task"] == "instructions" and row["prompt"].startswith(row["request"] + " ")


def test_shipped_splits_share_no_request(shipped):
    requests = {split: {row["request"] for row in rows} for split, rows in shipped.items()}
    assert not requests["train"] & requests["test"]
    assert requests["test"] <= set(instructions.split_requests()["test"])


def test_shipped_pairs_rebuild_from_the_shipped_samples(shipped, shipped_samples):
    """The pairs and the statistics are exactly what the script makes of the shipped samples (no model)."""
    script = _script()
    stats = json.loads((DATA_DIR / f"{onpolicy.TASK}_stats.json").read_text(encoding="utf-8"))
    rows_by_split = script.prompt_rows(stats["train"]["prompts"], stats["test"]["prompts"], stats["seed"])
    for split, rows in rows_by_split.items():  # the samples carry the rows they were sampled for
        by_id = {row["id"]: row for row in rows}
        for s in shipped_samples:
            if s["split"] == split:
                assert (s["prompt"], s["constraints"]) == (by_id[s["prompt_id"]]["prompt"],
                                                           by_id[s["prompt_id"]]["constraints"])
    texts = script.build(shipped_samples, rows_by_split, stats["seed"], stats["wall_s"])
    for split in SPLITS:
        assert [json.loads(line) for line in texts[split].splitlines()] == shipped[split]
    assert json.loads(texts["stats"]) == stats
    for split in SPLITS:
        split_stats = stats[split]
        assert split_stats["pairs"] == len(shipped[split])
        assert split_stats["pairs"] + sum(split_stats["no_pair"].values()) == split_stats["prompts"]
        assert split_stats["samples"] == split_stats["prompts"] * stats["samples_per_prompt"]


def test_the_task_loads_as_a_data_source(shipped):
    rows = load_split("bundled:instructions_onpolicy", "test")
    assert len(rows) == len(shipped["test"]) and {"prompt", "chosen", "rejected", "constraints"} <= set(rows[0])
    assert "instructions_onpolicy_test.jsonl, line 1" in rows.where(0)


def test_evaluate_reads_the_held_out_prompts_and_verifies_with_the_instructions_task(tmp_path):
    from lit_idpo.cli import main

    out = tmp_path / "out"
    main(["evaluate", "--model", "a=tiny-llama", "--model", "b=tiny-gpt2", "--data.source",
          "bundled:instructions_onpolicy", "--data.split", "test", "--data.limit", "3", "--judge.name", "rule",
          "--generation.max_new_tokens", "3", "--generation.device", "cpu", "--output_dir", str(out),
          "--no_progress"])
    rows = load_rows(onpolicy.TASK, "test")
    for model in ("a", "b"):
        lines = [json.loads(x) for x in (out / "responses" / f"{model}.jsonl").read_text().splitlines()]
        assert [line["prompt_index"] for line in lines] == [0, 1, 2]
        for line in lines:  # the score is the instructions task's verdict, recomputed here
            row = rows[line["prompt_index"]]
            expected = instructions.is_correct(row, line["response"], line["stopped"] == "length")
            assert line["score"] == (1.0 if expected else 0.0)
    # A response that satisfies a held-out row passes the rule judge: its chosen response does.
    from lit_idpo.evaluation import RuleJudge

    judge = RuleJudge()
    assert judge.task_of(rows[0]) == "instructions"
    assert judge.score(rows[0]["prompt"], rows[0]["chosen"], rows[0]) == 1.0
    assert judge.score(rows[0]["prompt"], rows[0]["rejected"], rows[0]) == 0.0
