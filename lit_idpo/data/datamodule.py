"""The Lightning data module: loads, tokenises and serves preference pairs as DPO batches.

Its options are the ``data.*`` keys of the ``lit-idpo fit`` config; a value that cannot be used raises
:class:`~lit_idpo.errors.ConfigError` naming ``data.<option>``.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Literal, Optional, Union

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader

from lit_idpo.batch import check_packing_mode, resolve_packing
from lit_idpo.data.collate import PreferenceCollator, PreferencePairs
from lit_idpo.data.rows import FORMATS
from lit_idpo.data.sampler import PairBatchSampler, ResumableDataLoader, pair_token_counts
from lit_idpo.data.sources import load_split
from lit_idpo.data.tokenize import tokenize_rows
from lit_idpo.errors import ConfigError, DataError
from lit_idpo.models import load_tokenizer


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(source: str):
    # Tokenizers are only read here (never mutated), so data modules of one process can share them.
    return load_tokenizer(source)


def _check_options(options: Dict[str, Any]) -> None:
    """Raise a ConfigError naming ``data.<option>`` for a value PreferenceDataModule cannot use."""
    for name, allowed in (("format", FORMATS), ("on_bad_row", ("error", "skip")), ("padding_side", ("right", "left")),
                          ("on_over_budget", ("error", "drop"))):
        if options[name] not in allowed:
            raise ConfigError(f"data.{name}={options[name]!r} is not an option; choose one of {list(allowed)}")
    check_packing_mode(options["packing"])  # the one check of data.packing (lit_idpo.batch)
    for name, least in (("batch_size", 1), ("val_batch_size", 1), ("num_workers", 0), ("max_length", 2),
                        ("max_prompt_length", 1), ("limit_train_pairs", 1), ("limit_val_pairs", 1),
                        ("max_tokens_per_batch", 1)):
        value = options[name]
        nullable = name not in ("batch_size", "num_workers")
        if (value is None and not nullable) or (value is not None and (isinstance(value, bool) or
                                                                       not isinstance(value, int) or value < least)):
            raise ConfigError(f"data.{name}={value!r}; it must be an integer >= {least}" +
                              (" (or null)" if nullable else ""))
    max_length, max_prompt_length = options["max_length"], options["max_prompt_length"]
    if max_length is not None and max_prompt_length is not None and max_prompt_length >= max_length:
        raise ConfigError(f"data.max_prompt_length={max_prompt_length} must be smaller than "
                          f"data.max_length={max_length}, or no completion token would fit; lower max_prompt_length "
                          f"or raise max_length")


class PreferenceDataModule(pl.LightningDataModule):
    """Preference pairs (prompt, chosen, rejected), tokenised once and served as DPO batches.

    Each batch is a dict: ``input_ids``, ``attention_mask``, ``completion_mask`` (LongTensors
    ``[2B, T]``; rows ``0..B-1`` prompt + chosen, rows ``B..2B-1`` prompt + rejected of the same pairs,
    ``completion_mask`` 1 on completion tokens only) and ``pair_index`` (LongTensor ``[B]``: the pair's
    index in its split after filtering, stable across runs); packed modes (``packing``) carry the same pairs in
    the layout of :mod:`lit_idpo.batch`. Formats, chat templates, truncation and bad
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
        data_files: For a directory, builder or Hub source, as ``datasets.load_dataset`` takes it: a file,
            a list of files, or a mapping from split name to file(s). Local uncompressed files are read by
            lit-idpo's own reader (errors name the file and line); the rest by ``datasets``.
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
        max_tokens_per_batch: If set, training batches are bounded by tokens rather than pairs: pairs of similar
            length are grouped until their prompt + chosen + rejected tokens would exceed this budget (a pair over
            the budget: see ``on_over_budget``), and the batches are served in a new order each epoch
            (:class:`~lit_idpo.data.sampler.PairBatchSampler`). Null: ``batch_size`` pairs per batch.
        on_over_budget: What to do with a training pair whose prompt + chosen + rejected tokens exceed
            ``max_tokens_per_batch`` (a batch holds whole pairs, so it could only be served over the budget):
            ``error`` (default): refuse to train, naming the longest pair; ``drop``: drop such pairs when the
            split is tokenised and count them (``over_budget``) in ``stats`` and the log line, as ``max_length``
            drops are. Validation pairs are never dropped for it (validation batches are ``val_batch_size`` pairs).
        val_batch_size: Pairs per validation batch; null: same as ``batch_size``.
        num_workers: DataLoader worker processes (0: load in the main process).
        on_bad_row: ``error``: raise on the first unusable row, naming split, row index and field;
            ``skip``: skip such rows and count them per reason in ``stats`` and the log line.
        limit_train_pairs: Keep only the first this-many usable training pairs (in the source's order).
        limit_val_pairs: Keep only the first this-many usable validation pairs.
        padding_side: ``right`` (default) or ``left`` padding of the batched sequences.
        seed: Seed of the training loader's shuffling generator.
        packing: How the ``2B`` sequences of a batch are laid out (:mod:`lit_idpo.batch`): ``none``
            (padded rows), ``padding_free`` (no pad tokens), ``prefix_shared`` (each pair as
            ``[prompt | chosen | rejected]``, the prompt computed once) or ``auto`` (default): the fastest
            mode that is exact for the model, resolved when the module sees the model
            (:meth:`resolve_packing`; padded until then). All modes give the same log-probs.
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
        packing: Literal["auto", "none", "padding_free", "prefix_shared"] = "auto",
        max_tokens_per_batch: Optional[int] = None,
        on_over_budget: Literal["error", "drop"] = "error",
    ):
        super().__init__()
        _check_options(locals())  # every argument, by name
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
        self.max_tokens_per_batch = max_tokens_per_batch
        self.on_over_budget = on_over_budget
        self.packing = packing
        #: The mode batches use: ``packing`` once resolved against the model (see :meth:`resolve_packing`).
        self.packing_mode: Optional[str] = None if packing == "auto" else packing
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
        return PreferenceCollator(self.tokenizer.pad_token_id, self.padding_side, self.packing_mode or "none")

    def resolve_packing(self, models) -> str:
        """Set the batches' mode for these models (policy, reference): ``auto`` becomes the fastest exact mode
        (the reason for a fallback is logged); an explicit mode a model cannot serve raises a ConfigError."""
        self.packing_mode, reason = resolve_packing(self.packing, models)
        if reason:
            rank_zero_info(f"lit-idpo: {reason}")
        return self.packing_mode

    def prepare_data(self) -> None:
        """Nothing to prepare: sources are read (and Hub datasets downloaded) in :meth:`setup`."""

    def _build(self, role: str, split: str, limit: Optional[int]) -> PreferencePairs:
        rows = load_split(self.source, split, data_files=self.data_files, subset=self.subset)
        # Only training batches have a token budget; dropping here (not in the sampler) keeps the counts, the
        # limit and pair_index as for max_length drops.
        drop_over = self.max_tokens_per_batch if role == "train" and self.on_over_budget == "drop" else None
        pairs, stats = tokenize_rows(rows, self.tokenizer, split=role, source_split=split, format=self.format,
                                     max_length=self.max_length, max_prompt_length=self.max_prompt_length,
                                     on_bad_row=self.on_bad_row, limit=limit, max_pair_tokens=drop_over)
        self.stats[role] = stats.as_dict()
        rank_zero_info(stats.line())
        if len(pairs) == 0:
            budget = "raise data.max_tokens_per_batch, " if stats.dropped.get("over_budget") else ""
            raise DataError(f"{role} split {split!r} of {self.source!r} has no usable pairs left ({stats.line()}); "
                            f"{budget}raise data.max_length, set data.max_prompt_length, or fix the rows")
        return pairs

    def setup(self, stage: Optional[str] = None) -> None:
        """Load and tokenise the splits this stage needs; calling it again does nothing new."""
        if stage in (None, "fit") and self.train_pairs is None:
            self.train_pairs = self._build("train", self.train_split, self.limit_train_pairs)
        if stage in (None, "fit", "validate") and self.val_split is not None and self.val_pairs is None:
            self.val_pairs = self._build("val", self.val_split, self.limit_val_pairs)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches from a :class:`~lit_idpo.data.sampler.PairBatchSampler`: epoch e is ordered
        by ``seed + e``; fixed-size or (``max_tokens_per_batch``) token-bounded; each rank of a multi-process run
        serves its own share. The loader is a :class:`~lit_idpo.data.sampler.ResumableDataLoader`: a checkpoint
        holds how many of the epoch's batches were trained on, and ``fit(ckpt_path=...)`` continues after them."""
        if self.train_pairs is None:
            self.setup("fit")
        pairs, trainer = self.train_pairs, self.trainer
        tokens = None if self.max_tokens_per_batch is None else pair_token_counts(pairs)
        if tokens and max(tokens) > self.max_tokens_per_batch:
            longest = max(range(len(tokens)), key=tokens.__getitem__)
            raise ConfigError(
                f"data.max_tokens_per_batch={self.max_tokens_per_batch} is smaller than the longest training pair "
                f"({tokens[longest]} tokens: prompt + chosen + rejected, pair_index {longest}); a batch holds whole "
                f"pairs. Raise it to at least {tokens[longest]}, drop the pairs over it (counted) with "
                f"data.on_over_budget=drop, or drop longer pairs with data.max_length (at most half the budget keeps "
                f"every pair within it).")
        batch_sampler = PairBatchSampler(None, self.batch_size, num_pairs=len(pairs), seed=self.seed,
                                         pair_tokens=tokens, max_tokens=self.max_tokens_per_batch,
                                         num_replicas=trainer.world_size if trainer else 1,
                                         rank=trainer.global_rank if trainer else 0)

        def trained_batches() -> int:  # of the current epoch: those whose training step ran
            return trainer.fit_loop.epoch_loop.batch_progress.current.processed

        if trainer is not None:
            # Workers take their first indices before Lightning's set_epoch: start on the epoch it will run.
            batch_sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed)
        return ResumableDataLoader(pairs, batch_sampler=batch_sampler, collate_fn=self.collator,
                                   num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                                   trained_batches=trained_batches if trainer is not None else None)

    def val_dataloader(self) -> Union[DataLoader, List]:
        """Validation batches in split order (an empty list when ``val_split`` is null)."""
        if self.val_split is None:
            return []
        if self.val_pairs is None:
            self.setup("validate")
        return DataLoader(self.val_pairs, batch_size=self.val_batch_size, shuffle=False, collate_fn=self.collator,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
