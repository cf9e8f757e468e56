"""Packed DPO batches (``data.packing``) and the scoring plan every batch mode shares.

Modes:

- ``none``: padded rows, one sequence (prompt + chosen or prompt + rejected) per row (:class:`PreferenceCollator`).
- ``padding_free``: sequences laid end to end without pad tokens; ``position_ids`` restart at 0 for each
  sequence and attention stays inside it (block-diagonal causal mask).
- ``prefix_shared``: each pair becomes ``[prompt | chosen | rejected]``; rejected tokens attend to the
  prompt and to themselves (causally), never to the chosen tokens, and their positions continue from the
  prompt's end, so every token sees exactly what it would in its own padded row. The prompt is computed
  once per pair (Wang et al. 2024, arXiv 2410.20305).
- ``auto``: the fastest mode that is exact for the model, resolved by :func:`resolve_packing` once the
  model is known (the module's ``setup``); a datamodule never told the model serves padded batches.

Row layout. SDPA with a dense mask computes all ``T x T`` scores of a row on CPU, so one long row per batch
wastes attention work quadratically. Units (a sequence for ``padding_free``, a whole pair for
``prefix_shared``) are placed first-fit, longest first, into rows no longer than the longest unit: one pair
per row for ``prefix_shared`` (no duplicated prompt, little padding) and short sequences sharing rows for
``padding_free``. Measured (SmolLM2-135M fp32, 8 bundled arithmetic pairs, train step with live reference,
2-core CPU shared with other jobs, so medians of few steps): padded [16, 56] 28.5 s, prefix_shared [8, 69]
the fastest in every interleaved round (best 14.6 s vs 41.4 s padded), padding_free rows of twice the longest
sequence [8, 112] 40.4 s and one row [1, 874] 44.2 s, both slower than rows of the longest sequence. On
pairs of near-equal length (the bundled set) padding_free has the padded layout ([16, 56]) and costs about
the same as padded; it gains on ragged lengths.

A packed batch carries, besides ``pair_index [B]``:

- ``input_ids [R, T]`` and ``position_ids [R, T]``;
- ``packed_attention [R, 1, T, T]`` bool, True where a query token may attend to a key token (pad tokens
  attend to themselves only, so no softmax row is empty);
- the scoring plan: ``score_index [n]`` (flat index into ``R * T`` of the hidden state that predicts each
  scored token), ``score_target [n]`` (its token id), ``score_sequence [n]`` (which of the ``2B``
  sequences it belongs to: chosen ``0..B-1``, rejected ``B..2B-1``);
- ``sequence_tokens [2B]``: each sequence's prompt + completion token count.

A padded batch (``attention_mask`` present) gives the same plan through :func:`scoring_plan`, so the
log-prob code has one path for every mode. Which keys are present defines the mode: no tensor-free
metadata travels through Lightning's device transfer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from lit_idpo.errors import ConfigError

PACKING_MODES = ("auto", "none", "padding_free", "prefix_shared")
#: Model types whose rotary (Llama/Mistral/Qwen2/Qwen3) or absolute (GPT-2) positions are read from
#: ``position_ids`` and whose attention takes a custom 4-D mask unchanged; the tests check them for exactness.
PACKABLE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
#: Attention implementations that apply a custom dense 4-D mask as given.
MASK_ATTENTION = ("sdpa", "eager")

Batch = Dict[str, torch.Tensor]


def is_packed(batch: Batch) -> bool:
    """True for a ``padding_free`` / ``prefix_shared`` batch (it carries ``packed_attention``)."""
    return "packed_attention" in batch


@dataclass
class ScoringPlan:
    """Which hidden state predicts which scored token of which sequence (see the module docstring)."""

    index: torch.Tensor  # [n] flat index into R*T
    target: torch.Tensor  # [n] token ids
    sequence: torch.Tensor  # [n] 0..2B-1
    num_sequences: int

    def lengths(self) -> torch.Tensor:
        """``[2B]`` scored (completion) tokens per sequence."""
        return torch.bincount(self.sequence, minlength=self.num_sequences)


def scoring_plan(batch: Batch) -> ScoringPlan:
    """The scoring plan of a batch of any mode (built from ``completion_mask`` for a padded one)."""
    if is_packed(batch):
        return ScoringPlan(batch["score_index"], batch["score_target"], batch["score_sequence"],
                           2 * batch["pair_index"].numel())
    input_ids, completion = batch["input_ids"], batch["completion_mask"].bool()
    width = input_ids.shape[1]
    # Hidden state at t-1 predicts token t.
    row, position = completion[:, 1:].nonzero(as_tuple=True)  # [n] each
    return ScoringPlan(row * width + position, input_ids[:, 1:][row, position], row, input_ids.shape[0])


def sequence_token_counts(batch: Batch) -> torch.Tensor:
    """``[2, 2B]``: per sequence, its prompt + completion tokens and its completion tokens."""
    if is_packed(batch):
        tokens = batch["sequence_tokens"]
        return torch.stack([tokens, scoring_plan(batch).lengths().to(tokens.dtype)])
    return torch.stack([batch["attention_mask"].sum(-1), batch["completion_mask"].sum(-1)])


def attention_for(batch: Batch, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """The 4-D mask of a packed batch as the attention implementation wants it: SDPA takes the boolean mask,
    eager attention adds its mask to the scores, so it gets 0 / most-negative values of ``dtype``."""
    allowed = batch["packed_attention"]
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
            ~allowed, torch.finfo(dtype).min)
    return allowed


# --------------------------------------------------------------------------------------------------
# Which modes a model can serve
# --------------------------------------------------------------------------------------------------


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") and callable(model.get_base_model) else model


def unsupported_reason(mode: str, model) -> Optional[str]:
    """Why ``model`` cannot score ``mode`` batches exactly, or None when it can."""
    if mode == "none":
        return None
    config = _base(model).config
    model_type = getattr(config, "model_type", None)
    if model_type not in PACKABLE_MODEL_TYPES:
        return (f"packed batches are checked for exactness only on {', '.join(PACKABLE_MODEL_TYPES)} models "
                f"(their positions come from position_ids and their attention takes a custom mask)")
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if implementation not in MASK_ATTENTION:
        return (f"its attention implementation {implementation!r} does not apply a custom 4-D attention mask "
                f"(packed rows need one); load it with attn_implementation='sdpa' or 'eager'")
    sliding = getattr(config, "sliding_window", None)
    if sliding is not None and getattr(config, "use_sliding_window", True):
        return (f"its sliding-window attention (sliding_window={sliding}) is replaced by a packed batch's mask, "
                f"so tokens further apart than the window would see each other")
    return None


def resolve_packing(requested: str, models: Sequence[Any]) -> Tuple[str, Optional[str]]:
    """The mode to use for ``requested`` with these models (policy, reference), and why ``auto`` fell back.

    ``auto`` picks ``prefix_shared`` when every model serves it exactly, else ``none`` (the reason is
    returned for the log). An explicit mode a model cannot serve raises a ConfigError naming ``data.packing``.
    """
    if requested not in PACKING_MODES:
        raise ConfigError(f"data.packing={requested!r} is not an option; choose one of {list(PACKING_MODES)}")
    # Both packed modes need the same support (a custom 4-D mask and position_ids), and prefix_shared does less work.
    candidates = ("prefix_shared",) if requested == "auto" else (requested,)
    reasons = []
    for mode in candidates:
        reason = next((r for r in (unsupported_reason(mode, m) for m in models if m is not None) if r), None)
        if reason is None:
            return mode, ("; ".join(reasons) or None)
        model_type = next(getattr(_base(m).config, "model_type", "?") for m in models if m is not None)
        reasons.append(f"data.packing={mode} cannot serve model type {model_type!r}: {reason}")
        if requested != "auto":
            raise ConfigError(f"{reasons[-1]}. Use data.packing=none (padded batches) or auto.")
    return "none", "; ".join(reasons) + "; using padded batches (data.packing=none)"


def check_packable(model) -> None:
    """Raise a ConfigError naming ``data.packing`` when ``model`` cannot score packed batches exactly (for a
    packed batch built without :func:`resolve_packing`, e.g. by a data module used directly)."""
    reason = unsupported_reason("prefix_shared", model)
    if reason is not None:
        model_type = getattr(_base(model).config, "model_type", "?")
        raise ConfigError(f"data.packing: a packed batch cannot be scored by model type {model_type!r}: {reason}. "
                          f"Use data.packing=none or auto.")


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

__all__ = ["PACKABLE_MODEL_TYPES", "PACKERS", "PACKING_MODES", "ScoringPlan", "attention_for", "check_packable",
           "is_packed", "pack_padding_free", "pack_prefix_shared", "resolve_packing", "scoring_plan",
           "sequence_token_counts", "unsupported_reason"]
