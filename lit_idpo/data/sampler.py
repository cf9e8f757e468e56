"""The training loader's samplers: one reproducible permutation per epoch (:class:`EpochShuffleSampler`),
the stateful batch sampler built on it (:class:`PairBatchSampler`), which serves an epoch's batches of
pairs (fixed-size or bounded by tokens), deals them to the ranks of a distributed run and resumes
mid-epoch at the batch an interrupted run stopped at, and the loader that lets Lightning checkpoint that
position (:class:`ResumableDataLoader`)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler

from lit_idpo.errors import ConfigError


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

    def permutation(self, epoch: int) -> List[int]:
        """The order of epoch ``epoch`` (what iterating yields once ``set_epoch(epoch)`` was called)."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_items, generator=generator).tolist()

    def __iter__(self):
        return iter(self.permutation(self.epoch))


def pair_token_counts(pairs) -> List[int]:
    """Tokens of each pair of a :class:`~lit_idpo.data.collate.PreferencePairs`: prompt + chosen + rejected."""
    return [len(p) + len(c) + len(r) for p, c, r in zip(pairs.prompt_ids, pairs.chosen_ids, pairs.rejected_ids)]


def token_bounded_batches(pair_tokens: Sequence[int], max_tokens: int, seed: int) -> List[List[int]]:
    """Partition pairs into batches whose summed token counts stay within ``max_tokens``.

    Pairs are taken shortest first (ties in a random order drawn from ``seed``), and each batch is filled
    until the next pair would exceed the budget, so a batch holds pairs of similar length (little padding in
    a padded batch) and long pairs make small batches. A pair longer than the budget on its own is a batch
    of one: refusing it would stop a run over one long pair, which ``data.max_length`` is there to bound.
    The partition is fixed for the run (only the batch order changes per epoch), which keeps the number
    of batches per epoch constant, as Lightning's progress, validation interval and schedulers assume.
    """
    tiebreak = torch.randperm(len(pair_tokens), generator=torch.Generator().manual_seed(seed)).tolist()
    order = sorted(range(len(pair_tokens)), key=lambda i: (pair_tokens[i], tiebreak[i]))
    batches: List[List[int]] = []
    current: List[int] = []
    used = 0
    for i in order:
        if current and used + pair_tokens[i] > max_tokens:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += pair_tokens[i]
    if current:
        batches.append(current)
    return batches


