"""``lit-idpo evaluate``: the whole evaluation (:func:`evaluate`) and its command line (:func:`main`).

The steps: load the held-out prompts (:mod:`.prompts`), generate each model's responses with a cache
(:mod:`.generation`), judge every pair in both orders and summarise the win rates with intervals
(:mod:`.judging`, :mod:`.statistics`), optionally measure implicit-reward accuracy per layer
(:mod:`.implicit`, its log-probs cached per model by :mod:`.implicit_cache`, so that adding models
scores only the new ones), and write the report (:mod:`.reports`).

Outputs in ``output_dir``: ``results.json``, ``results.md`` (also printed), ``responses/<model>.jsonl``
(every response with its absolute score where the judge has one; with the rule judge, its score under
both answer readings) and ``judgments.jsonl`` (every verdict with its order and reason). Each model's
share of responses stopped at ``max_new_tokens`` is reported, with a warning above 5 %, and with the
rule judge how many responses the two answer readings score differently (:mod:`.audit`).

The command line is built by jsonargparse from :func:`run`'s signature and the option dataclasses'
docstrings, as ``fit`` is by LightningCLI: ``--config FILE.yaml``, ``--print_config``, nested options
(``--data.limit``, ``--generation.max_new_tokens``, ``--judge.name``, ``--judge.model``)::

    lit-idpo evaluate --model sft=embedded:smollm2-135m-instruct --model dpo=runs/dpo/hf_model \\
        --model idpo=runs/idpo/hf_model --data.source bundled:arithmetic --data.split test \\
        --judge.name rule --generation.max_new_tokens 32 --reference embedded:smollm2-135m-instruct \\
        --output_dir eval/arith

Older spellings still read: ``--judge rule`` (``--judge.name rule``) and ``none`` for null in
``--judge.temperature`` / ``--judge.max_tokens``. Bad options raise
:class:`~lit_idpo.errors.ConfigError`, which ``lit-idpo`` prints as one ``lit-idpo: error:`` line.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
from itertools import combinations
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from lit_idpo.errors import ConfigError, VerifierError, add_progress_flag, command_parser, parse_command
from lit_idpo.evaluation._util import info
from lit_idpo.evaluation.audit import reading_disagreements, response_profile, truncation_check
from lit_idpo.evaluation.generation import generate_responses
from lit_idpo.evaluation.implicit import implicit_reward_accuracy
from lit_idpo.evaluation.judge_factory import JUDGES, JudgeOptions
from lit_idpo.evaluation.judges import Judge
from lit_idpo.evaluation.judging import CI_METHOD, judge_pairs
from lit_idpo.evaluation.options import (
    DataOptions,
    GenerationOptions,
    ImplicitOptions,
    ModelSpec,
    parse_model_specs,
    slug,
)
from lit_idpo.evaluation.prompts import load_prompts
from lit_idpo.evaluation.reports import format_markdown
from lit_idpo.evaluation.statistics import score_summary
from lit_idpo.storage import atomic_write_json, atomic_write_text


def _check_pairs(names: List[str], pairs: Optional[Sequence[Tuple[str, str]]]) -> List[Tuple[str, str]]:
    pairs = list(combinations(names, 2)) if pairs is None else list(pairs)
    for a, b in pairs:
        for n in (a, b):
            if n not in names:
                raise ConfigError(f"pair ({a}, {b}) names {n!r}, which is not one of the models {names}")
        if a == b:
            raise ConfigError(f"pair ({a}, {b}) compares a model with itself")
    if not pairs:
        raise ConfigError("pairwise judging needs two or more models (give --model at least twice)")
    return pairs


def _score(judge: Judge, record, response: str, truncated: bool, model: str = "") -> Optional[float]:
    """The judge's absolute score of one response, telling it whether the response was cut, if it can be told.

    A judge written before ``score`` took ``truncated`` keeps working (it is simply not told). A
    verifier that fails on the response is named with the prompt's index in the split and the model.
    """
    try:
        if "truncated" in inspect.signature(judge.score).parameters:
            return judge.score(record.prompt, response, record.row, truncated=truncated)
        return judge.score(record.prompt, response, record.row)
    except VerifierError as err:
        raise VerifierError(f"prompt index {record.index}{f' (model {model})' if model else ''}: {err}") from err


def _jsonl(records: Sequence[Dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def evaluate(models: Sequence[ModelSpec], output_dir: Union[str, Path], *, judge: Optional[Judge] = None,
             data: Optional[DataOptions] = None, generation: Optional[GenerationOptions] = None,
             pairs: Optional[Sequence[Tuple[str, str]]] = None, reference: Optional[str] = None,
             implicit: Optional[ImplicitOptions] = None, cache_dir: Optional[Union[str, Path]] = None,
             confidence: float = 0.95, progress: bool = True) -> Dict[str, Any]:
    """Generate, judge every pair in both orders, and write ``results.json`` / ``results.md`` in ``output_dir``.

    Args:
        models: the models (two or more for pairwise judging).
        output_dir: where results, responses and verdicts are written.
        judge: the pairwise judge; None skips judging (then ``reference`` must be given).
        data: the prompt source (its held-out split); None: ``DataOptions()``.
        generation: generation settings; None: ``GenerationOptions()``.
        pairs: the (A, B) model-name pairs to judge; None: every pair, in the order ``models`` lists them.
        reference: a reference model source: adds the implicit-reward accuracy per layer of each other model.
        implicit: options of the implicit-reward accuracy; None: ``ImplicitOptions()``.
        cache_dir: where generations (and costly verdicts) and each model's implicit-reward log-probs are
            cached; None is ``<output_dir>/cache``.
        confidence: confidence level of the intervals.
        progress: show progress bars.

    Returns the results as written to ``results.json``.
    """
    started = time.perf_counter()
    data = data if data is not None else DataOptions()
    generation = generation if generation is not None else GenerationOptions()
    implicit = implicit if implicit is not None else ImplicitOptions()
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence={confidence}; it must be in (0, 1), e.g. 0.95")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be unique, got {names}")
    if judge is not None:
        pairs = _check_pairs(names, pairs)
    elif reference is None:
        raise ConfigError("nothing to do: give a judge (pairwise win rates) and/or a reference (implicit-reward "
                          "accuracy)")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else output_dir / "cache"

    prompts, prompt_stats = load_prompts(data)
    info(f"{len(prompts)} prompts from split {data.split!r} of {data.source!r}"
         + (f" (skipped {prompt_stats['skipped']})" if prompt_stats["skipped"] else ""))
    results: Dict[str, Any] = {
        "lit_idpo_evaluate": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "prompts": prompt_stats,
        "generation": dataclasses.asdict(generation), "judge": judge.describe() if judge else {"name": "none"},
        "confidence": confidence, "ci_method": CI_METHOD, "models": [], "pairs": [],
    }
    if judge is not None:
        responses: Dict[str, List[str]] = {}
        needed = {n for pair in pairs for n in pair}
        truncated: Dict[str, List[bool]] = {}
        for spec in models:
            if spec.name not in needed:
                continue
            gens, summary = generate_responses(spec, prompts, generation, cache, progress=progress)
            responses[spec.name] = [g.response for g in gens]
            truncated[spec.name] = [g.stopped == "length" for g in gens]
            scores = [_score(judge, r, g.response, cut, spec.name)
                      for r, g, cut in zip(prompts, gens, truncated[spec.name])]
            has_scores = all(s is not None for s in scores)
            readings = reading_disagreements(judge, prompts, responses[spec.name], truncated[spec.name])
            per_response = readings.pop("per_response") if readings else [None] * len(gens)
            atomic_write_text(output_dir / "responses" / f"{slug(spec.name)}.jsonl", _jsonl([
                {"prompt_index": record.index, "prompt": record.prompt, "response": gen.response,
                 "new_tokens": gen.new_tokens, "stopped": gen.stopped, "score": score,
                 **({"readings": both} if both is not None else {})}
                for record, gen, score, both in zip(prompts, gens, scores, per_response)]))
            results["models"].append({"name": spec.name, "source": spec.source, "generation": summary,
                                      "score": score_summary(scores, confidence) if has_scores else None,
                                      "responses": response_profile(prompts, responses[spec.name],
                                                                    truncated[spec.name]),
                                      **({"readings": readings} if readings else {})})
        results["truncation"] = truncation_check(results["models"], generation.max_new_tokens)
        if results["truncation"]["warning"]:
            info("WARNING: " + results["truncation"]["warning"])
        pair_results, records = judge_pairs(pairs, responses, prompts, judge, cache_dir=cache, confidence=confidence,
                                            progress=progress, truncated=truncated)
        results["pairs"] = [r.to_dict() for r in pair_results]
        atomic_write_text(output_dir / "judgments.jsonl", _jsonl(records))
    if reference is not None:
        results["implicit_reward"] = implicit_reward_accuracy(models, reference, data, implicit,
                                                              dtype=generation.dtype, device=generation.device,
                                                              progress=progress, cache_dir=cache)
    results["wall_time_s"] = round(time.perf_counter() - started, 1)
    atomic_write_json(output_dir / "results.json", results)
    atomic_write_text(output_dir / "results.md", format_markdown(results) + "\n")
    return results


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


DESCRIPTION = ("Pairwise win rates (both orders, ties = 1/2, 95 % t-interval over prompts) of two or more models "
               "on the held-out prompts of a preference data source, judged by a rule, an OpenAI-compatible chat "
               "model or a reward model; plus implicit-reward accuracy per layer against a reference. Options can "
               "come from a YAML file (--config; --print_config writes one).")


# jsonargparse reads the option groups and their defaults from this signature; run never mutates them.
def run(model: List[str], output_dir: str, data: DataOptions = DataOptions(),  # noqa: B008
        generation: GenerationOptions = GenerationOptions(), judge: JudgeOptions = JudgeOptions(),  # noqa: B008
        implicit: ImplicitOptions = ImplicitOptions(), pair: Optional[List[str]] = None,  # noqa: B008
        reference: Optional[str] = None, cache_dir: Optional[str] = None, confidence: float = 0.95,
        progress: bool = True) -> Dict[str, Any]:
    """Run ``lit-idpo evaluate``: evaluate the models, print the markdown report, return the results.

    Args:
        model: a model to evaluate, ``[NAME=]SOURCE`` (repeat --model; a list in a config file): a Hugging Face
            model directory written by fit (full or LoRA adapter), a Hub id, embedded:smollm2-135m-instruct, a
            .gguf file, or tiny-llama; NAME labels it.
        output_dir: where results.json, results.md, responses/ and judgments.jsonl go.
        data: the prompts: the held-out split of a preference data source.
        generation: how each model generates its responses.
        judge: the pairwise judge.
        implicit: implicit-reward accuracy per layer (with ``reference``).
        pair: judge only these model pairs, ``A,B`` (repeat); default: every pair.
        reference: a reference model source: also report each model's implicit-reward accuracy per layer.
        cache_dir: generation, paid-judge verdict and implicit-reward log-prob cache; default ``<output_dir>/cache``.
        confidence: confidence level of the intervals.
        progress: show progress bars (``--no_progress`` hides them).
    """
    models = parse_model_specs(model)
    if len(models) < 2 and reference is None:
        raise ConfigError("give --model at least twice (pairwise judging), or --reference for implicit-reward accuracy")
    pairs = None
    if pair:
        pairs = []
        for item in pair:
            a, sep, b = item.partition(",")
            if not sep:
                raise ConfigError(f"--pair {item!r}: write two model names separated by a comma, e.g. idpo,dpo")
            pairs.append((a.strip(), b.strip()))
    results = evaluate(models, output_dir, judge=judge.build(), data=data, generation=generation, pairs=pairs,
                       reference=reference, implicit=implicit, cache_dir=cache_dir, confidence=confidence,
                       progress=progress)
    print(format_markdown(results))
    print(f"\nWritten: {Path(output_dir) / 'results.json'}, {Path(output_dir) / 'results.md'} "
          f"({results['wall_time_s']} s)")
    return results


_NULL_WORDS = {"none", "None"}


def _legacy_argv(argv: Sequence[str]) -> List[str]:
    """Older spellings -> jsonargparse's: ``--model X`` appends (``--model+ X``), as does ``--pair``;
    ``--judge NAME`` is ``--judge.name NAME``; ``none`` is null for the judge's temperature / max_tokens."""
    out: List[str] = []
    items = list(argv)
    for i, arg in enumerate(items):
        flag, eq, value = arg.partition("=")
        if flag in ("--model", "--pair"):
            out.append(flag + "+" + eq + value)
        elif flag == "--judge" and (value if eq else next(iter(items[i + 1:]), "")) in JUDGES + ("none",):
            out.append("--judge.name" + eq + value)
        elif i > 0 and items[i - 1] in ("--judge.temperature", "--judge.max_tokens") and arg in _NULL_WORDS:
            out.append("null")
        elif flag in ("--judge.temperature", "--judge.max_tokens") and eq and value in _NULL_WORDS:
            out.append(flag + "=null")
        else:
            out.append(arg)
    return out


