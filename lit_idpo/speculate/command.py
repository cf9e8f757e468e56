"""``lit-idpo speculate``: a model's own intermediate layer as its draft model (early-exit speculative decoding).

Intermediate DPO trains the final norm and LM head to read an intermediate layer ``k``; that readout,
``lm_head(final_norm(h_k))``, is the draft path of early-exit self-speculative decoding (LayerSkip,
Elhoushi et al. 2024): the first ``k`` layers propose tokens, the full model verifies them. For each
requested exit layer this command measures, on the held-out prompts of a data source:

- ``agreement``: teacher-forced top-1 agreement of layer ``k``'s readout with the final layer's arg-max,
  on the prompts followed by the model's own greedy responses (one forward per prompt; the final
  layer's arg-max there is the greedy token);
- real greedy decoding at batch size 1 with transformers' ``generate(..., assistant_early_exit=k)``:
  ``acceptance_rate`` (accepted / proposed draft tokens), ``tokens_per_s`` against plain greedy
  ``generate`` of the same model in the same run (``baseline_tokens_per_s``, ``speedup``), and a check
  that the output is token-for-token identical to plain greedy decoding: a difference raises
  :class:`OutputMismatchError` naming the prompt and the position.

How acceptance is counted (exact, not replayed): while an early-exit ``generate`` runs,
:class:`DraftCounter` wraps transformers' ``EarlyExitCandidateGenerator``: ``get_candidates`` gives the
number of draft tokens proposed in each round, and ``update_candidate_strategy`` receives the number
of them the full model accepted (transformers' ``n_matches``, after its cut at EOS and at the length
limit). Drafting uses a fixed number of tokens per round (``num_assistant_tokens``, schedule
``constant``, no confidence cut-off), so the rate is not biased by transformers' adaptive heuristics.

Timing is fair by construction: one warm-up call of each decoding path first, then per prompt plain
greedy and every layer's early-exit decoding run back to back, in an order rotated from prompt to
prompt, under ``torch.inference_mode`` (CUDA synchronised around each call).

transformers' implementation keeps a separate KV cache for the draft and re-runs all layers to verify.
With ``shared_cache`` (the default) each layer is also decoded by
:class:`~lit_idpo.speculate.decoding.SharedCacheDecoder`, LayerSkip's scheme, in which the verification
reuses the draft's first-``k``-layer cache and exit hidden states; its results are under ``shared_cache``
per layer: the same rates, its speed-up over plain ``generate`` and over plain greedy through the same
loop, and ``layer_call_speedup``, the speed-up if every decoder-layer call cost the same however many
tokens it carries (batch-1 decoding bound by reading the weights, as on a GPU). Outputs:
``speculate.json``, ``speculate.md`` and ``speculate.png`` in ``output_dir`` (:mod:`lit_idpo.speculate.report`).
"""

from __future__ import annotations

import dataclasses
import functools
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from lit_idpo.errors import ConfigError, add_progress_flag, command_parser, info, parse_command
from lit_idpo.evaluation.options import DTYPES, DataOptions
from lit_idpo.layers import select_layers
from lit_idpo.speculate.decoding import DraftCounter, DraftSettings, DraftStats, SharedCacheDecoder, TransformersDecoder

__all__ = ["SpeculateOptions", "OutputMismatchError", "DraftCounter", "speculate", "layer_agreement",
           "resolve_exit_layers", "check_early_exit_support", "SUPPORTED_MODEL_TYPES", "run", "main"]

# Model types whose transformers decoder loop runs ``self.layers[: config.num_hidden_layers]`` and ends with
# the final norm, so that transformers' early exit (which lowers ``num_hidden_layers`` while drafting)
# drafts exactly ``lm_head(final_norm(h_k))``; llama and qwen2 are tested here (tiny-llama, tiny-qwen2,
# SmolLM2), mistral and qwen3 share Llama's layout. GPT-2 loops over every block whatever the config says
# (its early exit then indexes past its draft cache and fails), so it is refused.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# A top-2 logit gap below this is within the rounding of a forward in that dtype (a verifying forward over
# several tokens sums in another order than one-token steps): a mismatch there is numerical, not a bug.
_NEAR_TIE = {"float32": 1e-3, "bfloat16": 0.1, "float16": 0.02}
_CHUNK_ROWS = 256  # head rows per matmul in the agreement: [256, V] logits at a time, never [T, V] per layer


class OutputMismatchError(RuntimeError):
    """Early-exit decoding gave another token sequence than plain greedy decoding (it must not)."""


