"""Preference rows: the three row formats, their validation, and :class:`BadRowError`.

A row is reduced to one prompt and two completions (:class:`NormalizedRow`); the formats are described
in :mod:`lit_idpo.data`. Every problem found here is a :class:`BadRowError` whose ``reason`` is the key
it is counted under when bad rows are skipped, and whose message names the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

from lit_idpo.errors import ConfigError, DataError

FORMATS = ("auto", "standard", "conversational", "implicit")

Message = Dict[str, str]


class BadRowError(DataError):
    """A preference row that cannot be used; ``reason`` is the key it is counted under when skipped.

    ``field`` names the field (``"chosen"``, ``"prompt[0].content"``, ``"chosen/rejected"``, ``"<row>"``);
    ``problem`` says what is wrong with it; ``where`` (once known) says which row, as the user counts
    it (e.g. ``"pairs.jsonl, line 7"``). A :class:`~lit_idpo.errors.DataError`, hence a ``ValueError``.
    """

    def __init__(self, reason: str, field: str, problem: str, where: Optional[str] = None):
        super().__init__(problem if where is None else f"{where}: {problem}")
        self.reason = reason
        self.field = field
        self.problem = problem
        self.where = where

    def with_fix(self, where: str) -> "BadRowError":
        """This error located (``where``: the row as the user counts it) and ending with the fix: the one
        wording of an unusable row for training and evaluation alike."""
        return BadRowError(self.reason, self.field, f"{self.problem}. Fix the row, or set data.on_bad_row=skip to "
                                                    f"skip such rows (they are counted)", where=where)


@dataclass
class NormalizedRow:
    """A row reduced to one prompt and two completions.

    ``kind`` is ``"text"`` (strings: standard format) or ``"messages"`` (lists of messages).
    """

    kind: str
    prompt: Union[str, List[Message]]
    chosen: Union[str, List[Message]]
    rejected: Union[str, List[Message]]


def _missing(row: Dict[str, Any], name: str, where: Optional[str] = None, reason: str = "missing_field") -> BadRowError:
    """The error for a field that is absent or null; the message says which of the two it is.

    ``where`` is the field's full name when ``row`` is a message inside the row (``chosen[0].content``).
    """
    if name in row:  # present but null: say so, never "missing"
        return BadRowError(reason, where or name, f"field {where or name!r} is null; it needs a value")
    holder = "the message has keys" if where else "the row has fields"
    hint = ""
    if not where and is_prompt_only(row):
        hint = ("; it is a prompt-only row, which serves lit-idpo evaluate's generation only: training and the "
                "implicit-reward pass need (chosen, rejected) pairs")
    return BadRowError(reason, where or name, f"field {where or name!r} is missing ({holder} {sorted(row)}){hint}")


def _not_a_mapping(row: Any) -> BadRowError:
    return BadRowError("wrong_type", "<row>", f"the row is a {type(row).__name__}, expected a JSON object (a mapping "
                                              f"of fields such as prompt, chosen, rejected)")


def detect_format(row: Dict[str, Any]) -> str:
    """Guess a row's format from the types of its ``prompt`` / ``chosen`` fields.

    Strings -> ``"standard"``; message lists with a message-list prompt -> ``"conversational"``;
    message lists with no prompt or a string prompt -> ``"implicit"``.
    Raises :class:`BadRowError` when ``chosen`` is missing or of another type.
    """
    if not isinstance(row, dict):
        raise _not_a_mapping(row)
    chosen = row.get("chosen")
    if chosen is None:
        raise _missing(row, "chosen")
    if isinstance(chosen, str):
        return "standard"
    if isinstance(chosen, list):
        return "conversational" if isinstance(row.get("prompt"), list) else "implicit"
    raise BadRowError("wrong_type", "chosen",
                      f"field 'chosen' is a {type(chosen).__name__}; expected a string or a list of messages")


def _require(row: Dict[str, Any], name: str) -> Any:
    value = row.get(name)
    if value is None:
        raise _missing(row, name)
    return value


def _text(row: Dict[str, Any], name: str, reason_if_empty: str) -> str:
    value = _require(row, name)
    if not isinstance(value, str):
        raise BadRowError("wrong_type", name, f"field {name!r} is a {type(value).__name__}; the standard format "
                                              f"needs a string (set format to match the data)")
    if not value.strip():
        raise BadRowError(reason_if_empty, name, f"field {name!r} is an empty string" if not value else
                          f"field {name!r} holds only whitespace")
    return value


def _messages(row: Dict[str, Any], name: str) -> List[Message]:
    value = _require(row, name)
    if not isinstance(value, list):
        raise BadRowError("wrong_type", name, f"field {name!r} is a {type(value).__name__}; this format needs a "
                                              f"list of {{'role': ..., 'content': ...}} messages")
    if not value:
        raise BadRowError("empty_completion" if name != "prompt" else "empty_prompt", name,
                          f"field {name!r} is an empty list of messages")
    for i, message in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(message, dict):
            raise BadRowError("wrong_type", where, f"field {where!r} is a {type(message).__name__}, expected a "
                                                   f"{{'role': ..., 'content': ...}} message")
        for key in ("role", "content"):
            if message.get(key) is None:  # counted as wrong_type: the message, not the row, lacks it
                raise _missing(message, key, f"{where}.{key}", reason="wrong_type")
            if not isinstance(message[key], str):
                raise BadRowError("wrong_type", f"{where}.{key}", f"field '{where}.{key}' is a "
                                                                  f"{type(message[key]).__name__}; expected a string")
    return value


def _check_completion(messages: List[Message], name: str, start: int = 0) -> None:
    """A completion starts with an assistant message and has some text.

    ``start`` is the index of ``messages[0]`` within the row's field ``name`` (non-zero for the
    implicit format, whose completion follows the shared prompt), so an error names the real field.
    """
    if messages[0]["role"] != "assistant":
        after = " (first message after the shared prompt)" if start else ""
        raise BadRowError("bad_roles", f"{name}[{start}].role",
                          f"field '{name}[{start}].role'{after} is {messages[0]['role']!r}; a completion starts "
                          f"with an 'assistant' message")
    if not any(m["content"].strip() for m in messages):
        raise BadRowError("empty_completion", name, f"the completion in field {name!r} has no text (every message "
                                                    f"is empty)")


def _prompt_messages(row: Dict[str, Any]) -> List[Message]:
    """A message-list ``prompt``, validated: it has text and ends before the assistant's reply."""
    prompt = _messages(row, "prompt")
    if prompt[-1]["role"] == "assistant":
        raise BadRowError("bad_roles", f"prompt[{len(prompt) - 1}].role",
                          f"field 'prompt[{len(prompt) - 1}].role' is 'assistant': the prompt must end before the "
                          f"assistant's reply (the completion is that reply)")
    if not any(m["content"].strip() for m in prompt):
        raise BadRowError("empty_prompt", "prompt", "field 'prompt' has no text (every message is empty)")
    return prompt


