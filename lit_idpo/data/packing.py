"""Packed DPO batches (``data.packing``): the builders of the ``padding_free`` and ``prefix_shared`` layouts.

- ``padding_free``: sequences laid end to end without pad tokens; ``position_ids`` restart at 0 for each
  sequence and attention stays inside it (block-diagonal causal mask).
- ``prefix_shared``: each pair becomes ``[prompt | chosen | rejected]``; rejected tokens attend to the
  prompt and to themselves (causally), never to the chosen tokens, and their positions continue from the
  prompt's end, so every token sees exactly what it would in its own padded row (Wang et al. 2024,
  arXiv 2410.20305).

Units (a sequence, or a whole pair) are placed first-fit, longest first, into rows no longer than the longest
unit. The keys a packed batch carries are the contract in :mod:`lit_idpo.batch`; why this row layout, with
measurements: ``docs/packing.md``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch

from lit_idpo.batch import Batch

# --------------------------------------------------------------------------------------------------
# Building packed batches
# --------------------------------------------------------------------------------------------------


def _first_fit(lengths: Sequence[int], budget: int) -> List[List[int]]:
    """Unit indices per row: longest first, each into the first row with room (rows hold at most ``budget``)."""
    rows: List[List[int]] = []
    room: List[int] = []
    for unit in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        target = next((r for r, free in enumerate(room) if free >= lengths[unit]), None)
        if target is None:
            rows.append([])
            room.append(budget)
            target = len(rows) - 1
        rows[target].append(unit)
        room[target] -= lengths[unit]
    return rows


class _RowWriter:
    """Fills ``input_ids``, ``position_ids``, the 4-D mask and the scoring plan of a packed batch."""

    def __init__(self, num_rows: int, width: int, pad_token_id: int, num_sequences: int):
        self.width = width
        self.input_ids = torch.full((num_rows, width), pad_token_id, dtype=torch.long)
        self.position_ids = torch.zeros(num_rows, width, dtype=torch.long)
        self.allowed = torch.zeros(num_rows, width, width, dtype=torch.bool)
        self.index: List[torch.Tensor] = []
        self.target: List[torch.Tensor] = []
        self.sequence: List[torch.Tensor] = []
        self.sequence_tokens = torch.zeros(num_sequences, dtype=torch.long)

    def tokens(self, row: int, start: int, ids: Sequence[int], first_position: int) -> None:
        n = len(ids)
        self.input_ids[row, start:start + n] = torch.tensor(ids, dtype=torch.long)
        self.position_ids[row, start:start + n] = torch.arange(first_position, first_position + n)

    def attend(self, row: int, queries: slice, keys: slice, causal: bool) -> None:
        block = self.allowed[row, queries, keys]
        if causal:
            block |= torch.ones_like(block).tril_()
        else:
            block.fill_(True)

    def score(self, sequence: int, row: int, predictors: torch.Tensor, targets: Sequence[int]) -> None:
        """``targets[j]`` is predicted by the hidden state at column ``predictors[j]`` of ``row``."""
        self.index.append(row * self.width + predictors)
        self.target.append(torch.tensor(targets, dtype=torch.long))
        self.sequence.append(torch.full((len(targets),), sequence, dtype=torch.long))

    def batch(self, used: Sequence[int], pair_index: torch.Tensor) -> Batch:
        for row, end in enumerate(used):  # pad tokens attend to themselves only (no empty softmax row)
            tail = torch.arange(end, self.width)
            self.allowed[row, tail, tail] = True
        return {
            "input_ids": self.input_ids,  # [R, T]
            "position_ids": self.position_ids,  # [R, T]
            "packed_attention": self.allowed.unsqueeze(1),  # [R, 1, T, T]
            "score_index": torch.cat(self.index),  # [n]
            "score_target": torch.cat(self.target),  # [n]
            "score_sequence": torch.cat(self.sequence),  # [n]
            "sequence_tokens": self.sequence_tokens,  # [2B]
            "pair_index": pair_index,  # [B]
        }


def _check_prompts(examples: Sequence[Dict[str, Any]]) -> None:
    for ex in examples:
        if not ex["prompt_ids"] or not ex["chosen_ids"] or not ex["rejected_ids"]:
            raise ValueError(f"pair {ex['pair_index']}: packing needs a non-empty prompt (its last token predicts "
                             f"the first completion token) and non-empty completions")


def _pack(examples: Sequence[Dict[str, Any]], pad_token_id: int, lengths: List[int], place) -> Batch:
    """Lay units (sequences or pairs) of these lengths into rows; ``place(writer, row, start, unit)`` writes one."""
    _check_prompts(examples)
    rows = _first_fit(lengths, max(lengths))
    width = max(sum(lengths[u] for u in row) for row in rows)
    writer = _RowWriter(len(rows), width, pad_token_id, 2 * len(examples))
    used = []
    for r, row in enumerate(rows):
        start = 0
        for unit in sorted(row):
            place(writer, r, start, unit)
            start += lengths[unit]
        used.append(start)
    return writer.batch(used, torch.tensor([ex["pair_index"] for ex in examples], dtype=torch.long))


def pack_padding_free(examples: Sequence[Dict[str, Any]], pad_token_id: int) -> Batch:
    """A ``padding_free`` batch of pairs (see the module docstring)."""
    sequences = [(ex["prompt_ids"], ex["chosen_ids"]) for ex in examples] + \
                [(ex["prompt_ids"], ex["rejected_ids"]) for ex in examples]

    def place(writer: _RowWriter, row: int, start: int, s: int) -> None:
        prompt, completion = sequences[s]
        n, p = len(prompt) + len(completion), len(prompt)
        writer.tokens(row, start, prompt + completion, 0)
        writer.attend(row, slice(start, start + n), slice(start, start + n), causal=True)
        writer.score(s, row, torch.arange(start + p - 1, start + n - 1), completion)
        writer.sequence_tokens[s] = n

    return _pack(examples, pad_token_id, [len(p) + len(c) for p, c in sequences], place)


def pack_prefix_shared(examples: Sequence[Dict[str, Any]], pad_token_id: int) -> Batch:
    """A ``prefix_shared`` batch of pairs (see the module docstring)."""
    num_pairs = len(examples)

    def place(writer: _RowWriter, row: int, start: int, b: int) -> None:
        prompt, chosen, rejected = examples[b]["prompt_ids"], examples[b]["chosen_ids"], examples[b]["rejected_ids"]
        p, c, k = len(prompt), len(chosen), len(rejected)
        rejected_start = start + p + c
        writer.tokens(row, start, prompt + chosen, 0)
        writer.tokens(row, rejected_start, rejected, p)  # positions continue from the prompt's end
        writer.attend(row, slice(start, rejected_start), slice(start, rejected_start), causal=True)
        rejected_rows = slice(rejected_start, rejected_start + k)
        writer.attend(row, rejected_rows, slice(start, start + p), causal=False)  # the prompt, never the chosen
        writer.attend(row, rejected_rows, rejected_rows, causal=True)
        last_prompt = start + p - 1  # predicts the first chosen AND the first rejected token
        writer.score(b, row, torch.arange(last_prompt, last_prompt + c), chosen)
        writer.score(num_pairs + b, row,
                     torch.cat([torch.tensor([last_prompt]), torch.arange(rejected_start, rejected_start + k - 1)]),
                     rejected)
        writer.sequence_tokens[b] = p + c
        writer.sequence_tokens[num_pairs + b] = p + k

    lengths = [len(ex["prompt_ids"]) + len(ex["chosen_ids"]) + len(ex["rejected_ids"]) for ex in examples]
    return _pack(examples, pad_token_id, lengths, place)


PACKERS = {"padding_free": pack_padding_free, "prefix_shared": pack_prefix_shared}

__all__ = ["PACKERS", "pack_padding_free", "pack_prefix_shared"]
