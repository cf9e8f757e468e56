"""Preference data: loading, row normalisation, chat templating, tokenisation and collation.

A preference row holds a prompt and two completions of it, ``chosen`` (preferred) and ``rejected``.
Three row formats are understood (``format="auto"`` detects which one a split uses from its first
row that has the fields):

- **standard**: ``prompt``, ``chosen``, ``rejected`` are strings.
- **conversational**: ``prompt`` is a list of messages (``{"role": ..., "content": ...}``) and
  ``chosen`` / ``rejected`` are lists of messages whose first message is the assistant's reply.
- **implicit** prompt: ``chosen`` / ``rejected`` are whole conversations (lists of messages), as
  ``HuggingFaceH4/ultrafeedback_binarized`` stores them. The prompt is their longest shared message
  prefix; what follows it on each side (starting with an assistant message) is the completion. A
  ``prompt`` column, if present, is **ignored** in this format: the conversations are the truth, and
  they carry what a plain-string prompt column cannot (system messages, earlier turns).

Tokenisation (one pair = one prompt and two completions):

- With a chat template, the template is applied once to prompt + completion; a standard row is
  wrapped as one user turn and one assistant turn. The prompt's tokens (the template with
  ``add_generation_prompt=True``) must be a prefix of the whole sequence's tokens; a pair where they
  are not is a bad row (reason ``prompt_not_prefix``). Texts are tokenised without the tokenizer's
  own special tokens, and a BOS is put in front only when the tokenizer normally adds one and the
  template did not already start with it: never two BOS.
- The completion ends with exactly one EOS. Whitespace-only tokens that a template writes after its
  closing EOS (ChatML's newline after ``<|im_end|>``) are removed: generation stops at EOS, so the
  model never produces them and their log-probs would not mean anything. A completion that does not
  end with EOS (a template without one, or plain text) gets EOS appended.
- Without a chat template, prompt and completion are plain text, tokenised separately and
  concatenated (BOS first if the tokenizer adds one, EOS last); nothing is inserted between them, so
  a completion usually starts with a space or newline.

Truncation rule: if ``max_prompt_length`` is set, a longer prompt keeps its **last**
``max_prompt_length`` tokens (and its BOS, if it started with one); such pairs are counted as
``prompt_truncated``. Completions are never cut: a pair whose prompt plus its longer completion still
exceeds ``max_length`` is dropped and counted under ``too_long``.

Bad rows (missing field, wrong type, empty prompt or completion, identical completions, no shared
prompt, prompt tokens not a prefix) raise a :class:`BadRowError` naming the split, the row's index in
its source split and the field, or with ``on_bad_row="skip"`` are skipped and counted per reason. One
log line per split reports the counts; :attr:`PreferenceDataModule.stats` holds them.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Literal, Optional, Sequence, Tuple, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from lit_idpo.models import load_tokenizer

FORMATS = ("auto", "standard", "conversational", "implicit")
BUNDLED_PREFIX = "bundled:"
#: File suffix -> ``datasets`` builder for local files (JSON files are read directly, see ``_read_json``).
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
#: Rows are rendered and tokenised in chunks of this many (batched tokeniser calls are much faster).
_CHUNK_ROWS = 512

Message = Dict[str, str]


class BadRowError(ValueError):
    """A preference row that cannot be used; ``reason`` is the key it is counted under when skipped."""

    def __init__(self, reason: str, field: str, problem: str):
        super().__init__(problem)
        self.reason = reason
        self.field = field
        self.problem = problem


# --------------------------------------------------------------------------------------------------
# Row normalisation
# --------------------------------------------------------------------------------------------------


@dataclass
class NormalizedRow:
    """A row reduced to one prompt and two completions.

    ``kind`` is ``"text"`` (strings: standard format) or ``"messages"`` (lists of messages).
    """

    kind: str
    prompt: Union[str, List[Message]]
    chosen: Union[str, List[Message]]
    rejected: Union[str, List[Message]]


def detect_format(row: Dict[str, Any]) -> str:
    """Guess a row's format from the types of its ``prompt`` / ``chosen`` fields.

    Strings -> ``"standard"``; message lists with a message-list prompt -> ``"conversational"``;
    message lists with no prompt or a string prompt -> ``"implicit"``.
    Raises :class:`BadRowError` when ``chosen`` is missing or of another type.
    """
    if not isinstance(row, dict):
        raise BadRowError("wrong_type", "<row>", f"the row is a {type(row).__name__}, expected a mapping of fields")
    chosen = row.get("chosen")
    if chosen is None:
        raise BadRowError("missing_field", "chosen", f"field 'chosen' is missing (row has fields {sorted(row)})")
    if isinstance(chosen, str):
        return "standard"
    if isinstance(chosen, list):
        return "conversational" if isinstance(row.get("prompt"), list) else "implicit"
    raise BadRowError("wrong_type", "chosen",
                      f"field 'chosen' is a {type(chosen).__name__}; expected a string or a list of messages")


def _require(row: Dict[str, Any], name: str) -> Any:
    value = row.get(name)
    if value is None:
        raise BadRowError("missing_field", name, f"field {name!r} is missing (row has fields {sorted(row)})")
    return value


def _text(row: Dict[str, Any], name: str, reason_if_empty: str) -> str:
    value = _require(row, name)
    if not isinstance(value, str):
        raise BadRowError("wrong_type", name, f"field {name!r} is a {type(value).__name__}; the standard format "
                                              f"needs a string (set format to match the data)")
    if not value.strip():
        raise BadRowError(reason_if_empty, name, f"field {name!r} is empty")
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
            if not isinstance(message.get(key), str):
                got = "missing" if message.get(key) is None else f"a {type(message[key]).__name__}"
                raise BadRowError("wrong_type", f"{where}.{key}", f"field '{where}.{key}' is {got}; expected a string")
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


def _check_distinct(chosen: Any, rejected: Any) -> None:
    if chosen == rejected:
        raise BadRowError("identical_completions", "chosen/rejected", "fields 'chosen' and 'rejected' are identical")


def normalize_row(row: Dict[str, Any], fmt: str) -> NormalizedRow:
    """Validate one row of format ``fmt`` (not ``"auto"``) and reduce it to prompt / chosen / rejected.

    Raises :class:`BadRowError` (with ``reason`` and ``field``) for an unusable row.
    """
    if not isinstance(row, dict):
        raise BadRowError("wrong_type", "<row>", f"the row is a {type(row).__name__}, expected a mapping of fields")
    if fmt == "standard":
        prompt = _text(row, "prompt", "empty_prompt")
        chosen = _text(row, "chosen", "empty_completion")
        rejected = _text(row, "rejected", "empty_completion")
        _check_distinct(chosen, rejected)
        return NormalizedRow("text", prompt, chosen, rejected)

    if fmt == "conversational":
        prompt = _messages(row, "prompt")
        chosen = _messages(row, "chosen")
        rejected = _messages(row, "rejected")
        if prompt[-1]["role"] == "assistant":
            raise BadRowError("bad_roles", f"prompt[{len(prompt) - 1}].role",
                              "the prompt ends with an 'assistant' message; the completion must be the "
                              "assistant's reply to it")
        if not any(m["content"].strip() for m in prompt):
            raise BadRowError("empty_prompt", "prompt", "field 'prompt' has no text (every message is empty)")
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

    raise ValueError(f"format={fmt!r} is not a row format; choose one of {FORMATS[1:]}")


# --------------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------------


class PairTokenizer:
    """Turns normalised rows into token-id lists: ``prompt``, ``chosen`` and ``rejected`` completions.

    See the module docstring for the rules (template use, BOS, EOS, prefix check).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise ValueError("the tokenizer has no EOS token; preference completions must end with EOS "
                             "(choose a tokenizer that defines eos_token)")
        # Does this tokenizer put BOS in front by itself? (Many chat tokenizers do not; Llama's does.)
        probe = tokenizer("a")["input_ids"]
        self.adds_bos = self.bos is not None and len(probe) > 0 and probe[0] == self.bos

    def _with_bos(self, ids: List[int]) -> List[int]:
        if self.adds_bos and (not ids or ids[0] != self.bos):
            return [self.bos] + ids
        return ids

    def _finish_completion(self, completion: List[int]) -> List[int]:
        """Exactly one EOS at the end: drop whitespace the template writes after its last EOS, else append EOS."""
        if self.eos in completion:
            last = len(completion) - 1 - completion[::-1].index(self.eos)
            tail = completion[last + 1:]
            if not tail or not self.tokenizer.decode(tail).strip():
                return completion[: last + 1]
        return completion + [self.eos]

    def render(self, row: NormalizedRow) -> Tuple[str, str, str]:
        """The texts to tokenise: (prompt, chosen, rejected). With a template, chosen/rejected are full sequences."""
        if row.kind == "text":
            if not self.has_template:
                return row.prompt, row.chosen, row.rejected
            prompt = [{"role": "user", "content": row.prompt}]
            chosen = [{"role": "assistant", "content": row.chosen}]
            rejected = [{"role": "assistant", "content": row.rejected}]
        else:
            if not self.has_template:
                raise ValueError("the data holds message lists, but the tokenizer has no chat template to render "
                                 "them; choose a tokenizer with a chat template (or use standard string data)")
            prompt, chosen, rejected = row.prompt, row.chosen, row.rejected
        apply = self.tokenizer.apply_chat_template
        return (apply(prompt, add_generation_prompt=True, tokenize=False),
                apply(prompt + chosen, tokenize=False),
                apply(prompt + rejected, tokenize=False))

    def encode_rendered(self, rendered: List[Tuple[str, str, str]]):
        """Tokenise rendered triples (from :meth:`render`) in one batched call.

        Returns, per row, ``(prompt_ids, chosen_ids, rejected_ids)`` (completion ids only, each ending
        with EOS) or a :class:`BadRowError` when the prompt's tokens are not a prefix of a full sequence.
        """
        if not rendered:
            return []
        flat = self.tokenizer([text for triple in rendered for text in triple], add_special_tokens=False)["input_ids"]
        out: List[Union[Tuple[List[int], List[int], List[int]], BadRowError]] = []
        for i in range(len(rendered)):
            prompt, first, second = (list(ids) for ids in flat[3 * i: 3 * i + 3])
            prompt = self._with_bos(prompt)
            if not self.has_template:
                # Plain text: prompt and completions are tokenised separately and concatenated.
                out.append((prompt, first + [self.eos], second + [self.eos]))
                continue
            out.append(self._split(prompt, self._with_bos(first), self._with_bos(second)))
        return out

    def _split(self, prompt: List[int], first: List[int], second: List[int]):
        completions = []
        for name, full in (("chosen", first), ("rejected", second)):
            if full[: len(prompt)] != prompt:
                at = next((j for j, (a, b) in enumerate(zip(prompt, full)) if a != b), min(len(prompt), len(full)))
                return BadRowError(
                    "prompt_not_prefix", name,
                    f"the tokens of the templated prompt are not a prefix of the templated prompt + {name!r} "
                    f"(they differ at token {at}: prompt has {self.tokenizer.decode(prompt[at:at + 3])!r}, the full "
                    f"sequence {self.tokenizer.decode(full[at:at + 3])!r}); the chat template renders the prompt "
                    f"differently once a reply follows")
            completion = full[len(prompt):]
            if not completion:
                return BadRowError("empty_completion", name, f"field {name!r} adds no tokens after the prompt")
            completions.append(self._finish_completion(completion))
        if completions[0] == completions[1]:
            return BadRowError("identical_completions", "chosen/rejected",
                               "'chosen' and 'rejected' differ as text but give the same tokens")
        return prompt, completions[0], completions[1]


