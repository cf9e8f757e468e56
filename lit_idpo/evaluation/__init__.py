"""Evaluation of trained models: pairwise win rates with judges, and implicit-reward accuracy per layer.

One concern per module:

==================  ==========================================================================
``options``         :class:`DataOptions`, :class:`GenerationOptions`, :class:`ImplicitOptions`, model specs
``prompts``         the held-out prompts, read and rendered as the data module does
``generation``      responses per model, with the on-disk generation cache
``judges``          the judge interface, the ``rule`` and ``reward-model`` judges
``verifiers``       the rule judge's user verifier (``judge.verifier: package.module:function``)
``openai_judge``    the ``openai`` judge (any OpenAI-compatible chat-completions server)
``judge_factory``   :class:`JudgeOptions` and :func:`build_judge`
``audit``           truncation share per model, where the two answer readings disagree
``judging``         every pair in both orders, the verdict cache, win rates (:func:`summarize_verdicts`)
``statistics``      t / Wilson / bootstrap intervals (plain Python and NumPy, no torch)
``implicit``        implicit-reward accuracy per layer
``implicit_cache``  each model's implicit-reward log-probs, cached on disk per model
``reports``         the markdown report
``command``         :func:`evaluate` (the whole evaluation) and ``lit-idpo evaluate`` (:func:`main`)
==================  ==========================================================================

Every name below is importable from here; they are loaded on first use (PEP 562), so importing
``lit_idpo.evaluation.statistics`` loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lit_idpo import lazy_exports

# Public name -> the module that defines it.
_EXPORTS = {
    "bootstrap_interval": "lit_idpo.evaluation.statistics",
    "build_judge": "lit_idpo.evaluation.judge_factory",
    "build_parser": "lit_idpo.evaluation.command",
    "CI_METHOD": "lit_idpo.evaluation.judging",
    "Comparison": "lit_idpo.evaluation.judges",
    "DataOptions": "lit_idpo.evaluation.options",
    "DEFAULT_EXTRACTION": "lit_idpo.data.tasks.arithmetic_reading",
    "DEFAULT_MAX_TOKENS": "lit_idpo.evaluation.openai_judge",
    "DEFAULT_TEMPERATURE": "lit_idpo.evaluation.openai_judge",
    "evaluate": "lit_idpo.evaluation.command",
    "EXTRACTIONS": "lit_idpo.data.tasks.arithmetic_reading",
    "format_markdown": "lit_idpo.evaluation.reports",
    "generate_responses": "lit_idpo.evaluation.generation",
    "Generation": "lit_idpo.evaluation.generation",
    "GenerationCache": "lit_idpo.evaluation.generation",
    "GenerationOptions": "lit_idpo.evaluation.options",
    "implicit_reward_accuracy": "lit_idpo.evaluation.implicit",
    "ImplicitOptions": "lit_idpo.evaluation.options",
    "Interval": "lit_idpo.evaluation.statistics",
    "is_correct": "lit_idpo.data.tasks.arithmetic_reading",
    "is_correct_last_equation": "lit_idpo.data.tasks.arithmetic_reading",
    "Judge": "lit_idpo.evaluation.judges",
    "judge_from_args": "lit_idpo.evaluation.command",
    "judge_pairs": "lit_idpo.evaluation.judging",
    "JUDGE_PROMPT_VERSION": "lit_idpo.evaluation.openai_judge",
    "JUDGE_SYSTEM_PROMPT": "lit_idpo.evaluation.openai_judge",
    "JUDGE_USER_TEMPLATE": "lit_idpo.evaluation.openai_judge",
    "JudgeAuthError": "lit_idpo.evaluation.openai_judge",
    "JudgeError": "lit_idpo.evaluation.openai_judge",
    "JudgeOptions": "lit_idpo.evaluation.judge_factory",
    "JUDGES": "lit_idpo.evaluation.judge_factory",
    "JudgmentCache": "lit_idpo.evaluation.judging",
    "last_equation_answer": "lit_idpo.data.tasks.arithmetic_reading",
    "load_eval_model": "lit_idpo.evaluation.generation",
    "load_prompts": "lit_idpo.evaluation.prompts",
    "load_verifier": "lit_idpo.evaluation.verifiers",
    "LogprobCache": "lit_idpo.evaluation.implicit_cache",
    "main": "lit_idpo.evaluation.command",
    "mean_interval": "lit_idpo.evaluation.statistics",
    "Message": "lit_idpo.evaluation.prompts",
    "model_fingerprint": "lit_idpo.fingerprint",
    "ModelSpec": "lit_idpo.evaluation.options",
    "OpenAIJudge": "lit_idpo.evaluation.openai_judge",
    "PairResult": "lit_idpo.evaluation.judging",
    "parse_model_specs": "lit_idpo.evaluation.options",
    "parse_question": "lit_idpo.data.tasks.arithmetic_reading",
    "parse_verdict": "lit_idpo.evaluation.openai_judge",
    "Prompt": "lit_idpo.evaluation.prompts",
    "PromptRecord": "lit_idpo.evaluation.prompts",
    "read_answer": "lit_idpo.data.tasks.arithmetic_reading",
    "Reading": "lit_idpo.data.tasks.arithmetic_reading",
    "reading_disagreements": "lit_idpo.evaluation.audit",
    "regularized_beta": "lit_idpo.evaluation.statistics",
    "render_conversation": "lit_idpo.evaluation.openai_judge",
    "render_prompt_ids": "lit_idpo.data.tokenize",
    "resolve_device": "lit_idpo.evaluation.generation",
    "resolve_implicit_layers": "lit_idpo.evaluation.implicit",
    "RewardModelJudge": "lit_idpo.evaluation.judges",
    "RuleJudge": "lit_idpo.evaluation.judges",
    "run": "lit_idpo.evaluation.command",
    "score_response": "lit_idpo.data.tasks.arithmetic_reading",
    "score_summary": "lit_idpo.evaluation.statistics",
    "summarize_verdicts": "lit_idpo.evaluation.judging",
    "t_cdf": "lit_idpo.evaluation.statistics",
    "t_interval": "lit_idpo.evaluation.statistics",
    "t_quantile": "lit_idpo.evaluation.statistics",
    "TOKEN_LIMIT_FIELDS": "lit_idpo.evaluation.openai_judge",
    "truncation_check": "lit_idpo.evaluation.audit",
    "TRUNCATION_WARN_SHARE": "lit_idpo.evaluation.audit",
    "Verdict": "lit_idpo.evaluation.judges",
    "wilson_interval": "lit_idpo.evaluation.statistics",
    "WINNERS": "lit_idpo.evaluation.judges",
}

__all__ = [
    "bootstrap_interval",
    "build_judge",
    "build_parser",
    "CI_METHOD",
    "Comparison",
    "DataOptions",
    "DEFAULT_EXTRACTION",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TEMPERATURE",
    "evaluate",
    "EXTRACTIONS",
    "format_markdown",
    "generate_responses",
    "Generation",
    "GenerationCache",
    "GenerationOptions",
    "implicit_reward_accuracy",
    "ImplicitOptions",
    "Interval",
    "is_correct",
    "is_correct_last_equation",
    "Judge",
    "judge_from_args",
    "judge_pairs",
    "JUDGE_PROMPT_VERSION",
    "JUDGE_SYSTEM_PROMPT",
    "JUDGE_USER_TEMPLATE",
    "JudgeAuthError",
    "JudgeError",
    "JudgeOptions",
    "JUDGES",
    "JudgmentCache",
    "last_equation_answer",
    "load_eval_model",
    "load_prompts",
    "load_verifier",
    "LogprobCache",
    "main",
    "mean_interval",
    "Message",
    "model_fingerprint",
    "ModelSpec",
    "OpenAIJudge",
    "PairResult",
    "parse_model_specs",
    "parse_question",
    "parse_verdict",
    "Prompt",
    "PromptRecord",
    "read_answer",
    "Reading",
    "reading_disagreements",
    "regularized_beta",
    "render_conversation",
    "render_prompt_ids",
    "resolve_device",
    "resolve_implicit_layers",
    "RewardModelJudge",
    "RuleJudge",
    "run",
    "score_response",
    "score_summary",
    "summarize_verdicts",
    "t_cdf",
    "t_interval",
    "t_quantile",
    "TOKEN_LIMIT_FIELDS",
    "truncation_check",
    "TRUNCATION_WARN_SHARE",
    "Verdict",
    "wilson_interval",
    "WINNERS",
]

if TYPE_CHECKING:  # static analysers see the names; nothing is imported at run time
    from lit_idpo.data.tasks.arithmetic_reading import (
        DEFAULT_EXTRACTION,
        EXTRACTIONS,
        Reading,
        is_correct,
        is_correct_last_equation,
        last_equation_answer,
        parse_question,
        read_answer,
        score_response,
    )
    from lit_idpo.data.tokenize import render_prompt_ids
    from lit_idpo.evaluation.audit import TRUNCATION_WARN_SHARE, reading_disagreements, truncation_check
    from lit_idpo.evaluation.command import build_parser, evaluate, judge_from_args, main, run
    from lit_idpo.evaluation.generation import (
        Generation,
        GenerationCache,
        generate_responses,
        load_eval_model,
        resolve_device,
    )
    from lit_idpo.evaluation.implicit import implicit_reward_accuracy, resolve_implicit_layers
    from lit_idpo.evaluation.implicit_cache import LogprobCache
    from lit_idpo.evaluation.judge_factory import JUDGES, JudgeOptions, build_judge
    from lit_idpo.evaluation.judges import WINNERS, Comparison, Judge, RewardModelJudge, RuleJudge, Verdict
    from lit_idpo.evaluation.judging import CI_METHOD, JudgmentCache, PairResult, judge_pairs, summarize_verdicts
    from lit_idpo.evaluation.openai_judge import (
        DEFAULT_MAX_TOKENS,
        DEFAULT_TEMPERATURE,
        JUDGE_PROMPT_VERSION,
        JUDGE_SYSTEM_PROMPT,
        JUDGE_USER_TEMPLATE,
        TOKEN_LIMIT_FIELDS,
        JudgeAuthError,
        JudgeError,
        OpenAIJudge,
        parse_verdict,
        render_conversation,
    )
    from lit_idpo.evaluation.options import (
        DataOptions,
        GenerationOptions,
        ImplicitOptions,
        ModelSpec,
        parse_model_specs,
    )
    from lit_idpo.evaluation.prompts import Message, Prompt, PromptRecord, load_prompts
    from lit_idpo.evaluation.reports import format_markdown
    from lit_idpo.evaluation.statistics import (
        Interval,
        bootstrap_interval,
        mean_interval,
        regularized_beta,
        score_summary,
        t_cdf,
        t_interval,
        t_quantile,
        wilson_interval,
    )
    from lit_idpo.evaluation.verifiers import load_verifier
    from lit_idpo.fingerprint import model_fingerprint


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
