"""Which local files ``data.data_files`` names for one split, resolved as ``datasets.load_dataset`` resolves them.

``data.source: json`` (or ``csv`` / ``parquet``, or a local directory) with ``data.data_files: my.jsonl`` is the
``datasets`` idiom. When every file it names for the requested split is a local, uncompressed file,
:func:`local_split_files` lists them, in the order ``datasets`` would read them (a glob is expanded by
``datasets``' own resolver), and :func:`lit_idpo.data.sources.load_split` reads each with the reader a single
file given as ``data.source`` gets: a bad file or row is then named by file and line whichever way it was given.
Remote files (``hf://``, ``https://``), compressed files, a dataset configuration (``data.subset``), a split
instruction such as ``train[:10%]`` and a directory with a dataset card that configures it are left to
``datasets.load_dataset``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from lit_idpo.errors import ConfigError, DataError

#: File suffix -> the ``datasets`` builder whose files lit-idpo reads itself.
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
#: ``data.source`` values naming a ``datasets`` builder whose local files lit-idpo reads itself.
LOCAL_BUILDERS = ("json", "csv", "parquet")
#: ``datasets`` decompresses these on the fly; such files are left to it.
_COMPRESSED = {".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4", ".7z", ".tar", ".tgz"}
_DEFAULT_SPLIT = "train"  # datasets' split for data_files given as one file or a list of files
_SPLIT_FIELDS = "data.train_split / data.val_split (evaluate: data.split)"


def _shape_error(data_files) -> ConfigError:
    return ConfigError(f"data.data_files={data_files!r}: give a file, a list of files, or a mapping from split name "
                       f"to file(s), e.g. {{train: train.jsonl, test: test.jsonl}}")


def split_patterns(data_files) -> Dict[str, List[str]]:
    """``data.data_files`` as split -> file patterns (a file or a list of them is the one split ``train``)."""
    if isinstance(data_files, (str, Path)):
        return {_DEFAULT_SPLIT: [str(data_files)]}
    if isinstance(data_files, dict):
        splits = {str(k): v if isinstance(v, (list, tuple)) else [v] for k, v in data_files.items()}
    elif isinstance(data_files, (list, tuple)) and data_files and all(isinstance(x, dict) for x in data_files):
        if not all(set(x) == {"split", "path"} for x in data_files):  # datasets' [{split: ..., path: ...}] form
            raise _shape_error(data_files)
        splits = {str(x["split"]): x["path"] if isinstance(x["path"], (list, tuple)) else [x["path"]]
                  for x in data_files}
    elif isinstance(data_files, (list, tuple)):
        splits = {_DEFAULT_SPLIT: list(data_files)}
    else:
        raise _shape_error(data_files)
    if not all(isinstance(p, (str, Path)) for patterns in splits.values() for p in patterns):
        raise _shape_error(data_files)
    return {split: [str(p) for p in patterns] for split, patterns in splits.items()}


def patterns_for_split(data_files, split: str) -> List[str]:
    """The file patterns ``data.data_files`` gives for ``split``; a ConfigError naming the field when none."""
    splits = split_patterns(data_files)
    if split in splits:
        if not splits[split]:
            raise ConfigError(f"data.data_files gives an empty list of files for split {split!r}; name its files")
        return splits[split]
    if isinstance(data_files, dict) or list(splits) != [_DEFAULT_SPLIT]:
        raise ConfigError(f"data.data_files has no entry for split {split!r} (it has {sorted(splits)}); add "
                          f"'{split}: <file(s)>' to data.data_files, or set {_SPLIT_FIELDS} to one of its splits")
    raise ConfigError(f"data.data_files={data_files!r} is read as the one split 'train', but split {split!r} was "
                      f"asked for; give data.data_files as a mapping from split to files (e.g. {{train: train.jsonl, "
                      f"{split}: {split}.jsonl}}), or set data.val_split: null (evaluate: data.split: train)")


def is_plain_split(split: str) -> bool:
    """A split name (``train``), not a ``datasets`` split instruction (``train[:10%]``, ``train+test``)."""
    return re.fullmatch(r"\w+(\.\w+)*", split) is not None


def _is_remote(pattern: str) -> bool:
    return "://" in pattern or "::" in pattern


def _has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _configured_by_card(directory: Path) -> bool:
    """Whether a dataset card (README.md YAML header, .huggingface.yaml) may configure the directory's loading."""
    if (directory / ".huggingface.yaml").exists():
        return True
    try:
        with (directory / "README.md").open("rb") as card:
            return card.read(3) == b"---"
    except OSError:
        return False


def local_split_files(source: str, split: str, data_files, subset: Optional[str]) -> Optional[List[Tuple[Path, str]]]:
    """The local files (and the builder that reads each) ``data_files`` names for ``split``, in reading order.

    None where ``datasets.load_dataset`` should read them instead (see the module docstring). Raises
    :class:`ConfigError` for a ``data_files`` of the wrong shape or without the split, and :class:`DataError`
    for a named file that does not exist, a directory, or patterns that match no file.
    """
    if source in LOCAL_BUILDERS:
        base, shown_base, builder = Path.cwd(), None, source  # datasets reads relative paths from the cwd
    else:
        directory = Path(source).expanduser()
        if not directory.is_dir():
            return None
        base, shown_base, builder = directory.resolve(), directory, None
        if _configured_by_card(directory):
            return None
    if subset is not None or not is_plain_split(split):
        return None
    patterns = patterns_for_split(data_files, split)
    if any(_is_remote(p) for p in patterns):
        return None
    files: List[Path] = []
    for pattern in patterns:
        relative = Path(pattern).expanduser()
        if _has_magic(pattern):
            from datasets.data_files import resolve_pattern

            try:
                files.extend(Path(f) for f in resolve_pattern(relative.as_posix(), base_path=base.as_posix()))
            except FileNotFoundError:
                pass  # as in datasets: a glob that matches nothing adds no file
            continue
        path = relative if relative.is_absolute() or shown_base is None else shown_base / relative
        if not path.exists():
            raise DataError(f"data.data_files: {pattern!r} (split {split!r}): no such file ({path.absolute()}); "
                            f"check the path (a relative path is read from {base})")
        if path.is_dir():
            raise DataError(f"data.data_files: {pattern!r} (split {split!r}) is a directory ({path}); name the files "
                            f"in it, e.g. {pattern.rstrip('/')}/*.jsonl")
        files.append(path)
    if not files:
        raise DataError(f"data.data_files: no file matches {patterns} (split {split!r}; relative paths are read from "
                        f"{base}); check the pattern(s)")
    named = []
    for path in files:
        suffixes = {s.lower() for s in path.suffixes}
        file_builder = builder or FILE_BUILDERS.get(path.suffix.lower())
        if suffixes & _COMPRESSED or file_builder is None:
            return None
        named.append((path, file_builder))
    return named
