"""Deprecated location; import from :mod:`lit_idpo.evaluation` (the judges live in
:mod:`lit_idpo.evaluation.judges`, :mod:`lit_idpo.evaluation.openai_judge` and
:mod:`lit_idpo.evaluation.judge_factory`).

This module re-exports every public name it used to define, so existing imports keep working.
"""

from lit_idpo.evaluation import (
                                 JUDGE_PROMPT_VERSION,
                                 JUDGE_SYSTEM_PROMPT,
                                 JUDGE_USER_TEMPLATE,
                                 JUDGES,
                                 TOKEN_LIMIT_FIELDS,
                                 WINNERS,
                                 Comparison,
                                 Judge,
                                 JudgeAuthError,
                                 JudgeError,
                                 JudgeOptions,
                                 Message,
                                 OpenAIJudge,
                                 Prompt,
                                 RewardModelJudge,
                                 RuleJudge,
                                 Verdict,
                                 build_judge,
                                 parse_verdict,
                                 render_conversation,
)

__all__ = ["JUDGE_PROMPT_VERSION", "JUDGE_SYSTEM_PROMPT", "JUDGE_USER_TEMPLATE", "JUDGES", "TOKEN_LIMIT_FIELDS",
           "WINNERS", "Comparison", "Judge", "JudgeAuthError", "JudgeError", "JudgeOptions", "Message", "OpenAIJudge",
           "Prompt", "RewardModelJudge", "RuleJudge", "Verdict", "build_judge", "parse_verdict",
           "render_conversation"]
