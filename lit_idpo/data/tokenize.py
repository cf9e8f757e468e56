"""Tokenisation of preference pairs: chat templating, BOS/EOS, the prompt-truncation rule, and the
per-split filtering and counting of :func:`tokenize_rows` (rules in :mod:`lit_idpo.data`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from lit_idpo.data.collate import PreferencePairs
from lit_idpo.data.rows import BadRowError, NormalizedRow, detect_format, normalize_row
from lit_idpo.data.sources import row_location
from lit_idpo.errors import ConfigError, DataError

#: Rows are rendered and tokenised in chunks of this many (batched tokeniser calls are much faster).
_CHUNK_ROWS = 512


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
            raise ConfigError("the tokenizer has no EOS token; preference completions must end with EOS "
                              "(choose a model / data.tokenizer whose tokenizer defines eos_token)")
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
                raise DataError("the data holds message lists, but the tokenizer has no chat template to render "
                                "them; choose a model / data.tokenizer with a chat template (or use standard string "
                                "data)")
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
                    f"field {name!r}: the tokens of the templated prompt are not a prefix of the templated prompt + "
                    f"{name} "
                    f"(they differ at token {at}: prompt has {self.tokenizer.decode(prompt[at:at + 3])!r}, the full "
                    f"sequence {self.tokenizer.decode(full[at:at + 3])!r}); the chat template renders the prompt "
                    f"differently once a reply follows")
            completion = full[len(prompt):]
            if not completion:
                return BadRowError("empty_completion", name, f"field {name!r} adds no tokens after the prompt")
            completions.append(self._finish_completion(completion))
        if completions[0] == completions[1]:
            return BadRowError("identical_completions", "chosen/rejected",
                               "fields 'chosen' and 'rejected' differ as text but give the same tokens")
        return prompt, completions[0], completions[1]


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
    max_pair_tokens: Optional[int] = None,
) -> Tuple[PreferencePairs, SplitStats]:
    """Validate, template, tokenise and filter the rows of one split (see the module docstring).

    Returns the kept pairs (in row order, so a pair's index is stable across runs) and the counts.
    With ``limit``, reading stops once ``limit`` pairs have been kept. With ``max_pair_tokens`` (the token
    budget of a training batch, ``data.on_over_budget=drop``), a pair whose prompt + chosen + rejected tokens
    exceed it is dropped and counted (``over_budget``), as ``max_length`` drops are (``too_long``).
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
        raise err.with_fix(row_location(rows, index, f"{split} split {stats.source_split!r}")) from None

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
            if max_pair_tokens is not None and len(prompt) + len(chosen) + len(rejected) > max_pair_tokens:
                dropped["over_budget"] += 1
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


def render_prompt_ids(tokenizer, prompt: Union[str, List[Dict[str, str]]]) -> List[int]:
    """A prompt's token ids, rendered as the data module renders a training prompt (used by evaluation, speculate and
    the on-policy data builders, so that all of them give the model what training gave it).

    With a chat template: the prompt (a string becomes one user turn) with ``add_generation_prompt``;
    without one: the plain string. BOS is put in front only when the tokenizer normally adds one and
    the text does not already start with it.
    """
    pair_tok = PairTokenizer(tokenizer)
    if pair_tok.has_template:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    elif isinstance(prompt, str):
        text = prompt
    else:
        raise DataError("the prompts are message lists, but the model's tokenizer has no chat template to render "
                        "them; evaluate such data with chat models only")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if pair_tok.adds_bos and (not ids or ids[0] != pair_tok.bos):
        ids = [pair_tok.bos] + ids
    return ids