# --------------------------------------------------------------------------------------------------
# Tokenised pairs and collation
# --------------------------------------------------------------------------------------------------


class PreferencePairs(Dataset):
    """Tokenised preference pairs of one split, kept in memory as lists of ints.

    Item ``i`` is ``{"pair_index": i, "prompt_ids", "chosen_ids", "rejected_ids"}``; chosen / rejected
    hold completion tokens only (each ends with EOS). ``row_index[i]`` is the pair's row in its source split.
    """

    def __init__(self, prompt_ids: List[List[int]], chosen_ids: List[List[int]], rejected_ids: List[List[int]],
                 row_index: Optional[List[int]] = None):
        if not len(prompt_ids) == len(chosen_ids) == len(rejected_ids):
            raise ValueError("prompt_ids, chosen_ids and rejected_ids must have the same length")
        self.prompt_ids = prompt_ids
        self.chosen_ids = chosen_ids
        self.rejected_ids = rejected_ids
        self.row_index = list(range(len(prompt_ids))) if row_index is None else row_index

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return {"pair_index": i, "prompt_ids": self.prompt_ids[i], "chosen_ids": self.chosen_ids[i],
                "rejected_ids": self.rejected_ids[i]}


class PreferenceCollator:
    """Pads a list of pairs into one batch of ``2B`` sequences.

    Returns a dict with ``input_ids``, ``attention_mask``, ``completion_mask`` (LongTensors
    ``[2B, T]``) and ``pair_index`` (LongTensor ``[B]``). Rows ``0..B-1`` are prompt + chosen, rows
    ``B..2B-1`` prompt + rejected of the same pairs in the same order. ``completion_mask`` is 1 on the
    completion tokens (whose log-probs count) and 0 on prompt and padding.

    Args:
        pad_token_id: token id written into padding positions (masked out by ``attention_mask``).
        padding_side: ``"right"`` (padding after the tokens) or ``"left"`` (before them).
    """

    def __init__(self, pad_token_id: int, padding_side: Literal["right", "left"] = "right"):
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side={padding_side!r}; choose 'right' or 'left'")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side

    def __call__(self, examples: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        prompts = [ex["prompt_ids"] for ex in examples] * 2
        completions = [ex["chosen_ids"] for ex in examples] + [ex["rejected_ids"] for ex in examples]
        width = max(len(p) + len(c) for p, c in zip(prompts, completions))
        input_ids, attention, completion = [], [], []
        for p, c in zip(prompts, completions):
            pad = width - len(p) - len(c)
            ids, att, comp = p + c, [1] * (len(p) + len(c)), [0] * len(p) + [1] * len(c)
            if self.padding_side == "right":
                input_ids.append(ids + [self.pad_token_id] * pad)
                attention.append(att + [0] * pad)
                completion.append(comp + [0] * pad)
            else:
                input_ids.append([self.pad_token_id] * pad + ids)
                attention.append([0] * pad + att)
                completion.append([0] * pad + comp)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),  # [2B, T]
            "attention_mask": torch.tensor(attention, dtype=torch.long),  # [2B, T]
            "completion_mask": torch.tensor(completion, dtype=torch.long),  # [2B, T]
            "pair_index": torch.tensor([ex["pair_index"] for ex in examples], dtype=torch.long),  # [B]
        }


