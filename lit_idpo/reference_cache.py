"""Reference log-probs computed once and cached on disk.

The reference model is frozen, so its per-layer sequence log-probs of every pair never change during
training. With ``model.reference_cache: <dir>`` they are computed in one pass over the training and
validation pairs (progress bar), written to ``<dir>/train.safetensors`` and ``<dir>/val.safetensors``,
and read back by ``pair_index`` in every later step: a run that finds the cache complete neither loads
nor runs the reference.

What a split's file holds (safetensors: tensors plus a JSON header, loaded without unpickling):

    chosen, rejected   [N, L] float32   per-layer SUMS of completion-token log-probs (columns: ``layers``)
    layers             [L]    int64     layer ids of the columns (1..num_layers; num_layers is the final)
    tokens             [N, 3] int64     prompt, chosen and rejected token counts per pair (a per-batch check)
    pair_digest        [N, 16] uint8    BLAKE2b of each pair's token ids, in pair_index order

and a header (``lit_idpo`` metadata entry, JSON) with the key below. Sums are stored, never
length-averaged values: ``ipo``'s averaging is applied after the lookup, so one cache serves every
``loss_type``.

The key (all must match, or the cache is refused with an error naming what differs):

- data: the token ids of every pair, in ``pair_index`` order (per-pair digests, so the error names the
  first pair that differs). Tokenisation settings (tokenizer, chat template, ``max_length``,
  ``max_prompt_length``, format) are covered through their result: any setting that changes one token
  id changes the key; one that changes nothing (a ``max_length`` above every pair) keeps the cache
  valid. The settings are recorded in the header and shown when the data differs.
- reference weights: a SHA-256 over the model's files (``config.json``, weight files, any ``*.py``
  model code) as they lie on disk, whatever the path or Hub id they were reached by. Cost: one read of
  the weights (a 7B bf16 model, ~14 GB: about 10 s at 1.5 GB/s), once per file version: hashes are
  remembered in ``<dir>/file_hashes.json`` by path, size and modification time. Files in the Hugging
  Face Hub cache are free: their blob names already are content hashes (SHA-256 of LFS files, git's
  SHA-1 of small ones). Random tiny test models hash their state dict.
- the reference's load ``dtype`` and the Trainer ``precision`` the values were computed under
  (bf16-mixed values differ from fp32 ones by more than a training step does).
- layers: every layer this run reads must be among the cached ones (a cache may hold more).

Not in the key: the kernel backend and the device (the same math; differences are float rounding),
library versions (recorded in the header for reference).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

CACHE_VERSION = 1
_META_KEY = "lit_idpo"
_WEIGHT_PATTERNS = ("config.json", "*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.py")
_HEX = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")


class ReferenceCacheError(RuntimeError):
    """A reference cache that cannot be used: unreadable, or built for other data, model or settings."""


# --------------------------------------------------------------------------------------------------
# Fingerprints
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


def _file_sha256(path: Path, memo: Dict[str, dict]) -> str:
    real = Path(os.path.realpath(path))
    # Hugging Face Hub cache: snapshots link to blobs named by their content hash.
    if real.parent.name == "blobs" and _HEX.match(real.name):
        return "hub-blob:" + real.name
    stat = real.stat()
    entry = memo.get(str(real))
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return entry["sha256"]
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for block in iter(lambda: f.read(16 << 20), b""):
            h.update(block)
    memo[str(real)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": h.hexdigest()}
    return h.hexdigest()


def _state_dict_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _model_files(source: str, revision: Optional[str]) -> Path:
    """The local directory holding a model source's files (Hub models: their snapshot in the HF cache)."""
    from lit_idpo.models import resolve_model_dir

    resolved = resolve_model_dir(source)
    if Path(resolved).expanduser().is_dir():
        return Path(resolved).expanduser()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(resolved, revision=revision, allow_patterns=list(_WEIGHT_PATTERNS)))


