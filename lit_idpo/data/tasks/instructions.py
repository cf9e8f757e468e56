"""The instruction-following task: everyday requests with constraints a program can check (IFEval-style).

A row asks an everyday request with one or two constraints (:mod:`.constraints`) appended to it::

    {"id": "instructions-train-00000", "task": "instructions",
     "prompt": "Describe a thunderstorm. Answer in at most 15 words.",
     "request": "Describe a thunderstorm.", "constraints": [{"type": "max_words", "n": 15}]}

The task's verifier, :func:`is_correct`, passes a response only when it is a **real answer** and
satisfies **every** constraint of its row. A real answer (:func:`answer_problem` gives None) is:

- not cut off at the length limit (``truncated``: its end, which several constraints read, is missing);
- not empty, and at least :data:`MIN_WORDS` words that contain a letter;
- not one word repeated: no single word (case-folded) makes up more than :data:`MAX_WORD_SHARE` of
  the words that contain a letter ("blue sky blue" fails; "Yes, yes, I agree." passes);
- not a repeated unit: no sentence or line of :data:`REPEAT_MIN_WORDS` or more words occurs twice
  (compared as its sequence of case-folded words, so "- Red apples." and "* red apples" are the same).

This gate closes the cheap ways to satisfy any constraint (a one-word answer has no commas and is
all lowercase; "blue blue blue" includes the word blue); each constraint's check closes its own
(:mod:`.constraints`). :func:`verify` also gives each constraint's own result, for pass rates per type.

:func:`make_requests` builds task rows from a seeded shuffle of :data:`REQUESTS` (everyday requests,
each complete in itself) and a menu of constraints; train and test rows never share a request.
Pure Python: no torch, no model.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from lit_idpo.data.tasks.constraints import (
    CONSTRAINTS,
    MIN_WORDS,
    Constraint,
    constraint_from_spec,
    letter_words,
    sentences,
    word_key,
)
from lit_idpo.errors import ConfigError, DataError

TASK = "instructions"
#: No single word may make up more than this share of a response's words that contain a letter.
MAX_WORD_SHARE = 0.5
#: A sentence or line of at least this many words may not occur twice.
REPEAT_MIN_WORDS = 2


def answer_problem(response: str) -> Optional[str]:
    """Why a response is no real answer (see the module docstring), or None when it is one."""
    if not response.strip():
        return "empty"
    found = [w.casefold() for w in letter_words(response)]
    if len(found) < MIN_WORDS:
        return f"fewer than {MIN_WORDS} words"
    word, count = Counter(found).most_common(1)[0]
    if count > MAX_WORD_SHARE * len(found):
        return f"the word {word!r} is {count} of its {len(found)} words"
    units = Counter(k for k in map(word_key, sentences(response)) if len(k) >= REPEAT_MIN_WORDS)
    repeated = [unit for unit, n in units.items() if n > 1]
    if repeated:
        return f"the sentence or line {' '.join(repeated[0])!r} occurs {units[repeated[0]]} times"
    return None


# --------------------------------------------------------------------------------------------------
# The task's verifier
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """One response checked: ``passed`` (what :func:`is_correct` says), ``problem`` (why it is no real
    answer: ``"truncated"``, ``"empty"``, ...; None for a real answer), and each constraint's own check
    as ``(type, satisfied)`` in the row's order, computed whatever ``problem`` says (for pass rates per type)."""

    passed: bool
    problem: Optional[str]
    constraints: Tuple[Tuple[str, bool], ...]


def row_constraints(row: Mapping[str, Any]) -> List[Constraint]:
    """The constraints of a task row; a missing or bad ``constraints`` field is a DataError naming the row."""
    specs = row.get("constraints") if isinstance(row, Mapping) else None
    where = f"row {row.get('id')!r}" if isinstance(row, Mapping) and "id" in row else "a row"
    if not isinstance(specs, list) or not specs:
        raise DataError(f"instructions task: {where} has constraints={specs!r}; it needs a non-empty list of "
                        f"constraints such as [{{\"type\": \"max_words\", \"n\": 15}}]")
    try:
        return [constraint_from_spec(spec) for spec in specs]
    except (TypeError, ValueError) as err:
        raise DataError(f"instructions task: {where}, field 'constraints': {err}") from None