@dataclass
class SplitStats:
    """What happened to one split: rows read, pairs kept, drops per reason, lengths."""

    split: str
    source_split: str
    format: str = "?"
    rows_read: int = 0
    rows_total: int = 0
    pairs: int = 0
    dropped: Dict[str, int] = field(default_factory=dict)
    prompt_truncated: int = 0
    stopped_at_limit: bool = False
    max_tokens: int = 0
    mean_tokens: float = 0.0

    def line(self) -> str:
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())) or "none"
        limit = f" (stopped at the limit; {self.rows_total} rows in the split)" if self.stopped_at_limit else ""
        return (f"lit-idpo data: {self.split} split {self.source_split!r} [{self.format}]: {self.pairs} pairs kept "
                f"from {self.rows_read} rows{limit}; dropped {sum(self.dropped.values())} ({dropped}); "
                f"prompt truncated {self.prompt_truncated}; longest pair {self.max_tokens} tokens, "
                f"mean {self.mean_tokens:.1f}")

    def as_dict(self) -> Dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


def truncate_prompt(ids: List[int], max_prompt_length: Optional[int], bos: Optional[int]) -> Tuple[List[int], bool]:
    """Keep a prompt's last ``max_prompt_length`` tokens (and its leading BOS); return ``(ids, was_truncated)``.

    The one truncation rule of lit-idpo, shared by training data and evaluation prompts.
    """
    if max_prompt_length is None or len(ids) <= max_prompt_length:
        return ids, False
    if bos is not None and ids and ids[0] == bos:
        return [ids[0]] + ids[len(ids) - max_prompt_length + 1:], True
    return ids[len(ids) - max_prompt_length:], True


