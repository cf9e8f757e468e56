"""Bundled verifiable tasks: rows whose responses a program can check, with no judge model.

Each task defines its verifier, ``is_correct(row, response, truncated) -> bool``: ``row`` is the
prompt's source row (a dict of the data's fields, with ``prompt`` the prompt the model was shown),
``response`` the model's text, ``truncated`` whether its generation stopped at the length limit.

- ``arithmetic``: rows carry ``answer`` (an int) and ask ``What is a op b? ...``; the verifier
  (:func:`.arithmetic.is_correct`) reads the result the response states for that expression.
- ``instructions``: rows carry ``constraints`` (a list of constraint specs); the verifier
  (:func:`.instructions.is_correct`) checks each constraint and that the response is a real answer.

Which task a row belongs to (:func:`task_of`), in this order: its ``task`` field, when it has one
(the name of a task here); else ``instructions`` when it has ``constraints``; else ``arithmetic``
when it has the answer field (``answer``, or what ``judge.answer_field`` names). Any other row belongs
to no bundled task: the rule judge (``judge.name: rule``) then needs the user's own verifier
(``judge.verifier: package.module:function``, :mod:`lit_idpo.evaluation.verifiers`).

Importing this package loads no torch; each task's module is imported when its verifier is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Optional

#: Task name -> the module that defines its ``is_correct``.
_MODULES = {"arithmetic": "lit_idpo.data.tasks.arithmetic", "instructions": "lit_idpo.data.tasks.instructions"}
TASKS = tuple(_MODULES)
#: The row field that names a row's task explicitly.
TASK_FIELD = "task"

Verifier = Callable[[Mapping[str, Any], str, bool], bool]


def task_of(row: Mapping[str, Any], answer_field: str = "answer") -> Optional[str]:
    """The bundled task a row belongs to (see the module docstring), or None when it belongs to none.

    A ``task`` field naming no task here, or a row that has both ``constraints`` and the answer field
    without a ``task`` field to settle it, is a ValueError naming the fix.
    """
    if not isinstance(row, Mapping):
        return None
    if TASK_FIELD in row:
        name = row[TASK_FIELD]
        if name not in _MODULES:
            raise ValueError(f"the row's {TASK_FIELD!r} field is {name!r}, which names no bundled task (they are "
                             f"{', '.join(TASKS)})")
        return name
    has_constraints, has_answer = "constraints" in row, row.get(answer_field) is not None
    if has_constraints and has_answer:
        raise ValueError(f"the row has both 'constraints' (the instructions task) and {answer_field!r} (the "
                         f"arithmetic task); add a {TASK_FIELD!r} field naming its task")
    if has_constraints:
        return "instructions"
    return "arithmetic" if has_answer else None


def task_verifier(name: str) -> Verifier:
    """The named task's ``is_correct(row, response, truncated)``."""
    if name not in _MODULES:
        raise ValueError(f"task {name!r} is unknown; the bundled tasks are {', '.join(TASKS)}")
    return importlib.import_module(_MODULES[name]).is_correct