def verify(row: Mapping[str, Any], response: str, truncated: bool = False) -> Verification:
    """Check a response against its row: the real-answer gate and every constraint (see the module docstring)."""
    checks = tuple((c.type, bool(c.check(response))) for c in row_constraints(row))
    problem = "truncated" if truncated else answer_problem(response)
    return Verification(problem is None and all(ok for _, ok in checks), problem, checks)


def is_correct(row: Mapping[str, Any], response: str, truncated: bool = False) -> bool:
    """The task's verifier: a real answer that satisfies every constraint of its row."""
    return verify(row, response, truncated).passed


def rates_by_type(rows: Sequence[Mapping[str, Any]], responses: Sequence[str],
                  truncated: Optional[Sequence[bool]] = None) -> Dict[str, Dict[str, Any]]:
    """Per constraint type, over the responses to the rows that ask it: how many there are (``responses``),
    how many pass the whole verifier (``passed``) and how many satisfy that constraint's own check, whatever
    the rest says (``satisfied``), with both shares; types in alphabetical order.

    For reports on evaluated responses (e.g. the pass rate per constraint type of each trained model);
    ``truncated[i]``: whether response ``i`` was cut at the length limit (default: none was).
    """
    if len(rows) != len(responses) or (truncated is not None and len(truncated) != len(rows)):
        raise ValueError(f"rates_by_type: {len(rows)} rows, {len(responses)} responses"
                         + ("" if truncated is None else f", {len(truncated)} truncated flags") + "; give one each")
    counts: Dict[str, Counter] = {}
    for i, (row, response) in enumerate(zip(rows, responses)):
        result = verify(row, response, bool(truncated[i]) if truncated is not None else False)
        for name, ok in result.constraints:
            count = counts.setdefault(name, Counter())
            count["responses"] += 1
            count["passed"] += result.passed
            count["satisfied"] += ok
    return {name: {"responses": c["responses"], "passed": c["passed"], "satisfied": c["satisfied"],
                   "pass_rate": c["passed"] / c["responses"], "satisfied_rate": c["satisfied"] / c["responses"]}
            for name, c in sorted(counts.items())}


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------

