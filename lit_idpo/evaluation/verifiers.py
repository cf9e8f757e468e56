"""The user's own verifier for the rule judge: ``judge.verifier: package.module:function``.

A verifier is any function ``function(row, response, truncated) -> bool``: ``row`` is the prompt's
whole source row as the data holds it (every field, so it can read its own answer key), ``response``
the model's response, ``truncated`` whether that response stopped at ``generation.max_new_tokens``.
It returns True for a right response, False for a wrong one. For example, with the data rows
``{"prompt": ..., "chosen": ..., "rejected": ..., "expected": "Paris"}``::

    # my_checks.py, in the working directory or anywhere on PYTHONPATH
    def is_correct(row, response, truncated):
        return not truncated and row["expected"].lower() in response.lower()

    # evaluate.yaml
    judge:
      name: rule
      verifier: my_checks:is_correct

:func:`load_verifier` imports it when the judge is made, so a wrong name fails before any generation:
a spec that is not ``module:function``, a module that cannot be imported, a missing attribute, or
something that cannot be called with three arguments is a one-line
:class:`~lit_idpo.errors.ConfigError` naming ``judge.verifier`` and the fix. :func:`call_verifier`
turns an exception the verifier raises on a response, or a result that is not a bool, into a
one-line :class:`~lit_idpo.errors.VerifierError` naming the verifier, the row and the exception
(``LIT_IDPO_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any, Callable, Mapping

from lit_idpo.errors import ConfigError, VerifierError

EXAMPLE = "judge.verifier: my_checks:is_correct (a function is_correct(row, response, truncated) -> bool in " \
          "my_checks.py)"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _import(module_name: str):
    """Import a module; when the module itself is not found, look in the working directory too.

    ``lit-idpo`` runs as a console script, whose ``sys.path`` does not hold the working directory
    (``python -m`` would): a verifier written next to the config should still be found there.
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        cwd = os.getcwd()
        top = module_name.split(".")[0]
        if err.name not in (top, module_name) or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)  # appended, so it never shadows an installed module
        return importlib.import_module(module_name)


def load_verifier(spec: Any) -> Callable[[Mapping[str, Any], str, bool], Any]:
    """The function ``spec`` (``package.module:function``) names, checked to be callable with three arguments."""
    module_name, sep, attribute = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    parts = module_name.split(".") + attribute.split(".")
    if not sep or not all(p.isidentifier() for p in parts):
        raise ConfigError(f"judge.verifier={spec!r} is not of the form package.module:function; write e.g. {EXAMPLE}")
    try:
        module = _import(module_name)
    except Exception as err:  # the user's module: any failure while importing it is theirs to fix
        raise ConfigError(f"judge.verifier={spec!r}: module {module_name!r} cannot be imported ({_one_line(err)}); "
                          f"install it, or put its folder on PYTHONPATH (the working directory is searched too)"
                          ) from err
    found: Any = module
    for i, part in enumerate(attribute.split(".")):
        if not hasattr(found, part):
            owner = f"{module_name}:{'.'.join(attribute.split('.')[:i])}" if i else f"module {module_name!r}"
            names = sorted(n for n in dir(found) if not n.startswith("_") and callable(getattr(found, n, None)))
            raise ConfigError(f"judge.verifier={spec!r}: {owner} has no attribute {part!r}; name one of its functions "
                              f"after the colon ({', '.join(names[:12]) or 'it defines none'})")
        found = getattr(found, part)
    if not callable(found):
        raise ConfigError(f"judge.verifier={spec!r} names an object of type {type(found).__name__!r}, not a function; "
                          f"name a function called as function(row, response, truncated) -> bool")
    try:
        signature = inspect.signature(found)
    except (TypeError, ValueError):  # some builtins have none: they are checked on their first call instead
        return found
    try:
        signature.bind({}, "", False)
    except TypeError:
        raise ConfigError(f"judge.verifier={spec!r} takes {signature}, but it is called as "
                          f"function(row, response, truncated) with three positional arguments; change its "
                          f"parameters") from None
    return found


def describe_row(row: Mapping[str, Any]) -> str:
    """A row as an error message names it: its ``id`` if it has one, and the start of its prompt."""
    if not isinstance(row, Mapping):
        return repr(row)[:80]
    prompt = row.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], Mapping):
        prompt = prompt[-1].get("content")
    text = " ".join(str(prompt).split()) if prompt is not None else ""
    text = repr(text if len(text) <= 60 else text[:57] + "...") if text else ""
    ident = f"id {row['id']!r}" if "id" in row else ""
    return ", ".join(x for x in (ident, f"prompt {text}" if text else "") if x) or f"fields {sorted(row)}"


def call_verifier(function: Callable, spec: str, row: Mapping[str, Any], response: str, truncated: bool) -> bool:
    """``function(row, response, truncated)``, which must give a bool; anything else is a VerifierError."""
    try:
        result = function(row, response, truncated)
    except Exception as err:
        raise VerifierError(f"judge.verifier {spec!r} raised {_one_line(err)} on a response to the row "
                            f"({describe_row(row)}); fix the verifier so that it returns True or False for every "
                            f"response (LIT_IDPO_DEBUG=1 shows the traceback)") from err
    # numpy's bool is as good as Python's; anything else (None, 0/1, a score) is a bug in the verifier.
    if isinstance(result, bool) or type(result).__module__ == "numpy" and type(result).__name__ in ("bool", "bool_"):
        return bool(result)
    raise VerifierError(f"judge.verifier {spec!r} returned {result!r} ({type(result).__name__}) for a response to "
                        f"the row ({describe_row(row)}); it must return True or False")
