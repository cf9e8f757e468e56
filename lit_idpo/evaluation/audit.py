"""Auditing an evaluation's instrument: responses cut at the length limit, where the rule judge's readings differ,
and what each model's responses look like (length; per constraint type on the instruction task).

The checks ``lit-idpo evaluate`` runs on every model and puts in ``results.json`` and the report:

- **Truncation** (:func:`truncation_check`): the share of each model's responses that stopped at
  ``max_new_tokens``. Above :data:`TRUNCATION_WARN_SHARE` it warns: whatever reads the end of a
  response reads a cut one there, so results are not comparable across models that differ in length
  (issue 19: DPO's 18.7 % against layer 21's 6.5 % was the whole of a claimed gain).
- **Reading disagreements** (:func:`reading_disagreements`, rule judge on arithmetic rows only): how
  many responses the two answer readings (``asked_expression`` and ``last_equation``) score
  differently, and which way.
- **Response profile** (:func:`response_profile`): mean length in words, and on instruction-task rows the
  pass rate per constraint type (a model that wins by writing less is not one that follows
  instructions better; the per-type rates show which constraints moved).
"""

from __future__ import annotations

import statistics
from typing import Any, Dict, List, Mapping, Optional, Sequence

from lit_idpo.data.tasks import task_of
from lit_idpo.data.tasks.arithmetic_reading import EXTRACTIONS
from lit_idpo.evaluation.judges import Judge, RuleJudge
from lit_idpo.evaluation.prompts import PromptRecord

#: Above this share of responses stopped at ``max_new_tokens``, ``lit-idpo evaluate`` warns.
TRUNCATION_WARN_SHARE = 0.05


def reading_disagreements(judge: Judge, prompts: Sequence[PromptRecord], responses: Sequence[str],
                          truncated: Sequence[bool]) -> Optional[Dict[str, Any]]:
    """Each response scored under both answer readings, and how often they differ.

    None unless ``judge`` is the rule judge and every prompt is of the arithmetic task (the readings are
    arithmetic's; a ``judge.verifier`` or another task has none).

    Returns ``{"extraction": the judge's reading, "responses": n, "correct": {reading: count},
    "disagree": k, "right_only_under": {reading: count}, "per_response": [{reading: 0/1}, ...]}``.
    """
    if not isinstance(judge, RuleJudge) or any(judge.task_of(r.row) != "arithmetic" for r in prompts):
        return None
    per_response: List[Dict[str, float]] = []
    for record, response, cut in zip(prompts, responses, truncated):
        per_response.append({ext: judge.score_with(ext, record.prompt, response, record.row, truncated=bool(cut))
                             for ext in EXTRACTIONS})
    first, second = EXTRACTIONS
    return {
        "extraction": judge.extraction,
        "responses": len(per_response),
        "correct": {ext: int(sum(s[ext] for s in per_response)) for ext in EXTRACTIONS},
        "disagree": sum(s[first] != s[second] for s in per_response),
        "right_only_under": {ext: sum(s[ext] > s[other] for s in per_response)
                             for ext, other in ((first, second), (second, first))},
        "per_response": per_response,
    }


def truncation_check(models: Sequence[Mapping[str, Any]], max_new_tokens: int,
                     threshold: float = TRUNCATION_WARN_SHARE) -> Dict[str, Any]:
    """Which models stopped at ``max_new_tokens`` in more than ``threshold`` of their responses.

    ``models`` are ``results.json``'s model entries (each with its ``generation`` summary). Returns
    ``{"threshold", "max_new_tokens", "share": {model: share}, "over": [models], "warning": text or None}``.
    """
    share = {m["name"]: m["generation"]["stopped_at_max_new_tokens_share"] for m in models}
    over = [name for name, s in share.items() if s > threshold]
    warning = None
    if over:
        listed = ", ".join(f"{name} ({100 * share[name]:.1f} %)" for name in over)
        warning = (f"responses stopped at max_new_tokens={max_new_tokens} in more than {100 * threshold:g} % of "
                   f"prompts for {listed}: results that read a response's end are not comparable across models "
                   f"that differ in length; raise generation.max_new_tokens, or report a sensitivity analysis "
                   f"without the truncated responses")
    return {"threshold": threshold, "max_new_tokens": max_new_tokens, "share": share, "over": over,
            "warning": warning}


def response_profile(prompts: Sequence[PromptRecord], responses: Sequence[str],
                     truncated: Sequence[bool]) -> Dict[str, Any]:
    """A model's responses described: ``{"mean_words": float}``, plus ``"constraints"`` when every prompt
    is an instruction-task row: per constraint type, :func:`lit_idpo.data.tasks.instructions.rates_by_type`
    (responses asked it, how many pass the whole verifier, how many satisfy that constraint's own check).
    """
    profile: Dict[str, Any] = {"mean_words": statistics.fmean(len(r.split()) for r in responses) if responses
                               else 0.0}
    try:
        instruction_rows = bool(prompts) and all(task_of(r.row) == "instructions" for r in prompts)
    except ValueError:  # a row of no known task: nothing task-specific to say (the judge reports such rows)
        instruction_rows = False
    if instruction_rows:
        from lit_idpo.data.tasks.instructions import rates_by_type

        profile["constraints"] = rates_by_type([r.row for r in prompts], responses, truncated)
    return profile
