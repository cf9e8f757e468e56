"""Implicit-reward accuracy per layer: how often a trained model's implicit reward prefers ``chosen``.

No generation: for each trained model, the fraction of held-out pairs whose implicit reward
``beta * (log pi - log ref)`` is strictly higher for ``chosen`` than for ``rejected``, read at each
requested layer (TRL's ``rewards/accuracies``), with the mean reward margin and, per pair, whether it was
right (so that two models' accuracies can be compared pair by pair, e.g. over training seeds).
Each model's log-probs (and the reference's) can be cached per model
(:mod:`lit_idpo.evaluation.implicit_cache`), so that an evaluation extended by more models (more seeds)
scores only the new ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from lit_idpo.errors import ConfigError, DataError
from lit_idpo.evaluation._util import info, progress_bar
from lit_idpo.evaluation.generation import load_eval_model, resolve_device
from lit_idpo.evaluation.implicit_cache import LogprobCache, Logprobs, layer_request
from lit_idpo.evaluation.options import DataOptions, ImplicitOptions, ModelSpec
from lit_idpo.layers import select_layers


def resolve_implicit_layers(layers: Union[str, Sequence[int]], num_layers: int) -> List[int]:
    """``auto`` (8 evenly spaced layers, the last one final), ``all``, or explicit numbers -> sorted 1..L."""
    return select_layers(layers, num_layers, "implicit.layers", allow_empty=True,
                         auto=lambda L: [max(1, round(L * k / 8)) for k in range(1, 9)])


def implicit_reward_accuracy(models: Sequence[ModelSpec], reference: str, data: DataOptions,
                             options: Optional[ImplicitOptions] = None, *, dtype: str = "float32",
                             device: str = "auto", progress: bool = True,
                             cache_dir: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """Per model and layer: the fraction of held-out pairs whose implicit reward prefers ``chosen``.

    The implicit reward of a completion at layer l is ``beta * (log pi_l(y|x) - log ref_l(y|x))``
    (summed completion-token log-probs read at layer l, :func:`lit_idpo.logprobs.sequence_logprobs`);
    a pair counts as correct when chosen's reward is strictly greater than rejected's. Pairs are
    tokenised with the reference's tokenizer exactly as for training. Models whose source is the
    reference itself are skipped. Returns ``{"layers": [...], "pairs": n, "data": stats,
    "models": {name: {"accuracy": [...], "margin": [...], "correct": [...]}}}`` (lists aligned with
    ``layers``); ``correct`` holds one string per layer with one character per pair in data order, ``"1"``
    where that pair counts as correct and ``"0"`` where not (:func:`pair_correctness` reads it back as
    0/1 lists). A string keeps ``results.json`` compact: 200 pairs are 200 characters per layer.

    With ``cache_dir`` (``lit-idpo evaluate`` passes its cache directory), each model's log-probs and
    the reference's are cached there per model (:mod:`lit_idpo.evaluation.implicit_cache`, keyed by
    the model's content fingerprint, the pairs' token ids, the layers, dtype and package versions):
    a model found there is not loaded, and the results are exactly those of a fresh pass. The result
    then also holds ``"cache": {"dir", "reference", "models"}``, each ``"cached"`` or ``"computed"``.
    """
    import torch

    from lit_idpo.data import PreferenceCollator, load_split, tokenize_rows
    from lit_idpo.logprobs import find_head_path, sequence_logprobs
    from lit_idpo.models import load_tokenizer

    options = options if options is not None else ImplicitOptions()
    data = options.data if options.data is not None else data  # the pairs may live apart from the prompts
    targets = [m for m in models if m.source != reference]
    if not targets:
        return {}
    tokenizer = load_tokenizer(reference)
    rows = load_split(data.source, data.split, data_files=data.data_files, subset=data.subset)
    pairs, stats = tokenize_rows(rows, tokenizer, split="eval", source_split=data.split, format=data.format,
                                 max_length=options.max_length, on_bad_row=data.on_bad_row, limit=data.limit)
    if len(pairs) == 0:
        raise DataError(f"implicit-reward accuracy: no usable pairs in split {data.split!r} ({stats.line()})")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = PreferenceCollator(pad)
    batches = [collate([pairs[i] for i in range(s, min(s + options.batch_size, len(pairs)))])
               for s in range(0, len(pairs), options.batch_size)]
    dev = resolve_device(device)
    cache = LogprobCache(cache_dir, pairs, dtype) if cache_dir is not None else None
    details = {"device": str(dev), "batch_size": options.batch_size}

    def logps(model, layer_ids: List[int], desc: str) -> Tuple[torch.Tensor, torch.Tensor]:
        chosen, rejected = [], []
        for batch in progress_bar(batches, desc=desc, enabled=progress, unit="batch"):
            with torch.no_grad():
                out = sequence_logprobs(model, batch["input_ids"].to(dev), batch["attention_mask"].to(dev),
                                        batch["completion_mask"].to(dev), layer_ids).double().cpu()  # [layers, 2B]
            half = out.shape[1] // 2
            chosen.append(out[:, :half])
            rejected.append(out[:, half:])
        return torch.cat(chosen, 1), torch.cat(rejected, 1)  # [layers, N] each

    # The reference: its layer request is its key (resolving it needs its depth, which the entry records).
    request = layer_request(options.layers)
    ref = cache.load(reference, request) if cache is not None else None
    status = {"dir": str(cache.folder) if cache is not None else None, "reference": "cached", "models": {}}
    if ref is None:
        status["reference"] = "computed"
        ref_model = load_eval_model(reference, dtype).to(dev).eval()
        num_layers = find_head_path(ref_model).num_layers
        layer_ids = resolve_implicit_layers(options.layers, num_layers)
        ref = Logprobs(layer_ids, num_layers, *logps(ref_model, layer_ids, "implicit reward: reference"))
        del ref_model
        if cache is not None:
            cache.save(reference, request, ref, details=details)
    else:
        info(f"implicit reward: reference log-probs from the cache ({cache.folder})")
    layer_ids, num_layers = ref.layers, ref.num_layers
    result: Dict[str, Any] = {"layers": layer_ids, "num_layers": num_layers, "pairs": len(pairs), "beta": options.beta,
                              "reference": reference, "data": {"source": data.source, **stats.as_dict()}, "models": {}}
    for spec in targets:
        pol = cache.load(spec.source, layer_ids) if cache is not None else None
        status["models"][spec.name] = "cached" if pol is not None else "computed"
        if pol is None:
            model = load_eval_model(spec.source, dtype).to(dev).eval()
            if model.get_output_embeddings().weight.shape[0] < len(tokenizer):
                raise ConfigError(f"implicit-reward accuracy: {spec.name} ({spec.source}) has a smaller vocabulary "
                                  f"than the reference's tokenizer; the model and the reference must share a tokenizer")
            pol = Logprobs(layer_ids, num_layers, *logps(model, layer_ids, f"implicit reward: {spec.name}"))
            del model
            if cache is not None:
                cache.save(spec.source, layer_ids, pol, details=details)
        margin = options.beta * ((pol.chosen - ref.chosen) - (pol.rejected - ref.rejected))  # [layers, N]
        correct = margin > 0
        result["models"][spec.name] = {"accuracy": correct.double().mean(1).tolist(),
                                       "margin": margin.mean(1).tolist(),
                                       "correct": ["".join("1" if c else "0" for c in row) for row in correct.tolist()]}
    if cache is not None:
        cached = sorted(n for n, s in status["models"].items() if s == "cached")
        if cached:
            info(f"implicit reward: {len(cached)} of {len(targets)} model(s) from the cache: {', '.join(cached)}")
        result["cache"] = status
    return result


def pair_correctness(model: Mapping[str, Any]) -> Optional[List[List[int]]]:
    """One model's per-pair correctness from :func:`implicit_reward_accuracy`'s ``models`` entry: per layer, a 0/1
    list in pair order; None for results written before ``correct`` was recorded."""
    correct = model.get("correct")
    return None if correct is None else [[int(c) for c in layer] for layer in correct]
