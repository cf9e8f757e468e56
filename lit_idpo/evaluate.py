"""Deprecated location; import from :mod:`lit_idpo.evaluation` (the command: :mod:`lit_idpo.evaluation.command`).

This module re-exports every public name it used to define, so existing imports keep working.
"""

from lit_idpo.evaluation import (
    CI_METHOD,
    JUDGES,
    Comparison,
    DataOptions,
    Generation,
    GenerationCache,
    GenerationOptions,
    ImplicitOptions,
    Interval,
    Judge,
    JudgeOptions,
    JudgmentCache,
    Message,
    ModelSpec,
    PairResult,
    Prompt,
    PromptRecord,
    Verdict,
    bootstrap_interval,
    build_judge,
    build_parser,
    evaluate,
    format_markdown,
    generate_responses,
    implicit_reward_accuracy,
    judge_from_args,
    judge_pairs,
    load_eval_model,
    load_prompts,
    main,
    mean_interval,
    model_fingerprint,
    parse_model_specs,
    regularized_beta,
    render_prompt_ids,
    resolve_implicit_layers,
    run,
    score_summary,
    summarize_verdicts,
    t_cdf,
    t_interval,
    t_quantile,
    wilson_interval,
)

__all__ = ["CI_METHOD", "JUDGES", "Comparison", "DataOptions", "Generation", "GenerationCache", "GenerationOptions",
           "ImplicitOptions", "Interval", "Judge", "JudgeOptions", "JudgmentCache", "Message", "ModelSpec",
           "PairResult", "Prompt", "PromptRecord", "Verdict", "bootstrap_interval", "build_judge", "build_parser",
           "evaluate", "format_markdown", "generate_responses", "implicit_reward_accuracy", "judge_from_args",
           "judge_pairs", "load_eval_model", "load_prompts", "main", "mean_interval", "model_fingerprint",
           "parse_model_specs", "regularized_beta", "render_prompt_ids", "resolve_implicit_layers", "run",
           "score_summary", "summarize_verdicts", "t_cdf", "t_interval", "t_quantile", "wilson_interval"]

if __name__ == "__main__":
    main()
