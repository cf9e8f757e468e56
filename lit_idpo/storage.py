"""Files that survive a crash: atomic whole-file writes and an append-only JSONL cache.

Every file lit-idpo writes for later runs to read (caches, manifests, results, hash memos) goes
through here, so there is one durability policy:

- whole files are written to a temporary file in the same directory, flushed and fsync'ed, given
  the permissions of any other new file (umask), then renamed into place: a reader sees the old file
  or the new one, never half of one;
- append-only JSONL caches flush and fsync after every batch of lines; a torn last line (a run killed
  mid-write) is skipped when the file is read, and its entries are simply computed again.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Create ``path`` atomically: ``write(tmp_path)`` fills a temporary file that is then renamed into place.

    For writers that take a file name (``safetensors.torch.save_file``, ``torch.save``). The
    temporary file is removed if ``write`` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file a normal new file's mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, data: Any, *, indent: int = 2) -> Path:
    """Write ``data`` as pretty JSON (UTF-8, non-ASCII kept, trailing newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def read_json_or(path: PathLike, default: Any) -> Any:
    """``path``'s JSON, or ``default`` when it is missing or unreadable (memo files that are only a speed-up)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


class JsonlCache:
    """An append-only JSONL file of ``{"key": ..., **value}`` records: what has been computed so far.

    ``load()`` returns every complete record by key (later records win); lines that do not parse (a
    torn last line) or that lack ``"key"`` are skipped, so their work is done again. ``append()``
    writes records and makes them durable (flush + fsync) before returning, so a crash loses at most
    the batch being written.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)

    def load(self) -> Dict[str, Dict[str, Any]]:
        entries: Dict[str, Dict[str, Any]] = {}
        for key, value in self._records():
            entries[key] = value
        return entries

    def _records(self) -> Iterator[Tuple[str, Dict[str, Any]]]:
        if not self.path.is_file():
            return
        with self.path.open("r", encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if isinstance(item, dict) and isinstance(item.get("key"), str):
                    key = item.pop("key")
                    yield key, item

    def append(self, records: Iterable[Tuple[str, Dict[str, Any]]]) -> int:
        """Append ``(key, value)`` records durably; return how many were written."""
        lines = [json.dumps({"key": key, **value}, ensure_ascii=False) + "\n" for key, value in records]
        if not lines:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        return len(lines)
