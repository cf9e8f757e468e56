"""Constraints a program can check on a response, in the style of IFEval (Zhou et al. 2023).

Each constraint is a small frozen dataclass with :meth:`Constraint.check` (does a response satisfy
it?) and :meth:`Constraint.describe` (the instruction appended to a request). A row stores a
constraint as ``{"type": ..., **parameters}`` (:meth:`Constraint.spec`); :func:`constraint_from_spec`
reads it back. The types, by name, are in :data:`CONSTRAINTS`.

A check reads only its own constraint, but closes the degenerate ways to satisfy it that belong to
it: list items need words and must differ from each other (three empty bullets are no list), quotes
must hold text, an end phrase or a title must come with :data:`MIN_WORDS` words of answer besides it,
and of N sentences at most one may be shorter than three words. Degenerate answers in general (empty,
one word, one word repeated, a repeated line) are the task's real-answer gate
(:func:`lit_idpo.data.tasks.instructions.answer_problem`).

Words (:func:`words`) are runs of letters or digits, with inner apostrophes or hyphens ("don't",
"well-known" are one word each); "at most N words" counts these. Sentences (:func:`sentences`) end
at ``.``, ``!`` or ``?`` followed by a space or the end (not after "e.g." and a few such
abbreviations), and at every line break; a piece with no word containing a letter (a list number
"1.") is not a sentence. Pure Python.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

#: A real answer has at least this many words containing a letter (also the least ``max_words`` allowed).
MIN_WORDS = 3

_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
_LETTERS = re.compile(r"[^\W\d_]+")
# A sentence ends at . ! or ? (possibly followed by closing quotes or brackets) and then whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+")
# A piece ending with one of these is an abbreviation, not a sentence end ("e.g. apples").
_ABBREVIATIONS = frozenset(("e.g.", "i.e.", "mr.", "mrs.", "ms.", "dr.", "vs."))
_BULLET = re.compile(r"^[ \t]*[-*](?:[ \t]+(.*?))?[ \t]*$")
_NUMBERED = re.compile(r"^[ \t]*(\d+)[.)](?:[ \t]+(.*?))?[ \t]*$")
_TITLE = re.compile(r"<<([^<>\n]+)>>")


def words(text: str) -> List[str]:
    """The words of a text: runs of letters or digits, with inner apostrophes or hyphens."""
    return _WORD.findall(text)


def letter_words(text: str) -> List[str]:
    """The words that contain a letter (numbers alone are not counted as an answer's words)."""
    return [w for w in words(text) if any(ch.isalpha() for ch in w)]


def sentences(text: str) -> List[str]:
    """The sentences of a text (see the module docstring); each holds a word with a letter."""
    found: List[str] = []
    for line in text.splitlines():
        pieces: List[str] = []
        for piece in _SENTENCE_END.split(line.strip()):
            if pieces and (pieces[-1].split() or [""])[-1].lower() in _ABBREVIATIONS:
                pieces[-1] += " " + piece
            else:
                pieces.append(piece)
        found += [p for p in pieces if letter_words(p)]
    return found


def word_key(text: str) -> Tuple[str, ...]:
    """A text as its sequence of case-folded words: what two items or sentences are compared by."""
    return tuple(w.casefold() for w in words(text))


# --------------------------------------------------------------------------------------------------
# Constraints
# --------------------------------------------------------------------------------------------------


class Constraint:
    """One checkable constraint: :meth:`check` a response, :meth:`describe` it as the request's instruction.

    Subclasses are dataclasses whose fields are the constraint's parameters; :meth:`spec` is the
    row's JSON form ``{"type": ..., **parameters}`` and :func:`constraint_from_spec` reads it back.
    A parameter that makes no sense raises :class:`ValueError` naming it.
    """

    type: ClassVar[str] = ""

    def check(self, response: str) -> bool:
        """Whether the response satisfies this constraint (the real-answer gate is the task's)."""
        raise NotImplementedError

    def describe(self) -> str:
        """The instruction appended to the request, e.g. ``Answer in all lowercase letters.``"""
        raise NotImplementedError

    def spec(self) -> Dict[str, Any]:
        """The constraint as a row stores it: ``{"type": ..., **parameters}``."""
        return {"type": self.type, **dataclasses.asdict(self)}


def _count(value: Any, name: str, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name}={value!r}; it must be an integer >= {least}")


def _one_word(value: Any) -> None:
    if not isinstance(value, str) or _WORD.fullmatch(value) is None:
        raise ValueError(f"word={value!r}; it must be one word (letters or digits)")


def _occurrences(word: str, text: str) -> int:
    return sum(w.casefold() == word.casefold() for w in words(text))


@dataclass(frozen=True)
class Lowercase(Constraint):
    """No capital letter anywhere, and at least one letter."""

    type: ClassVar[str] = "lowercase"

    def check(self, response):
        return any(ch.isalpha() for ch in response) and not any(ch.isupper() for ch in response)

    def describe(self):
        return "Write your whole answer in lowercase letters, with no capital letters at all."


@dataclass(frozen=True)
class NoCommas(Constraint):
    """No comma (nor the full-width comma)."""

    type: ClassVar[str] = "no_commas"

    def check(self, response):
        return "," not in response and "，" not in response

    def describe(self):
        return "Do not use any commas in your answer."


def _list_items(pattern: re.Pattern, response: str) -> List[re.Match]:
    return [m for m in map(pattern.match, response.splitlines()) if m]


def _items_ok(texts: Sequence[Optional[str]]) -> bool:
    """Every item holds words, and no two items say the same (three empty bullets are no list)."""
    keys = [word_key(t or "") for t in texts]
    return all(keys) and len(set(keys)) == len(keys)


@dataclass(frozen=True)
class Bullets(Constraint):
    """Exactly ``n`` lines starting with ``- `` or ``* ``, each with words, no two the same."""

    n: int
    type: ClassVar[str] = "bullets"

    def __post_init__(self):
        _count(self.n, "n", 1)

    def check(self, response):
        items = _list_items(_BULLET, response)
        return len(items) == self.n and _items_ok([m.group(1) for m in items])

    def describe(self):
        return f'Answer with exactly {self.n} bullet points, each on its own line starting with "- ".'


@dataclass(frozen=True)
class Numbered(Constraint):
    """Exactly ``n`` lines numbered ``1.`` (or ``1)``) to ``n.`` in order, each with words, no two the same."""

    n: int
    type: ClassVar[str] = "numbered"

    def __post_init__(self):
        _count(self.n, "n", 1)

    def check(self, response):
        items = _list_items(_NUMBERED, response)
        return ([int(m.group(1)) for m in items] == list(range(1, self.n + 1))
                and _items_ok([m.group(2) for m in items]))

    def describe(self):
        return f"Answer with a numbered list of exactly {self.n} items (1., 2., ...)."


@dataclass(frozen=True)
class MaxWords(Constraint):
    """At most ``n`` words (``n`` >= :data:`MIN_WORDS`, or no real answer could satisfy it)."""

    n: int
    type: ClassVar[str] = "max_words"

    def __post_init__(self):
        _count(self.n, "n", MIN_WORDS)

    def check(self, response):
        return len(words(response)) <= self.n

    def describe(self):
        return f"Answer in at most {self.n} words."


@dataclass(frozen=True)
class MinWords(Constraint):
    """At least ``n`` words (repeating to get there fails the real-answer gate)."""

    n: int
    type: ClassVar[str] = "min_words"

    def __post_init__(self):
        _count(self.n, "n", 1)

    def check(self, response):
        return len(words(response)) >= self.n

    def describe(self):
        return f"Answer in at least {self.n} words."


@dataclass(frozen=True)
class IncludeWord(Constraint):
    """The word appears as a whole word, in any case ("blues" does not include "blue")."""

    word: str
    type: ClassVar[str] = "include_word"

    def __post_init__(self):
        _one_word(self.word)

    def check(self, response):
        return _occurrences(self.word, response) >= 1

    def describe(self):
        return f'Include the word "{self.word}" in your answer.'


@dataclass(frozen=True)
class KeywordCount(Constraint):
    """The word appears as a whole word at least ``n`` times, in any case."""

    word: str
    n: int
    type: ClassVar[str] = "keyword_count"

    def __post_init__(self):
        _one_word(self.word)
        _count(self.n, "n", 2)

    def check(self, response):
        return _occurrences(self.word, response) >= self.n

    def describe(self):
        return f'Use the word "{self.word}" at least {self.n} times.'


@dataclass(frozen=True)
class StartWord(Constraint):
    """The response's first word is the word, in any case; only punctuation or markup may come before it."""

    word: str
    type: ClassVar[str] = "start_word"

    def __post_init__(self):
        _one_word(self.word)

    def check(self, response):
        first = _WORD.search(response)
        return first is not None and first.group().casefold() == self.word.casefold()

    def describe(self):
        return f'Start your answer with the word "{self.word}".'


@dataclass(frozen=True)
class EndPhrase(Constraint):
    """The response ends with the phrase (as IFEval reads it: case-folded, after stripping spaces and
    a closing double quote), and has :data:`MIN_WORDS` words of its own before it."""

    phrase: str
    type: ClassVar[str] = "end_phrase"

    def __post_init__(self):
        if not isinstance(self.phrase, str) or not letter_words(self.phrase):
            raise ValueError(f"phrase={self.phrase!r}; it must be text with words")

    def check(self, response):
        text = response.strip().rstrip('"”').rstrip()
        phrase = self.phrase.strip()
        if not text.casefold().endswith(phrase.casefold()):
            return False
        return len(letter_words(text[: len(text) - len(phrase)])) >= MIN_WORDS

    def describe(self):
        return f'End your answer with the exact phrase "{self.phrase}", with nothing after it.'


@dataclass(frozen=True)
class Quotes(Constraint):
    """The whole response (spaces aside) is wrapped in double quotes (straight or curly), with words inside."""

    type: ClassVar[str] = "quotes"

    def check(self, response):
        text = response.strip()
        return len(text) >= 2 and text[0] in '"“' and text[-1] in '"”' and bool(letter_words(text[1:-1]))

    def describe(self):
        return "Wrap your entire answer in double quotation marks."


@dataclass(frozen=True)
class Sentences(Constraint):
    """Exactly ``n`` sentences (:func:`sentences`), at most one of them shorter than three words."""

    n: int
    type: ClassVar[str] = "sentences"

    def __post_init__(self):
        _count(self.n, "n", 1)

    def check(self, response):
        found = sentences(response)
        return len(found) == self.n and sum(len(words(s)) < 3 for s in found) <= 1

    def describe(self):
        return "Answer in exactly one sentence." if self.n == 1 else f"Answer in exactly {self.n} sentences."


@dataclass(frozen=True)
class Title(Constraint):
    """A title in double angular brackets (``<<...>>``, with words in it) and :data:`MIN_WORDS` words besides it."""

    type: ClassVar[str] = "title"

    def check(self, response):
        match = next((m for m in _TITLE.finditer(response) if letter_words(m.group(1))), None)
        if match is None:
            return False
        return len(letter_words(response[: match.start()] + " " + response[match.end():])) >= MIN_WORDS

    def describe(self):
        return "Give your answer a title wrapped in double angular brackets, such as <<my title>>."


@dataclass(frozen=True)
class MaxWordLength(Constraint):
    """No run of letters longer than ``n`` ("well-known" is two runs; digits do not count)."""

    n: int
    type: ClassVar[str] = "max_word_length"

    def __post_init__(self):
        _count(self.n, "n", 3)

    def check(self, response):
        return all(len(run) <= self.n for run in _LETTERS.findall(response))

    def describe(self):
        return f"Use only words of at most {self.n} letters."


#: Every constraint type, by its ``type`` name.
CONSTRAINTS: Dict[str, type] = {cls.type: cls for cls in (
    Lowercase, NoCommas, Bullets, Numbered, MaxWords, MinWords, IncludeWord, KeywordCount, StartWord,
    EndPhrase, Quotes, Sentences, Title, MaxWordLength)}


def constraint_from_spec(spec: Mapping[str, Any]) -> Constraint:
    """A constraint from its row form ``{"type": ..., **parameters}``; a bad spec is a ValueError naming the fix."""
    if not isinstance(spec, Mapping) or spec.get("type") not in CONSTRAINTS:
        got = spec.get("type") if isinstance(spec, Mapping) else spec
        raise ValueError(f"constraint {got!r} is unknown; each constraint is a mapping whose 'type' is one of "
                         f"{', '.join(CONSTRAINTS)}")
    cls = CONSTRAINTS[spec["type"]]
    params = {k: v for k, v in spec.items() if k != "type"}
    fields = [f.name for f in dataclasses.fields(cls)]
    if sorted(params) != sorted(fields):
        raise ValueError(f"constraint {spec['type']!r} takes the parameters {fields}, got {sorted(params)}")
    return cls(**params)
