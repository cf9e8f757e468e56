"""Small helpers shared by the evaluation modules: progress messages, progress bars, content hashes."""

from __future__ import annotations

import hashlib
import sys
from typing import Union

from lit_idpo.errors import info as say


def info(message: str) -> None:
    """One progress line on stderr, ``lit-idpo evaluate: ...`` (:func:`lit_idpo.errors.info`)."""
    say("evaluate", message)


def sha256(data: Union[str, bytes]) -> str:
    """Hex SHA-256 of a string (UTF-8) or bytes: the cache keys of generations and verdicts."""
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def progress_bar(iterable=None, *, total=None, desc="", enabled=True, unit="it"):
    """A tqdm bar on stderr, or a silent pass-through when ``enabled`` is false."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, unit=unit, dynamic_ncols=True, file=sys.stderr)