def tokenize_rows(
    rows: Iterable[Dict[str, Any]],
    tokenizer,
    *,
    split: str = "train",
    source_split: Optional[str] = None,
    format: str = "auto",
    max_length: Optional[int] = None,
    max_prompt_length: Optional[int] = None,
    on_bad_row: str = "error",
    limit: Optional[int] = None,
) -> Tuple[PreferencePairs, SplitStats]:
    """Validate, template, tokenise and filter the rows of one split (see the module docstring).

    Returns the kept pairs (in row order, so a pair's index is stable across runs) and the counts.
    With ``limit``, reading stops once ``limit`` pairs have been kept.
    """
    stats = SplitStats(split=split, source_split=source_split or split)
    try:
        stats.rows_total = len(rows)  # type: ignore[arg-type]
    except TypeError:
        pass
    pair_tok = PairTokenizer(tokenizer)
    dropped: Counter = Counter()
    fmt = None if format == "auto" else format
    prompts: List[List[int]] = []
    chosens: List[List[int]] = []
    rejecteds: List[List[int]] = []
    row_index: List[int] = []

    def bad(index: int, err: BadRowError) -> None:
        if on_bad_row == "skip":
            dropped[err.reason] += 1
            return
        raise BadRowError(err.reason, err.field,
                          f"{split} split {stats.source_split!r}, row {index}, field {err.field!r}: {err.problem}. "
                          f"Fix the data, or set on_bad_row='skip' to skip such rows (they are counted).") from None

    def flush(chunk: List[Tuple[int, Union[NormalizedRow, BadRowError]]]) -> bool:
        """Tokenise a chunk of rows and keep or count each, in row order; True once the limit is reached."""
        good = [r for _, r in chunk if isinstance(r, NormalizedRow)]
        encoded = iter(pair_tok.encode_rendered([pair_tok.render(r) for r in good]))
        for index, item in chunk:
            stats.rows_read = index + 1
            result = item if isinstance(item, BadRowError) else next(encoded)
            if isinstance(result, BadRowError):
                bad(index, result)
                continue
            prompt, chosen, rejected = result
            prompt, truncated = truncate_prompt(prompt, max_prompt_length, pair_tok.bos)
            stats.prompt_truncated += truncated
            if max_length is not None and len(prompt) + max(len(chosen), len(rejected)) > max_length:
                dropped["too_long"] += 1
                continue
            prompts.append(prompt)
            chosens.append(chosen)
            rejecteds.append(rejected)
            row_index.append(index)
            if limit is not None and len(prompts) >= limit:
                return True
        return False

    # Rows are validated as they are read and tokenised a chunk at a time; keeping, dropping or raising
    # happens in row order inside flush(), so nothing after the limit-reaching row is counted.
    chunk: List[Tuple[int, Union[NormalizedRow, BadRowError]]] = []
    done = False
    for index, row in enumerate(rows):
        try:
            if fmt is None:
                fmt = detect_format(row)
            chunk.append((index, normalize_row(row, fmt)))
        except BadRowError as err:
            chunk.append((index, err))
        if len(chunk) >= _CHUNK_ROWS:
            done = flush(chunk)
            chunk = []
            if done:
                break
    if chunk and not done:
        done = flush(chunk)
    stats.stopped_at_limit = done and stats.rows_read != stats.rows_total
    stats.format = fmt or "?"
    stats.pairs = len(prompts)
    stats.dropped = dict(dropped)
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in zip(prompts, chosens, rejecteds)]
    stats.max_tokens = max(lengths, default=0)
    stats.mean_tokens = sum(lengths) / len(lengths) if lengths else 0.0
    return PreferencePairs(prompts, chosens, rejecteds, row_index), stats


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(source: str):
    # Tokenizers are only read here (never mutated), so data modules of one process can share them.
    return load_tokenizer(source)


