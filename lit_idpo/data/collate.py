"""Tokenised pairs of one split (:class:`PreferencePairs`) and their padding into DPO batches
(:class:`PreferenceCollator`): ``2B`` sequences, chosen rows first, with a completion mask."""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Sequence

import torch
from torch.utils.data import Dataset

from lit_idpo.batch import check_packing_mode
from lit_idpo.data.packing import PACKERS
from lit_idpo.errors import ConfigError


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
    """Pads (or packs) a list of pairs into one batch of ``2B`` sequences.

    Returns a dict with ``input_ids``, ``attention_mask``, ``completion_mask`` (LongTensors
    ``[2B, T]``) and ``pair_index`` (LongTensor ``[B]``). Rows ``0..B-1`` are prompt + chosen, rows
    ``B..2B-1`` prompt + rejected of the same pairs in the same order. ``completion_mask`` is 1 on the
    completion tokens (whose log-probs count) and 0 on prompt and padding.

    Args:
        pad_token_id: token id written into padding positions (masked out by ``attention_mask``).
        padding_side: ``"right"`` (padding after the tokens) or ``"left"`` (before them).
        packing: ``"none"`` (the padded batch above), ``"padding_free"`` or ``"prefix_shared"``: a packed
            batch of the same pairs (keys in :mod:`lit_idpo.batch`); ``padding_side`` does not apply.
            ``auto`` is resolved against the model first (:func:`lit_idpo.batch.resolve_packing`).
    """

    def __init__(self, pad_token_id: int, padding_side: Literal["right", "left"] = "right",
                 packing: Literal["none", "padding_free", "prefix_shared"] = "none"):
        if padding_side not in ("right", "left"):
            raise ConfigError(f"padding_side={padding_side!r}; choose 'right' or 'left'")
        check_packing_mode(packing, "packing", ("none", *PACKERS))  # 'auto' is resolved first (lit_idpo.batch)
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        self.packing = packing

    def __call__(self, examples: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        if self.packing != "none":
            return PACKERS[self.packing](examples, self.pad_token_id)
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