class PairBatchSampler(BatchSampler):
    """The training loader's ``batch_sampler``: the lists of pair indices of each epoch, one per step,
    with a state that lets a run killed mid-epoch resume at the batch it stopped at.

    Fixed-size batches (``max_tokens=None``): epoch ``e``'s permutation (``seed + e``, by the
    :class:`EpochShuffleSampler` held in :attr:`sampler`, whose ``set_epoch`` Lightning calls) cut into runs of
    ``batch_size`` pairs, the last one shorter if the pairs do not divide evenly. Token-bounded batches
    (``max_tokens`` and ``pair_tokens`` given): the fixed partition of :func:`token_bounded_batches`, served
    in a per-epoch permuted order (``seed + e``).

    Distributed runs: rank ``r`` of ``W`` takes batches ``r, r + W, r + 2W, ...`` of the epoch's list, so
    the ranks' shares are disjoint and one optimiser step consumes ``W`` consecutive batches; when ``W``
    does not divide the number of batches, the list is first extended by repeating its first batches, so
    every rank runs the same number of steps (as torch's ``DistributedSampler`` repeats items). ``W`` and
    ``r`` come from ``num_replicas`` / ``rank`` or from a ``DistributedSampler`` passed as ``sampler``:
    under DDP Lightning re-creates a ``BatchSampler`` subclass with its own distributed sampler as the
    ``sampler`` argument (``Trainer(use_distributed_sampler=True)``, the default); only that sampler's
    ``num_replicas`` and ``rank`` are used, the order stays this class's own.

    Resuming: :meth:`load_state_dict` with ``{"epoch": e, "batches_done": n}`` makes the first
    iterator of epoch ``e`` skip this rank's first ``n`` batches; ``len()`` stays the whole epoch's count,
    which is what Lightning expects (its restored batch counter continues from ``n``).

    Args:
        sampler: ``None`` or a ``DistributedSampler`` (see above).
        batch_size: Pairs per batch (fixed-size batches).
        num_pairs: Pairs in the split.
        seed: Seed of the per-epoch orders.
        pair_tokens: Tokens of each pair (prompt + chosen + rejected), for token-bounded batches.
        max_tokens: Token budget of a batch; ``None``: fixed-size batches.
        num_replicas: Ranks sharing the epoch (overridden by a ``DistributedSampler`` ``sampler``).
        rank: This process's rank.
    """

    def __init__(self, sampler: Optional[Sampler] = None, batch_size: int = 8, *, num_pairs: int, seed: int = 0,
                 pair_tokens: Optional[Sequence[int]] = None, max_tokens: Optional[int] = None,
                 num_replicas: int = 1, rank: int = 0):
        if max_tokens is not None and (pair_tokens is None or len(pair_tokens) != num_pairs):
            raise ValueError("token-bounded batches need the token count of every pair (pair_tokens, one per pair)")
        if isinstance(sampler, DistributedSampler):
            num_replicas, rank = sampler.num_replicas, sampler.rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} is not one of the {num_replicas} replicas")
        order = EpochShuffleSampler(num_pairs, seed)
        super().__init__(order, batch_size, drop_last=False)  # checks batch_size; self.sampler is `order`
        self.num_pairs = num_pairs
        self.seed = seed
        self.max_tokens = max_tokens
        self.num_replicas = num_replicas
        self.rank = rank
        self._partition = None if max_tokens is None else token_bounded_batches(pair_tokens, max_tokens, seed)
        self._resume: Optional[Dict[str, int]] = None
        self._served = 0  # batches of the current epoch's iterator handed out, the skipped ones included

    @property
    def epoch(self) -> int:
        """The epoch whose batches are served (set by Lightning through ``sampler.set_epoch``)."""
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch``'s batches from the next iterator on."""
        self.sampler.set_epoch(epoch)

    def _num_global_batches(self) -> int:
        return len(self._partition) if self._partition is not None else -(-self.num_pairs // self.batch_size)

    def __len__(self) -> int:
        """This rank's batches per epoch (the same for every epoch and every rank)."""
        return -(-self._num_global_batches() // self.num_replicas)

    def epoch_batches(self, epoch: int) -> List[List[int]]:
        """This rank's batches of epoch ``epoch``, in serving order."""
        if self._partition is None:
            order = self.sampler.permutation(epoch)
            batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        else:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            batches = [self._partition[i] for i in torch.randperm(len(self._partition), generator=generator).tolist()]
        padded = len(self) * self.num_replicas
        batches = (batches * -(-padded // len(batches)))[:padded]  # repeat the first batches so ranks get as many
        return batches[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[List[int]]:
        # A generator: the epoch is read at the first batch, not when the DataLoader makes its iterator (which
        # Lightning does before it calls set_epoch).
        epoch = self.epoch
        start = 0
        if self._resume is not None and self._resume["epoch"] == epoch:
            start = min(int(self._resume["batches_done"]), len(self))
        if self._resume is not None and self._resume["epoch"] <= epoch:
            self._resume = None  # one resume only: later iterators of that epoch (a re-run) start at 0
        batches = self.epoch_batches(epoch)
        self._served = start
        for batch in batches[start:]:
            self._served += 1
            yield batch

    def state_dict(self) -> Dict[str, Any]:
        """``{"epoch", "batches_done", "batch_size", "max_tokens"}``: the epoch served, how many of its batches
        this sampler's iterator has handed out, and the two options that cut the epoch into batches.
        DataLoader workers and Lightning's data fetcher take batches ahead of training, so a checkpoint records
        how many batches were *trained on* instead (:class:`ResumableDataLoader`), in the same format."""
        return {"epoch": self.epoch, "batches_done": self._served, "batch_size": self.batch_size,
                "max_tokens": self.max_tokens}

    def check_resumable(self, state: Dict[str, Any]) -> None:
        """A ConfigError when ``state`` was saved with another ``batch_size`` or ``max_tokens``: its count of
        batches done would then point into different batches (pairs trained twice or never)."""
        for key, option, now in (("batch_size", "data.batch_size", self.batch_size),
                                 ("max_tokens", "data.max_tokens_per_batch", self.max_tokens)):
            if key in state and state[key] != now and (key != "batch_size" or self.max_tokens is None):
                raise ConfigError(
                    f"{option} is {now} but the checkpoint was saved with {option}={state[key]}: resuming would "
                    f"cut the interrupted epoch into other batches (pairs trained twice or never). Resume with "
                    f"{option}={state[key]}, or start a new run without ckpt_path.")

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Start the next iterator of epoch ``state["epoch"]`` after its first ``state["batches_done"]`` batches."""
        self.check_resumable(state)
        self._resume = {"epoch": int(state["epoch"]), "batches_done": int(state["batches_done"])}


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`PairBatchSampler` whose position Lightning keeps in checkpoints.

    Lightning saves a training loader's ``state_dict()`` with the fit loop when it writes a checkpoint and,
    when ``fit(ckpt_path=...)`` resumes, hands it to ``load_state_dict()`` before it makes the epoch's
    iterator (a loader without these methods has its epoch replayed from the start, with a warning).

    Args:
        trained_batches: Returns how many batches of the current epoch were trained on. Lightning's data
            fetcher and the loader's workers take batches ahead of training, so the sampler's own count
            runs ahead of it; the datamodule passes the trainer's count here. ``None``: the sampler's count.
        *args, **kwargs: As for ``DataLoader``; ``batch_sampler`` must be a :class:`PairBatchSampler`.
    """

    def __init__(self, *args, trained_batches: Optional[Callable[[], int]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, PairBatchSampler):
            raise TypeError("ResumableDataLoader needs a PairBatchSampler as its batch_sampler")
        self.trained_batches = trained_batches

    def state_dict(self) -> Dict[str, Any]:
        """``{"epoch", "batches_done"}``: the epoch served and how many of its batches were trained on."""
        state = self.batch_sampler.state_dict()
        if self.trained_batches is not None:
            state["batches_done"] = int(self.trained_batches())
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue after ``state``'s last trained batch: the rest of its epoch, or the next epoch if it was
        done. The epoch is set now because workers take their first indices before Lightning's ``set_epoch``."""
        sampler = self.batch_sampler
        sampler.check_resumable(state)
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= len(sampler):
            epoch, done = epoch + 1, 0
        sampler.set_epoch(epoch)
        sampler.load_state_dict({"epoch": epoch, "batches_done": done})