@dataclass
class SpeculateOptions:
    """How the greedy and early-exit decodings run (always greedy, batch size 1).

    Args:
        max_new_tokens: longest response in tokens.
        num_assistant_tokens: draft tokens proposed per round (fixed; LayerSkip's setting, not adaptive).
        max_prompt_length: longer prompts keep their last this-many tokens (and BOS); null: never cut.
        warmup: run one untimed plain and one early-exit decoding first (fair timing of the first prompt).
        draft_decoding: run the early-exit decodings; false measures agreement only (works for any model the
            fused head supports, GPT-2 included).
        transformers_early_exit: decode with transformers' ``assistant_early_exit`` (separate draft cache).
        shared_cache: also decode with lit-idpo's shared-cache draft loop (LayerSkip's scheme: the draft's
            first-k-layer keys and values and exit hidden states are reused by the verification), and with
            that loop's plain greedy as a second baseline.
        dtype: weights' dtype (``float32``, ``bfloat16``, ``float16``).
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
    """

    max_new_tokens: int = 128
    num_assistant_tokens: int = 4
    max_prompt_length: Optional[int] = None
    warmup: bool = True
    draft_decoding: bool = True
    transformers_early_exit: bool = True
    shared_cache: bool = True
    dtype: str = "float32"
    device: str = "auto"

    def __post_init__(self):
        for name in ("max_new_tokens", "num_assistant_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"generation.{name}={value!r}; it must be an integer >= 1")
        if self.max_prompt_length is not None and (not isinstance(self.max_prompt_length, int)
                                                   or self.max_prompt_length < 1):
            raise ConfigError(f"generation.max_prompt_length={self.max_prompt_length!r}; an integer >= 1, or null")
        if self.draft_decoding and not (self.transformers_early_exit or self.shared_cache):
            raise ConfigError("generation.draft_decoding is true but both generation.transformers_early_exit and "
                              "generation.shared_cache are false; turn one on, or set draft_decoding false")
        if self.dtype not in DTYPES:
            raise ConfigError(f"generation.dtype={self.dtype!r}; choose one of {', '.join(DTYPES)}")


def resolve_exit_layers(layers: Union[str, Sequence[int]], num_layers: int) -> List[int]:
    """Exit layers as sorted numbers 1..L from ``auto`` (about 1/4, 1/3, 1/2, 2/3 and 3/4 of the depth),
    ``all``, a list (negative numbers count from the end: -1 is L) or the same list as text ``10,20``."""
    return select_layers(layers, num_layers, "layers", auto=lambda L: [
        min(L - 1, max(1, round(L * f))) for f in (1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 4)] if L > 1 else [1])


def check_early_exit_support(model) -> None:
    """Raise :class:`ConfigError` unless transformers' ``assistant_early_exit`` drafts from layer k of ``model``.

    Two checks: the model type is one whose decoder loop is known to stop at ``config.num_hidden_layers``
    (:data:`SUPPORTED_MODEL_TYPES`), and a probe confirms it in the installed transformers: with
    ``num_hidden_layers`` lowered to 1 the backbone must return 2 hidden states (embeddings + one block).
    """
    import torch
    import transformers

    from lit_idpo.logprobs import find_head_path

    config = model.config
    model_type = getattr(config, "model_type", "?")
    supported = (f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)} (e.g. embedded:smollm2-135m-instruct, "
                 f"tiny-llama, tiny-qwen2); or set generation.draft_decoding false to measure agreement only")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"speculate: model type {model_type!r} ({type(model).__name__}) cannot draft from an "
                          f"early exit: its decoder loop in transformers {transformers.__version__} does not stop at "
                          f"the exit layer; {supported}")
    backbone = find_head_path(model).backbone
    layers = config.num_hidden_layers
    probe = torch.tensor([[1, 2]], device=model.device)
    config.num_hidden_layers = 1
    try:
        with torch.inference_mode():
            count = len(backbone(input_ids=probe, output_hidden_states=True, use_cache=False).hidden_states)
    finally:
        config.num_hidden_layers = layers
    if count != 2:
        raise ConfigError(f"speculate: {type(model).__name__} ({model_type!r}) ran {count - 1} blocks with "
                          f"num_hidden_layers=1, so transformers {transformers.__version__} cannot stop its decoder "
                          f"loop early; {supported}")


