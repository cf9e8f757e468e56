"""The implicit-reward pass's log-probs, computed once per model and cached on disk.

:func:`~lit_idpo.evaluation.implicit.implicit_reward_accuracy` needs, for the reference and for each
trained model, the summed completion-token log-probs of every held-out pair's chosen and rejected
completion at every requested layer. Those numbers depend on the model and the pairs, not on the other
models of the evaluation, so each is cached under its own key: an evaluation that adds seeds scores
only the new models, and the reference once.

Key (:class:`LogprobCache`, the SHA-256 of these fields):

- ``model``: the model's :func:`lit_idpo.fingerprint.model_fingerprint` (content of its defining files,
  as for the generation cache; for the reference, the reference's own fingerprint);
- ``pairs``: :func:`pairs_digest`, a hash of every pair's prompt, chosen and rejected token ids in order.
  The pairs are tokenised with the reference's tokenizer, so it covers the data's content, the
  tokenizer, ``data.format`` / ``limit`` / ``on_bad_row`` and ``implicit.max_length`` exactly: a setting
  that drops, adds or re-tokenises a pair changes it, one that changes no token id does not;
- ``layers``: the resolved layer numbers for a trained model; for the reference, the layer request as
  given (``auto``, ``all`` or the numbers), since resolving it needs the reference's depth, which the
  entry records (with the fingerprint fixed, the request fixes the layers);
- ``dtype``: the weights' dtype of the pass;
- ``versions``: torch's and transformers' versions (they change the kernels, hence the last bits);
- ``format``: :data:`CACHE_FORMAT`.

Not in the key, because what is cached does not depend on them: ``beta`` and the reference's weights
(a trained model's entry holds its own log-probs; margins and correctness are computed from the two
entries on every run, with the same float64 arithmetic as a fresh pass, so a cached run reports
exactly what a fresh one does). Like the generation cache's batch size and device, the batch size
and device of the pass are recorded in the file but not keyed (they can change the last bits of a
sum, not a result one would read).

File: ``<cache_dir>/implicit/<key>.json``, one per model and key, written atomically
(:func:`lit_idpo.storage.atomic_write_json`) once the model's pass is complete. Values are float64
written as JSON numbers, which read back bit for bit. A file that cannot be read or does not match its
key is ignored and computed again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from lit_idpo.evaluation._util import sha256
from lit_idpo.fingerprint import model_fingerprint
from lit_idpo.storage import atomic_write_json, read_json_or

CACHE_FORMAT = 1


def pairs_digest(pairs) -> str:
    """SHA-256 of the pairs' token ids (prompt, chosen, rejected of each pair, in order) and their count."""
    h = hashlib.sha256(f"pairs:{len(pairs.prompt_ids)};".encode())
    for p, c, r in zip(pairs.prompt_ids, pairs.chosen_ids, pairs.rejected_ids):
        h.update(json.dumps([p, c, r], separators=(",", ":")).encode())
        h.update(b";")
    return h.hexdigest()


def package_versions() -> Dict[str, str]:
    """The versions of the packages that compute the log-probs (part of the key)."""
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def layer_request(layers: Union[str, List[int]]) -> Union[str, List[int]]:
    """``auto``/``all`` as given; layer numbers sorted and without repeats (the reference's key)."""
    return layers if isinstance(layers, str) else sorted({int(x) for x in layers})


@dataclass
class Logprobs:
    """One model's summed completion log-probs per layer and pair: ``chosen``, ``rejected`` ``[layers, N]``."""

    layers: List[int]
    num_layers: int
    chosen: Any  # torch.Tensor, float64
    rejected: Any  # torch.Tensor


class LogprobCache:
    """Cached :class:`Logprobs` of the models of an implicit-reward pass over one set of pairs.

    ``cache_dir`` is the evaluation's cache directory (files go to ``<cache_dir>/implicit/``, model
    fingerprints are memoised in ``<cache_dir>/fingerprints.json`` as for the generation cache);
    ``pairs`` are the tokenised pairs (:class:`lit_idpo.data.PreferencePairs`) and ``dtype`` the
    weights' dtype of the pass.
    """

    def __init__(self, cache_dir: Union[str, Path], pairs, dtype: str):
        self.cache_dir = Path(cache_dir)
        self.folder = self.cache_dir / "implicit"
        self.digest, self.num_pairs, self.dtype = pairs_digest(pairs), len(pairs.prompt_ids), dtype
        self.versions = package_versions()
        self._fingerprints: Dict[str, str] = {}

    def fingerprint(self, source: str) -> str:
        if source not in self._fingerprints:
            self._fingerprints[source] = model_fingerprint(source, memo_file=self.cache_dir / "fingerprints.json")
        return self._fingerprints[source]

    def fields(self, source: str, layers: Union[str, List[int]]) -> Dict[str, Any]:
        """The key's fields for ``source`` with the given layers (see the module docstring)."""
        return {"format": CACHE_FORMAT, "model": self.fingerprint(source), "pairs": self.digest,
                "layers": layers if isinstance(layers, str) else [int(x) for x in layers], "dtype": self.dtype,
                "versions": self.versions}

    def path(self, fields: Dict[str, Any]) -> Path:
        return self.folder / f"{sha256(json.dumps(fields, sort_keys=True))[:24]}.json"

    def load(self, source: str, layers: Union[str, List[int]]) -> Optional[Logprobs]:
        """The cached log-probs of ``source`` under this key, or None when there are none (or none usable).

        ``layers``: resolved layer numbers (then the entry must hold exactly those), or the reference's
        request (``auto``, ``all``, or numbers that may count from the end; see :func:`layer_request`).
        """
        import torch

        fields = self.fields(source, layers)
        stored = read_json_or(self.path(fields), None)
        if not isinstance(stored, dict) or stored.get("key") != fields:
            return None
        try:
            resolved = [int(x) for x in stored["layers"]]
            chosen = torch.tensor(stored["chosen"], dtype=torch.float64)
            rejected = torch.tensor(stored["rejected"], dtype=torch.float64)
            num_layers = int(stored["num_layers"])
        except (KeyError, TypeError, ValueError, RuntimeError):  # another layout, a damaged file: compute again
            return None
        shape = (len(resolved), self.num_pairs)
        if tuple(chosen.shape) != shape or tuple(rejected.shape) != shape or not resolved:
            return None
        if not isinstance(layers, str) and all(x > 0 for x in layers) and resolved != fields["layers"]:
            return None
        return Logprobs(resolved, num_layers, chosen, rejected)

    def save(self, source: str, layers: Union[str, List[int]], values: Logprobs, *,
             details: Optional[Dict[str, Any]] = None) -> Path:
        """Write ``values`` for ``source`` atomically; ``details`` (device, batch size...) are recorded, not keyed."""
        fields = self.fields(source, layers)
        path = self.path(fields)
        atomic_write_json(path, {
            "key": fields, "source": source, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(details or {}),
            "layers": list(values.layers), "num_layers": values.num_layers, "pairs": int(values.chosen.shape[1]),
            "chosen": values.chosen.tolist(), "rejected": values.rejected.tolist()}, indent=None)
        return path
