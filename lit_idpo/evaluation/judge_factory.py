"""Choosing a judge: its name and options (``--judge.name``, ``--judge.model``, ...) -> a :class:`Judge`.

:class:`JudgeOptions` is the ``judge`` group of ``lit-idpo evaluate`` (one flat group: each option
says which judge reads it); :func:`build_judge` makes a judge from a name and keyword options (what
the sweep's ``evaluate.judge`` mapping gives). An unknown judge, or an option the chosen judge does
not take, is a :class:`~lit_idpo.errors.ConfigError` naming it and what to do instead.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Dict, Optional

from lit_idpo.errors import ConfigError
from lit_idpo.evaluation.judges import Judge, RewardModelJudge, RuleJudge
from lit_idpo.evaluation.openai_judge import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, OpenAIJudge

JUDGES = ("rule", "openai", "reward-model")
_CLASSES = {"rule": RuleJudge, "openai": OpenAIJudge, "reward-model": RewardModelJudge}


def build_judge(name: str, **options: Any) -> Judge:
    """Make a judge from its name (``rule``, ``openai``, ``reward-model``) and its options.

    Options that are None are left at the judge's default, except the judge's ``nullable_options``
    (the OpenAI judge's ``temperature`` and ``max_tokens``: null sends none); an option the judge
    does not take is an error naming it. ``reward-model`` takes its model directory as ``reward_model`` (or ``path``).
    """
    if name not in _CLASSES:
        raise ConfigError(f"judge={name!r} is unknown; choose one of {', '.join(JUDGES)} (judge.name)")
    cls = _CLASSES[name]
    # None means "not given", except for options where null has a meaning of its own ("send none").
    nullable = getattr(cls, "nullable_options", ())
    options = {k: v for k, v in options.items() if v is not None or k in nullable}
    if name == "reward-model" and "reward_model" in options:
        options["path"] = options.pop("reward_model")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"judge {name!r} does not take option(s) {unknown}; it takes {sorted(accepted)}. "
                          f"Remove them, or choose the judge they belong to.")
    return cls(**options)


@dataclass
class JudgeOptions:
    """The pairwise judge and its options (each option names the judge that reads it).

    Args:
        name: ``rule`` (verifiable tasks: a program checks each response), ``openai`` (an
            OpenAI-compatible chat-completions server), ``reward-model`` (a sequence-classification
            model), or ``none`` (no judging; then give ``reference``).
        verifier: rule: your own verifier, ``package.module:function``, for data of your own: a function
            ``function(row, response, truncated) -> bool`` called for every response with the prompt's
            whole source row (every field of the data), the response, and whether it stopped at
            ``generation.max_new_tokens``; True means right. E.g. ``verifier: my_checks:is_correct`` with
            ``def is_correct(row, response, truncated): return row["expected"] in response`` in
            ``my_checks.py`` (in the working directory or on PYTHONPATH). Default: the verifier of the
            bundled task each row belongs to (its ``task`` field; ``constraints``: the instructions task;
            an ``answer``: arithmetic). A verifier that cannot be imported, raises, or returns a non-bool
            is a one-line error naming it.
        answer_field: rule, arithmetic task: the row field with the true answer (default ``answer``).
        extraction: rule, arithmetic task: how a response's answer is read: ``asked_expression``
            (default: the result it states for the asked ``a op b``, every such result right; prompts
            ``What is a op b? ...``) or ``last_equation`` (the older reading: the first number after the
            last ``=``, else the last number). Named in every report.
        base_url: openai: the API root, e.g. ``https://api.openai.com/v1`` (required).
        model: openai: the judge model's name on that server, e.g. ``gpt-4o`` (required).
        api_key_env: openai: the environment variable holding the API key (default
            ``OPENAI_API_KEY``; ``''`` sends none). The key itself is never accepted as an option.
        timeout: openai: seconds to wait for one reply (default 60).
        max_retries: openai: retries on 429 / 5xx / network errors (default 5).
        parse_retries: openai: extra attempts when a reply has no readable verdict (default 1).
        workers: openai: requests in flight at once (default 4).
        temperature: openai: the judge's sampling temperature; null sends none (for models that
            accept only their default).
        max_tokens: openai: the reply length limit; null sends none.
        token_limit_field: openai: the request field for the length limit: ``auto`` (default:
            ``max_tokens``, switching to ``max_completion_tokens`` when the server asks for it),
            ``max_tokens`` or ``max_completion_tokens``.
        reward_model: reward-model: a sequence-classification model directory or Hub id (required).
        label_index: reward-model: the index of the "good" label of a multi-label classifier.
        tie_margin: reward-model: scores closer than this tie (default 0).
        batch_size: reward-model: responses scored per forward pass (default 8).
        dtype: reward-model: weights' dtype (default ``float32``).
        device: reward-model: ``auto`` (default), ``cpu`` or ``cuda``.
    """

    name: str = "rule"
    verifier: Optional[str] = None
    answer_field: Optional[str] = None
    extraction: Optional[str] = None
    base_url: Optional[str] = None
    model: Optional[str] = None
    api_key_env: Optional[str] = None
    timeout: Optional[float] = None
    max_retries: Optional[int] = None
    parse_retries: Optional[int] = None
    workers: Optional[int] = None
    temperature: Optional[float] = DEFAULT_TEMPERATURE
    max_tokens: Optional[int] = DEFAULT_MAX_TOKENS
    token_limit_field: Optional[str] = None
    reward_model: Optional[str] = None
    label_index: Optional[int] = None
    tie_margin: Optional[float] = None
    batch_size: Optional[int] = None
    dtype: Optional[str] = None
    device: Optional[str] = None

    def __post_init__(self):
        if self.name not in JUDGES + ("none",):
            raise ConfigError(f"judge.name={self.name!r} is unknown; choose one of {', '.join(JUDGES)} or none")

    def given(self) -> Dict[str, Any]:
        """The options set away from their defaults (what the chosen judge must accept)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name" and v != defaults[k]}

    def build(self) -> Optional[Judge]:
        """The judge (None for ``none``); a required option missing or another judge's option is a ConfigError."""
        if self.name == "none":
            if self.given():
                raise ConfigError(f"judge.name is none, but judge option(s) {sorted(self.given())} are set; "
                                  f"remove them or choose a judge")
            return None
        options = self.given()
        if self.name == "openai":
            for key in ("base_url", "model"):
                if not options.get(key):
                    raise ConfigError(f"the openai judge needs judge.{key} (e.g. --judge.{key} "
                                      f"{'https://api.openai.com/v1' if key == 'base_url' else 'gpt-4o'})")
            # Always passed: their defaults here are the judge's own, and null means "send none".
            options.update(temperature=self.temperature, max_tokens=self.max_tokens)
        if self.name == "reward-model" and not options.get("reward_model"):
            raise ConfigError("the reward-model judge needs judge.reward_model (a sequence-classification model "
                              "directory or Hub id)")
        accepted = set(inspect.signature(_CLASSES[self.name].__init__).parameters) | {"reward_model"}
        foreign = sorted(set(options) - accepted)
        if foreign:
            raise ConfigError(f"judge.name is {self.name}, which does not read judge option(s) "
                              f"{', '.join('judge.' + k for k in foreign)}; remove them, or set judge.name to the "
                              f"judge they belong to (see lit-idpo evaluate --help)")
        return build_judge(self.name, **options)