def _read_json(path: Path) -> List[Any]:
    """Rows of a JSON-lines file, or of a JSON file holding one list of rows.

    Read with Python's json module rather than ``datasets``, so each row stays exactly as written: a
    row with a field of the wrong type gets a clear error naming it instead of an Arrow cast error.
    """
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if path.suffix == ".json" and stripped.startswith("["):
        return json.loads(text)
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {line_no} is not valid JSON ({err}); a .jsonl file holds one JSON object "
                             f"per line, a .json file one list of objects or JSON lines") from None
    return rows


def load_split(source: str, split: str, *, data_files=None, subset: Optional[str] = None) -> Sequence[Dict[str, Any]]:
    """The rows of one split of a preference data source (see :class:`PreferenceDataModule` ``source``)."""
    if source.startswith(BUNDLED_PREFIX):
        from lit_idpo import bundled

        return bundled.load_rows(source[len(BUNDLED_PREFIX):], split)

    import datasets

    path = Path(source).expanduser()
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"source={source!r}: files ending in {path.suffix!r} are not supported; use one of "
                             f"{sorted(_FILE_BUILDERS)} (or a directory, a Hub dataset id, or 'bundled:arithmetic')")
        if data_files is not None:
            raise ValueError(f"source={source!r} is a file, so data_files={data_files!r} has nothing to select; set "
                             f"data_files to null, or set source to the directory (or builder such as 'json') and "
                             f"data_files to the files per split")
        if split != "train":
            raise ValueError(f"source={source!r} is a single file, read as the one split 'train', but split {split!r} "
                             f"was asked for; set train_split: train and val_split: null, or point source at a "
                             f"directory with one file per split (train.jsonl, test.jsonl), or use data_files")
        if builder == "json":
            return _read_json(path)
        return datasets.load_dataset(builder, data_files={"train": str(path)}, split="train")
    try:
        return datasets.load_dataset(source, name=subset, data_files=data_files, split=split)
    except ValueError as err:
        if "split" in str(err).lower():
            raise ValueError(f"source={source!r} has no split {split!r} ({err}); set train_split / val_split to "
                             f"splits it has") from err
        raise


