"""Reference log-probs computed once and cached on disk (``model.reference_cache: <dir>``).

The frozen reference's per-layer log-prob sums of every training and validation pair are computed in
one pass before fit, written to ``<dir>/{train,val}.safetensors`` and read back by ``pair_index`` in
every later step; a run that finds the cache complete never loads the reference. A cache is keyed by
the pairs' token ids, the reference model's :func:`~lit_idpo.fingerprint.model_fingerprint`, its
dtype, the Trainer precision and the layers; one that does not match is refused with an error naming
what differs. Design, file format and key: ``docs/reference_cache.md``.

This module holds the file format (:func:`read_split`, :func:`write_split`, :class:`ReferenceTable`),
the key (:class:`CacheKey`) and the run's view of the directory (:class:`ReferenceCache`: what is
loaded, what is still to build, and the one pass that builds it).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from lit_idpo.batch import ScoringPlan, sequence_token_counts
from lit_idpo.errors import UserError
from lit_idpo.fingerprint import model_fingerprint
from lit_idpo.storage import atomic_write

# 2: the reference's weights are keyed on lit_idpo.fingerprint.model_fingerprint (1: weight files only).
CACHE_VERSION = 2
_META_KEY = "lit_idpo"


class ReferenceCacheError(UserError, RuntimeError):
    """A reference cache that cannot be used: unreadable, or built for other data, model or settings."""


# --------------------------------------------------------------------------------------------------
# Pair digests and the key
# --------------------------------------------------------------------------------------------------


def pair_digests(pairs) -> torch.Tensor:
    """``[N, 16]`` uint8: a BLAKE2b digest of each pair's prompt, chosen and rejected token ids."""
    out = torch.empty(len(pairs.prompt_ids), 16, dtype=torch.uint8)
    for i, (p, c, r) in enumerate(zip(pairs.prompt_ids, pairs.chosen_ids, pairs.rejected_ids)):
        h = hashlib.blake2b(digest_size=16)
        h.update(torch.tensor([len(p), len(c), len(r)] + p + c + r, dtype=torch.int64).numpy().tobytes())
        out[i] = torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8)
    return out


def pair_tokens(pairs) -> torch.Tensor:
    """``[N, 3]`` int64: prompt, chosen and rejected token counts of each pair."""
    return torch.tensor([[len(p), len(c), len(r)] for p, c, r in zip(pairs.prompt_ids, pairs.chosen_ids,
                                                                        pairs.rejected_ids)], dtype=torch.int64)


def _digest_of(digests: torch.Tensor) -> str:
    return hashlib.sha256(digests.numpy().tobytes()).hexdigest()


def reference_fingerprint(source: str, *, dtype: str, revision: Optional[str] = None, seed: int = 0,
                          memo_file: Optional[Path] = None) -> dict:
    """What identifies the reference model's weights: ``{"source", "dtype", "weights"}``.

    ``weights`` is :func:`lit_idpo.fingerprint.model_fingerprint` (a content hash of the model's files,
    or of a random tiny model's state dict); ``memo_file`` remembers file hashes between runs.
    """
    weights = model_fingerprint(source, revision=revision, seed=seed, memo_file=memo_file)
    return {"source": source, "dtype": dtype, "weights": weights}


@dataclass
class CacheKey:
    """Everything a cached split must match except the data (checked per split).

    Attributes:
        reference: :func:`reference_fingerprint` of the reference model.
        precision: the Lightning precision the values are computed under (``32-true``, ``bf16-mixed``...).
        layers: layer ids this run reads (row 0 the final layer), 1..num_layers.
        tokenisation: the data module's tokenisation settings (recorded, shown when the data differs).
    """

    reference: dict
    precision: str
    layers: List[int]
    tokenisation: dict


# --------------------------------------------------------------------------------------------------
# Cached values
# --------------------------------------------------------------------------------------------------


