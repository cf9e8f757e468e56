"""The on-policy arithmetic task: pair building from labelled samples, and the shipped files' invariants."""

from __future__ import annotations

import json

import pytest

from lit_idpo.data import load_split
from lit_idpo.data.tasks import arithmetic_data as bundled
from lit_idpo.data.tasks import arithmetic_onpolicy as onpolicy
from lit_idpo.evaluation import is_correct

ROW = {"id": "arithmetic-train-00007", "prompt": "What is 41 + 35? Answer briefly.", "answer": 76, "category": "c"}


def _sample(i, response, complete=True):
    return {"prompt_id": ROW["id"], "sample": i, "response": response, "complete": complete,
            **onpolicy.label(response, ROW["answer"], prompt=ROW["prompt"], complete=complete)}


def _label(response, complete=True):
    return onpolicy.label(response, 76, prompt=ROW["prompt"], complete=complete)


def test_label_reads_the_answer_to_the_asked_expression():
    assert _label("41 + 35 = 76.") == {"stated": 76, "correct": True}
    assert _label("The answer is 86.") == {"stated": 86, "correct": False}
    assert _label("What a wonderful question!") == {"stated": None, "correct": False}
    # Issue 19: the run-on answer is right (the old checker read its last equation, 79) ...
    assert _label("41 + 35 = 76\n76 + 3 = 79") == {"stated": 76, "correct": True}
    # ... a contradiction is wrong, and its wrong result is the one stated as the wrong answer.
    assert _label("41 + 35 = 76. No: 41 + 35 = 86.") == {"stated": 86, "correct": False}
    assert _label("41 + 35 = 76.5") == {"stated": None, "correct": False}


def test_a_cut_sample_is_never_right():
    assert _label("41 + 35 = 76. 41 + 35 = 76.", complete=False) == {"stated": 76, "correct": False}
    assert _label("41 + 35 = 76. 41 + 35 = 7", complete=False) == {"stated": 76, "correct": False}
    assert _label("41 + 35 = 76. 41 + 35 = 7", complete=True) == {"stated": 7, "correct": False}


def test_pair_takes_a_right_and_a_wrong_complete_response():
    samples = [_sample(0, "41 + 35 = 76."), _sample(1, "41 + 35 = 86."), _sample(2, "41 + 35 = 76", complete=False),
               _sample(3, "It is 66.")]
    pair, outcome = onpolicy.pair_for_prompt(ROW, samples, seed=0)
    assert outcome == "pair"
    assert pair["chosen"] == "41 + 35 = 76." and pair["chosen_sample"] == 0
    assert pair["rejected"] in {"41 + 35 = 86.", "It is 66."}
    assert pair["wrong_answer"] == {"41 + 35 = 86.": 86, "It is 66.": 66}[pair["rejected"]]
    assert (pair["right_samples"], pair["wrong_samples"]) == (1, 2)
    # The pick is fixed by the seed and the prompt id.
    assert onpolicy.pair_for_prompt(ROW, list(reversed(samples)), seed=0)[0]["rejected"] == pair["rejected"]


@pytest.mark.parametrize("responses, complete, reason", [
    (["41 + 35 = 76.", "41 + 35 = 86."], [True, False], "too_few_complete"),
    (["41 + 35 = 86.", "It is 66.", "No idea"], [True, True, True], "no_right"),
    (["41 + 35 = 76.", "76"], [True, True], "no_wrong"),
])
def test_prompts_without_a_pair_say_why(responses, complete, reason):
    samples = [_sample(i, r, c) for i, (r, c) in enumerate(zip(responses, complete))]
    assert onpolicy.pair_for_prompt(ROW, samples, seed=0) == (None, reason)


def test_build_pairs_counts_every_prompt_and_refuses_missing_samples():
    other = {**ROW, "id": "arithmetic-train-00008"}
    samples = [_sample(0, "41 + 35 = 76."), _sample(1, "41 + 35 = 86.")]
    samples += [{**s, "prompt_id": other["id"]} for s in (_sample(0, "76"), _sample(1, "76."))]
    pairs, stats = onpolicy.build_pairs("train", [ROW, other], samples, seed=0)
    assert [p["id"] for p in pairs] == ["arithmetic_onpolicy-train-00000"]
    assert stats["pairs"] == 1 and stats["no_pair"] == {"too_few_complete": 0, "no_right": 0, "no_wrong": 1}
    assert stats["samples"] == 4 and stats["complete_samples"] == 4 and stats["right_samples"] == 3
    assert "1 of 2 prompts (50%) gave a pair" in onpolicy.describe(stats)
    with pytest.raises(ValueError, match="have no samples"):
        onpolicy.build_pairs("train", [ROW, {**ROW, "id": "arithmetic-train-09999"}], samples, seed=0)