# --------------------------------------------------------------------------------------------------
# The data module
# --------------------------------------------------------------------------------------------------


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A random permutation per epoch, drawn from ``seed + epoch``: reproducible across restarts,
    unlike a generator seeded once per process (which would replay epoch 0's order after a resume)."""

    def __init__(self, num_items: int, seed: int):
        self.num_items = num_items
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_items, generator=generator).tolist())


class PreferenceDataModule(pl.LightningDataModule):
    """Preference pairs (prompt, chosen, rejected), tokenised once and served as DPO batches.

    Each batch is a dict: ``input_ids``, ``attention_mask``, ``completion_mask`` (LongTensors
    ``[2B, T]``; rows ``0..B-1`` prompt + chosen, rows ``B..2B-1`` prompt + rejected of the same pairs,
    ``completion_mask`` 1 on completion tokens only) and ``pair_index`` (LongTensor ``[B]``: the pair's
    index in its split after filtering, stable across runs). Formats, chat templates, truncation and bad
    rows are handled as described in :mod:`lit_idpo.data`.

    Args:
        tokenizer: Model source whose tokenizer (and chat template) to use, as for the model: a Hub id,
            a local directory, a ``.gguf`` file, ``embedded:smollm2-135m-instruct`` or a tiny model name.
        source: Where the pairs come from: ``bundled:arithmetic`` (the verifiable arithmetic task shipped
            with lit-idpo; splits ``train`` and ``test``), a Hugging Face Hub dataset id (e.g.
            ``HuggingFaceH4/ultrafeedback_binarized``), a local directory, a ``datasets`` builder name
            (``json``, ``parquet``, ``csv``, with ``data_files``), or a single local ``.json`` / ``.jsonl``
            / ``.parquet`` / ``.csv`` file (read as the one split ``train``).
        train_split: Split to train on (``train_prefs`` for UltraFeedback).
        val_split: Split to validate on (``test_prefs`` for UltraFeedback); null for no validation.
        data_files: Passed to ``datasets.load_dataset`` for a directory, builder or Hub source: a file,
            a list of files, or a mapping from split name to file(s).
        subset: Dataset configuration name (``name=`` of ``datasets.load_dataset``), if the source has several.
        format: Row format: ``standard`` (string prompt / chosen / rejected), ``conversational``
            (message-list prompt, assistant-message-list completions), ``implicit`` (chosen / rejected are
            whole conversations sharing the prompt as their common prefix; a ``prompt`` column is
            ignored), or ``auto`` (detected per split from its first usable row).
        max_length: Longest prompt + completion in tokens; a pair whose prompt plus longer completion is
            longer is dropped and counted (``too_long``), never cut. Null for no limit.
        max_prompt_length: If set, longer prompts keep their last this-many tokens (and BOS); counted as
            ``prompt_truncated``. Null: prompts are never cut.
        batch_size: Pairs per training batch (the batch holds twice as many sequences).
        val_batch_size: Pairs per validation batch; null: same as ``batch_size``.
        num_workers: DataLoader worker processes (0: load in the main process).
        on_bad_row: ``error``: raise on the first unusable row, naming split, row index and field;
            ``skip``: skip such rows and count them per reason in ``stats`` and the log line.
        limit_train_pairs: Keep only the first this-many usable training pairs (in the source's order).
        limit_val_pairs: Keep only the first this-many usable validation pairs.
        padding_side: ``right`` (default) or ``left`` padding of the batched sequences.
        seed: Seed of the training loader's shuffling generator.
    """

    def __init__(
        self,
        tokenizer: str,
        source: str = "bundled:arithmetic",
        train_split: str = "train",
        val_split: Optional[str] = "test",
        data_files: Optional[Union[str, List[str], Dict[str, Union[str, List[str]]]]] = None,
        subset: Optional[str] = None,
        format: Literal["auto", "standard", "conversational", "implicit"] = "auto",
        max_length: Optional[int] = 1024,
        max_prompt_length: Optional[int] = None,
        batch_size: int = 8,
        val_batch_size: Optional[int] = None,
        num_workers: int = 0,
        on_bad_row: Literal["error", "skip"] = "error",
        limit_train_pairs: Optional[int] = None,
        limit_val_pairs: Optional[int] = None,
        padding_side: Literal["right", "left"] = "right",
        seed: int = 0,
    ):
        super().__init__()
        if format not in FORMATS:
            raise ValueError(f"format={format!r}; choose one of {list(FORMATS)}")
        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row={on_bad_row!r}; choose 'error' or 'skip'")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side={padding_side!r}; choose 'right' or 'left'")
        for name, value, least in (("batch_size", batch_size, 1), ("val_batch_size", val_batch_size, 1),
                                   ("num_workers", num_workers, 0), ("max_length", max_length, 2),
                                   ("max_prompt_length", max_prompt_length, 1),
                                   ("limit_train_pairs", limit_train_pairs, 1), ("limit_val_pairs", limit_val_pairs, 1)):
            if value is not None and (not isinstance(value, int) or value < least):
                raise ValueError(f"{name}={value!r}; it must be an integer >= {least}" +
                                 (" (or null)" if name not in ("batch_size", "num_workers") else ""))
        if max_length is not None and max_prompt_length is not None and max_prompt_length >= max_length:
            raise ValueError(f"max_prompt_length={max_prompt_length} must be smaller than max_length={max_length}, "
                             f"or no completion token would fit")
        self.save_hyperparameters()
        self.tokenizer_source = tokenizer
        self.source = source
        self.train_split = train_split
        self.val_split = val_split
        self.data_files = data_files
        self.subset = subset
        self.format = format
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.on_bad_row = on_bad_row
        self.limit_train_pairs = limit_train_pairs
        self.limit_val_pairs = limit_val_pairs
        self.padding_side = padding_side
        self.seed = seed
        self.train_pairs: Optional[PreferencePairs] = None
        self.val_pairs: Optional[PreferencePairs] = None
        #: Per split ("train", "val"): rows read, pairs kept, drops per reason, lengths (see SplitStats).
        self.stats: Dict[str, Dict[str, Any]] = {}

    @property
    def tokenizer(self):
        """The loaded tokenizer (loaded on first use)."""
        return _cached_tokenizer(self.tokenizer_source)

    @property
    def collator(self) -> PreferenceCollator:
        """The collate function the loaders use."""
        return PreferenceCollator(self.tokenizer.pad_token_id, self.padding_side)

    def prepare_data(self) -> None:
        """Nothing to prepare: sources are read (and Hub datasets downloaded) in :meth:`setup`."""

    def _build(self, role: str, split: str, limit: Optional[int]) -> PreferencePairs:
        rows = load_split(self.source, split, data_files=self.data_files, subset=self.subset)
        pairs, stats = tokenize_rows(rows, self.tokenizer, split=role, source_split=split, format=self.format,
                                     max_length=self.max_length, max_prompt_length=self.max_prompt_length,
                                     on_bad_row=self.on_bad_row, limit=limit)
        self.stats[role] = stats.as_dict()
        rank_zero_info(stats.line())
        if len(pairs) == 0:
            raise ValueError(f"{role} split {split!r} of {self.source!r} has no usable pairs left ({stats.line()}); "
                             f"raise max_length, set max_prompt_length, or fix the rows")
        return pairs

    def setup(self, stage: Optional[str] = None) -> None:
        """Load and tokenise the splits this stage needs; calling it again does nothing new."""
        if stage in (None, "fit") and self.train_pairs is None:
            self.train_pairs = self._build("train", self.train_split, self.limit_train_pairs)
        if stage in (None, "fit", "validate") and self.val_split is not None and self.val_pairs is None:
            self.val_pairs = self._build("val", self.val_split, self.limit_val_pairs)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches: epoch e is shuffled with ``seed + e``, so a resumed run sees the
        same order as an uninterrupted one (Lightning calls the sampler's ``set_epoch``)."""
        if self.train_pairs is None:
            self.setup("fit")
        sampler = EpochShuffleSampler(len(self.train_pairs), self.seed)
        return DataLoader(self.train_pairs, batch_size=self.batch_size, sampler=sampler,
                          collate_fn=self.collator, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> Union[DataLoader, List]:
        """Validation batches in split order (an empty list when ``val_split`` is null)."""
        if self.val_split is None:
            return []
        if self.val_pairs is None:
            self.setup("validate")
        return DataLoader(self.val_pairs, batch_size=self.val_batch_size, shuffle=False, collate_fn=self.collator,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