@dataclass
class ReferenceTable:
    """The cached reference log-probs of one split, in ``pair_index`` order."""

    layers: List[int]
    chosen: torch.Tensor  # [N, L] float32
    rejected: torch.Tensor  # [N, L] float32
    tokens: torch.Tensor  # [N, 3] int64

    def lookup(self, pair_index: torch.Tensor, layer_ids: Sequence[int], batch: Dict[str, torch.Tensor],
               split: str, plan: Optional[ScoringPlan] = None) -> torch.Tensor:
        """``[len(layer_ids), 2B]`` reference log-probs of a batch (chosen rows, then rejected), on the batch's device.

        Checks that each pair's token counts in the batch equal the cached ones, so a batch from other
        data (a different data module, a reordered split) is refused instead of being scored wrongly.
        """
        index = pair_index.detach().cpu().long()  # [B]
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.chosen.shape[0]):
            raise ReferenceCacheError(f"reference_cache: the {split} batch has pair_index {index.tolist()}, but the "
                                      f"cache holds {self.chosen.shape[0]} pairs of that split.")
        num_pairs = index.numel()
        seen = sequence_token_counts(batch, plan).cpu()  # [2, 2B], whatever the batch's packing mode
        cached = self.tokens[index]  # [B, 3]
        expected = torch.stack([torch.cat([cached[:, 0] + cached[:, 1], cached[:, 0] + cached[:, 2]]),
                                torch.cat([cached[:, 1], cached[:, 2]])])  # [2, 2B]
        if not torch.equal(seen, expected):
            bad = int((seen != expected).any(0).nonzero()[0, 0]) % num_pairs
            raise ReferenceCacheError(
                f"reference_cache: pair_index {int(index[bad])} of this {split} batch has other token counts than "
                f"the cached pair (batch: {seen[:, bad].tolist()} [tokens, completion tokens], cache: "
                f"{expected[:, bad].tolist()}); the batches do not come from the data the cache was checked against.")
        columns = [self.layers.index(layer) for layer in layer_ids]
        values = torch.cat([self.chosen[index][:, columns], self.rejected[index][:, columns]])  # [2B, L']
        return values.t().contiguous().to(batch["input_ids"].device)  # [L', 2B]


def split_path(directory: str | Path, split: str) -> Path:
    return Path(directory) / f"{split}.safetensors"


def _differences(meta: dict, key: CacheKey, digests: torch.Tensor, stored_digests: torch.Tensor,
                 split: str) -> List[str]:
    found = []
    if meta.get("version") != CACHE_VERSION:
        found.append(f"cache format version {meta.get('version')} (this lit-idpo writes {CACHE_VERSION})")
    ref, now = meta.get("reference", {}), key.reference
    if ref.get("weights") != now["weights"]:
        found.append(f"the reference model's weights: cached from {ref.get('source')!r} ({ref.get('weights')}), "
                     f"this run uses {now['source']!r} ({now['weights']})")
    if ref.get("dtype") != now["dtype"]:
        found.append(f"the reference dtype: cached {ref.get('dtype')}, this run {now['dtype']}")
    if meta.get("precision") != key.precision:
        found.append(f"the precision: cached under {meta.get('precision')}, this run uses {key.precision}")
    missing = [layer for layer in key.layers if layer not in meta.get("layers", [])]
    if missing:
        found.append(f"the layers: the cache holds {meta.get('layers')}, this run also needs {missing}")
    if stored_digests.shape != digests.shape or not torch.equal(stored_digests, digests):
        common = min(stored_digests.shape[0], digests.shape[0])
        differ = (stored_digests[:common] != digests[:common]).any(-1).nonzero()
        first = int(differ[0, 0]) if differ.numel() else common
        settings = ""
        if meta.get("tokenisation") != key.tokenisation:
            settings = (f"; tokenisation settings: cached {json.dumps(meta.get('tokenisation'), sort_keys=True)}, "
                        f"this run {json.dumps(key.tokenisation, sort_keys=True)}")
        found.append(f"the {split} data: the cache holds {stored_digests.shape[0]} pairs, this run has "
                     f"{digests.shape[0]}; the first pair whose token ids differ is pair_index {first}{settings}")
    return found


