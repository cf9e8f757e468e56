"""Reading the answer a response gives to an arithmetic question ("What is a op b? ...").

Two readings, selectable by the rule judge (``judge.extraction``):

- ``asked_expression`` (the default, :func:`is_correct`): the result the response states for the
  expression that was asked. A response is correct when it states at least one result for ``a op b``
  and **every** result it states for it is the true answer, so ``6 * 7 = 41. Sorry, 6 * 7 = 42.`` is
  wrong. Specified in issue 19; the clauses, in the order :func:`read_answer` applies them:

  1. A result for the expression is the number that follows a restatement of ``a op b`` (``6 * 7``,
     ``6*7``, ``6 x 7``, ``6 times 7``; ``7 * 6`` for ``+`` and ``*``) after ``=``, ``equals``,
     ``is`` (``is equal to``) or ``:``, optionally introduced by ``which`` (``6 * 7, which is 42``).
     A restatement next to another operator (``30 * 10 + 30``, ``5 + 30 * 10``) is a different
     expression. Results for other expressions (``83 + 2 = 85\\n85 + 2 = 87``) are ignored. A chain
     is followed to its number: ``41 + 35 = 70 + 6 = 76`` states 76. A statement of *the answer*
     (``The answer is 54``) is a result for the asked expression too: the question's answer is by
     definition the asked expression's result, so ``42 + 6 = 48 ... The answer is 54`` contradicts
     itself and is wrong.
  2. If there is no such result, the first number the response states as a result (after ``=``,
     ``equals``, ``is``, ``:`` or "the answer is"; not a result of another written-out expression).
  3. If it states none, the first number that is not an operand of the prompt (by value; the result
     and the operands of another written-out expression are skipped too, as clause 1 ignores them).

  What counts as "the first" is by position; ``is`` also reads ``is equal to``, and a closing
  parenthesis or quote may follow the restatement (``(6 * 7) = 42``, ``the "6 * 7" is 42``). Words
  other than these (``gives``, ``makes``) introduce no result.

  Thousands commas are read (``1,015``); a decimal equal to an integer counts as it (``42.0``), any
  other decimal is wrong; negative results are read (``5 - 8 = -3``). When the generation stopped
  at its length limit (``truncated``), a number that touches the end of the response (nothing, or
  only a comma, after it) is ignored (it may be cut: ``... = 5`` of 540), as is a term cut after an
  operator, and a trailing clause with no result (its numbers are not used by clause 3).

- ``last_equation`` (:func:`last_equation_answer`, the reading before issue 19, kept for
  comparison): the first number after the last ``=``, else the last number. It misreads run-on
  answers (``962 + 3 = 965\\n965 + 3 = 968`` reads 968).

Pure Python (``re`` only): importing this module loads no torch.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

#: The readings the rule judge can use; the first is the default.
EXTRACTIONS = ("asked_expression", "last_equation")
DEFAULT_EXTRACTION = EXTRACTIONS[0]

# A number: thousands commas ("1,015"), an optional decimal part, an optional sign (see _value).
_NUM = r"-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
_NUMBER = re.compile(_NUM)
# Operator spellings, by the operator of the prompt they restate. "x" only when no letter follows
# ("6 x 7", "6x7"; not "6 xylophones").
_OPERATOR_WORDS = {
    "+": r"\+|plus\b",
    "-": r"-|minus\b",
    "*": r"\*|[x×X·](?![A-Za-z])|times\b|multiplied\s+by\b",
}
# Any arithmetic operator, asked or not (division and powers only ever make *another* expression).
_ANY_OPERATOR = "|".join(_OPERATOR_WORDS.values()) + r"|/|÷|\^|divided\s+by\b"
_OPERATOR = re.compile(rf"[ \t]*(?:{_ANY_OPERATOR})[ \t]*")
# What introduces a result: "=", "equals", "is", "is equal to", ":"; "which" may lead ("..., which is 42").
_MARKER = re.compile(r"[ \t]*\)?[ \t]*(?:,[ \t]*)?(?:\bwhich[ \t]+)?"
                     r"(?:={1,2}|\bequals(?:[ \t]+to)?\b|\bis[ \t]+equal[ \t]+to\b|\bis\b|:)", re.IGNORECASE)
# A statement of the answer itself ("The answer is 42", "Answer: 42").
_ANSWER = re.compile(r"\banswer\s*(?:is\b|=|:)", re.IGNORECASE)
# The end of an arithmetic expression just before a marker: its result is for that expression.
_EXPRESSION_BEFORE = re.compile(rf"\d[ \t]*(?:{_ANY_OPERATOR})[ \t]*\(?[ \t]*{_NUM}[ \t]*\)?[ \t]*$")
# A binary operator just before a restatement: the restatement is part of a longer expression.
_OPERATOR_BEFORE = re.compile(rf"(?:\d|\))[ \t]*(?:{_ANY_OPERATOR})[ \t]*\(?[ \t]*$")
# What stands between two operands of one expression ("1 + 448", "6 x (7").
_BETWEEN_OPERANDS = re.compile(rf"[ \t]*(?:{_ANY_OPERATOR})[ \t]*\(?[ \t]*")
# A closing parenthesis or quote right after a restatement.
_CLOSING = re.compile(r"[ \t]*[)\"'\u201d\u2019]")
# Where a clause ends (for the trailing clause of a cut response).
_CLAUSE_END = re.compile(r"[.!?;](?=\s)|\n")
# Unicode minus signs and the en dash read as "-" (one character for one: positions are kept).
_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-"})


@dataclass(frozen=True)
class Reading:
    """What :func:`read_answer` found in one response.

    ``results``: every result it counts, in order (None for a non-integer such as ``2.5``);
    ``rule``: which clause found them: ``restated`` (results for the asked expression, or a
    statement of the answer), ``stated_result`` (the first number stated as a result),
    ``first_number`` (the first number that is not an operand of the prompt) or ``none``.
    """

    results: Tuple[Optional[int], ...]
    rule: str

    def correct(self, answer: int) -> bool:
        """Whether at least one result was found and every one of them is ``answer``."""
        return bool(self.results) and all(r == int(answer) for r in self.results)


@dataclass(frozen=True)
class _Found:
    value: Optional[int]
    end: int  # where the number that gives the value ends
    cut: bool  # touches the end of a truncated response, or an operator there


def _value(text: str, match: "re.Match[str]") -> Tuple[Optional[int], int]:
    """The integer a number match states (None for a non-integer decimal) and where its digits start."""
    token, start = match.group(), match.start()
    # A minus right after a digit, letter or ")" is an operator ("10-5" states 10 and 5), not a sign.
    if token.startswith("-") and start > 0 and (text[start - 1].isalnum() or text[start - 1] == ")"):
        token, start = token[1:], start + 1
    whole, _, fraction = token.replace(",", "").partition(".")
    return (None if fraction.strip("0") else int(whole)), start


def _number_at(text: str, pos: int) -> Optional["re.Match[str]"]:
    """A number starting at ``pos`` after blanks and an opening parenthesis, if there is one."""
    while pos < len(text) and text[pos] in " \t($":
        pos += 1
    match = _NUMBER.match(text, pos)
    # "5.5" must not be read as "5" then ".5"; a number glued to a digit before it is no new number.
    return match if match and not (pos > 0 and text[pos - 1].isdigit()) else None


def _touches_end(text: str, end: int) -> bool:
    """Nothing but a possible "," follows: the number may have been cut (540 -> 5, 1,015 -> 1,).

    A number followed by a full stop ("The answer is 86.") was finished: the hand audit
    (benchmarks/judge_audit/AUDIT.md) found complete wrong answers of cut responses read as cut.
    """
    return text[end:] in ("", ",")


def _operand_ends(text: str) -> set:
    """Where the numbers end that are operands of a written-out expression ("1 + 448", "10-5").

    Clause 3 skips them: a number inside another expression is not a stated answer (the audit's
    "447 is the result of 1 + 448" for 447 + 1).
    """
    ends = set()
    numbers = list(_NUMBER.finditer(text))
    for left, right in zip(numbers, numbers[1:]):
        glued_minus = left.end() == right.start() and right.group().startswith("-")
        if glued_minus or _BETWEEN_OPERANDS.fullmatch(text, left.end(), right.start()):
            ends.update((left.end(), right.end()))
    return ends


def _result_after(text: str, pos: int, truncated: bool) -> Optional[_Found]:
    """The number a result marker ending at ``pos`` introduces, following chains (``= 70 + 6 = 76``)."""
    while True:
        match = _number_at(text, pos)
        if match is None:
            return None
        end, is_expression = match.end(), False
        while True:  # an expression: number (operator number)*
            op = _OPERATOR.match(text, end)
            following = _number_at(text, op.end()) if op else None
            if following is None:
                break
            end, is_expression = following.end(), True
        if not is_expression:
            value, _ = _value(text, match)
            op = _OPERATOR.match(text, end)
            cut = truncated and (_touches_end(text, end) or bool(op and not text[op.end():].strip()))
            return _Found(value, end, cut)
        marker = _MARKER.match(text, end)
        if marker is None:  # an expression left unevaluated: no result
            return None
        pos = marker.end()


@functools.lru_cache(maxsize=4096)
def _restatement(a: int, op: str, b: int) -> "re.Pattern[str]":
    def literal(n: int) -> str:
        forms = {str(n), f"{n:,}"}
        return "(?:" + "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)) + ")"

    ops = _OPERATOR_WORDS[op]
    orders = [(a, b)] + ([(b, a)] if op in "+*" and a != b else [])  # "7 * 6" restates 6 * 7
    body = "|".join(rf"{literal(x)}[ \t]*(?:{ops})[ \t]*{literal(y)}" for x, y in orders)
    # Not inside a longer number or a decimal on either side ("16 * 7", "6 * 70", "6 * 7.5").
    return re.compile(rf"(?<![\w.,\-])\(?[ \t]*(?:{body})(?!\d|[.,]\d)", re.IGNORECASE)


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence) and prompt and all(isinstance(m, Mapping) for m in prompt):
        users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
        return str(users[-1] if users else prompt[-1].get("content", ""))
    raise TypeError(f"prompt must be a string or a list of chat messages, got {type(prompt).__name__}")


_QUESTION = re.compile(r"(-?\d[\d,]*)\s*(\+|-|\*|×|x|X|plus\b|minus\b|times\b)\s*(-?\d[\d,]*)")
_QUESTION_OPS = {"+": "+", "plus": "+", "-": "-", "minus": "-", "*": "*", "×": "*", "x": "*", "X": "*",
                 "times": "*"}


def parse_question(prompt: Union[str, Sequence[Mapping[str, Any]]]) -> Tuple[int, str, int]:
    """The expression ``(a, op, b)`` a prompt asks about (the first ``a op b`` in it; op is ``+ - *``).

    A list of chat messages is read from its last user message. A prompt with no such expression is
    a ValueError naming the fix (the ``last_equation`` reading needs no prompt).
    """
    text = _prompt_text(prompt).translate(_SIGNS)
    match = _QUESTION.search(text)
    if match is None:
        raise ValueError(f"the prompt {text[:80]!r} asks no arithmetic expression 'a op b' (op one of + - *); "
                         f"the asked_expression reading needs one. For other prompts use the last_equation "
                         f"reading (judge.extraction: last_equation) or another judge.")
    a, op, b = match.groups()
    return int(a.replace(",", "")), _QUESTION_OPS[op], int(b.replace(",", ""))


def read_answer(response: str, *, prompt: Union[str, Sequence[Mapping[str, Any]]],
                truncated: bool = False) -> Reading:
    """The results a response states for the expression its prompt asks (see the module docstring).

    Args:
        response: the model's response.
        prompt: the question, ``"What is a op b? ..."`` (or chat messages whose last user turn asks it).
        truncated: whether the generation stopped at its length limit (``max_new_tokens``).
    """
    if not isinstance(response, str):
        raise TypeError(f"response must be a string, got {type(response).__name__}")
    a, op, b = parse_question(prompt)
    text = response.translate(_SIGNS).rstrip()

    def kept(found: Optional[_Found]) -> bool:
        return found is not None and not found.cut

    # Clause 1: results of restatements of a op b, and statements of the answer.
    restated: List[Tuple[int, Optional[int]]] = []
    for match in _restatement(a, op, b).finditer(text):
        if _OPERATOR_BEFORE.search(text, 0, match.start()):  # "5 + 30 * 10": a longer expression
            continue
        end = match.end()
        close = _CLOSING.match(text, end)  # '(6 * 7) = 42', 'the "6 * 7" is 42'
        end = close.end() if close else end
        op_after = _OPERATOR.match(text, end)
        if op_after and _number_at(text, op_after.end()):  # "30 * 10 + 30": another expression
            continue
        marker = _MARKER.match(text, end)
        found = _result_after(text, marker.end(), truncated) if marker else None
        if kept(found):
            restated.append((match.start(), found.value))
    for match in _ANSWER.finditer(text):
        found = _result_after(text, match.end(), truncated)
        if kept(found):
            restated.append((match.start(), found.value))
    if restated:
        return Reading(tuple(v for _, v in sorted(restated)), "restated")

    # Clause 2: the first number stated as a result, unless it is the result of another expression.
    stated_anywhere = []  # every complete result, for the trailing-clause rule below
    other_results = set()  # where results of other expressions end: clause 3 skips them too
    for marker in _MARKER.finditer(text):
        found = _result_after(text, marker.end(), truncated)
        if not kept(found):
            continue
        stated_anywhere.append(marker.start())
        if not _EXPRESSION_BEFORE.search(text, 0, marker.start()):
            return Reading((found.value,), "stated_result")
        other_results.add(found.end)

    # Clause 3: the first number that is not an operand; a cut response's trailing clause without a
    # result, and a number touching its end, are left out.
    limit = len(text)
    if truncated:
        boundaries = [m.end() for m in _CLAUSE_END.finditer(text)]
        last_clause = boundaries[-1] if boundaries else 0
        if not any(pos >= last_clause for pos in stated_anywhere):
            limit = last_clause
    operands = _operand_ends(text)
    for match in _NUMBER.finditer(text, 0, limit):
        value, _ = _value(text, match)
        if (truncated and _touches_end(text, match.end())) or match.end() in other_results | operands:
            continue
        if value is None or value not in (a, b):
            return Reading((value,), "first_number")
    return Reading((), "none")


def is_correct(response: str, answer: int, *, prompt: Union[str, Sequence[Mapping[str, Any]]],
               truncated: bool = False) -> bool:
    """Whether the response states the right result for the expression its prompt asks.

    Correct when it states at least one result for ``a op b`` and every result it states for it is
    ``answer`` (see :func:`read_answer` and the module docstring for the clauses). ``truncated``:
    the generation stopped at its length limit, so a number touching the end may be cut.
    """
    return read_answer(response, prompt=prompt, truncated=truncated).correct(answer)


# --------------------------------------------------------------------------------------------------
# The reading before issue 19 (``last_equation``)
# --------------------------------------------------------------------------------------------------


# The old reading's number pattern and sign rule, kept character for character so that it reads as before.
_OLD_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def _numbers(text: str) -> List[Optional[int]]:
    """The numbers a text states, in order, as ints (None for a non-integer such as 2.5)."""
    out: List[Optional[int]] = []
    for match in _OLD_NUMBER.finditer(text):
        token = match.group()
        # A minus right after a digit or letter is an operator ("10-5" states 10 and 5), not a sign.
        if token.startswith("-") and match.start() > 0 and text[match.start() - 1].isalnum():
            token = token[1:]
        token = token.replace(",", "")
        whole, _, fraction = token.partition(".")
        out.append(None if fraction.strip("0") else int(whole))
    return out


def last_equation_answer(response: str) -> Optional[int]:
    """The ``last_equation`` reading: the integer result a response states, or None if it states none.

    If the response contains ``=``, the first number after the last ``=`` is its result
    (``"41 + 35 = 76."`` -> 76, ``"41 + 35 = 70 + 6 = 76"`` -> 76); otherwise the last number in it
    (``"The answer is 76."`` -> 76). Thousands commas are read (``"1,015"`` -> 1015); a decimal with a
    non-zero fraction states no integer (None); ``"42.0"`` -> 42. Misreads run-on answers (issue 19).
    """
    if not isinstance(response, str):
        raise TypeError(f"response must be a string, got {type(response).__name__}")
    if "=" in response:
        found = _numbers(response[response.rindex("=") + 1:])
        if found:
            return found[0]
    found = _numbers(response)
    return found[-1] if found else None


def is_correct_last_equation(response: str, answer: int) -> bool:
    """Whether the ``last_equation`` reading (:func:`last_equation_answer`) of the response is ``answer``."""
    return last_equation_answer(response) == int(answer)


def score_response(response: str, answer: int, *, prompt: Union[str, Sequence[Mapping[str, Any]]],
                   truncated: bool = False, extraction: str = DEFAULT_EXTRACTION) -> bool:
    """Whether the response is right under the named reading (one of :data:`EXTRACTIONS`).

    ``last_equation`` reads neither the prompt nor ``truncated`` (it is the old reading, unchanged).
    """
    if extraction == "asked_expression":
        return is_correct(response, answer, prompt=prompt, truncated=truncated)
    if extraction == "last_equation":
        return is_correct_last_equation(response, answer)
    raise ValueError(f"extraction={extraction!r} is unknown; choose one of {', '.join(EXTRACTIONS)}")
