"""Where preference rows come from: the bundled task, local files, local directories, Hub datasets.

:func:`load_split` returns a :class:`SourceRows`: the rows of one split plus, for each row, where it
came from as the user counts it (``pairs.jsonl, line 7``), so a bad row's error can point at it.

Local ``.json`` / ``.jsonl`` files (and the bundled task) are read here with Python's ``json`` module
rather than through ``datasets``: each row stays exactly as written (a field of the wrong type gets an
error naming it instead of an Arrow cast error), and an unreadable file, invalid JSON or non-UTF-8 text
gets an error naming the file, the line and the fix. Local files named the ``datasets`` way
(``source: json`` / ``csv`` / ``parquet`` or a directory, with ``data_files``; see
:mod:`lit_idpo.data.data_files`) are read by the same reader, one after the other, so their errors are the
same. Other sources go through ``datasets.load_dataset``, whose failures (no such dataset, offline, no data
files, a file it cannot parse) are reported as one-line :class:`DataError`\\ s.
"""

from __future__ import annotations

import json
import os
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from pathlib import Path
from typing import Callable, List, Optional

from lit_idpo.data.data_files import FILE_BUILDERS as _FILE_BUILDERS
from lit_idpo.data.data_files import is_plain_split, local_split_files, patterns_for_split
from lit_idpo.errors import ConfigError, DataError
from lit_idpo.models import looks_like_local_path

BUNDLED_PREFIX = "bundled:"
_JSON_WHITESPACE = " \t\n\r"
_UTF8_BOM = b"\xef\xbb\xbf"


class SourceRows(Sequence):
    """The rows of one split, each with where it came from.

    Behaves as a read-only sequence of rows (mappings). :meth:`where` names row ``index`` as the user
    counts it: a line number in a JSON-lines file, a 1-based item number in a JSON list or table, or
    the 0-based dataset index for a Hub / directory split (each message says which).
    """

    def __init__(self, rows: Sequence, locate: Callable[[int], str]):
        self.rows = rows
        self._locate = locate

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]

    def __iter__(self):
        return iter(self.rows)

    def where(self, index: int) -> str:
        """Where row ``index`` (0-based position in this sequence) came from, e.g. ``"pairs.jsonl, line 7"``."""
        return self._locate(index)


def row_location(rows, index: int, label: str = "rows") -> str:
    """Where row ``index`` of ``rows`` came from: :meth:`SourceRows.where`, else ``label`` and the 0-based position."""
    if isinstance(rows, SourceRows):
        return rows.where(index)
    return f"{label}, row {index} (0-based position in the rows given)"


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 text of a file (a leading byte-order mark is allowed); a DataError naming the first bad byte."""
    start = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = start + err.start
        line = data.count(b"\n", 0, offset) + 1
        raise DataError(f"{path}: not UTF-8 text (byte 0x{data[offset]:02x} at byte offset {offset}, line {line}); "
                        f"save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 in > out)") from None


def _read_bytes(path: Path, read: Callable[[], bytes]) -> bytes:
    """``read()`` (the file's bytes); a DataError naming the file and the fix when it cannot be read."""
    try:
        return read()
    except PermissionError:
        raise DataError(f"{path}: cannot be read (permission denied); make it readable "
                        f"(chmod +r {path}) or copy it somewhere readable") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a data file; point data.source at a .jsonl / .json / "
                        f".parquet / .csv file, or at a directory of split files") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err}); check the file") from None


def _read_text(path: Path) -> str:
    return _decode(path, _read_bytes(path, path.read_bytes))


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _json_list_item_lines(text: str) -> List[int]:
    """The line each top-level item of a (valid) JSON list starts on."""
    decoder = json.JSONDecoder()
    lines: List[int] = []

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in _JSON_WHITESPACE:
            pos += 1
        return pos

    pos = skip(skip(0) + 1)  # past "["
    while pos < len(text) and text[pos] != "]":
        lines.append(_line_of(text, pos))
        _, end = decoder.raw_decode(text, pos)
        pos = skip(end)
        if text[pos] == ",":
            pos = skip(pos + 1)
    return lines


