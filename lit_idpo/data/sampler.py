"""The training loader's sampler: one reproducible random permutation per epoch."""

from __future__ import annotations

import torch


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