#: Everyday requests, each complete in itself; train and test rows never share one.
REQUESTS: Tuple[str, ...] = (
    "Describe a sunny morning at the beach.", "Describe your ideal weekend.", "Describe how fresh coffee smells.",
    "Describe a busy train station.", "Describe a quiet library.", "Describe the taste of a fresh orange.",
    "Describe a city park in autumn.", "Describe a good neighbour.", "Describe a thunderstorm.",
    "Describe a cosy kitchen.",
    "Explain why the sky is blue.", "Explain how rainbows form.", "Explain why people need sleep.",
    "Explain how a bicycle works.", "Explain why plants need sunlight.", "Explain what a budget is.",
    "Explain why exercise is good for you.", "Explain how to boil an egg.",
    "Explain why leaves change colour in autumn.", "Explain what recycling is.", "Explain why we have seasons.",
    "Explain how a fridge keeps food cold.",
    "List some things to pack for a day trip.", "List a few healthy breakfast ideas.",
    "List some ways to save water at home.", "List a few hobbies that cost little money.",
    "List some tips for a job interview.", "List a few things that make a good friend.",
    "List some ways to stay cool in summer.", "List a few animals that live on farms.",
    "List some indoor games for a rainy day.", "List a few ways to reduce stress.",
    "Suggest a name for a new bakery.", "Suggest a gift for a friend who loves books.",
    "Suggest a simple dinner for a busy evening.", "Suggest a way to spend a free afternoon.",
    "Suggest a good habit to start this week.", "Suggest a fun activity for a family picnic.",
    "Suggest a plant that is easy to care for.", "Suggest a way to learn new words.",
    "Suggest an idea for a birthday party.", "Suggest a way to keep a room tidy.",
    'Rewrite this sentence in simpler words: "The meeting has been postponed until further notice."',
    'Rewrite this sentence to sound more polite: "Give me the report now."',
    'Rewrite this sentence in the past tense: "We walk to the market and buy fresh bread."',
    'Rewrite this sentence to sound more cheerful: "The weather is grey again today."',
    'Rewrite this sentence more briefly: "In my personal opinion, I think that we should probably leave soon."',
    'Rewrite this note as a friendly message: "Dinner at seven. Do not be late."',
    "Summarise the story of Little Red Riding Hood.", "Summarise why people enjoy travelling.",
    "Summarise the main reasons to save money for the future.", "Summarise what happens in a football match.",
    "Summarise the benefits of reading every day.", "Summarise how a seed grows into a plant.",
    "Write a short thank-you note to a teacher.", "Write a short message inviting a friend to lunch.",
    "Write a short product description for a water bottle.", "Write a short welcome message for new club members.",
    "Write a short reminder to water the plants.", "Write a short apology for arriving late.",
    "Write a short weather report for a snowy day.", "Write a short review of a favourite cafe.",
    "Give advice to someone starting a new job.", "Give advice on how to sleep better.",
    "Give advice on keeping a houseplant alive.", "Give advice to a student preparing for an exam.",
    "Give advice on making friends in a new city.", "Give advice on cooking rice.",
    "Compare cats and dogs as pets.", "Compare reading a book with watching a film.", "Compare tea and coffee.",
    "Compare living in a city with living in the countryside.",
    "Tell me about your favourite season.", "Tell me how to make a paper airplane.",
    "Tell me what to do on a rainy day.", "Tell me why people keep diaries.",
    "Give a short introduction to the moon.", "Give a short introduction to honeybees.",
    "Give some reasons to learn a second language.", "Give some reasons to visit a museum.",
)

#: Parameters offered per constraint type: everything measured; the on-policy task draws from the subset chosen by
#: that measurement (:data:`.instructions_onpolicy.ONPOLICY_MENU`, issue 22).
DEFAULT_MENU: Dict[str, Tuple[Dict[str, Any], ...]] = {
    "lowercase": ({},),
    "no_commas": ({},),
    "bullets": ({"n": 2}, {"n": 3}, {"n": 4}),
    "numbered": ({"n": 3}, {"n": 4}),
    "max_words": ({"n": 10}, {"n": 15}, {"n": 25}),
    "min_words": ({"n": 30}, {"n": 40}),
    "include_word": tuple({"word": w} for w in ("blue", "simple", "today", "friend", "water", "happy")),
    "keyword_count": tuple({"word": w, "n": 2} for w in ("good", "time", "easy")),
    "start_word": tuple({"word": w} for w in ("Sure", "First", "Well", "Here")),
    "end_phrase": tuple({"phrase": p} for p in ("Hope this helps!", "That is all.",
                                                 "Is there anything else I can help with?")),
    "quotes": ({},),
    "sentences": ({"n": 1}, {"n": 2}, {"n": 3}),
    "title": ({},),
    "max_word_length": ({"n": 6},),
}
#: The constraint types :func:`make_requests` draws from unless told otherwise.
DEFAULT_TYPES: Tuple[str, ...] = tuple(DEFAULT_MENU)