@pytest.fixture(scope="module")
def shipped():
    return {split: bundled.load_rows(onpolicy.TASK, split) for split in bundled.SPLITS}


def test_shipped_pairs_are_labelled_by_the_checker(shipped):
    for split, rows in shipped.items():
        assert rows, split
        for row in rows:
            assert is_correct(row["chosen"], row["answer"], prompt=row["prompt"]), row["id"]
            assert not is_correct(row["rejected"], row["answer"], prompt=row["prompt"]), row["id"]


def test_shipped_samples_carry_the_checker_labels():
    rows = {row["id"]: row for split in bundled.SPLITS for row in bundled.load_rows("arithmetic", split)}
    text = (bundled.DATA_DIR / f"{onpolicy.TASK}_samples.jsonl").read_text(encoding="utf-8")
    for line in text.splitlines():
        sample = json.loads(line)
        row = rows[sample["prompt_id"]]
        right = sample["complete"] and is_correct(sample["response"], row["answer"], prompt=row["prompt"])
        assert sample["correct"] == right, sample


def test_shipped_prompts_are_disjoint_and_drawn_from_the_arithmetic_splits(shipped):
    arithmetic = {split: {r["id"]: r for r in bundled.load_rows("arithmetic", split)} for split in bundled.SPLITS}
    for split, rows in shipped.items():
        for row in rows:
            source = arithmetic[split][row["source_id"]]
            assert (row["prompt"], row["answer"]) == (source["prompt"], source["answer"])
    train_prompts = {r["prompt"] for r in shipped["train"]}
    assert not train_prompts & {r["prompt"] for r in bundled.load_rows("arithmetic", "test")}


def test_shipped_pairs_rebuild_from_the_shipped_samples(shipped):
    """The pairs are exactly what the pairing rule makes of the shipped samples (the stats agree too)."""
    samples = [json.loads(line) for line in
               (bundled.DATA_DIR / f"{onpolicy.TASK}_samples.jsonl").read_text(encoding="utf-8").splitlines()]
    stats = json.loads((bundled.DATA_DIR / f"{onpolicy.TASK}_stats.json").read_text(encoding="utf-8"))
    for split, rows in shipped.items():
        prompt_ids = list(dict.fromkeys(s["prompt_id"] for s in samples if s["split"] == split))
        by_id = {r["id"]: r for r in bundled.load_rows("arithmetic", split)}
        pairs, split_stats = onpolicy.build_pairs(split, [by_id[i] for i in prompt_ids],
                                                  [s for s in samples if s["split"] == split], stats["seed"])
        assert pairs == rows
        assert {k: v for k, v in stats[split].items() if k != "summary"} == split_stats


def test_the_task_loads_as_a_data_source():
    rows = load_split("bundled:arithmetic_onpolicy", "test")
    assert len(rows) > 0 and {"prompt", "chosen", "rejected"} <= set(rows[0])


def test_a_rebuild_relabels_the_samples_with_the_current_checker():
    """scripts/make_onpolicy_data.py never keeps a label an older checker wrote into the samples."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "make_onpolicy_data.py"
    spec = importlib.util.spec_from_file_location("make_onpolicy_data", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # Stale labels as the old checker wrote them: the run-on answer read as 79 (wrong), the cut one as right.
    stale = [{"split": "train", "prompt_id": ROW["id"], "sample": 0, "response": "41 + 35 = 76\n76 + 3 = 79",
              "complete": True, "tokens": 12, "stated": 79, "correct": False},
             {"split": "train", "prompt_id": ROW["id"], "sample": 1, "response": "41 + 35 = 76. 41 + 35 = 76",
              "complete": False, "tokens": 48, "stated": 76, "correct": True},
             {"split": "train", "prompt_id": ROW["id"], "sample": 2, "response": "41 + 35 = 86.",
              "complete": True, "tokens": 9, "stated": 86, "correct": False}]
    texts = script.build(stale, {"train": [ROW]}, seed=0)
    labels = [(s["stated"], s["correct"]) for s in map(json.loads, texts["samples"].splitlines())]
    assert labels == [(76, True), (76, False), (86, False)]
    [pair] = map(json.loads, texts["train"].splitlines())
    assert (pair["chosen"], pair["rejected"], pair["wrong_answer"]) == (stale[0]["response"], "41 + 35 = 86.", 86)