def _chunked_topk(rows, weight, k: int):
    """Top-``k`` of ``rows @ weight.T`` computed ``_CHUNK_ROWS`` rows at a time: (values, indices), [n, k] each."""
    import torch
    from torch.nn import functional as F

    values, indices = [], []
    for chunk in rows.split(_CHUNK_ROWS):
        top = torch.topk(F.linear(chunk, weight).float(), k, dim=-1)
        values.append(top.values)
        indices.append(top.indices)
    return torch.cat(values), torch.cat(indices)


def layer_agreement(model, sequence, prompt_length: int, layers: Sequence[int]):
    """Teacher-forced top-1 agreement of each layer's readout with the final layer, on one sequence.

    ``sequence`` is ``[1, P + R]`` (prompt, then R response tokens). One backbone forward gives every
    layer's hidden states; at the R positions that predict a response token, layer ``k``'s readout is
    ``argmax lm_head(final_norm(h_k))`` (as :mod:`lit_idpo.logprobs` reads a layer: Hugging Face's
    ``hidden_states[k]`` is after k blocks, and the last entry is already normed, so the final layer is
    never normed twice).

    Returns ``(matches, final_ids, final_gap)``: ``matches`` ``[len(layers), R]`` bool, whether each layer's
    arg-max equals the final layer's; ``final_ids`` ``[R]`` the final layer's arg-max; ``final_gap`` ``[R]``
    its top-1 minus top-2 logit (how near a tie each greedy choice was).
    """
    import torch

    from lit_idpo.logprobs import find_head_path

    path = find_head_path(model)
    start, end = prompt_length - 1, sequence.shape[1] - 1
    with torch.inference_mode():
        hidden = path.backbone(input_ids=sequence, output_hidden_states=True, use_cache=False).hidden_states
        weight = path.lm_head.weight
        top2, final_top = _chunked_topk(hidden[path.num_layers][0, start:end], weight, 2)
        final_ids = final_top[:, 0]
        matches = []
        for layer in layers:
            rows = hidden[layer][0, start:end]
            rows = rows if layer == path.num_layers else path.final_norm(rows)
            matches.append(_chunked_topk(rows, weight, 1)[1][:, 0] == final_ids)
    return torch.stack(matches), final_ids, top2[:, 0] - top2[:, 1]


