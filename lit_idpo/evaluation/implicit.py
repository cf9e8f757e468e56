"""Implicit-reward accuracy per layer: how often a trained model's implicit reward prefers ``chosen``.

No generation: for each trained model, the fraction of held-out pairs whose implicit reward
``beta * (log pi - log ref)`` is strictly higher for ``chosen`` than for ``rejected``, read at each
requested layer (TRL's ``rewards/accuracies``), with the mean reward margin and, per pair, whether it was
right (so that two models' accuracies can be compared pair by pair, e.g. over training seeds).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from lit_idpo.errors import ConfigError, DataError
from lit_idpo.evaluation._util import progress_bar
from lit_idpo.evaluation.generation import load_eval_model, resolve_device
from lit_idpo.evaluation.options import DataOptions, ImplicitOptions, ModelSpec


def resolve_implicit_layers(layers: Union[str, Sequence[int]], num_layers: int) -> List[int]:
    """``auto`` (8 evenly spaced layers, the last one final), ``all``, or explicit numbers -> sorted 1..L."""
    from lit_idpo.logprobs import resolve_layers

    if layers == "auto":
        return sorted({max(1, round(num_layers * k / 8)) for k in range(1, 9)})
    if layers == "all":
        return list(range(1, num_layers + 1))
    if isinstance(layers, str):
        raise ConfigError(f"implicit.layers={layers!r}; use 'auto', 'all' or a list of layer numbers")
    return sorted(set(resolve_layers(list(layers), num_layers)))


def implicit_reward_accuracy(models: Sequence[ModelSpec], reference: str, data: DataOptions,
                             options: Optional[ImplicitOptions] = None, *, dtype: str = "float32",
                             device: str = "auto", progress: bool = True) -> Dict[str, Any]:
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
    """
    import torch

    from lit_idpo.data import PreferenceCollator, load_split, tokenize_rows
    from lit_idpo.logprobs import find_head_path, sequence_logprobs
    from lit_idpo.models import load_tokenizer

    options = options if options is not None else ImplicitOptions()
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

    def logps(model, desc: str) -> Tuple[torch.Tensor, torch.Tensor]:
        chosen, rejected = [], []
        for batch in progress_bar(batches, desc=desc, enabled=progress, unit="batch"):
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
            raise ConfigError(f"implicit-reward accuracy: {spec.name} ({spec.source}) has a smaller vocabulary "
                              f"than the reference's tokenizer; the model and the reference must share a tokenizer")
        pol_c, pol_r = logps(model, f"implicit reward: {spec.name}")
        del model
        margin = options.beta * ((pol_c - ref_c) - (pol_r - ref_r))  # [layers, N]
        correct = margin > 0
        result["models"][spec.name] = {"accuracy": correct.double().mean(1).tolist(),
                                       "margin": margin.mean(1).tolist(),
                                       "correct": ["".join("1" if c else "0" for c in row) for row in correct.tolist()]}
    return result


def pair_correctness(model: Mapping[str, Any]) -> Optional[List[List[int]]]:
    """One model's per-pair correctness from :func:`implicit_reward_accuracy`'s ``models`` entry: per layer, a 0/1
    list in pair order; None for results written before ``correct`` was recorded."""
    correct = model.get("correct")
    return None if correct is None else [[int(c) for c in layer] for layer in correct]