def read_json_rows(path: Path) -> SourceRows:
    """Rows of a JSON-lines file, or of a JSON file holding one list of rows, with their line numbers.

    Raises :class:`DataError` (naming the file, the line and the fix) for an unreadable file, text that
    is not UTF-8, or invalid JSON. Blank lines of a JSON-lines file are skipped.
    """
    text = _read_text(path)
    # A list of rows, as datasets' json builder reads any file but a .jsonl one that starts with "[".
    if path.suffix.lower() != ".jsonl" and text.lstrip(_JSON_WHITESPACE).startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {err.lineno}, column {err.colno}: invalid JSON ({err.msg}); a .json file "
                            f"holds one list of row objects (or one JSON object per line)") from None
        lines = _json_list_item_lines(text)
        return SourceRows(rows, lambda i: f"{path}, item {i + 1} of the list (1-based), line {lines[i]}")
    rows, lines = [], []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and the like, which are no line break to an editor.
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {line_no}: invalid JSON ({err.msg} at column {err.colno}); a .jsonl file "
                            f"holds one JSON object per line (a .json file one list of objects)") from None
        lines.append(line_no)
    return SourceRows(rows, lambda i: f"{path}, line {lines[i]}")


def _load_bundled(task: str, split: str) -> SourceRows:
    from lit_idpo.data.tasks import BUNDLED_SOURCES, dataset_path

    path = dataset_path(task, split)
    if not path.is_file():
        raise DataError(f"{path} (bundled:{task} split {split!r}) is missing from the installation; reinstall "
                        f"lit-idpo, or regenerate it with: python {BUNDLED_SOURCES[task]}")
    return read_json_rows(path)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def _reason(err: BaseException) -> str:
    """The first line of what went wrong, looking past datasets' "An error occurred while generating the dataset"."""
    from datasets.exceptions import DatasetGenerationError

    if isinstance(err, DatasetGenerationError) and err.__cause__ is not None:
        err = err.__cause__
    return _first_line(err)


def _no_rows(path: Path, what: str = "it is empty or blank") -> DataError:
    return DataError(f"{path}: the file holds no rows ({what}); fill it with preference rows "
                     f"(prompt, chosen, rejected), or use another file")


