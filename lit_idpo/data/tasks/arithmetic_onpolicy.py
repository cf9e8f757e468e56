"""The on-policy arithmetic task: the model's own sampled responses, labelled by the answer checker.

``bundled:arithmetic_onpolicy`` is built the way practitioners build preference data for a verifiable
task: for each prompt, several responses are sampled from the model that will be trained
(SmolLM2-135M-Instruct, see ``scripts/make_onpolicy_data.py``), each is labelled right or wrong by
:func:`lit_idpo.evaluation.is_correct` (the result it states for the asked expression; a sample cut at
the token limit is never right), and one (right, wrong) pair is kept per prompt. The prompts are the
bundled arithmetic task's: training prompts come from its ``train`` split, held-out prompts from its
``test`` split, so the two never share a fact. Generation-based evaluation uses all 200 prompts of
``bundled:arithmetic``'s test split (the held-out pairs here only exist for the prompts that gave one).

This module holds the part that needs no model: turning samples into pairs (:func:`build_pairs`) and
the reasons a prompt gives no pair. Only complete responses (the model ended them) are used: a response
cut at the token limit states no settled answer. A complete response that states no number counts as
wrong, as the checker says; the model's real failure modes (rambling, no result) are what the
rejected side should teach it to avoid.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

from lit_idpo.data.tasks.arithmetic_reading import read_answer
from lit_idpo.data.tasks.sampling import describe_outcomes, pick_pair, samples_by_prompt

TASK = "arithmetic_onpolicy"

#: Why a prompt gave no pair, in the order the checks run.
REASONS = {
    "too_few_complete": "fewer than two of its sampled responses were complete (the rest hit the token limit)",
    "no_right": "none of its complete responses stated the right answer",
    "no_wrong": "every complete response stated the right answer",
}


def label(response: str, answer: int, *, prompt: str, complete: bool) -> Dict[str, Any]:
    """What the checker reads in one response: the integer it states (or None) and whether it is right.

    ``correct`` is :func:`lit_idpo.evaluation.is_correct`'s verdict, and never true for a response that
    was cut at the token limit (``complete`` false): its answer is not settled. ``stated`` is the first
    wrong result it states for the asked expression, else its first result, else None (a non-integer
    result is None too); it becomes a pair's ``wrong_answer``.
    """
    answer = int(answer)
    reading = read_answer(response, prompt=prompt, truncated=not complete)
    wrong = [r for r in reading.results if r != answer]
    stated = wrong[0] if wrong else (reading.results[0] if reading.results else None)
    return {"stated": stated, "correct": bool(complete) and reading.correct(answer)}


def pair_for_prompt(row: Mapping[str, Any], samples: Sequence[Mapping[str, Any]], seed: int) -> Tuple[Any, str]:
    """One (right, wrong) pair from a prompt's samples, or ``(None, reason)``.

    ``samples`` are the prompt's records (``sample``, ``response``, ``complete``, ``correct``). Among the
    complete responses, the chosen one is drawn at random from the right ones and the rejected one from the
    wrong ones (in sample order), with a generator seeded by ``seed`` and the prompt's id (so the pick depends
    neither on the order of ``samples`` nor on which other prompts are present).
    """
    picked, outcome = pick_pair(row["id"], samples, seed, "correct")
    if picked is None:
        return None, {"no_good": "no_right", "no_bad": "no_wrong"}.get(outcome, outcome)
    chosen, rejected, right, wrong = picked
    return {
        "prompt": row["prompt"],
        "chosen": chosen["response"],
        "rejected": rejected["response"],
        "answer": row["answer"],
        "wrong_answer": rejected["stated"],
        "category": row["category"],
        "source_id": row["id"],
        "chosen_sample": chosen["sample"],
        "rejected_sample": rejected["sample"],
        "right_samples": len(right),
        "wrong_samples": len(wrong),
    }, "pair"


def build_pairs(split: str, rows: Sequence[Mapping[str, Any]], samples: Iterable[Mapping[str, Any]],
                seed: int) -> Tuple[List[dict], Dict[str, Any]]:
    """The split's pairs (ids ``arithmetic_onpolicy-<split>-NNNNN`` in prompt order) and its statistics.

    Every prompt in ``rows`` must have samples (``prompt_id`` = the row's id); a missing one is an error,
    never a silent drop. The statistics count prompts, samples, complete and right samples, pairs, and
    prompts without a pair by reason and by category.
    """
    by_prompt = samples_by_prompt(split, rows, samples, "scripts/make_onpolicy_data.py")
    pairs, reasons = [], Counter()
    by_category: Dict[str, Counter] = {}
    for row in rows:
        pair, outcome = pair_for_prompt(row, by_prompt[row["id"]], seed)
        reasons[outcome] += 1
        by_category.setdefault(row["category"], Counter())[outcome] += 1
        if pair is not None:
            pairs.append({"id": f"{TASK}-{split}-{len(pairs):05d}", **pair})
    every = [s for row in rows for s in by_prompt[row["id"]]]
    stats = {
        "prompts": len(rows),
        "samples": len(every),
        "complete_samples": sum(s["complete"] for s in every),
        "right_samples": sum(s["complete"] and s["correct"] for s in every),
        "pairs": len(pairs),
        "no_pair": {reason: reasons[reason] for reason in REASONS},
        "by_category": {name: dict(sorted(c.items())) for name, c in sorted(by_category.items())},
    }
    return pairs, stats


def describe(stats: Mapping[str, Any]) -> str:
    """One paragraph in words: how many prompts gave a pair and why the others did not."""
    return (f"{describe_outcomes(stats, REASONS)}. Of {stats['samples']} sampled responses, "
            f"{stats['complete_samples']} were complete and {stats['right_samples']} of those stated the right "
            f"answer.")