def speculate(model: str, output_dir: Union[str, Path], *, layers: Union[str, Sequence[int]] = "auto",
              data: Optional[DataOptions] = None, options: Optional[SpeculateOptions] = None,
              progress: bool = True) -> Dict[str, Any]:
    """Measure each exit layer as a draft model; write ``speculate.json`` / ``.md`` / ``.png`` in ``output_dir``.

    Args:
        model: a model source (:mod:`lit_idpo.models`: a trained HF export directory, a Hub id,
            ``embedded:smollm2-135m-instruct``, ``tiny-llama``, ...; a LoRA adapter directory is merged).
        output_dir: where the results go.
        layers: exit layers (see :func:`resolve_exit_layers`).
        data: the prompt source (its held-out split); None: ``DataOptions()``.
        options: decoding settings; None: ``SpeculateOptions()``.
        progress: show a progress bar.

    Returns the results as written to ``speculate.json``. Raises :class:`OutputMismatchError` when an
    early-exit output differs from plain greedy decoding, and :class:`ConfigError` for a model whose
    decoder cannot stop early (:func:`check_early_exit_support`) when ``options.draft_decoding`` is set.
    """
    import torch
    import transformers

    from lit_idpo.data import truncate_prompt
    from lit_idpo.data.tokenize import render_prompt_ids
    from lit_idpo.evaluation._util import progress_bar
    from lit_idpo.evaluation.generation import _eos_ids, load_eval_model, resolve_device
    from lit_idpo.evaluation.prompts import load_prompts
    from lit_idpo.logprobs import find_head_path
    from lit_idpo.models import load_tokenizer
    from lit_idpo.speculate.report import mismatch_message, write_reports

    started = time.perf_counter()
    data = data if data is not None else DataOptions()
    options = options if options is not None else SpeculateOptions()
    device = resolve_device(options.device)
    lm = load_eval_model(model, options.dtype).to(device).eval()
    try:
        path = find_head_path(lm)
    except ValueError as err:
        raise ConfigError(f"speculate: {err}") from None
    if options.draft_decoding:
        check_early_exit_support(lm)
    exit_layers = resolve_exit_layers(layers, path.num_layers)
    tokenizer = load_tokenizer(model)
    prompts, prompt_stats = load_prompts(data)
    cuts = [truncate_prompt(render_prompt_ids(tokenizer, r.prompt), options.max_prompt_length, tokenizer.bos_token_id)
            for r in prompts]
    prompt_ids, truncated = [ids for ids, _ in cuts], sum(cut for _, cut in cuts)
    info("speculate", f"{len(prompts)} prompts from split {data.split!r} of {data.source!r}; exit layers "
                      f"{exit_layers} of {path.num_layers}; {options.num_assistant_tokens} draft tokens per round")

    eos = _eos_ids(lm, tokenizer)
    hf = TransformersDecoder(lm, eos, tokenizer.pad_token_id, tokenizer.bos_token_id, options.max_new_tokens,
                             options.num_assistant_tokens)
    n = len(exit_layers)
    counters, shared_stats = [DraftCounter() for _ in exit_layers], [DraftStats() for _ in exit_layers]
    # The timed decodings, each called as decode(ids, max_new_tokens=...) -> (new tokens, seconds). None is plain
    # greedy generate (the baseline every output must equal); "same_loop" is plain greedy through the shared-cache
    # loop's own code (zero drafts), so the loop's speed-up can be read apart from generate's own overhead.
    methods: Dict[Any, Callable[..., Tuple[List[int], float]]] = {None: hf.decode}
    if options.draft_decoding:
        for i, layer in enumerate(exit_layers if options.transformers_early_exit else []):
            methods["transformers", i] = functools.partial(hf.decode, layer=layer, counter=counters[i])
        if options.shared_cache:
            methods["same_loop"] = SharedCacheDecoder(lm, path.num_layers, 0, eos).decode
            for i, layer in enumerate(exit_layers):
                decoder = SharedCacheDecoder(lm, layer, options.num_assistant_tokens, eos)
                methods["shared_cache", i] = functools.partial(decoder.decode, stats=shared_stats[i])
    order, totals = list(methods), {key: [0, 0.0] for key in methods}  # key -> [tokens, seconds]
    matches, positions, final_vs_greedy = [0] * n, 0, 0
    with DraftSettings(lm, options.num_assistant_tokens):
        if options.warmup:  # one short untimed run of each, then the counts start from zero
            for decode in methods.values():
                decode(prompt_ids[0], max_new_tokens=min(8, options.max_new_tokens))
            for counter, stats in zip(counters, shared_stats):
                counter.reset()
                stats.reset()
        for p, ids in enumerate(progress_bar(prompt_ids, desc="speculate", enabled=progress, unit="prompt")):
            outputs: Dict[Any, List[int]] = {}
            shift = p % len(order)  # rotate the order, so no method always runs first (caches, clocks)
            for key in order[shift:] + order[:shift]:
                outputs[key], spent = methods[key](ids, max_new_tokens=options.max_new_tokens)
                totals[key][0] += len(outputs[key])
                totals[key][1] += spent
            plain = outputs[None]
            sequence = torch.tensor([ids + plain], device=device)
            agree, final_ids, gap = layer_agreement(lm, sequence, len(ids), exit_layers)
            matches = [m + int(row.sum()) for m, row in zip(matches, agree)]
            positions += len(plain)
            final_vs_greedy += int((final_ids.cpu() != torch.tensor(plain)).sum())
            for key in order[1:]:
                if outputs[key] != plain:
                    layer = path.num_layers if key == "same_loop" else exit_layers[key[1]]
                    how = ("transformers' assistant_early_exit" if key != "same_loop" and key[0] == "transformers"
                           else "the shared-cache loop")
                    raise OutputMismatchError(mismatch_message(
                        p, prompts[p].index, layer, plain, outputs[key], gap.cpu().tolist(), tokenizer,
                        near_tie=_NEAR_TIE[options.dtype], implementation=how))

    def rate(key) -> Optional[float]:
        return totals[key][0] / totals[key][1] if key in totals and totals[key][1] > 0 else None

    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a is not None and b else None

    baseline_tps, same_loop_tps = rate(None), rate("same_loop")
    per_layer = []
    for i, layer in enumerate(exit_layers):
        entry: Dict[str, Any] = {"layer": layer, "agreement": matches[i] / positions, "agreement_matches": matches[i],
                                 "agreement_positions": positions}
        if ("transformers", i) in totals:
            c, (made, spent), tps = counters[i], totals["transformers", i], rate(("transformers", i))
            entry.update(acceptance_rate=ratio(c.accepted, c.proposed), proposed=c.proposed, accepted=c.accepted,
                         rounds=c.rounds, tokens_per_round=ratio(made, c.rounds), tokens=made, seconds=round(spent, 4),
                         tokens_per_s=tps, baseline_tokens_per_s=baseline_tps, speedup=ratio(tps, baseline_tps),
                         identical=True)
        if ("shared_cache", i) in totals:
            s, (made, spent), tps = shared_stats[i], totals["shared_cache", i], rate(("shared_cache", i))
            entry["shared_cache"] = {
                "acceptance_rate": ratio(s.accepted, s.proposed), "proposed": s.proposed, "accepted": s.accepted,
                "rounds": s.rounds, "tokens_per_round": ratio(made, s.rounds), "tokens": made,
                "seconds": round(spent, 4), "tokens_per_s": tps, "speedup": ratio(tps, baseline_tps),
                "speedup_vs_same_loop": ratio(tps, same_loop_tps),
                # plain greedy runs every layer once per token; here a layer call may carry several tokens
                "layer_calls": s.layer_calls, "layer_call_speedup": ratio(s.tokens * path.num_layers, s.layer_calls),
                "identical": True}
        per_layer.append(entry)
    results: Dict[str, Any] = {
        "lit_idpo_speculate": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": model,
        "model_type": getattr(lm.config, "model_type", None), "num_layers": path.num_layers,
        "settings": dataclasses.asdict(options), "prompts": {**prompt_stats, "truncated": truncated},
        "baseline": {"tokens": totals[None][0], "seconds": round(totals[None][1], 4), "tokens_per_s": baseline_tps,
                     "same_loop_tokens_per_s": same_loop_tps},
        # positions where the teacher-forced forward's arg-max differs from the greedy token (near-ties)
        "final_vs_greedy_mismatches": final_vs_greedy,
        "machine": {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
                    else (platform.processor() or platform.machine()), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "python": platform.python_version(), "platform": platform.platform()},
        "layers": per_layer,
    }
    results["wall_time_s"] = round(time.perf_counter() - started, 1)
    write_reports(results, Path(output_dir))
    return results


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