def read_split(directory: str | Path, split: str, key: CacheKey, digests: torch.Tensor) -> Optional[ReferenceTable]:
    """The cached split, ``None`` when it has not been built, or :class:`ReferenceCacheError` when it
    cannot be read or does not match ``key`` and ``digests`` (never a silently wrong table)."""
    from safetensors import safe_open

    path = split_path(directory, split)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[_META_KEY])
            tensors = {name: f.get_tensor(name) for name in ("chosen", "rejected", "layers", "tokens", "pair_digest")}
    except Exception as error:  # safetensors raises its own error types, json ValueError, a missing entry KeyError
        raise ReferenceCacheError(
            f"reference_cache: cannot read {path} ({type(error).__name__}: {error}). The file is damaged or not a "
            f"lit-idpo cache; delete it (or the whole directory) and the cache is rebuilt.") from error
    differences = _differences(meta, key, digests, tensors["pair_digest"], split)
    if differences:
        raise ReferenceCacheError(
            f"reference_cache: {path} was built for other inputs and is not used. It differs in: "
            + "; ".join(differences)
            + f". Delete {Path(directory)} (or set model.reference_cache to another directory) to rebuild it, or "
              f"restore the settings it was built with.")
    n, num_layers = tensors["pair_digest"].shape[0], len(meta["layers"])
    for name in ("chosen", "rejected"):
        if tuple(tensors[name].shape) != (n, num_layers) or tensors[name].dtype != torch.float32:
            raise ReferenceCacheError(
                f"reference_cache: {path}: tensor {name!r} has shape {tuple(tensors[name].shape)} and dtype "
                f"{tensors[name].dtype}, expected ({n}, {num_layers}) float32; delete it.")
    if not (torch.isfinite(tensors["chosen"]).all() and torch.isfinite(tensors["rejected"]).all()):
        raise ReferenceCacheError(f"reference_cache: {path} holds non-finite log-probs; delete it to rebuild.")
    return ReferenceTable(layers=[int(x) for x in tensors["layers"]], chosen=tensors["chosen"],
                          rejected=tensors["rejected"], tokens=tensors["tokens"])


def write_split(directory: str | Path, split: str, key: CacheKey, digests: torch.Tensor, table: ReferenceTable) -> Path:
    """Write one split atomically (:func:`lit_idpo.storage.atomic_write`); return its path."""
    import lightning
    import transformers
    from safetensors.torch import save_file

    meta = {"version": CACHE_VERSION, "split": split, "reference": key.reference, "precision": key.precision,
            "layers": list(table.layers), "tokenisation": key.tokenisation,
            "data": {"pairs": int(digests.shape[0]), "sha256": _digest_of(digests)},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "lightning": lightning.__version__}}
    path = split_path(directory, split)
    tensors = {"chosen": table.chosen.float().contiguous(), "rejected": table.rejected.float().contiguous(),
               "layers": torch.tensor(table.layers, dtype=torch.int64), "tokens": table.tokens.contiguous(),
               "pair_digest": digests.contiguous()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={_META_KEY: json.dumps(meta)}))
    return path


# --------------------------------------------------------------------------------------------------
# Computing the values
# --------------------------------------------------------------------------------------------------


def shard_indices(num_pairs: int, rank: int, world_size: int) -> List[int]:
    """This rank's pairs: every ``world_size``-th one, padded (by wrapping around) so that every rank gets
    the same count. Equal counts give every rank the same number of batches, which sharded models
    (FSDP) need: each forward is a collective."""
    per_rank = -(-num_pairs // world_size)
    return [(rank + world_size * i) % num_pairs for i in range(per_rank)]


@torch.no_grad()
def score_pairs(score: Callable[[Dict[str, torch.Tensor]], torch.Tensor], pairs, collate, indices: Sequence[int],
                *, batch_size: int, device: torch.device, description: str, show_progress: bool) -> torch.Tensor:
    """``[len(indices), 2, L]`` float32 reference log-prob sums (chosen, rejected) of the given pairs.

    ``score(batch)`` returns ``[L, 2B]`` per-layer sums (chosen rows first). Pairs are scored longest
    first (less padding; an out-of-memory error shows up in the first batch, not the last).
    """
    from tqdm.auto import tqdm

    def length(i: int) -> int:
        pair = indices[i]
        return len(pairs.prompt_ids[pair]) + max(len(pairs.chosen_ids[pair]), len(pairs.rejected_ids[pair]))

    order = sorted(range(len(indices)), key=lambda i: -length(i))
    out: Optional[torch.Tensor] = None
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc=description, disable=not show_progress, unit="batch"):
        positions = order[start:start + batch_size]
        batch = collate([pairs[indices[i]] for i in positions])
        batch = {k: v.to(device) for k, v in batch.items()}
        values = score(batch).float().cpu()  # [L, 2B]
        if out is None:
            out = torch.empty(len(indices), 2, values.shape[0])
        num = len(positions)
        out[positions] = torch.stack([values[:, :num].t(), values[:, num:].t()], dim=1)  # [B, 2, L]
    assert out is not None, "score_pairs needs at least one pair"
    return out


