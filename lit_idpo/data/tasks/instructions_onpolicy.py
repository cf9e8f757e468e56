"""The on-policy instruction-following task: the model's own sampled responses, labelled by the task's verifier.

``bundled:instructions_onpolicy`` is built as ``bundled:arithmetic_onpolicy`` is (see
``scripts/make_instructions_data.py``): for each request of :func:`.instructions.make_requests` (an everyday
request with one or two checkable constraints, from :data:`ONPOLICY_MENU`), SmolLM2-135M-Instruct samples
several responses, each is labelled by :func:`.instructions.verify` (a real answer that satisfies every
constraint passes; a sample cut at the token limit never does), and one (passing, failing) pair is kept
per request. Training requests and held-out requests never share a request text
(:func:`.instructions.split_requests`), so no held-out request was seen in training, with any constraint.

Rows keep the task's fields, so the rule judge verifies any response to them with the instructions task
(``judge.name: rule``)::

    {"id": "instructions_onpolicy-train-00000", "task": "instructions", "prompt": ..., "chosen": ...,
     "rejected": ..., "request": ..., "constraints": [...], "source_id": "instructions-train-00012",
     "chosen_sample": 2, "rejected_sample": 0, "passing_samples": 1, "failing_samples": 3,
     "rejected_failed": ["no_commas"], "rejected_problem": null}

``rejected_failed`` lists the constraints the rejected response does not satisfy, ``rejected_problem`` why
it is no real answer (:func:`problem_kind`; None when it is one). Shipped: 208 training pairs (from 576
prompts) and 71 held-out pairs (from 176), 4 responses per prompt of at most 192 new tokens
(``instructions_onpolicy_stats.json``, ``docs/instructions_task.md``). Evaluating with ``data.split: test``
reads the held-out requests that gave a pair (those the untuned model passes sometimes, not always); every
held-out request and its samples are in ``instructions_onpolicy_samples.jsonl``.

This module holds the part that needs no model: labels, the pairing rule (:func:`pair_for_prompt`,
mirroring the arithmetic one), the statistics, and the menu chosen by measurement
(:data:`ONPOLICY_MENU`, :data:`DROPPED`; the measurement is ``lit_idpo/data/instructions_measurement.json``
and ``docs/instructions_measurement.md``). Pure Python.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from lit_idpo.data.tasks import instructions
from lit_idpo.data.tasks.sampling import describe_outcomes, pick_pair, samples_by_prompt

TASK = "instructions_onpolicy"

#: Why a prompt gave no pair, in the order the checks run.
REASONS = {
    "too_few_complete": "fewer than two of its sampled responses were complete (the rest hit the token limit)",
    "no_pass": "none of its complete responses passed",
    "no_fail": "every complete response passed",
}

#: Why a response is no real answer, as counted in the statistics (:func:`problem_kind`).
PROBLEM_KINDS = ("truncated", "empty", "too_few_words", "repeated_word", "repeated_unit")


def problem_kind(problem: Optional[str]) -> Optional[str]:
    """The kind of a real-answer problem (:attr:`.instructions.Verification.problem`): one of
    :data:`PROBLEM_KINDS`, or None for a real answer."""
    if problem is None:
        return None
    if problem in ("truncated", "empty"):
        return problem
    if problem.startswith("fewer than"):
        return "too_few_words"
    if problem.startswith("the word "):
        return "repeated_word"
    if problem.startswith("the sentence or line "):
        return "repeated_unit"
    raise ValueError(f"unknown real-answer problem {problem!r}; add its kind to PROBLEM_KINDS")


def label(row: Mapping[str, Any], response: str, *, complete: bool) -> Dict[str, Any]:
    """What the verifier says of one response to ``row``: ``passed``, ``problem`` (:func:`problem_kind`) and
    ``failed`` (the types of the constraints it does not satisfy, in the row's order).

    A response cut at the token limit (``complete`` false) never passes: its end, which several
    constraints read, is missing.
    """
    result = instructions.verify(row, response, truncated=not complete)
    return {"passed": result.passed, "problem": problem_kind(result.problem),
            "failed": [name for name, ok in result.constraints if not ok]}


def pair_for_prompt(row: Mapping[str, Any], samples: Sequence[Mapping[str, Any]], seed: int) -> Tuple[Any, str]:
    """One (passing, failing) pair from a prompt's samples, or ``(None, reason)`` (:data:`REASONS`).

    The arithmetic rule: ``samples`` are the prompt's records (``sample``, ``response``, ``complete``,
    ``passed``, ``problem``, ``failed``). Among the complete responses, the chosen one is drawn at random
    from the passing ones and the rejected one from the failing ones (in sample order), with a generator
    seeded by ``seed`` and the prompt's id (so the pick depends neither on the order of ``samples`` nor on
    which other prompts are present). A failing response may fail a constraint or the real-answer gate
    (empty, too short, repetitive): both are the model's own failures that the rejected side should
    teach it to avoid.
    """
    picked, outcome = pick_pair(row["id"], samples, seed, "passed")
    if picked is None:
        return None, {"no_good": "no_pass", "no_bad": "no_fail"}.get(outcome, outcome)
    chosen, rejected, passing, failing = picked
    return {
        "task": instructions.TASK,
        "prompt": row["prompt"],
        "chosen": chosen["response"],
        "rejected": rejected["response"],
        "request": row["request"],
        "constraints": row["constraints"],
        "source_id": row["id"],
        "chosen_sample": chosen["sample"],
        "rejected_sample": rejected["sample"],
        "passing_samples": len(passing),
        "failing_samples": len(failing),
        "rejected_failed": rejected["failed"],
        "rejected_problem": rejected["problem"],
    }, "pair"


def _types(row: Mapping[str, Any]) -> str:
    return "+".join(sorted(c["type"] for c in row["constraints"]))


def build_pairs(split: str, rows: Sequence[Mapping[str, Any]], samples: Iterable[Mapping[str, Any]],
                seed: int) -> Tuple[List[dict], Dict[str, Any]]:
    """The split's pairs (ids ``instructions_onpolicy-<split>-NNNNN`` in prompt order) and its statistics.

    Every prompt in ``rows`` must have samples (``prompt_id`` = the row's id); a missing one is an error,
    never a silent drop. The statistics count prompts, samples, complete and passing samples, pairs,
    prompts without a pair by reason, each constraint type's share of samples satisfying it (over the
    complete samples of the prompts that ask it), the real-answer problems, and outcomes by the prompt's
    constraint types.
    """
    by_prompt = samples_by_prompt(split, rows, samples, "scripts/make_instructions_data.py")
    pairs, reasons = [], Counter()
    by_types: Dict[str, Counter] = {}
    asked, satisfied = Counter(), Counter()
    for row in rows:
        pair, outcome = pair_for_prompt(row, by_prompt[row["id"]], seed)
        reasons[outcome] += 1
        by_types.setdefault(_types(row), Counter())[outcome] += 1
        if pair is not None:
            pairs.append({"id": f"{TASK}-{split}-{len(pairs):05d}", **pair})
        for s in by_prompt[row["id"]]:
            if s["complete"]:
                for c in row["constraints"]:
                    asked[c["type"]] += 1
                    satisfied[c["type"]] += c["type"] not in s["failed"]
    every = [s for row in rows for s in by_prompt[row["id"]]]
    problems = Counter(s["problem"] for s in every if s["problem"] is not None)
    stats = {
        "prompts": len(rows),
        "samples": len(every),
        "complete_samples": sum(s["complete"] for s in every),
        "passing_samples": sum(s["passed"] for s in every),
        "pairs": len(pairs),
        "no_pair": {reason: reasons[reason] for reason in REASONS},
        "problems": {kind: problems[kind] for kind in PROBLEM_KINDS},
        "constraint_satisfied": {t: {"samples": asked[t], "satisfied": satisfied[t],
                                     "share": round(satisfied[t] / asked[t], 4)} for t in sorted(asked)},
        "by_types": {name: dict(sorted(c.items())) for name, c in sorted(by_types.items())},
        "mean_tokens": round(sum(s["tokens"] for s in every) / max(1, len(every)), 1),
    }
    return pairs, stats


def describe(stats: Mapping[str, Any]) -> str:
    """One paragraph in words: how many prompts gave a pair and why the others did not."""
    return (f"{describe_outcomes(stats, REASONS)}. Of {stats['samples']} sampled responses, "
            f"{stats['complete_samples']} were complete and {stats['passing_samples']} passed.")


# --------------------------------------------------------------------------------------------------
# The menu chosen by measurement
# --------------------------------------------------------------------------------------------------

# The rule (issue 22): keep what the untuned model satisfies sometimes but not always when sampled. A type is kept
# when its pass rate over all its parameters (own wording, at the build's limit of 192 new tokens) lies in 10-70 %
# (24 responses or more per type); a parameter of a kept type is kept when its own rate (8 or 12 responses, so a
# coarse reading) lies in 10-70 % too. Rewordings (IFEval's phrasings, an example bullet) were measured for the
# types a first probe found hopeless; none moved a type into the band, so every instruction keeps its own wording.
# The numbers: lit_idpo/data/instructions_measurement.json, docs/instructions_measurement.md.

#: The constraint types and parameters the on-policy rows draw from (chosen by the measurement: see above).
ONPOLICY_MENU: Dict[str, Tuple[Dict[str, Any], ...]] = {
    "no_commas": ({},),                                                       # 21 %
    "bullets": ({"n": 3}, {"n": 4}),                                          # 29 %
    "numbered": ({"n": 3}, {"n": 4}),                                         # 46 %
    "max_words": ({"n": 10}, {"n": 25}),                                      # 25 %
    "min_words": ({"n": 30}, {"n": 40}),                                      # 58 %
    "include_word": tuple({"word": w} for w in ("blue", "simple", "today", "friend", "water", "happy")),  # 38 %
    "keyword_count": tuple({"word": w, "n": 2} for w in ("good", "time", "easy")),                     # 25 %
    "sentences": ({"n": 2}, {"n": 3}),                                        # 54 %
}
#: What the measurement dropped from :data:`.instructions.DEFAULT_MENU`, and why (pass rates at 192 new tokens).
DROPPED: Dict[str, str] = {
    "lowercase": "0 of 24 passed (0 of 24 with IFEval's wording too): the model always capitalises",
    "start_word": "3 of 32 passed (9 %; 'Sure' 0 of 8, most of them rambling past the limit, 'First' 0 of 8)",
    "end_phrase": "1 of 24 passed (4 %; 2 of 24 with IFEval's wording)",
    "quotes": "0 of 24 passed (0 of 24 with IFEval's wording)",
    "title": "19 of 24 passed (79 %, 95 % of the complete responses had a title): too easy to leave room",
    "max_word_length": "0 of 24 passed: the model cannot keep to short words",
    "bullets n=2": "0 of 8 passed (the type: 7 of 24; the example wording: 0 of 24)",
    "max_words n=15": "0 of 8 passed (the type: 6 of 24)",
    "sentences n=1": "7 of 8 passed (88 %): too easy",
}
#: The share of rows with two constraints (the rest have one), as :func:`.instructions.make_requests` draws them.
TWO_SHARE = 0.5