DESCRIPTION = ("Each exit layer of a model as its own draft model (early-exit speculative decoding): teacher-forced "
               "top-1 agreement with the final layer, and greedy decoding with transformers' assistant_early_exit "
               "(acceptance rate, tokens/s and speed-up over plain greedy decoding; outputs must be identical). "
               "Options can come from a YAML file (--config; --print_config writes one).")


# jsonargparse reads the options and their defaults from this signature; run never mutates them.
def run(model: str, output_dir: str, layers: Union[str, List[int]] = "auto",
        data: DataOptions = DataOptions(), generation: SpeculateOptions = SpeculateOptions(),  # noqa: B008
        progress: bool = True) -> Dict[str, Any]:
    """Run ``lit-idpo speculate``: measure, print the markdown table, return the results.

    Args:
        model: the model source: a Hugging Face model directory written by fit (full or LoRA adapter), a Hub
            id, embedded:smollm2-135m-instruct, or tiny-llama / tiny-qwen2.
        output_dir: where speculate.json, speculate.md and speculate.png go.
        layers: exit layers: ``auto`` (about 1/4, 1/3, 1/2, 2/3, 3/4 of the depth), ``all``, or numbers
            (1..L; negative from the end) such as ``10,20`` (a list in a config file).
        data: the prompts: the held-out split of a preference data source (use data.limit for a quick run).
        generation: how the greedy and early-exit decodings run.
        progress: show a progress bar (``--progress false`` hides it).
    """
    from lit_idpo.speculate.report import format_markdown

    results = speculate(model, output_dir, layers=layers, data=data, options=generation, progress=progress)
    print(format_markdown(results))
    print(f"\nWritten: {Path(output_dir) / 'speculate.json'}, speculate.md, speculate.png "
          f"({results['wall_time_s']} s)")
    return results


def build_parser():
    """The ``lit-idpo speculate`` parser (jsonargparse, from :func:`run`'s signature and docstrings)."""
    parser = command_parser("speculate", DESCRIPTION, config_help="a YAML file of these options (see --print_config)")
    parser.add_function_arguments(run, skip={"progress"}, as_positional=False)
    add_progress_flag(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Entry point of ``lit-idpo speculate``; prints the markdown table and returns the results.

    Raises :class:`~lit_idpo.errors.ConfigError` for a bad option (``lit-idpo`` prints it as one line).
    """
    return run(**parse_command(build_parser(), argv, "speculate"))


if __name__ == "__main__":
    main()