# --------------------------------------------------------------------------------------------------
# A run's view of the cache directory
# --------------------------------------------------------------------------------------------------


def _split_pairs(datamodule, split: str):
    return datamodule.train_pairs if split == "train" else getattr(datamodule, "val_pairs", None)


class ReferenceCache:
    """The cache directory as one run uses it: the splits loaded, the splits still to build, and the build.

    Under several processes rank 0 alone reads files and hashes the reference; the outcome is
    broadcast, so every rank takes the same path (and raises the same error for a stale cache).

    Args:
        directory: the cache directory (``model.reference_cache``).
        layers: the layer ids this run reads (row 0 the final layer), 1..num_layers.
        source, dtype, revision, seed: how the reference model is loaded; its fingerprint is part of the key.
    """

    def __init__(self, directory: str | Path, layers: Sequence[int], *, source: str, dtype: str,
                 revision: Optional[str] = None, seed: int = 0):
        self.directory = Path(directory)
        self.layers = list(layers)
        self._reference = dict(source=source, dtype=dtype, revision=revision, seed=seed)
        #: Cached reference log-probs per split ("train", "val"), loaded or built.
        self.tables: Dict[str, ReferenceTable] = {}
        #: Splits whose file is missing: to be built by :meth:`build` (which then needs the live reference).
        self.pending: List[str] = []
        self._key: Optional[CacheKey] = None
        self._digests: Dict[str, tuple] = {}

    def lookup(self, batch: Dict[str, torch.Tensor], split: Optional[str],
               plan: Optional[ScoringPlan] = None) -> torch.Tensor:
        """``[len(layers), 2B]`` cached reference log-prob sums of a ``split`` batch (:meth:`ReferenceTable.lookup`)."""
        table = self.tables.get(split) if split is not None else None
        if table is None:
            raise ReferenceCacheError(
                f"model.reference_cache is set but no cached reference log-probs are loaded for split={split!r} "
                f"(loaded: {sorted(self.tables)}); they are loaded by the Trainer (setup/on_fit_start) "
                f"from the data module's pairs.")
        return table.lookup(batch["pair_index"], self.layers, batch, split, plan)

    def open(self, trainer, stage: str) -> None:
        """Load the complete cached splits ``stage`` needs (``fit``: train and val, ``validate``: val) and
        add the missing ones to :attr:`pending`."""
        datamodule = trainer.datamodule
        wanted = (["train"] if stage == "fit" else []) + (["val"] if stage in ("fit", "validate") else [])
        if not wanted:
            return
        if datamodule is None or not hasattr(datamodule, "train_pairs"):
            raise ReferenceCacheError("model.reference_cache needs the data as a PreferenceDataModule (trainer.fit("
                                      "model, datamodule=...)): the cache is keyed by its tokenised pairs.")
        splits = [s for s in wanted if _split_pairs(datamodule, s) is not None
                  and s not in self.tables and s not in self.pending]
        if not splits:
            return
        strategy = trainer.strategy
        outcome: object = None
        failure: Optional[BaseException] = None
        if strategy.global_rank == 0:
            try:
                key = self._make_key(datamodule, str(trainer.precision))
                tables = {s: read_split(self.directory, s, key, self._pair_digests(datamodule, s)) for s in splits}
                outcome = ("ok", key, tables)
            except Exception as error:  # every rank must learn of it, or the others wait at the next collective
                failure = error
                outcome = ("error", f"{type(error).__name__}: {error}", None)
        outcome = strategy.broadcast(outcome, src=0)
        if outcome[0] == "error":
            if failure is not None:
                raise failure
            raise ReferenceCacheError(f"(raised on rank 0) {outcome[1]}")
        _, self._key, tables = outcome
        for split, table in tables.items():
            if table is None:
                self.pending.append(split)
            else:
                self.tables[split] = table
        loaded = [s for s in splits if tables[s] is not None]
        if loaded:
            from lightning.pytorch.utilities import rank_zero_info

            rank_zero_info(f"lit-idpo: reference log-probs of {', '.join(loaded)} read from {self.directory}; "
                           f"the reference model is not loaded for them.")

    def build(self, trainer, score: Callable[[Dict[str, torch.Tensor]], torch.Tensor], device: torch.device) -> None:
        """Score the :attr:`pending` splits with the live reference (each rank a share), gather, and let rank 0
        write them. ``score(batch)`` returns the reference's ``[len(layers), 2B]`` sums of a batch."""
        from lightning.pytorch.utilities import rank_zero_info

        strategy, datamodule = trainer.strategy, trainer.datamodule
        rank, world = strategy.global_rank, strategy.world_size
        for split in list(self.pending):
            pairs = _split_pairs(datamodule, split)
            indices = shard_indices(len(pairs), rank, world)
            values = score_pairs(score, pairs, datamodule.collator, indices,
                                 batch_size=getattr(datamodule, "val_batch_size", None) or datamodule.batch_size,
                                 device=device, show_progress=rank == 0,
                                 description=f"lit-idpo: reference log-probs ({split}, {len(pairs)} pairs)")
            index = torch.tensor(indices, dtype=torch.long)
            if world > 1:
                values = strategy.all_gather(values.to(device)).cpu().flatten(0, 1)  # [world * n, 2, L]
                index = strategy.all_gather(index.to(device)).cpu().flatten()  # [world * n]
            full = torch.empty(len(pairs), *values.shape[1:])  # [N, 2, L]
            full[index] = values
            table = ReferenceTable(layers=list(self.layers), chosen=full[:, 0].contiguous(),
                                   rejected=full[:, 1].contiguous(), tokens=pair_tokens(pairs))
            problem = None
            if rank == 0:
                try:
                    path = write_split(self.directory, split, self._key, self._pair_digests(datamodule, split), table)
                    rank_zero_info(f"lit-idpo: wrote the reference log-probs of {split} to {path}")
                except Exception as error:
                    problem = f"{type(error).__name__}: {error}"
            problem = strategy.broadcast(problem, src=0)
            if problem is not None:
                raise ReferenceCacheError(f"reference_cache: cannot write {self.directory}: {problem}")
            self.tables[split] = table
            self.pending.remove(split)

    def _pair_digests(self, datamodule, split: str) -> torch.Tensor:
        pairs = _split_pairs(datamodule, split)
        if self._digests.get(split, (None,))[0] is not pairs:
            self._digests[split] = (pairs, pair_digests(pairs))
        return self._digests[split][1]

    def _make_key(self, datamodule, precision: str) -> CacheKey:
        self.directory.mkdir(parents=True, exist_ok=True)
        reference = reference_fingerprint(self._reference["source"], dtype=self._reference["dtype"],
                                          revision=self._reference["revision"], seed=self._reference["seed"],
                                          memo_file=self.directory / "file_hashes.json")
        tokenisation = {name: getattr(datamodule, attr, None) for name, attr in (
            ("tokenizer", "tokenizer_source"), ("source", "source"), ("format", "format"), ("max_length", "max_length"),
            ("max_prompt_length", "max_prompt_length"))}
        return CacheKey(reference=reference, precision=precision, layers=list(self.layers), tokenisation=tokenisation)
