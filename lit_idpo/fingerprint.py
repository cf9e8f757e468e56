"""One answer to "is this the same model?": a content fingerprint of a model's defining files.

Every cache that must not outlive the weights it was computed from (generations, reference
log-probs) keys on :func:`model_fingerprint`. What is hashed: every file under the model's directory
whose name defines the model (config, weights and their index, model code, tokenizer and
generation config, LoRA adapter files), by relative path and content, whatever path or Hub id they
were reached by. A LoRA adapter directory without a merged copy also includes its base model's
fingerprint. Random tiny test models hash their seeded state dict.

Cost: one read of the weights per file version (a 7B bf16 model, ~14 GB: about 10 s at 1.5 GB/s);
hashes are remembered in a memo file by real path, size and modification time, and files in the
Hugging Face Hub cache are free: their blob names already are content hashes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from pathlib import Path
from typing import Dict, List, Optional

from lit_idpo.errors import ModelSourceError
from lit_idpo.storage import atomic_write_json, read_json_or

MODEL_FILE_PATTERNS = (
    "config.json", "generation_config.json",
    "*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.py",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "vocab.txt",
    "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
    "adapter_config.json",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_HEX = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")


def _matches(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in MODEL_FILE_PATTERNS)


def model_files(directory: Path) -> List[Path]:
    """The model-defining files under ``directory`` (recursively), sorted by relative path."""
    return sorted((p for p in directory.rglob("*") if p.is_file() and _matches(p.name)),
                  key=lambda p: p.relative_to(directory).as_posix())


def file_sha256(path: Path, memo: Dict[str, dict]) -> str:
    """A file's content hash; Hub-cache blobs by name, others memoised in ``memo`` by (real path, size, mtime)."""
    real = Path(os.path.realpath(path))
    # Hugging Face Hub cache: snapshots link to blobs named by their content hash.
    if real.parent.name == "blobs" and _HEX.match(real.name):
        return "hub-blob:" + real.name
    stat = real.stat()
    entry = memo.get(str(real))
    if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return entry["sha256"]
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for block in iter(lambda: f.read(16 << 20), b""):
            h.update(block)
    memo[str(real)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": h.hexdigest()}
    return h.hexdigest()


def state_dict_sha256(model) -> str:
    """A hash of a module's state dict (names, dtypes, shapes and bytes)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def adapter_base(directory: Path) -> Optional[str]:
    """The base model a LoRA adapter directory names, or ``None`` when ``directory`` is not an adapter."""
    config = directory / "adapter_config.json"
    if not config.is_file():
        return None
    base = read_json_or(config, {}).get("base_model_name_or_path")
    if not base:
        raise ModelSourceError(f"{config} names no base_model_name_or_path; cannot load the LoRA adapter's base model. "
                               "Add the base model's Hub id or path to that file.")
    return base


def model_directory(source: str, revision: Optional[str] = None) -> Path:
    """The local directory holding a model source's files (a Hub id: its snapshot in the Hugging Face cache)."""
    from lit_idpo.models import resolve_model_dir

    resolved = resolve_model_dir(source)
    path = Path(resolved).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(resolved, revision=revision, allow_patterns=list(MODEL_FILE_PATTERNS)))
    except Exception as err:  # offline, unknown id, no access: all user-fixable
        raise ModelSourceError(
            f"model {source!r}: not a local directory, and its files could not be fetched from the Hugging Face Hub "
            f"({type(err).__name__}). Pass an existing local directory, or download the model first "
            f"(huggingface-cli download {resolved}) and unset HF_HUB_OFFLINE if it is set.") from err


def model_fingerprint(source: str, *, revision: Optional[str] = None, seed: int = 0,
                      memo_file: Optional[Path] = None) -> str:
    """What identifies a model: ``"sha256:<hex>"`` over its model-defining files (``"state-dict:<hex>"``: tiny model).

    ``memo_file`` (JSON) remembers file hashes between runs. Raises :class:`ModelSourceError` when
    the source cannot be found or holds no weight files.
    """
    from lit_idpo.models import TINY_MODELS

    if source in TINY_MODELS:
        return _tiny_digest(source, seed)
    memo: Dict[str, dict] = read_json_or(memo_file, {}) if memo_file is not None else {}
    digest = _directory_digest(source, revision, memo, seed)
    if memo_file is not None:
        atomic_write_json(memo_file, memo, indent=1)
    return digest


def _directory_digest(source: str, revision: Optional[str], memo: Dict[str, dict], seed: int) -> str:
    directory = model_directory(source, revision)
    files = model_files(directory)
    if not any(p.name.endswith(_WEIGHT_SUFFIXES) for p in files):
        raise ModelSourceError(f"model {source!r}: no weight files (*.safetensors, *.bin) in {directory}. "
                               "Point it at a directory written by save_pretrained (or by lit-idpo fit).")
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.relative_to(directory).as_posix()}={file_sha256(path, memo)};".encode())
    base = adapter_base(directory)
    if base is not None and not (directory / "merged" / "config.json").is_file():
        from lit_idpo.models import TINY_MODELS

        base_digest = (_tiny_digest(base, seed) if base in TINY_MODELS
                       else _directory_digest(base, None, memo, seed))
        h.update(f"base={base_digest};".encode())
    return "sha256:" + h.hexdigest()


def _tiny_digest(name: str, seed: int) -> str:
    """A random tiny model is identified by its seeded weights."""
    from lit_idpo.models import load_model

    return "state-dict:" + state_dict_sha256(load_model(name, dtype="float32", seed=seed))


__all__ = ["MODEL_FILE_PATTERNS", "adapter_base", "file_sha256", "model_directory", "model_files",
           "model_fingerprint", "state_dict_sha256"]