def reference_fingerprint(source: str, *, dtype: str, revision: Optional[str] = None, seed: int = 0,
                          memo_file: Optional[Path] = None) -> dict:
    """What identifies the reference model's weights: ``{"source", "dtype", "weights"}``.

    ``weights`` is a SHA-256 over the model's files (see the module docstring), or over the state dict
    of a random tiny model. ``memo_file`` remembers file hashes between runs.
    """
    from lit_idpo.models import TINY_MODELS, load_model

    if source in TINY_MODELS:
        model = load_model(source, dtype=dtype, seed=seed)
        return {"source": source, "dtype": dtype, "weights": "state-dict:" + _state_dict_sha256(model)}
    directory = _model_files(source, revision)
    files = sorted({p for pattern in _WEIGHT_PATTERNS for p in directory.glob(pattern) if p.is_file()})
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise ReferenceCacheError(f"reference_cache: cannot fingerprint the reference model {source!r}: no weight files "
                                  f"(*.safetensors, *.bin) in {directory}.")
    memo: Dict[str, dict] = {}
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}  # only a speed-up: recompute
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.relative_to(directory)}={_file_sha256(path, memo)};".encode())
    if memo_file is not None:
        _atomic_write_text(memo_file, json.dumps(memo, indent=1))
    return {"source": source, "dtype": dtype, "weights": h.hexdigest()}


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
               split: str) -> torch.Tensor:
        """``[len(layer_ids), 2B]`` reference log-probs of a batch (chosen rows, then rejected), on the batch's device.

        Checks that each pair's token counts in the batch equal the cached ones, so a batch from other
        data (a different data module, a reordered split) is refused instead of being scored wrongly.
        """
        index = pair_index.detach().cpu().long()  # [B]
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.chosen.shape[0]):
            raise ReferenceCacheError(f"reference_cache: the {split} batch has pair_index {index.tolist()}, but the "
                                      f"cache holds {self.chosen.shape[0]} pairs of that split.")
        num_pairs = index.numel()
        seen = torch.stack([batch["attention_mask"].sum(-1), batch["completion_mask"].sum(-1)]).cpu()  # [2, 2B]
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def split_path(directory: str | Path, split: str) -> Path:
    return Path(directory) / f"{split}.safetensors"


def _differences(meta: dict, key: CacheKey, digests: torch.Tensor, stored_digests: torch.Tensor, split: str) -> List[str]:
    found = []
    if meta.get("version") != CACHE_VERSION:
        found.append(f"cache format version {meta.get('version')} (this lit-idpo writes {CACHE_VERSION})")
    ref, now = meta.get("reference", {}), key.reference
    if ref.get("weights") != now["weights"]:
        found.append(f"the reference model's weights: cached from {ref.get('source')!r} ({ref.get('weights')}), this run "
                     f"uses {now['source']!r} ({now['weights']})")
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
            settings = (f"; tokenisation settings: cached {json.dumps(meta.get('tokenisation'), sort_keys=True)}, this run "
                        f"{json.dumps(key.tokenisation, sort_keys=True)}")
        found.append(f"the {split} data: the cache holds {stored_digests.shape[0]} pairs, this run has {digests.shape[0]}; "
                     f"the first pair whose token ids differ is pair_index {first}{settings}")
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
            raise ReferenceCacheError(f"reference_cache: {path}: tensor {name!r} has shape {tuple(tensors[name].shape)} "
                                      f"and dtype {tensors[name].dtype}, expected ({n}, {num_layers}) float32; delete it.")
    if not (torch.isfinite(tensors["chosen"]).all() and torch.isfinite(tensors["rejected"]).all()):
        raise ReferenceCacheError(f"reference_cache: {path} holds non-finite log-probs; delete it to rebuild.")
    return ReferenceTable(layers=[int(x) for x in tensors["layers"]], chosen=tensors["chosen"],
                          rejected=tensors["rejected"], tokens=tensors["tokens"])


def write_split(directory: str | Path, split: str, key: CacheKey, digests: torch.Tensor, table: ReferenceTable) -> Path:
    """Write one split atomically (a temporary file renamed into place)."""
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({"chosen": table.chosen.float().contiguous(), "rejected": table.rejected.float().contiguous(),
                   "layers": torch.tensor(table.layers, dtype=torch.int64), "tokens": table.tokens.contiguous(),
                   "pair_digest": digests.contiguous()}, tmp, metadata={_META_KEY: json.dumps(meta)})
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the permissions of any other
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
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

    order = sorted(range(len(indices)), key=lambda i: -(len(pairs.prompt_ids[indices[i]])
                                                        + max(len(pairs.chosen_ids[indices[i]]), len(pairs.rejected_ids[indices[i]]))))
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