def _check_distinct(chosen: Any, rejected: Any) -> None:
    if chosen == rejected:
        raise BadRowError("identical_completions", "chosen/rejected", "fields 'chosen' and 'rejected' are identical")


def normalize_row(row: Dict[str, Any], fmt: str) -> NormalizedRow:
    """Validate one row of format ``fmt`` (not ``"auto"``) and reduce it to prompt / chosen / rejected.

    Raises :class:`BadRowError` (with ``reason`` and ``field``) for an unusable row.
    """
    if not isinstance(row, dict):
        raise _not_a_mapping(row)
    if fmt == "standard":
        prompt = _text(row, "prompt", "empty_prompt")
        chosen = _text(row, "chosen", "empty_completion")
        rejected = _text(row, "rejected", "empty_completion")
        _check_distinct(chosen, rejected)
        return NormalizedRow("text", prompt, chosen, rejected)

    if fmt == "conversational":
        prompt = _prompt_messages(row)
        chosen = _messages(row, "chosen")
        rejected = _messages(row, "rejected")
        _check_completion(chosen, "chosen")
        _check_completion(rejected, "rejected")
        _check_distinct(chosen, rejected)
        return NormalizedRow("messages", prompt, chosen, rejected)

    if fmt == "implicit":
        chosen = _messages(row, "chosen")
        rejected = _messages(row, "rejected")
        _check_distinct(chosen, rejected)
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise BadRowError("no_shared_prompt", "chosen/rejected",
                              "'chosen' and 'rejected' differ from their first message, so there is no shared "
                              "prompt (the implicit format needs both conversations to start with the same prompt "
                              "messages)")
        for name, conversation in (("chosen", chosen), ("rejected", rejected)):
            if shared == len(conversation):
                raise BadRowError("empty_completion", name,
                                  f"field {name!r} ends where the shared prompt ends (it has no completion)")
        prompt = chosen[:shared]
        if not any(m["content"].strip() for m in prompt):
            raise BadRowError("empty_prompt", "chosen/rejected", "the shared prompt messages have no text")
        completion_c, completion_r = chosen[shared:], rejected[shared:]
        _check_completion(completion_c, "chosen", start=shared)
        _check_completion(completion_r, "rejected", start=shared)
        return NormalizedRow("messages", prompt, completion_c, completion_r)

    raise ConfigError(f"format={fmt!r} is not a row format; choose one of {list(FORMATS[1:])}")


def is_prompt_only(row: Any) -> bool:
    """Whether a row is a prompt with no pair (``prompt`` and neither ``chosen`` nor ``rejected``).

    Such rows serve evaluation, which generates and judges responses and needs no pair (TRL's
    "prompt-only" datasets); training and the implicit-reward pass need pairs.
    """
    return isinstance(row, dict) and "prompt" in row and "chosen" not in row and "rejected" not in row


def normalize_prompt(row: Dict[str, Any]) -> Union[str, List[Message]]:
    """Validate a prompt-only row's ``prompt`` (a string, or messages not ending with the assistant's)."""
    if isinstance(row.get("prompt"), list):
        return _prompt_messages(row)
    return _text(row, "prompt", "empty_prompt")
