"""``lit-idpo evaluate``: pairwise win rates of two or more models, with confidence intervals.

The evaluation, step by step:

1. **Prompts**: the held-out split of any preference data source the data module reads
   (:class:`DataOptions`); rows are validated and normalised exactly as for training
   (:func:`lit_idpo.data.normalize_row`), and each row is kept whole, so judges can read extra fields
   (the rule judge reads ``answer``).
2. **Generation**: each model answers every prompt with its final layer (an ordinary Hugging Face
   ``generate``), in left-padded batches sorted by length, greedy by default or sampled with a seed
   (:class:`GenerationOptions`). The prompt is rendered with the model's own chat template, exactly
   as the data module renders it for training. Responses are **cached** on disk: one file per model
   fingerprint (a hash of the model's files) and generation settings, one entry per prompt keyed by a
   hash of the prompt's token ids. A second judge, an interrupted run, a longer prompt list or another
   sweep setting that shares a model regenerates nothing that is already there (entries are appended
   batch by batch). Greedy batched decoding can differ from one-at-a-time decoding in rare near-ties
   (padding changes floating-point sums); batch size is therefore not part of the key. Sampling seeds
   each batch from ``seed`` and the batch's prompts, so a run with the same prompts and batch size
   reproduces its samples.
3. **Judging** (:mod:`lit_idpo.judges`): every pair of models (or the pairs asked for), every prompt,
   asked in **both orders** (each model shown first once), so a judge's position bias cancels.
   Identical responses are a tie without asking the judge.
4. **Win rate and interval** (:func:`summarize_verdicts`): each order gives the first model a score
   of 1 (win), 1/2 (tie) or 0 (loss); a prompt's score is the mean over its two orders (so 0, 1/4,
   1/2, 3/4 or 1). The win rate is the mean prompt score; it equals (wins + ties/2) / judgments. The
   95 % interval is a **Student-t interval on the mean of the per-prompt scores** (n - 1 degrees of
   freedom): the prompt is the sampling unit, so the two orders of one prompt (which are correlated)
   are not counted as independent evidence, and ties, which carry less variance than a coin flip,
   narrow the interval as they should. (A Wilson interval on "wins + ties/2 out of 2n judgments"
   would do both wrong.) When every prompt has the same score, or there is one prompt, the sample
   variance says nothing and the Wilson score interval for n prompts is used instead, the widest a
   [0, 1] score allows. A percentile bootstrap over prompts (10,000 resamples, seeded) is reported
   alongside as a cross-check. The interval covers the prompt sampling, not the judge's own noise.
5. **Implicit-reward accuracy per layer** (:func:`implicit_reward_accuracy`, needs ``reference``):
   for each trained model, without generation, the fraction of held-out pairs whose implicit reward
   ``beta * (log pi - log ref)`` is strictly higher for ``chosen`` than for ``rejected``, read at each
   requested layer (TRL's ``rewards/accuracies``), with the mean reward margin.

Outputs in ``output_dir``: ``results.json``, ``results.md`` (also printed), ``responses/<model>.jsonl``
(every response with its absolute score where the judge has one) and ``judgments.jsonl`` (every
verdict with its order and reason).

Command line (see ``lit-idpo evaluate --help``)::

    lit-idpo evaluate --model sft=embedded:smollm2-135m-instruct --model dpo=runs/dpo/hf_model \\
        --model idpo=runs/idpo/hf_model --data.source bundled:arithmetic --data.split test \\
        --judge rule --generation.max_new_tokens 32 --reference embedded:smollm2-135m-instruct \\
        --output_dir eval/arith
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from lit_idpo.judges import JUDGES, Comparison, Judge, Verdict, build_judge

Message = Dict[str, str]
Prompt = Union[str, List[Message]]

CI_METHOD = ("Student-t interval on the mean of per-prompt scores (each prompt's score averages its two "
             "orders; win 1, tie 1/2, loss 0; n-1 degrees of freedom); Wilson score interval for n prompts when "
             "all prompt scores are equal or n = 1")


def _info(message: str) -> None:
    print(f"lit-idpo evaluate: {message}", file=sys.stderr, flush=True)


def _sha256(data: Union[str, bytes]) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def _progress(iterable=None, *, total=None, desc="", enabled=True, unit="it"):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, unit=unit, dynamic_ncols=True, file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------


@dataclass
class DataOptions:
    """Where the prompts come from: the held-out split of a preference data source.

    Args:
        source: as the data module's ``source``: ``bundled:arithmetic``, a Hub dataset id, a local
            directory, a ``datasets`` builder name with ``data_files``, or one local file.
        split: the held-out split (``test`` for ``bundled:arithmetic``, ``test_prefs`` for UltraFeedback).
        data_files: passed to ``datasets.load_dataset`` (a file, a list, or split -> files).
        subset: the dataset configuration name, if it has several.
        format: ``auto``, ``standard``, ``conversational`` or ``implicit`` (see :mod:`lit_idpo.data`).
        limit: keep only the first this-many usable prompts (null: all).
        on_bad_row: ``error`` stops at the first unusable row, naming it; ``skip`` skips and counts them.
    """

    source: str = "bundled:arithmetic"
    split: str = "test"
    data_files: Optional[Any] = None
    subset: Optional[str] = None
    format: str = "auto"
    limit: Optional[int] = None
    on_bad_row: str = "error"

    def __post_init__(self):
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"data.limit={self.limit!r}; it must be an integer >= 1 (or null for every prompt)")
        if self.on_bad_row not in ("error", "skip"):
            raise ValueError(f"data.on_bad_row={self.on_bad_row!r}; choose 'error' or 'skip'")


@dataclass
class GenerationOptions:
    """How responses are generated (always from the final layer). The model's own ``generation_config``
    defaults (its sampling settings, repetition penalty, ...) are not used: only these settings apply.

    Args:
        max_new_tokens: longest response in tokens (a response that reaches it is marked ``length``).
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature (only with ``do_sample``).
        top_p: nucleus sampling mass (only with ``do_sample``; 1.0 is off).
        top_k: sample among the top-k tokens (only with ``do_sample``; 0 is off).
        seed: sampling seed (each batch is seeded from it and its prompts).
        batch_size: prompts per ``generate`` call.
        max_prompt_length: longer prompts keep their last this-many tokens (and BOS); null: never cut.
        dtype: weights' dtype for generation (``float32``, ``bfloat16``, ``float16``).
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
    """

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    batch_size: int = 8
    max_prompt_length: Optional[int] = None
    dtype: str = "float32"
    device: str = "auto"

    def __post_init__(self):
        for name, least in (("max_new_tokens", 1), ("batch_size", 1), ("top_k", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < least:
                raise ValueError(f"generation.{name}={value!r}; it must be an integer >= {least}")
        if self.max_prompt_length is not None and (not isinstance(self.max_prompt_length, int) or self.max_prompt_length < 1):
            raise ValueError(f"generation.max_prompt_length={self.max_prompt_length!r}; an integer >= 1, or null")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"generation.temperature={self.temperature}; sampling needs a temperature > 0 "
                             f"(or turn do_sample off for greedy decoding)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"generation.top_p={self.top_p}; it must be in (0, 1]")

    def key_fields(self) -> Dict[str, Any]:
        """The settings that change what is generated (the cache key); sampling knobs only when sampling."""
        fields = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                  "max_prompt_length": self.max_prompt_length, "dtype": self.dtype}
        if self.do_sample:
            fields.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed)
        return fields


@dataclass
class ImplicitOptions:
    """Implicit-reward accuracy per layer (no generation; needs ``reference``).

    Args:
        layers: ``auto`` (8 evenly spaced layers ending with the final one), ``all``, or a list of layer
            numbers (1..L, or negative from the end; -1 is the final layer).
        beta: the DPO beta used for the reported reward margins (accuracy does not depend on it).
        batch_size: pairs per forward pass.
        max_length: pairs longer than this (prompt + longer completion, tokens) are dropped and counted.
    """

    layers: Union[str, List[int]] = "auto"
    beta: float = 0.1
    batch_size: int = 8
    max_length: Optional[int] = 1024


# --------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------


@dataclass
class PromptRecord:
    """One held-out prompt: its row index in the split, the prompt, the reference pair and the raw row."""

    index: int
    prompt: Prompt
    chosen: Any
    rejected: Any
    row: Dict[str, Any]


def load_prompts(data: DataOptions) -> Tuple[List[PromptRecord], Dict[str, Any]]:
    """The prompts of a held-out split, validated and normalised as the data module does.

    Returns the records (in split order) and counts: rows read, prompts kept, skipped per reason.
    """
    from lit_idpo.data import BadRowError, detect_format, load_split, normalize_row

    rows = load_split(data.source, data.split, data_files=data.data_files, subset=data.subset)
    fmt = None if data.format == "auto" else data.format
    records: List[PromptRecord] = []
    skipped: Dict[str, int] = {}
    read = 0
    for index, row in enumerate(rows):
        if data.limit is not None and len(records) >= data.limit:
            break
        read += 1
        try:
            if fmt is None:
                fmt = detect_format(row)
            normal = normalize_row(row, fmt)
        except BadRowError as err:
            if data.on_bad_row == "skip":
                skipped[err.reason] = skipped.get(err.reason, 0) + 1
                continue
            raise BadRowError(err.reason, err.field,
                              f"split {data.split!r} of {data.source!r}, row {index}, field {err.field!r}: {err.problem}. "
                              f"Fix the data, or set data.on_bad_row to skip (skipped rows are counted).") from None
        records.append(PromptRecord(index, normal.prompt, normal.chosen, normal.rejected, dict(row)))
    stats = {"source": data.source, "split": data.split, "format": fmt or "?", "rows_read": read,
             "prompts": len(records), "skipped": skipped}
    if not records:
        raise ValueError(f"split {data.split!r} of {data.source!r} gave no usable prompts ({stats}); check data.source, "
                         f"data.split and data.format")
    return records, stats


def render_prompt_ids(tokenizer, prompt: Prompt) -> List[int]:
    """A prompt's token ids, rendered as the data module renders a training prompt.

    With a chat template: the prompt (a string becomes one user turn) with ``add_generation_prompt``;
    without one: the plain string. BOS is put in front only when the tokenizer normally adds one and
    the text does not already start with it.
    """
    from lit_idpo.data import PairTokenizer

    pair_tok = PairTokenizer(tokenizer)
    if pair_tok.has_template:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    elif isinstance(prompt, str):
        text = prompt
    else:
        raise ValueError("the prompts are message lists, but the model's tokenizer has no chat template to render "
                         "them; evaluate such data with chat models only")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if pair_tok.adds_bos and (not ids or ids[0] != pair_tok.bos):
        ids = [pair_tok.bos] + ids
    return ids


def _truncate_prompt(ids: List[int], max_prompt_length: Optional[int], bos: Optional[int]) -> Tuple[List[int], bool]:
    if max_prompt_length is None or len(ids) <= max_prompt_length:
        return ids, False
    if bos is not None and ids[0] == bos:
        return [ids[0]] + ids[len(ids) - max_prompt_length + 1:], True
    return ids[len(ids) - max_prompt_length:], True


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """A model to evaluate: a short ``name`` for reports and its ``source`` (see :mod:`lit_idpo.models`)."""

    name: str
    source: str


def _default_name(source: str) -> str:
    if source.startswith("embedded:"):
        return source.split(":", 1)[1]
    path = Path(source.rstrip("/\\"))
    parts = [p for p in path.parts if p not in ("/", "")]
    while len(parts) > 1 and parts[-1] in ("hf_model", "merged", "model"):
        parts.pop()
    return parts[-1] if parts else source


def parse_model_specs(items: Sequence[str]) -> List[ModelSpec]:
    """Parse ``NAME=SOURCE`` (or a bare ``SOURCE``, named after its last path part) and check names are unique."""
    specs: List[ModelSpec] = []
    for item in items:
        name, sep, source = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.+\-]+", name):
            name, source = _default_name(item), item
        if not source:
            raise ValueError(f"--model {item!r}: the source is empty; write NAME=SOURCE or SOURCE")
        specs.append(ModelSpec(name, source))
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"--model: the name(s) {duplicates} are used twice; name each model with NAME=SOURCE")
    return specs


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+\-]", "_", name)


def _adapter_base(path: Path) -> Optional[str]:
    config = path / "adapter_config.json"
    if not config.is_file():
        return None
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config} names no base_model_name_or_path; cannot load the LoRA adapter's base model")
    return base


class _Fingerprints:
    """Content hashes of model directories, memoised by (path, size, mtime) in a small JSON file."""

    def __init__(self, path: Optional[Path]):
        self.path = path
        self.memo: Dict[str, str] = {}
        if path is not None and path.is_file():
            try:
                self.memo = json.loads(path.read_text())
            except ValueError:
                self.memo = {}

    def directory(self, directory: Path) -> str:
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        digest = hashlib.sha256()
        for file in files:
            stat = file.stat()
            memo_key = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
            file_hash = self.memo.get(memo_key)
            if file_hash is None:
                h = hashlib.sha256()
                with file.open("rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        h.update(block)
                file_hash = self.memo[memo_key] = h.hexdigest()
            digest.update(f"{file.relative_to(directory).as_posix()}:{file_hash}\n".encode())
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.memo))
            tmp.replace(self.path)
        return digest.hexdigest()


def model_fingerprint(source: str, memo_file: Optional[Path] = None) -> str:
    """What identifies a model's weights: a hash of its directory's files, or its name where that is all there is.

    Local directories (and embedded / ``.gguf`` sources, via their converted directory) are hashed by
    content; a LoRA adapter directory without a merged copy also includes its base model's
    fingerprint. Tiny random models are identified by name (their weights are seeded). A Hub id that
    is not a local directory is identified by its name only: a changed upstream model keeps its cache.
    """
    from lit_idpo.models import TINY_MODELS, resolve_model_dir

    if source in TINY_MODELS:
        return f"{source}:seed0"
    path = Path(resolve_model_dir(source)).expanduser()
    if not path.is_dir():
        return f"hub:{source}"
    fingerprints = _Fingerprints(memo_file)
    digest = fingerprints.directory(path)
    base = _adapter_base(path)
    if base is not None and not (path / "merged" / "config.json").is_file():
        digest = _sha256(digest + "|" + model_fingerprint(base, memo_file))
    return "sha256:" + digest


def load_eval_model(source: str, dtype: str = "float32"):
    """Load a causal LM for generation or scoring: any model source, or a LoRA adapter directory from ``fit``.

    An adapter directory loads its ``merged/`` copy when ``fit`` wrote one, else its base model with
    the adapter merged in (needs peft).
    """
    from lit_idpo.models import load_model

    path = Path(source).expanduser()
    base = _adapter_base(path) if path.is_dir() else None
    if base is None:
        return load_model(source, dtype=dtype)
    if (path / "merged" / "config.json").is_file():
        return load_model(str(path / "merged"), dtype=dtype)
    try:
        from peft import PeftModel
    except ImportError as err:
        raise ImportError(f"{source} is a LoRA adapter; loading it needs peft (pip install peft)") from err
    return PeftModel.from_pretrained(load_model(base, dtype=dtype), str(path)).merge_and_unload()


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --------------------------------------------------------------------------------------------------
# Generation with an on-disk cache
# --------------------------------------------------------------------------------------------------


@dataclass
class Generation:
    """One response: its text, new-token count, why it stopped (``eos`` or ``length``) and prompt length."""

    response: str
    new_tokens: int
    stopped: str
    prompt_tokens: int


class GenerationCache:
    """Responses of one model under one set of generation settings, keyed by prompt-token hash.

    File: ``<cache_dir>/generations/<key>.jsonl`` (one JSON object per response, appended as batches
    finish) with ``<key>.meta.json`` describing the model and settings. A torn last line (a run killed
    while writing) is ignored and regenerated.
    """

    def __init__(self, cache_dir: Path, fingerprint: str, settings: Dict[str, Any], source: str):
        self.key = _sha256(json.dumps({"model": fingerprint, "settings": settings}, sort_keys=True))[:24]
        folder = Path(cache_dir) / "generations"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{self.key}.jsonl"
        meta = folder / f"{self.key}.meta.json"
        if not meta.is_file():
            meta.write_text(json.dumps({"source": source, "fingerprint": fingerprint, "settings": settings}, indent=2))

    def load(self) -> Dict[str, Generation]:
        entries: Dict[str, Generation] = {}
        if not self.path.is_file():
            return entries
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                item = json.loads(line)
                entries[item["key"]] = Generation(item["response"], item["new_tokens"], item["stopped"], item["prompt_tokens"])
            except (ValueError, KeyError, TypeError):
                continue
        return entries

    def append(self, items: Iterable[Tuple[str, Generation]]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            for key, gen in items:
                f.write(json.dumps({"key": key, **dataclasses.asdict(gen)}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _eos_ids(model, tokenizer) -> List[int]:
    found = getattr(model.generation_config, "eos_token_id", None)
    ids = set(found if isinstance(found, (list, tuple)) else [found] if found is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def generate_responses(spec: ModelSpec, prompts: Sequence[PromptRecord], options: GenerationOptions,
                       cache_dir: Union[str, Path], *, progress: bool = True) -> Tuple[List[Generation], Dict[str, Any]]:
    """Each prompt's response from one model, from the cache where present, generated (and cached) otherwise.

    Returns the generations in prompt order and a summary (how many came from the cache, were
    generated, had their prompt cut, stopped at ``max_new_tokens``; the cache file; seconds spent).
    """
    import torch
    from transformers import GenerationConfig

    from lit_idpo.models import load_tokenizer

    cache_dir = Path(cache_dir)
    fingerprint = model_fingerprint(spec.source, cache_dir / "fingerprints.json")
    cache = GenerationCache(cache_dir, fingerprint, options.key_fields(), spec.source)
    tokenizer = load_tokenizer(spec.source)
    ids_list, truncated = [], 0
    for record in prompts:
        ids, cut = _truncate_prompt(render_prompt_ids(tokenizer, record.prompt), options.max_prompt_length,
                                    tokenizer.bos_token_id)
        ids_list.append(ids)
        truncated += cut
    keys = [_sha256(json.dumps(ids))[:32] for ids in ids_list]
    done = cache.load()
    first_missing: Dict[str, int] = {}  # a prompt that occurs twice is generated once
    for i, k in enumerate(keys):
        if k not in done:
            first_missing.setdefault(k, i)
    todo = list(first_missing.values())
    started = time.perf_counter()
    if todo:
        _info(f"{spec.name}: generating {len(todo)} response(s) ({len(prompts) - len(todo)} cached) -> {cache.path}")
        device = _device(options.device)
        model = load_eval_model(spec.source, options.dtype).to(device).eval()
        eos = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        config = GenerationConfig(max_new_tokens=options.max_new_tokens, do_sample=options.do_sample,
                                  pad_token_id=pad, eos_token_id=eos, bos_token_id=tokenizer.bos_token_id)
        if options.do_sample:
            config.temperature, config.top_p, config.top_k = options.temperature, options.top_p, options.top_k
        order = sorted(todo, key=lambda i: len(ids_list[i]))  # similar lengths together: less padding
        bar = _progress(total=len(order), desc=f"generate {spec.name}", enabled=progress, unit="prompt")
        for start in range(0, len(order), options.batch_size):
            batch = order[start: start + options.batch_size]
            width = max(len(ids_list[i]) for i in batch)
            input_ids = torch.tensor([[pad] * (width - len(ids_list[i])) + ids_list[i] for i in batch], device=device)
            attention = torch.tensor([[0] * (width - len(ids_list[i])) + [1] * len(ids_list[i]) for i in batch],
                                     device=device)
            # Sampling seeds a private copy of the RNG from the seed and the batch's prompts.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
                if options.do_sample:
                    torch.manual_seed(int(_sha256(f"{options.seed}|" + "|".join(keys[i] for i in batch))[:15], 16))
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
        del model
    generations = [done[k] for k in keys]
    summary = {"cache_file": str(cache.path), "fingerprint": fingerprint, "generated": len(todo),
               "cached": len(prompts) - len(todo), "prompts_truncated": truncated,
               "stopped_at_max_new_tokens": sum(g.stopped == "length" for g in generations),
               "mean_new_tokens": statistics.fmean(g.new_tokens for g in generations),
               "seconds": round(time.perf_counter() - started, 2)}
    return generations, summary


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


def _continued_fraction_beta(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz evaluation)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _continued_fraction_beta(a, b, x) / a
    return 1.0 - math.exp(log_front) * _continued_fraction_beta(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t > 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile q={q} must be in (0, 1)")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < q:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < q:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def wilson_interval(p: float, n: float, confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson score interval for a proportion ``p`` observed over ``n`` trials."""
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2.0)
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Interval:
    """A confidence interval and the method that gave it."""

    low: float
    high: float
    method: str


