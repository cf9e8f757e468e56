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

A **prompt-only** row (a ``prompt``, string or messages, and neither ``chosen`` nor ``rejected``) serves
``lit-idpo evaluate``'s generation only (``bundled:instructions`` is one such source); training and the
implicit-reward pass need pairs, and say so when given one.

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
exceeds ``max_length`` is dropped and counted under ``too_long``. With ``max_tokens_per_batch`` and
``on_over_budget="drop"``, a training pair whose prompt + chosen + rejected tokens exceed the budget is dropped
and counted under ``over_budget`` (by default such a budget is refused).

Bad rows (missing field, wrong type, empty prompt or completion, identical completions, no shared
prompt, prompt tokens not a prefix) raise a :class:`BadRowError` naming the row as the user counts it
(``pairs.jsonl, line 7``; a 1-based item number in a JSON list or table; the 0-based dataset index for
a Hub or directory split) and the field, or with ``on_bad_row="skip"`` are skipped and counted per
reason. One log line per split reports the counts; :attr:`PreferenceDataModule.stats` holds them.
A missing, unreadable, empty or malformed data file raises a :class:`~lit_idpo.errors.DataError`
naming the file (and line); a bad option a :class:`~lit_idpo.errors.ConfigError` naming ``data.<option>``.

Modules: :mod:`~lit_idpo.data.rows` (formats, validation), :mod:`~lit_idpo.data.sources` (reading
files, directories, Hub datasets), :mod:`~lit_idpo.data.tokenize` (templating, truncation, filtering),
:mod:`~lit_idpo.data.collate` (pairs and batches), :mod:`~lit_idpo.data.sampler` (epoch shuffling, stateful
and token-bounded training batches),
:mod:`~lit_idpo.data.datamodule` (the LightningDataModule). Every public name is importable from
``lit_idpo.data``, loaded on first use (PEP 562): importing :mod:`lit_idpo.data.tasks` (the bundled
verifiable tasks' generators and verifiers, pure Python) loads neither torch nor Lightning. The bundled
task's files (``*.jsonl``) live in this folder as package data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lit_idpo import lazy_exports

# Public name -> the module that defines it.
_EXPORTS = {
    "BadRowError": "lit_idpo.data.rows",
    "BUNDLED_PREFIX": "lit_idpo.data.sources",
    "detect_format": "lit_idpo.data.rows",
    "EpochShuffleSampler": "lit_idpo.data.sampler",
    "FORMATS": "lit_idpo.data.rows",
    "load_split": "lit_idpo.data.sources",
    "Message": "lit_idpo.data.rows",
    "normalize_row": "lit_idpo.data.rows",
    "NormalizedRow": "lit_idpo.data.rows",
    "PairBatchSampler": "lit_idpo.data.sampler",
    "PairTokenizer": "lit_idpo.data.tokenize",
    "PreferenceCollator": "lit_idpo.data.collate",
    "PreferenceDataModule": "lit_idpo.data.datamodule",
    "PreferencePairs": "lit_idpo.data.collate",
    "read_json_rows": "lit_idpo.data.sources",
    "ResumableDataLoader": "lit_idpo.data.sampler",
    "row_location": "lit_idpo.data.sources",
    "SourceRows": "lit_idpo.data.sources",
    "SplitStats": "lit_idpo.data.tokenize",
    "token_bounded_batches": "lit_idpo.data.sampler",
    "tokenize_rows": "lit_idpo.data.tokenize",
    "truncate_prompt": "lit_idpo.data.tokenize",
}

__all__ = [
    "BUNDLED_PREFIX",
    "FORMATS",
    "BadRowError",
    "EpochShuffleSampler",
    "Message",
    "NormalizedRow",
    "PairBatchSampler",
    "PairTokenizer",
    "PreferenceCollator",
    "PreferenceDataModule",
    "PreferencePairs",
    "ResumableDataLoader",
    "SourceRows",
    "SplitStats",
    "detect_format",
    "load_split",
    "normalize_row",
    "read_json_rows",
    "row_location",
    "token_bounded_batches",
    "tokenize_rows",
    "truncate_prompt",
]

if TYPE_CHECKING:  # static analysers see the names; nothing is imported at run time
    from lit_idpo.data.collate import PreferenceCollator, PreferencePairs
    from lit_idpo.data.datamodule import PreferenceDataModule
    from lit_idpo.data.rows import FORMATS, BadRowError, Message, NormalizedRow, detect_format, normalize_row
    from lit_idpo.data.sampler import EpochShuffleSampler, PairBatchSampler, ResumableDataLoader, token_bounded_batches
    from lit_idpo.data.sources import BUNDLED_PREFIX, SourceRows, load_split, read_json_rows, row_location
    from lit_idpo.data.tokenize import PairTokenizer, SplitStats, tokenize_rows, truncate_prompt


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
