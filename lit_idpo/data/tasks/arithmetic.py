"""The arithmetic task's verifier (``bundled:arithmetic``, ``bundled:arithmetic_onpolicy``).

The rows are built by :mod:`.arithmetic_data` (and :mod:`.arithmetic_onpolicy`): ``prompt`` asks
``"What is a op b? Answer briefly."`` and ``answer`` holds the true integer result. The verifier reads
the result a response states for the asked expression
(:func:`lit_idpo.data.tasks.arithmetic_reading.score_response`; ``extraction`` picks the reading).
"""

from __future__ import annotations

from typing import Any, Mapping

from lit_idpo.data.tasks.arithmetic_reading import DEFAULT_EXTRACTION, score_response


def is_correct(row: Mapping[str, Any], response: str, truncated: bool = False, *,
               extraction: str = DEFAULT_EXTRACTION, answer_field: str = "answer") -> bool:
    """Whether the response states ``row[answer_field]`` as the result of the expression ``row["prompt"]`` asks.

    Args:
        row: the prompt's row: ``prompt`` (a string, or chat messages) and the integer answer.
        response: the model's response.
        truncated: the generation stopped at its length limit (a number touching the end may be cut).
        extraction: ``asked_expression`` (default) or ``last_equation`` (the older reading).
        answer_field: the row field holding the true answer.

    A row without an integer answer, or a prompt that asks no ``a op b`` under ``asked_expression``, is a
    ValueError naming the fix.
    """
    value = row.get(answer_field)
    if value is None or isinstance(value, bool):
        raise ValueError(f"the prompt row has no {answer_field!r} field (fields: {sorted(row)})")
    try:
        answer = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"field {answer_field!r} is {value!r}; it must be an integer answer") from None
    try:
        return score_response(response, answer, prompt=row["prompt"], truncated=truncated, extraction=extraction)
    except ValueError as err:  # a prompt that asks no "a op b"
        raise ValueError(f"{err} For a task of your own, name its verifier (judge.verifier: "
                         f"package.module:function).") from None