def mean_interval(scores: Sequence[float], confidence: float = 0.95) -> Interval:
    """Interval on the mean of per-prompt scores in [0, 1]: Student-t, or Wilson when the variance is uninformative.

    t-interval: mean +- t_{(1+confidence)/2, n-1} * s / sqrt(n) (s: sample standard deviation, n - 1 in
    its denominator), clipped to [0, 1]. With n = 1 or all scores equal, the Wilson score interval for
    the mean over n prompts.
    """
    n = len(scores)
    if n == 0:
        raise ValueError("no scores: an interval needs at least one prompt with a verdict")
    mean = statistics.fmean(scores)
    if n == 1 or max(scores) == min(scores):
        low, high = wilson_interval(mean, n, confidence)
        return Interval(low, high, "wilson")
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * statistics.stdev(scores) / math.sqrt(n)
    return Interval(max(0.0, mean - half), min(1.0, mean + half), "t")


def bootstrap_interval(scores: Sequence[float], confidence: float = 0.95, resamples: int = 10_000,
                       seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean: resample prompts with replacement ``resamples`` times."""
    import numpy as np

    values = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, 1000):
        count = min(1000, resamples - start)
        means.append(values[rng.integers(0, len(values), size=(count, len(values)))].mean(axis=1))
    all_means = np.concatenate(means)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(all_means, [alpha, 1.0 - alpha])
    return Interval(float(low), float(high), "bootstrap-percentile")


_FIRST_SCORE = {"A": 1.0, "tie": 0.5, "B": 0.0}  # order 1: the first model is shown as A
_SECOND_ORDER_SCORE = {"A": 0.0, "tie": 0.5, "B": 1.0}  # order 2: the first model is shown as B


@dataclass
class PairResult:
    """Win rate of ``first`` against ``second`` (``win_rate`` > 0.5: ``first`` is better).

    Judgment counts (``wins`` / ``ties`` / ``losses``, from ``first``'s side) cover both orders;
    ``prompt_*`` counts classify each prompt by its averaged score (> 1/2, = 1/2, < 1/2).
    ``first_shown_preference``: among decisive judgments, how often the response shown first won
    (0.5 means no position bias). ``order_agreement``: prompts whose two orders gave the same outcome.
    """

    first: str
    second: str
    prompts: int
    judgments: int
    wins: int
    ties: int
    losses: int
    invalid: int
    identical: int
    prompt_wins: int
    prompt_ties: int
    prompt_losses: int
    win_rate: float
    ci_low: float
    ci_high: float
    ci_method: str
    bootstrap_low: float
    bootstrap_high: float
    confidence: float
    first_shown_preference: Optional[float]
    order_agreement: Optional[float]

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def summarize_verdicts(first: str, second: str, order1: Sequence[Optional[str]], order2: Sequence[Optional[str]],
                       *, identical: int = 0, confidence: float = 0.95, bootstrap_seed: int = 0) -> PairResult:
    """Win rate, counts and intervals of ``first`` vs ``second`` from both orders' verdicts per prompt.

    ``order1[p]`` is the verdict on prompt p with ``first``'s response shown as A; ``order2[p]`` with
    ``second``'s response shown as A. A verdict is ``"A"``, ``"B"``, ``"tie"`` or None (no verdict: left
    out; a prompt with neither order is left out of the prompt count).
    """
    if len(order1) != len(order2):
        raise ValueError("order1 and order2 must hold one verdict per prompt each")
    scores: List[float] = []
    wins = ties = losses = invalid = 0
    shown_first_won = decisive = agree = both_valid = 0
    for v1, v2 in zip(order1, order2):
        prompt_scores = []
        for verdict, table, first_is_a in ((v1, _FIRST_SCORE, True), (v2, _SECOND_ORDER_SCORE, False)):
            if verdict is None:
                invalid += 1
                continue
            if verdict not in table:
                raise ValueError(f"verdict {verdict!r}; expected 'A', 'B', 'tie' or None")
            s = table[verdict]
            prompt_scores.append(s)
            wins += s == 1.0
            ties += s == 0.5
            losses += s == 0.0
            if verdict != "tie":
                decisive += 1
                shown_first_won += verdict == "A"
        if len(prompt_scores) == 2:
            both_valid += 1
            agree += prompt_scores[0] == prompt_scores[1]
        if prompt_scores:
            scores.append(statistics.fmean(prompt_scores))
    if not scores:
        raise ValueError(f"{first} vs {second}: no prompt has a verdict; nothing to summarise")
    interval = mean_interval(scores, confidence)
    boot = bootstrap_interval(scores, confidence, seed=bootstrap_seed)
    return PairResult(
        first=first, second=second, prompts=len(scores), judgments=wins + ties + losses,
        wins=wins, ties=ties, losses=losses, invalid=invalid, identical=identical,
        prompt_wins=sum(s > 0.5 for s in scores), prompt_ties=sum(s == 0.5 for s in scores),
        prompt_losses=sum(s < 0.5 for s in scores), win_rate=statistics.fmean(scores),
        ci_low=interval.low, ci_high=interval.high, ci_method=interval.method,
        bootstrap_low=boot.low, bootstrap_high=boot.high, confidence=confidence,
        first_shown_preference=(shown_first_won / decisive) if decisive else None,
        order_agreement=(agree / both_valid) if both_valid else None,
    )


# --------------------------------------------------------------------------------------------------
# Pairwise judging
# --------------------------------------------------------------------------------------------------


class JudgmentCache:
    """Verdicts of one judge (by its secret-free description), keyed by prompt and both responses in order."""

    def __init__(self, cache_dir: Path, judge: Judge):
        folder = Path(cache_dir) / "judgments"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{_sha256(json.dumps(judge.describe(), sort_keys=True))[:24]}.jsonl"
        self.entries: Dict[str, Verdict] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    item = json.loads(line)
                    self.entries[item["key"]] = Verdict(item["winner"], item.get("reason", ""))
                except (ValueError, KeyError, TypeError):
                    continue

    @staticmethod
    def key(c: Comparison) -> str:
        return _sha256(json.dumps([c.prompt, c.response_a, c.response_b], ensure_ascii=False))[:32]

    def add(self, items: Sequence[Tuple[Comparison, Verdict]]) -> None:
        new = [(self.key(c), v) for c, v in items if v.winner is not None]
        if not new:
            return
        with self.path.open("a", encoding="utf-8") as f:
            for key, v in new:
                self.entries[key] = v
                f.write(json.dumps({"key": key, "winner": v.winner, "reason": v.reason}, ensure_ascii=False) + "\n")


def judge_pairs(pairs: Sequence[Tuple[str, str]], responses: Mapping[str, Sequence[str]],
                prompts: Sequence[PromptRecord], judge: Judge, *, cache_dir: Optional[Path] = None,
                confidence: float = 0.95, progress: bool = True, chunk: int = 32) -> Tuple[List[PairResult], List[Dict[str, Any]]]:
    """Judge every prompt of every pair in both orders; return one :class:`PairResult` per pair and every verdict.

    Identical responses are a tie without asking the judge. With ``cache_dir`` and a judge that asks
    for it (``cache_verdicts``), verdicts are cached on disk, so an interrupted run asks again only
    what it had not asked.
    """
    cache = JudgmentCache(cache_dir, judge) if (cache_dir is not None and judge.cache_verdicts) else None
    asks: List[Tuple[int, int, int, Comparison]] = []  # (pair, prompt, order, comparison)
    verdicts: Dict[Tuple[int, int, int], Verdict] = {}
    for pi, (a, b) in enumerate(pairs):
        for p, record in enumerate(prompts):
            ra, rb = responses[a][p], responses[b][p]
            for order, (x, y) in enumerate(((ra, rb), (rb, ra))):
                if ra == rb:
                    verdicts[(pi, p, order)] = Verdict("tie", "identical responses (judge not asked)")
                    continue
                c = Comparison(record.prompt, x, y, record.row)
                hit = cache.entries.get(cache.key(c)) if cache is not None else None
                if hit is not None:
                    verdicts[(pi, p, order)] = hit
                else:
                    asks.append((pi, p, order, c))
    bar = _progress(total=len(asks), desc=f"judge ({judge.name})", enabled=progress and bool(asks), unit="verdict")
    for start in range(0, len(asks), chunk):
        batch = asks[start: start + chunk]
        answers = judge.judge([c for *_, c in batch])
        if len(answers) != len(batch):
            raise RuntimeError(f"judge {judge.name!r} returned {len(answers)} verdicts for {len(batch)} comparisons")
        for (pi, p, order, _), v in zip(batch, answers):
            verdicts[(pi, p, order)] = v
        if cache is not None:
            cache.add([(c, v) for (*_, c), v in zip(batch, answers)])
        bar.update(len(batch))
    bar.close()
    results, records = [], []
    for pi, (a, b) in enumerate(pairs):
        order1 = [verdicts[(pi, p, 0)].winner for p in range(len(prompts))]
        order2 = [verdicts[(pi, p, 1)].winner for p in range(len(prompts))]
        identical = sum(responses[a][p] == responses[b][p] for p in range(len(prompts)))
        results.append(summarize_verdicts(a, b, order1, order2, identical=identical, confidence=confidence))
        for p, record in enumerate(prompts):
            for order, (shown_a, shown_b) in enumerate(((a, b), (b, a))):
                v = verdicts[(pi, p, order)]
                records.append({"pair": [a, b], "prompt_index": record.index, "A": shown_a, "B": shown_b,
                                "winner": v.winner, "winner_model": {"A": shown_a, "B": shown_b}.get(v.winner, v.winner),
                                "reason": v.reason})
    return results, records


# --------------------------------------------------------------------------------------------------
# Implicit-reward accuracy per layer
# --------------------------------------------------------------------------------------------------


def resolve_implicit_layers(layers: Union[str, Sequence[int]], num_layers: int) -> List[int]:
    """``auto`` (8 evenly spaced layers, the last one final), ``all``, or explicit numbers -> sorted 1..L."""
    from lit_idpo.logprobs import resolve_layers

    if layers == "auto":
        return sorted({max(1, round(num_layers * k / 8)) for k in range(1, 9)})
    if layers == "all":
        return list(range(1, num_layers + 1))
    if isinstance(layers, str):
        raise ValueError(f"implicit.layers={layers!r}; use 'auto', 'all' or a list of layer numbers")
    return sorted(set(resolve_layers(list(layers), num_layers)))


def implicit_reward_accuracy(models: Sequence[ModelSpec], reference: str, data: DataOptions,
                             options: ImplicitOptions = ImplicitOptions(), *, dtype: str = "float32",
                             device: str = "auto", progress: bool = True) -> Dict[str, Any]:
    """Per model and layer: the fraction of held-out pairs whose implicit reward prefers ``chosen``.

    The implicit reward of a completion at layer l is ``beta * (log pi_l(y|x) - log ref_l(y|x))``
    (summed completion-token log-probs read at layer l, :func:`lit_idpo.logprobs.sequence_logprobs`);
    a pair counts as correct when chosen's reward is strictly greater than rejected's. Pairs are
    tokenised with the reference's tokenizer exactly as for training. Models whose source is the
    reference itself are skipped. Returns ``{"layers": [...], "pairs": n, "data": stats,
    "models": {name: {"accuracy": [...], "margin": [...]}}}`` (lists aligned with ``layers``).
    """
    import torch

    from lit_idpo.data import PreferenceCollator, load_split, tokenize_rows
    from lit_idpo.logprobs import find_head_path, sequence_logprobs
    from lit_idpo.models import load_tokenizer

    targets = [m for m in models if m.source != reference]
    if not targets:
        return {}
    tokenizer = load_tokenizer(reference)
    rows = load_split(data.source, data.split, data_files=data.data_files, subset=data.subset)
    pairs, stats = tokenize_rows(rows, tokenizer, split="eval", source_split=data.split, format=data.format,
                                 max_length=options.max_length, on_bad_row=data.on_bad_row, limit=data.limit)
    if len(pairs) == 0:
        raise ValueError(f"implicit-reward accuracy: no usable pairs in split {data.split!r} ({stats.line()})")
    collate = PreferenceCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    batches = [collate([pairs[i] for i in range(s, min(s + options.batch_size, len(pairs)))])
               for s in range(0, len(pairs), options.batch_size)]
    dev = _device(device)

    def logps(model, desc: str) -> Tuple[torch.Tensor, torch.Tensor]:
        chosen, rejected = [], []
        for batch in _progress(batches, desc=desc, enabled=progress, unit="batch"):
            with torch.no_grad():
                out = sequence_logprobs(model, batch["input_ids"].to(dev), batch["attention_mask"].to(dev),
                                        batch["completion_mask"].to(dev), layer_ids).double().cpu()  # [layers, 2B]
            half = out.shape[1] // 2
            chosen.append(out[:, :half])
            rejected.append(out[:, half:])
        return torch.cat(chosen, 1), torch.cat(rejected, 1)  # [layers, N] each

    ref_model = load_eval_model(reference, dtype).to(dev).eval()
    num_layers = find_head_path(ref_model).num_layers
    layer_ids = resolve_implicit_layers(options.layers, num_layers)
    ref_c, ref_r = logps(ref_model, "implicit reward: reference")
    del ref_model
    result: Dict[str, Any] = {"layers": layer_ids, "num_layers": num_layers, "pairs": len(pairs), "beta": options.beta,
                              "reference": reference, "data": stats.as_dict(), "models": {}}
    for spec in targets:
        model = load_eval_model(spec.source, dtype).to(dev).eval()
        if model.get_output_embeddings().weight.shape[0] < len(tokenizer):
            raise ValueError(f"implicit-reward accuracy: {spec.name} ({spec.source}) has a smaller vocabulary than the "
                             f"reference's tokenizer; the model and the reference must share a tokenizer")
        pol_c, pol_r = logps(model, f"implicit reward: {spec.name}")
        del model
        margin = options.beta * ((pol_c - ref_c) - (pol_r - ref_r))  # [layers, N]
        result["models"][spec.name] = {"accuracy": (margin > 0).double().mean(1).tolist(),
                                       "margin": margin.mean(1).tolist()}
    return result


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def format_markdown(results: Mapping[str, Any]) -> str:
    """The evaluation as markdown: pairwise win rates, per-model scores, implicit-reward accuracy."""
    lines = []
    prompts = results["prompts"]
    judge = results["judge"]
    lines.append(f"Prompts: {prompts['prompts']} from split `{prompts['split']}` of `{prompts['source']}`; "
                 f"judge: `{judge['name']}`" + (f" ({judge['model']})" if judge.get("model") else "") +
                 f"; generation: {_generation_line(results['generation'])}.")
    if results.get("pairs"):
        conf = round(100 * results["pairs"][0]["confidence"])
        lines += ["", f"| A | B | prompts | A wins / ties / B wins (judgments, both orders) | win rate of A (%) | "
                      f"{conf} % CI | bootstrap CI | no verdict | A shown first preferred (%) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in results["pairs"]:
            lines.append(f"| {r['first']} | {r['second']} | {r['prompts']} | {r['wins']} / {r['ties']} / {r['losses']} | "
                         f"{_pct(r['win_rate'])} | [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]"
                         f"{'' if r['ci_method'] == 't' else ' (Wilson)'} | "
                         f"[{_pct(r['bootstrap_low'])}, {_pct(r['bootstrap_high'])}] | {r['invalid']} | "
                         f"{_pct(r['first_shown_preference'])} |")
        lines += ["", f"CI: {results['ci_method']}."]
    scored = [m for m in results["models"] if m.get("score") is not None]
    if scored:
        label = "accuracy (%)" if judge["name"] == "rule" else "mean score"
        lines += ["", f"| model | {label} | {round(100 * results.get('confidence', 0.95))} % CI | mean new tokens | "
                      f"hit max_new_tokens |", "|---|---:|---:|---:|---:|"]
        for m in scored:
            s = m["score"]
            fmt = _pct if judge["name"] == "rule" else (lambda x: f"{x:.4f}")
            ci = f"[{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]" if s.get("ci_low") is not None else "n/a"
            lines.append(f"| {m['name']} | {fmt(s['mean'])} | {ci} | {m['generation']['mean_new_tokens']:.1f} | "
                         f"{m['generation']['stopped_at_max_new_tokens']} |")
    implicit = results.get("implicit_reward") or {}
    if implicit.get("models"):
        layers = implicit["layers"]
        names = [f"final ({l})" if l == implicit["num_layers"] else str(l) for l in layers]
        lines += ["", f"Implicit-reward accuracy (%) on {implicit['pairs']} held-out pairs, per layer "
                      f"(reference: `{implicit['reference']}`):", "",
                  "| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(layers)]
        for name, values in implicit["models"].items():
            lines.append(f"| {name} | " + " | ".join(_pct(a) for a in values["accuracy"]) + " |")
    return "\n".join(lines)


def _generation_line(g: Mapping[str, Any]) -> str:
    mode = (f"sampling (T={g['temperature']}, top_p={g['top_p']}, top_k={g['top_k']}, seed={g['seed']})"
            if g["do_sample"] else "greedy")
    return f"{mode}, max_new_tokens={g['max_new_tokens']}"


def _score_summary(values: List[float], confidence: float) -> Dict[str, Any]:
    """Mean absolute score of one model with its interval: Wilson for right/wrong scores, else Student-t."""
    n, mean = len(values), statistics.fmean(values)
    summary: Dict[str, Any] = {"mean": mean, "n": n, "ci_low": None, "ci_high": None, "ci_method": None}
    if all(v in (0.0, 1.0) for v in values):
        summary["ci_low"], summary["ci_high"] = wilson_interval(mean, n, confidence)
        summary["ci_method"] = "wilson"
    elif n >= 2:
        half = t_quantile(0.5 + confidence / 2.0, n - 1) * statistics.stdev(values) / math.sqrt(n)
        summary.update(ci_low=mean - half, ci_high=mean + half, ci_method="t")
    return summary


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------
# The whole evaluation
# --------------------------------------------------------------------------------------------------


def evaluate(models: Sequence[ModelSpec], output_dir: Union[str, Path], *, judge: Optional[Judge] = None,
             data: DataOptions = DataOptions(), generation: GenerationOptions = GenerationOptions(),
             pairs: Optional[Sequence[Tuple[str, str]]] = None, reference: Optional[str] = None,
             implicit: ImplicitOptions = ImplicitOptions(), cache_dir: Optional[Union[str, Path]] = None,
             confidence: float = 0.95, progress: bool = True) -> Dict[str, Any]:
    """Generate, judge every pair in both orders, and write ``results.json`` / ``results.md`` in ``output_dir``.

    Args:
        models: the models (two or more for pairwise judging).
        output_dir: where results, responses and verdicts are written.
        judge: the pairwise judge; None skips judging (then ``reference`` must be given).
        data: the prompt source (its held-out split).
        generation: generation settings.
        pairs: the (A, B) model-name pairs to judge; None: every pair, in the order ``models`` lists them.
        reference: a reference model source: adds the implicit-reward accuracy per layer of each other model.
        implicit: options of the implicit-reward accuracy.
        cache_dir: where generations (and costly verdicts) are cached; None is ``<output_dir>/cache``.
        confidence: confidence level of the intervals.
        progress: show progress bars.

    Returns the results as written to ``results.json``.
    """
    started = time.perf_counter()
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}; it must be in (0, 1), e.g. 0.95")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    if judge is not None:
        if pairs is None:
            pairs = list(combinations(names, 2))
        for a, b in pairs:
            for n in (a, b):
                if n not in names:
                    raise ValueError(f"pair ({a}, {b}) names {n!r}, which is not one of the models {names}")
            if a == b:
                raise ValueError(f"pair ({a}, {b}) compares a model with itself")
        if not pairs:
            raise ValueError("pairwise judging needs two or more models (give --model at least twice)")
    elif reference is None:
        raise ValueError("nothing to do: give a judge (pairwise win rates) and/or a reference (implicit-reward accuracy)")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else output_dir / "cache"

    prompts, prompt_stats = load_prompts(data)
    _info(f"{len(prompts)} prompts from split {data.split!r} of {data.source!r}"
          + (f" (skipped {prompt_stats['skipped']})" if prompt_stats["skipped"] else ""))
    results: Dict[str, Any] = {
        "lit_idpo_evaluate": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "prompts": prompt_stats,
        "generation": dataclasses.asdict(generation), "judge": judge.describe() if judge else {"name": "none"},
        "confidence": confidence, "ci_method": CI_METHOD, "models": [], "pairs": [],
    }
    responses: Dict[str, List[str]] = {}
    if judge is not None:
        (output_dir / "responses").mkdir(exist_ok=True)
        needed = {n for pair in pairs for n in pair}
        for spec in models:
            if spec.name not in needed:
                continue
            gens, summary = generate_responses(spec, prompts, generation, cache, progress=progress)
            responses[spec.name] = [g.response for g in gens]
            scores = [judge.score(r.prompt, g.response, r.row) for r, g in zip(prompts, gens)]
            has_scores = all(s is not None for s in scores)
            with (output_dir / "responses" / f"{_slug(spec.name)}.jsonl").open("w", encoding="utf-8") as f:
                for record, gen, score in zip(prompts, gens, scores):
                    f.write(json.dumps({"prompt_index": record.index, "prompt": record.prompt, "response": gen.response,
                                        "new_tokens": gen.new_tokens, "stopped": gen.stopped, "score": score},
                                       ensure_ascii=False) + "\n")
            results["models"].append({"name": spec.name, "source": spec.source, "generation": summary,
                                      "score": _score_summary(scores, confidence) if has_scores else None})
        pair_results, records = judge_pairs(pairs, responses, prompts, judge, cache_dir=cache, confidence=confidence,
                                            progress=progress)
        results["pairs"] = [r.to_dict() for r in pair_results]
        with (output_dir / "judgments.jsonl").open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    if reference is not None:
        results["implicit_reward"] = implicit_reward_accuracy(models, reference, data, implicit,
                                                              dtype=generation.dtype, device=generation.device,
                                                              progress=progress)
    results["wall_time_s"] = round(time.perf_counter() - started, 1)
    _write_json(output_dir / "results.json", results)
    (output_dir / "results.md").write_text(format_markdown(results) + "\n", encoding="utf-8")
    return results


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _layers_arg(text: str) -> Union[str, List[int]]:
    if text in ("auto", "all"):
        return text
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, all, or comma-separated layer numbers like 5,21,-1") from None


def _data_files_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except empty ones."""

    def _get_help_string(self, action):
        if action.default in (None, [], False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The ``lit-idpo evaluate`` argument parser."""
    p = argparse.ArgumentParser(
        prog="lit-idpo evaluate",
        description="Pairwise win rates (both orders, ties = 1/2, 95 % t-interval over prompts) of two or more models "
                    "on the held-out prompts of a preference data source, judged by a rule, an OpenAI-compatible "
                    "chat model or a reward model; plus implicit-reward accuracy per layer against a reference.",
        formatter_class=_HelpFormatter)
    p.add_argument("--model", dest="models", action="append", default=[], metavar="[NAME=]SOURCE",
                   help="a model to evaluate (repeat): a Hugging Face model directory written by fit (full or LoRA "
                        "adapter), a Hub id, embedded:smollm2-135m-instruct, a .gguf file, or tiny-llama; NAME labels it")
    p.add_argument("--output_dir", required=True, help="where results.json, results.md, responses/ and judgments.jsonl go")
    p.add_argument("--cache_dir", default=None, help="generation (and paid-judge verdict) cache; default <output_dir>/cache")
    p.add_argument("--pair", dest="pairs", action="append", default=None, metavar="A,B",
                   help="judge only these model pairs (repeat); default: every pair")
    p.add_argument("--reference", default=None,
                   help="reference model source: also report each model's implicit-reward accuracy per layer")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals")
    p.add_argument("--no_progress", action="store_true", help="hide progress bars")
    d = DataOptions()
    p.add_argument("--data.source", dest="data_source", default=d.source, help="preference data source (as in fit's data.source)")
    p.add_argument("--data.split", dest="data_split", default=d.split, help="the held-out split (test_prefs for UltraFeedback)")
    p.add_argument("--data.data_files", dest="data_data_files", type=_data_files_arg, default=None,
                   help="data_files for datasets.load_dataset (a path or a JSON list / mapping)")
    p.add_argument("--data.subset", dest="data_subset", default=None, help="dataset configuration name")
    p.add_argument("--data.format", dest="data_format", default=d.format,
                   choices=["auto", "standard", "conversational", "implicit"], help="row format")
    p.add_argument("--data.limit", dest="data_limit", type=int, default=None, help="use only the first N usable prompts")
    p.add_argument("--data.on_bad_row", dest="data_on_bad_row", default=d.on_bad_row, choices=["error", "skip"],
                   help="stop at an unusable row, or skip and count it")
    g = GenerationOptions()
    p.add_argument("--generation.max_new_tokens", dest="gen_max_new_tokens", type=int, default=g.max_new_tokens,
                   help="longest response in tokens")
    p.add_argument("--generation.do_sample", dest="gen_do_sample", action="store_true", help="sample instead of greedy")
    p.add_argument("--generation.temperature", dest="gen_temperature", type=float, default=g.temperature, help="sampling temperature")
    p.add_argument("--generation.top_p", dest="gen_top_p", type=float, default=g.top_p, help="nucleus sampling mass")
    p.add_argument("--generation.top_k", dest="gen_top_k", type=int, default=g.top_k, help="top-k sampling (0: off)")
    p.add_argument("--generation.seed", dest="gen_seed", type=int, default=g.seed, help="sampling seed")
    p.add_argument("--generation.batch_size", dest="gen_batch_size", type=int, default=g.batch_size, help="prompts per generate call")
    p.add_argument("--generation.max_prompt_length", dest="gen_max_prompt_length", type=int, default=None,
                   help="keep only the last N prompt tokens (and BOS)")
    p.add_argument("--generation.dtype", dest="gen_dtype", default=g.dtype, choices=["float32", "bfloat16", "float16"],
                   help="weights' dtype")
    p.add_argument("--generation.device", dest="gen_device", default=g.device, help="auto, cpu or cuda")
    p.add_argument("--judge", default="rule", choices=list(JUDGES) + ["none"],
                   help="rule (verifiable answers), openai (OpenAI-compatible chat completions), reward-model, or none")
    p.add_argument("--judge.answer_field", dest="judge_answer_field", default=None, help="rule: row field with the answer")
    p.add_argument("--judge.base_url", dest="judge_base_url", default=None, help="openai: API root, e.g. https://api.openai.com/v1")
    p.add_argument("--judge.model", dest="judge_model", default=None, help="openai: the judge model's name")
    p.add_argument("--judge.api_key_env", dest="judge_api_key_env", default=None,
                   help="openai: environment variable holding the API key (default OPENAI_API_KEY; '' for none); "
                        "the key itself is never accepted on the command line")
    p.add_argument("--judge.timeout", dest="judge_timeout", type=float, default=None, help="openai: seconds per request")
    p.add_argument("--judge.max_retries", dest="judge_max_retries", type=int, default=None, help="openai: retries on 429/5xx")
    p.add_argument("--judge.workers", dest="judge_workers", type=int, default=None, help="openai: requests in flight")
    p.add_argument("--judge.temperature", dest="judge_temperature", type=_float_or_none, default=argparse.SUPPRESS,
                   help="openai: judge temperature (default 0); 'none' sends none (for models that accept only "
                        "their default)")
    p.add_argument("--judge.max_tokens", dest="judge_max_tokens", type=_int_or_none, default=argparse.SUPPRESS,
                   help="openai: reply length limit (default 512); 'none' sends none")
    p.add_argument("--judge.token_limit_field", dest="judge_token_limit_field", default=None,
                   choices=["auto", "max_tokens", "max_completion_tokens"],
                   help="openai: the request field for the length limit (default auto: max_tokens, switching to "
                        "max_completion_tokens when the server asks for it)")
    p.add_argument("--judge.reward_model", dest="judge_reward_model", default=None,
                   help="reward-model: a sequence-classification model directory or Hub id")
    p.add_argument("--judge.label_index", dest="judge_label_index", type=int, default=None,
                   help="reward-model: the 'good' label of a multi-label classifier")
    p.add_argument("--judge.tie_margin", dest="judge_tie_margin", type=float, default=None,
                   help="reward-model: scores closer than this tie")
    i = ImplicitOptions()
    p.add_argument("--implicit.layers", dest="implicit_layers", type=_layers_arg, default=i.layers,
                   help="layers for the implicit-reward accuracy: auto, all, or e.g. 5,21,-1")
    p.add_argument("--implicit.beta", dest="implicit_beta", type=float, default=i.beta, help="beta of the reported margins")
    p.add_argument("--implicit.batch_size", dest="implicit_batch_size", type=int, default=i.batch_size, help="pairs per pass")
    p.add_argument("--implicit.max_length", dest="implicit_max_length", type=int, default=i.max_length,
                   help="drop (and count) longer pairs")
    for action in p._actions:  # show --generation.max_new_tokens MAX_NEW_TOKENS, not GEN_MAX_NEW_TOKENS
        if action.option_strings and action.nargs != 0 and action.metavar is None and not action.choices:
            action.metavar = action.option_strings[0].rsplit(".", 1)[-1].lstrip("-").upper()
    return p


def _float_or_none(text: str) -> Optional[float]:
    return None if text.lower() in ("none", "null") else float(text)


def _int_or_none(text: str) -> Optional[int]:
    return None if text.lower() in ("none", "null") else int(text)


def judge_from_args(args: argparse.Namespace) -> Optional[Judge]:
    if args.judge == "none":
        return None
    options = {
        "rule": {"answer_field": args.judge_answer_field},
        "openai": {"base_url": args.judge_base_url, "model": args.judge_model, "api_key_env": args.judge_api_key_env,
                   "timeout": args.judge_timeout, "max_retries": args.judge_max_retries, "workers": args.judge_workers,
                   "token_limit_field": args.judge_token_limit_field},
        "reward-model": {"reward_model": args.judge_reward_model, "label_index": args.judge_label_index,
                         "tie_margin": args.judge_tie_margin},
    }[args.judge]
    if args.judge == "openai":
        for key in ("base_url", "model"):
            if not options[key]:
                raise ValueError(f"--judge openai needs --judge.{key}")
        # Present only when given (default SUPPRESS): their null ("none") is a value, not "use the default".
        for key in ("temperature", "max_tokens"):
            if hasattr(args, f"judge_{key}"):
                options[key] = getattr(args, f"judge_{key}")
    if args.judge == "reward-model" and not options["reward_model"]:
        raise ValueError("--judge reward-model needs --judge.reward_model PATH")
    return build_judge(args.judge, **options)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Entry point of ``lit-idpo evaluate``; prints the markdown report and returns the results."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        models = parse_model_specs(args.models)
        if len(models) < 2 and args.reference is None:
            raise ValueError("give --model at least twice (pairwise judging), or --reference for implicit-reward accuracy")
        pairs = None
        if args.pairs:
            pairs = []
            for item in args.pairs:
                a, sep, b = item.partition(",")
                if not sep:
                    raise ValueError(f"--pair {item!r}: write two model names separated by a comma, e.g. idpo,dpo")
                pairs.append((a.strip(), b.strip()))
        data = DataOptions(source=args.data_source, split=args.data_split, data_files=args.data_data_files,
                           subset=args.data_subset, format=args.data_format, limit=args.data_limit,
                           on_bad_row=args.data_on_bad_row)
        generation = GenerationOptions(max_new_tokens=args.gen_max_new_tokens, do_sample=args.gen_do_sample,
                                       temperature=args.gen_temperature, top_p=args.gen_top_p, top_k=args.gen_top_k,
                                       seed=args.gen_seed, batch_size=args.gen_batch_size,
                                       max_prompt_length=args.gen_max_prompt_length, dtype=args.gen_dtype,
                                       device=args.gen_device)
        implicit = ImplicitOptions(layers=args.implicit_layers, beta=args.implicit_beta,
                                   batch_size=args.implicit_batch_size, max_length=args.implicit_max_length)
        judge = judge_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    results = evaluate(models, args.output_dir, judge=judge, data=data, generation=generation, pairs=pairs,
                       reference=args.reference, implicit=implicit, cache_dir=args.cache_dir,
                       confidence=args.confidence, progress=not args.no_progress)
    print(format_markdown(results))
    print(f"\nWritten: {Path(args.output_dir) / 'results.json'}, {Path(args.output_dir) / 'results.md'} "
          f"({results['wall_time_s']} s)")
    return results


if __name__ == "__main__":
    main()
