"""Responses of each model to the held-out prompts, generated once and cached on disk.

Each model answers every prompt with its final layer (an ordinary Hugging Face ``generate``), in
left-padded batches sorted by length, greedy by default or sampled with a seed
(:class:`~lit_idpo.evaluation.options.GenerationOptions`). Responses are cached: one JSONL file per
model fingerprint (:func:`lit_idpo.fingerprint.model_fingerprint`) and generation settings, one
entry per prompt keyed by a hash of the prompt's token ids, appended batch by batch. A second judge,
an interrupted run, a longer prompt list or another sweep setting that shares a model regenerates
nothing that is already there. Greedy batched decoding can differ from one-at-a-time decoding in rare
near-ties (padding changes floating-point sums); batch size is therefore not part of the key.
Sampling seeds each batch from ``seed`` and the batch's prompts, so a run with the same prompts and
batch size reproduces its samples.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Tuple, Union

from lit_idpo.data import truncate_prompt
from lit_idpo.data.tokenize import render_prompt_ids
from lit_idpo.errors import MissingDependencyError
from lit_idpo.evaluation._util import info, progress_bar, sha256
from lit_idpo.evaluation.options import GenerationOptions, ModelSpec
from lit_idpo.evaluation.prompts import PromptRecord
from lit_idpo.fingerprint import adapter_base, model_fingerprint
from lit_idpo.storage import JsonlCache, atomic_write_json


@dataclass
class Generation:
    """One response: its text, new-token count, why it stopped (``eos`` or ``length``) and prompt length."""

    response: str
    new_tokens: int
    stopped: str
    prompt_tokens: int


class GenerationCache:
    """Responses of one model under one set of generation settings, keyed by prompt-token hash.

    File: ``<cache_dir>/generations/<key>.jsonl`` (a :class:`lit_idpo.storage.JsonlCache`: appended
    and fsync'ed as batches finish; a torn last line is ignored and regenerated), with
    ``<key>.meta.json`` describing the model and settings.
    """

    def __init__(self, cache_dir: Path, fingerprint: str, settings: Dict[str, Any], source: str):
        self.key = sha256(json.dumps({"model": fingerprint, "settings": settings}, sort_keys=True))[:24]
        folder = Path(cache_dir) / "generations"
        self.path = folder / f"{self.key}.jsonl"
        self._store = JsonlCache(self.path)
        meta = folder / f"{self.key}.meta.json"
        if not meta.is_file():
            atomic_write_json(meta, {"source": source, "fingerprint": fingerprint, "settings": settings})

    def load(self) -> Dict[str, Generation]:
        """Every complete cached response, by prompt key."""
        entries: Dict[str, Generation] = {}
        for key, item in self._store.load().items():
            try:
                entries[key] = Generation(item["response"], item["new_tokens"], item["stopped"], item["prompt_tokens"])
            except KeyError:  # a record of another layout: generate it again
                continue
        return entries

    def append(self, items: Iterable[Tuple[str, Generation]]) -> None:
        """Add responses durably (flush + fsync before returning)."""
        self._store.append((key, dataclasses.asdict(gen)) for key, gen in items)


def load_eval_model(source: str, dtype: str = "float32"):
    """Load a causal LM for generation or scoring: any model source, or a LoRA adapter directory from ``fit``.

    An adapter directory loads its ``merged/`` copy when ``fit`` wrote one, else its base model with
    the adapter merged in (needs peft).
    """
    from lit_idpo.models import load_model

    path = Path(source).expanduser()
    base = adapter_base(path) if path.is_dir() else None
    if base is None:
        return load_model(source, dtype=dtype)
    if (path / "merged" / "config.json").is_file():
        return load_model(str(path / "merged"), dtype=dtype)
    try:
        from peft import PeftModel
    except ImportError as err:
        raise MissingDependencyError(f"{source} is a LoRA adapter; loading it needs peft, which is not installed: "
                                     f"pip install peft") from err
    return PeftModel.from_pretrained(load_model(base, dtype=dtype), str(path)).merge_and_unload()


def resolve_device(name: str):
    """``auto`` -> CUDA when available, else CPU; any other name as ``torch.device``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _eos_ids(model, tokenizer) -> List[int]:
    found = getattr(model.generation_config, "eos_token_id", None)
    ids = set(found if isinstance(found, (list, tuple)) else [found] if found is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def generate_responses(spec: ModelSpec, prompts: Sequence[PromptRecord], options: GenerationOptions,
                       cache_dir: Union[str, Path], *,
                       progress: bool = True) -> Tuple[List[Generation], Dict[str, Any]]:
    """Each prompt's response from one model, from the cache where present, generated (and cached) otherwise.

    Returns the generations in prompt order and a summary (how many came from the cache, were
    generated, had their prompt cut, stopped at ``max_new_tokens`` (count and share); the cache file;
    seconds spent). Every cached record holds why it stopped, so the share is exact for cached responses too.
    """
    from lit_idpo.models import load_tokenizer

    cache_dir = Path(cache_dir)
    fingerprint = model_fingerprint(spec.source, memo_file=cache_dir / "fingerprints.json")
    cache = GenerationCache(cache_dir, fingerprint, options.key_fields(), spec.source)
    tokenizer = load_tokenizer(spec.source)
    ids_list, truncated = [], 0
    for record in prompts:
        ids, cut = truncate_prompt(render_prompt_ids(tokenizer, record.prompt), options.max_prompt_length,
                                   tokenizer.bos_token_id)
        ids_list.append(ids)
        truncated += cut
    keys = [sha256(json.dumps(ids))[:32] for ids in ids_list]
    done = cache.load()
    first_missing: Dict[str, int] = {}  # a prompt that occurs twice is generated once
    for i, k in enumerate(keys):
        if k not in done:
            first_missing.setdefault(k, i)
    todo = list(first_missing.values())
    started = time.perf_counter()
    if todo:
        info(f"{spec.name}: generating {len(todo)} response(s) ({len(prompts) - len(todo)} cached) -> {cache.path}")
        _generate_missing(spec, todo, ids_list, keys, options, tokenizer, cache, done, progress)
    generations = [done[k] for k in keys]
    at_limit = sum(g.stopped == "length" for g in generations)
    summary = {"cache_file": str(cache.path), "fingerprint": fingerprint, "generated": len(todo),
               "cached": len(prompts) - len(todo), "prompts_truncated": truncated,
               "stopped_at_max_new_tokens": at_limit,
               "stopped_at_max_new_tokens_share": at_limit / len(generations) if generations else 0.0,
               "mean_new_tokens": statistics.fmean(g.new_tokens for g in generations),
               "seconds": round(time.perf_counter() - started, 2)}
    return generations, summary


def _generate_missing(spec: ModelSpec, todo: List[int], ids_list: List[List[int]], keys: List[str],
                      options: GenerationOptions, tokenizer, cache: GenerationCache, done: Dict[str, Generation],
                      progress: bool) -> None:
    """Generate the prompts ``todo`` (indices) batch by batch, appending each batch to ``cache`` and ``done``."""
    import torch
    from transformers import GenerationConfig

    device = resolve_device(options.device)
    model = load_eval_model(spec.source, options.dtype).to(device).eval()
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    config = GenerationConfig(max_new_tokens=options.max_new_tokens, do_sample=options.do_sample,
                              pad_token_id=pad, eos_token_id=eos, bos_token_id=tokenizer.bos_token_id)
    if options.do_sample:
        config.temperature, config.top_p, config.top_k = options.temperature, options.top_p, options.top_k
    order = sorted(todo, key=lambda i: len(ids_list[i]))  # similar lengths together: less padding
    bar = progress_bar(total=len(order), desc=f"generate {spec.name}", enabled=progress, unit="prompt")
    for start in range(0, len(order), options.batch_size):
        batch = order[start: start + options.batch_size]
        width = max(len(ids_list[i]) for i in batch)
        input_ids = torch.tensor([[pad] * (width - len(ids_list[i])) + ids_list[i] for i in batch], device=device)
        attention = torch.tensor([[0] * (width - len(ids_list[i])) + [1] * len(ids_list[i]) for i in batch],
                                 device=device)
        # Sampling seeds a private copy of the RNG from the seed and the batch's prompts.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            if options.do_sample:
                torch.manual_seed(int(sha256(f"{options.seed}|" + "|".join(keys[i] for i in batch))[:15], 16))
            out = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config)
        finished = []
        for i, row in zip(batch, out[:, width:].tolist()):
            stop = next((j for j, t in enumerate(row) if t in eos), None)
            tokens = row if stop is None else row[:stop]
            text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            finished.append((keys[i], Generation(text, len(tokens), "length" if stop is None else "eos",
                                                 len(ids_list[i]))))
        cache.append(finished)
        done.update(finished)
        bar.update(len(batch))
    bar.close()