def build_parser():
    """The ``lit-idpo evaluate`` parser (jsonargparse, from :func:`run`'s signature and docstrings)."""
    from jsonargparse import ArgumentParser

    class EvaluateParser(ArgumentParser):
        def parse_args(self, args=None, *rest, **kwargs):  # reads the older spellings too
            return super().parse_args(None if args is None else _legacy_argv(args), *rest, **kwargs)

    parser = command_parser("evaluate", DESCRIPTION, config_help="a YAML file of these options (see --print_config)",
                            parser_class=EvaluateParser)
    parser.add_function_arguments(run, skip={"progress"}, as_positional=False)
    add_progress_flag(parser)
    return parser


def judge_from_args(args) -> Optional[Judge]:
    """The judge a parsed ``lit-idpo evaluate`` command line names (None for ``--judge.name none``)."""
    options = args.judge if isinstance(args.judge, JudgeOptions) else JudgeOptions(**dict(args.judge.items()))
    return options.build()


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Entry point of ``lit-idpo evaluate``; prints the markdown report and returns the results.

    Raises :class:`~lit_idpo.errors.ConfigError` for a bad option (``lit-idpo`` prints it as one line).
    """
    return run(**parse_command(build_parser(), argv, "evaluate"))


if __name__ == "__main__":
    main()
