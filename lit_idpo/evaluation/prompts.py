"""The held-out prompts: read and validated as the data module reads training rows, rendered as it renders them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple, Union

from lit_idpo.errors import DataError
from lit_idpo.evaluation.options import DataOptions

Message = Dict[str, str]
Prompt = Union[str, List[Message]]


@dataclass
class PromptRecord:
    """One held-out prompt: its row index in the split, the prompt, the reference pair (None for a
    prompt-only row) and the raw row."""

    index: int
    prompt: Prompt
    chosen: Any
    rejected: Any
    row: Dict[str, Any]


def load_prompts(data: DataOptions) -> Tuple[List[PromptRecord], Dict[str, Any]]:
    """The prompts of a held-out split, validated and normalised as the data module does.

    Each row is kept whole, so judges can read extra fields (the rule judge's verifiers: ``answer``,
    ``constraints``, or any field a ``judge.verifier`` reads). A row with a ``prompt`` and neither
    ``chosen`` nor ``rejected`` is a prompt-only row (generation needs no pair): it is kept, with no
    reference pair, whatever ``data.format`` says about the pair rows.
    Returns the records (in split order) and counts: rows read, prompts kept, skipped per reason.
    """
    from lit_idpo.data import BadRowError, detect_format, load_split, normalize_row, row_location
    from lit_idpo.data.rows import is_prompt_only, normalize_prompt

    rows = load_split(data.source, data.split, data_files=data.data_files, subset=data.subset)
    fmt = None if data.format == "auto" else data.format
    records: List[PromptRecord] = []
    skipped: Dict[str, int] = {}
    read = 0
    for index, row in enumerate(rows):
        if data.limit is not None and len(records) >= data.limit:
            break
        read += 1
        try:
            if is_prompt_only(row):
                records.append(PromptRecord(index, normalize_prompt(row), None, None, dict(row)))
                continue
            if fmt is None:
                fmt = detect_format(row)
            normal = normalize_row(row, fmt)
        except BadRowError as err:
            if data.on_bad_row == "skip":
                skipped[err.reason] = skipped.get(err.reason, 0) + 1
                continue
            # Name the row as the user counts it (a JSONL file: its line number).
            where = row_location(rows, index, f"split {data.split!r} of {data.source!r}")
            raise err.with_fix(where) from None
        records.append(PromptRecord(index, normal.prompt, normal.chosen, normal.rejected, dict(row)))
    fmt = fmt or ("prompt_only" if records else "?")
    stats = {"source": data.source, "split": data.split, "format": fmt, "rows_read": read, "prompts": len(records),
             "skipped": skipped}
    if not records:
        raise DataError(f"split {data.split!r} of {data.source!r} gave no usable prompts ({stats}); check data.source, "
                        f"data.split and data.format")
    return records, stats