def _read_head(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(1)


def _read_table(path: Path, builder: str) -> SourceRows:
    """The rows of a CSV or Parquet file, read by ``datasets``, each named by its data row."""
    if builder == "csv":  # unreadable, non-UTF-8 or blank text: name the file (and line), as for JSON
        lines = [line for line in _read_text(path).splitlines() if line.strip()]
        if len(lines) <= 1:
            raise _no_rows(path, "only a header line" if lines else "it is empty or blank")
    else:
        if not _read_bytes(path, lambda: _read_head(path)):
            raise _no_rows(path, "it is 0 bytes")
        import pyarrow.parquet as pq

        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except Exception as err:  # not Parquet, or cut short
            raise DataError(f"{path}: cannot be read as parquet ({_first_line(err)}); check the file") from err
        if rows == 0:
            raise _no_rows(path, "its table has 0 rows")
    import datasets

    try:
        table = datasets.load_dataset(builder, data_files={"train": str(path)}, split="train")
    except Exception as err:  # Arrow / pandas parse errors: the file's content is at fault
        raise DataError(f"{path}: cannot be read as {builder} ({_reason(err)}); check the file") from err
    where = "data row {} (1-based, not counting the header line)" if builder == "csv" else "row {} (1-based)"
    return SourceRows(table, lambda i: f"{path}, " + where.format(i + 1))


def _read_file(path: Path, builder: str) -> SourceRows:
    """The rows of one local file, read as ``builder`` (json, csv, parquet); a DataError if it holds none."""
    rows = read_json_rows(path) if builder == "json" else _read_table(path, builder)
    if len(rows) == 0:
        raise _no_rows(path)
    return rows


class _Chain(Sequence):
    """Several files' rows one after the other, each row still named by its own file and line."""

    def __init__(self, parts: List[SourceRows]):
        self.parts = parts
        self.starts = list(accumulate([len(part) for part in parts], initial=0))

    def __len__(self) -> int:
        return self.starts[-1]

    def _part(self, index: int):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = bisect_right(self.starts, index) - 1
        return self.parts[k], index - self.starts[k]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        part, local = self._part(index)
        return part[local]

    def __iter__(self):
        for part in self.parts:
            yield from part

    def where(self, index: int) -> str:
        part, local = self._part(index)
        return part.where(local)


def _read_files(files) -> SourceRows:
    parts = [_read_file(path, builder) for path, builder in files]
    if len(parts) == 1:
        return parts[0]
    chain = _Chain(parts)
    return SourceRows(chain, chain.where)


def _load_file(source: str, path: Path, split: str, data_files) -> SourceRows:
    builder = _FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ConfigError(f"data.source={source!r}: files ending in {path.suffix!r} are not supported; use one of "
                          f"{sorted(_FILE_BUILDERS)} (or a directory, a Hub dataset id, or 'bundled:arithmetic')")
    if data_files is not None:
        raise ConfigError(f"data.source={source!r} is a file, so data.data_files={data_files!r} has nothing to "
                          f"select; set data_files to null, or set source to the directory (or builder such as "
                          f"'json') and data_files to the files per split")
    if split != "train":
        raise ConfigError(f"data.source={source!r} is a single file, read as the one split 'train', but split "
                          f"{split!r} was asked for; set train_split: train and val_split: null, or point source at "
                          f"a directory with one file per split (train.jsonl, test.jsonl), or use data_files")
    return _read_file(path, builder)


def _load_with_datasets(source: str, split: str, data_files, subset: Optional[str]) -> SourceRows:
    import datasets

    is_dir = Path(source).expanduser().is_dir()
    what = f"data.source={source!r}" + (f", data.data_files={data_files!r}" if data_files is not None else "")
    try:
        table = datasets.load_dataset(source, name=subset, data_files=data_files, split=split)
    except ValueError as err:
        if "split" in str(err).lower():
            raise ConfigError(f"data.source={source!r} has no split {split!r} ({_first_line(err)}); set "
                              f"data.train_split / data.val_split to splits it has") from err
        # e.g. pyarrow.ArrowInvalid (a ValueError) for a file that is not Parquet
        raise DataError(f"{what}: cannot read split {split!r} ({_reason(err)}); check the data files (an "
                        f"uncompressed local file is read by lit-idpo itself, and its errors name the line)") from err
    except OSError as err:  # no such dataset or data files, Hub unreachable, offline mode
        if is_dir:
            fix = ("put the data files in it (e.g. train.jsonl and test.jsonl, one per split), or point "
                   "data.source at a file")
        else:
            fix = ("check the dataset id and data.data_files; a Hub dataset needs network access, or to be "
                   "in the local Hugging Face cache when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set")
        raise DataError(f"data.source={source!r}: cannot load split {split!r} ({_first_line(err)}); {fix}") from err
    except (datasets.exceptions.DatasetGenerationError, StopIteration) as err:  # a file it cannot parse, or empty
        reason = "a data file holds no rows" if isinstance(err, StopIteration) else _reason(err)
        raise DataError(f"{what}: cannot read split {split!r} ({reason}); check the data files (an uncompressed "
                        f"local file is read by lit-idpo itself, and its errors name the line)") from err
    origin = f"directory {source}" if is_dir else f"dataset {source!r}"
    return SourceRows(table, lambda i: f"{origin}, split {split!r}, row {i} (0-based dataset index)")


def load_split(source: str, split: str, *, data_files=None, subset: Optional[str] = None) -> SourceRows:
    """The rows of one split of a preference data source (see :class:`PreferenceDataModule` ``source``).

    Raises :class:`DataError` for a missing, unreadable, empty or malformed file and a source that cannot
    be loaded, :class:`ConfigError` for a split or option that does not fit the source.
    """
    if source.startswith(BUNDLED_PREFIX):
        return _load_bundled(source[len(BUNDLED_PREFIX):], split)
    path = Path(source).expanduser()
    if path.is_file():
        return _load_file(source, path, split, data_files)
    if data_files is not None:  # local files named the datasets way: read as a single file is read
        files = local_split_files(source, split, data_files, subset)
        if files is not None:
            return _read_files(files)
    if not path.exists() and (looks_like_local_path(source) or path.suffix.lower() in _FILE_BUILDERS):
        raise DataError(f"data.source={source!r}: no such file or directory ({path.absolute()}); check the path "
                        f"(a relative path is read from the current directory, {os.getcwd()})")
    if data_files is not None and subset is None and is_plain_split(split):
        patterns_for_split(data_files, split)  # a split that data_files lacks: a ConfigError naming the field
    return _load_with_datasets(source, split, data_files, subset)