#: Pairs that contradict each other or make each other ambiguous: never drawn together.
CONFLICTS = frozenset(frozenset(pair) for pair in (
    ("max_words", "min_words"), ("bullets", "numbered"), ("bullets", "sentences"), ("numbered", "sentences"),
    ("quotes", "bullets"), ("quotes", "numbered"), ("quotes", "title"), ("lowercase", "start_word"),
    ("lowercase", "end_phrase"), ("title", "start_word"), ("title", "sentences"), ("include_word", "keyword_count"),
))


def split_requests(seed: int = 0, test_share: float = 0.25) -> Dict[str, List[str]]:
    """:data:`REQUESTS` split into ``train`` and ``test`` by a seeded shuffle (independent of the constraints)."""
    if not 0 < test_share < 1:
        raise ConfigError(f"test_share={test_share}; it must be in (0, 1)")
    shuffled = list(REQUESTS)
    random.Random(seed).shuffle(shuffled)
    n_test = max(1, round(len(shuffled) * test_share))
    return {"test": shuffled[:n_test], "train": shuffled[n_test:]}


def make_requests(split: str, count: int, *, seed: int = 0, constraint_types: Sequence[str] = DEFAULT_TYPES,
                  menu: Optional[Mapping[str, Sequence[Mapping[str, Any]]]] = None, two_share: float = 0.5,
                  test_share: float = 0.25) -> List[Dict[str, Any]]:
    """``count`` task rows of one split, deterministic given the arguments.

    Each row takes the split's next request (cycling through them in a seeded order) and one
    constraint, or two with probability ``two_share`` (never a pair in :data:`CONFLICTS`): a type
    drawn uniformly from ``constraint_types``, its parameters from ``menu[type]`` (default
    :data:`DEFAULT_MENU`). No two rows share request and constraints. Rows:
    ``{"id", "task", "prompt", "request", "constraints"}``; ``prompt`` is the request followed by
    each constraint's instruction.
    """
    menu = DEFAULT_MENU if menu is None else menu
    if split not in ("train", "test"):
        raise ConfigError(f"split={split!r}; choose train or test")
    if not 0 <= two_share <= 1:
        raise ConfigError(f"two_share={two_share}; it must be in [0, 1]")
    # A set's order changes with the interpreter's hash seed: sort it, so that the rows do not.
    types = sorted(constraint_types) if isinstance(constraint_types, (set, frozenset)) else list(constraint_types)
    unknown = [t for t in types if t not in CONSTRAINTS or not menu.get(t)]
    if unknown or not types:
        raise ConfigError(f"constraint_types {unknown or types}: each must be one of {', '.join(CONSTRAINTS)} with "
                          f"parameters in the menu")
    try:
        options = {t: [constraint_from_spec({"type": t, **params}) for params in menu[t]] for t in types}
    except ValueError as err:
        raise ConfigError(f"make_requests: menu: {err}") from None
    requests = split_requests(seed, test_share)[split]
    rng = random.Random(f"instructions-{split}-{seed}")
    rows, seen, order = [], set(), []
    for index in range(count):
        for _ in range(1000):  # draws that repeat an earlier row are drawn again
            if not order:
                order = rng.sample(requests, len(requests))
            request = order[-1]
            chosen = [rng.choice(options[rng.choice(types)])]
            partners = [t for t in types if t != chosen[0].type and frozenset((t, chosen[0].type)) not in CONFLICTS]
            if partners and rng.random() < two_share:
                chosen.append(rng.choice(options[rng.choice(partners)]))
            key = (request, json.dumps(sorted(json.dumps(c.spec(), sort_keys=True) for c in chosen)))
            if key not in seen:
                break
        else:
            raise ConfigError(f"make_requests: {count} distinct {split} rows asked, but only {len(rows)} could be "
                              f"drawn from {len(requests)} requests and these constraints; ask for fewer")
        order.pop()
        seen.add(key)
        rows.append({"id": f"{TASK}-{split}-{index:05d}", "task": TASK,
                     "prompt": " ".join([request] + [c.describe() for c in chosen]),
                     "request": request, "constraints": [c.spec() for c in chosen]})
    return rows
