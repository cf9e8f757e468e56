"""What every training-step row of ``bench_packing.py`` shares, lit-idpo's and TRL's alike: the row's data module,
the batch order both systems follow, the real-token count of a pair, and the step-time / memory record.

Its own module so that ``bench_trl_step.py`` (TRL's row) and ``bench_packing.py`` (the driver and lit-idpo's rows)
both read it and neither imports the other at load time.
"""

from __future__ import annotations

import inspect
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from bench_common import rss_kb
from longtail_pairs import write_jsonl


def steps_of(args) -> int:
    """Optimiser steps a row runs: one warm-up, then ``repeats`` timed ones."""
    return args.repeats + 1


def data_source(args) -> str:
    """The ``data.source`` of the row's data set (the long-tailed set is rewritten, identically, by each run)."""
    if args.dataset == "bundled":
        return "bundled:arithmetic"
    num_pairs = args.batch_pairs * steps_of(args)
    path = Path(tempfile.gettempdir()) / f"lit_idpo_bench_longtail_seed{args.seed}_{num_pairs}.jsonl"
    return str(write_jsonl(path, num_pairs, seed=args.seed))


def data_module(args, packing: str):
    """The run's ``PreferenceDataModule``: the first ``batch_pairs x steps`` pairs, no validation, no length cut.

    ``packing`` is passed only where lit-idpo has the option; without it only ``none`` (padding) can run."""
    from lit_idpo.data import PreferenceDataModule

    options = dict(tokenizer=args.model, source=data_source(args), val_split=None, max_length=None,
                   batch_size=args.batch_pairs, limit_train_pairs=args.batch_pairs * steps_of(args), seed=args.seed)
    if "packing" in inspect.signature(PreferenceDataModule).parameters:
        options["packing"] = packing
    elif packing != "none":
        raise RuntimeError(f"this lit-idpo's PreferenceDataModule has no packing option (wanted {packing!r})")
    return PreferenceDataModule(**options)


def pair_tokens(pairs, index: int) -> int:
    """Real tokens of one pair, each counted once: prompt + chosen + rejected."""
    return len(pairs.prompt_ids[index]) + len(pairs.chosen_ids[index]) + len(pairs.rejected_ids[index])


def batch_order(args) -> List[List[int]]:
    """The pair indices of each training batch, as lit-idpo's padded training loader serves them."""
    dm = data_module(args, "none")
    dm.setup("fit")
    order = []
    for batch in dm.train_dataloader():
        order.append(batch["pair_index"].tolist())
        if len(order) == steps_of(args):
            break
    return order


class StepRecord:
    """Step-end times and the memory high-water mark of one training run (framework-neutral)."""

    def __init__(self):
        self.ends: List[float] = []
        self.start = 0.0
        self.before_mb = 0.0
        self.peak_mb = 0.0

    def train_start(self) -> None:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        self.before_mb = rss_kb("VmRSS") / 1024
        self.start = time.perf_counter()

    def step_end(self) -> None:
        self.ends.append(time.perf_counter())
        self.peak_mb = rss_kb("VmHWM") / 1024

    def summary(self, real_tokens: List[int], positions: List[int]) -> Dict:
        """Row fields: the first step apart (warm-up), the median and token rate of the others."""
        times = [b - a for a, b in zip([self.start] + self.ends[:-1], self.ends)]
        timed, timed_tokens = times[1:], real_tokens[1:len(times)]
        return dict(steps_timed=len(timed), time_s=round(statistics.median(timed), 3) if timed else None,
                    times_s=json.dumps([round(t, 3) for t in timed]), first_step_s=round(times[0], 3),
                    real_tokens_per_step=round(statistics.mean(timed_tokens or real_tokens), 1),
                    positions_per_step=round(statistics.mean(positions[1:len(times)] or positions), 1),
                    tokens_per_s=round(sum(timed_tokens) / sum(timed), 1) if timed else None,
                    before_mb=round(self.before_mb, 1), peak_mb=round(self.peak_mb, 1))
