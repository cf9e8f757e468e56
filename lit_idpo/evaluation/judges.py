"""Pairwise judges: which of two responses to the same prompt is better.

Every judge answers one question through one method, :meth:`Judge.judge`: given a list of
:class:`Comparison` (a prompt, response A shown first, response B shown second, and the prompt's
source row), return one :class:`Verdict` per comparison: ``"A"``, ``"B"``, ``"tie"``, or no verdict
(``winner=None``, with the reason) when the judge could not give a usable one. The evaluation
(:mod:`lit_idpo.evaluation.judging`) asks every comparison in both orders, so a judge need not
correct its own position bias.

Judges:

- :class:`RuleJudge` (``rule``): for verifiable tasks such as ``bundled:arithmetic``. A response is
  right when the result it states for the asked expression is the row's ``answer``
  (:func:`lit_idpo.evaluation.is_correct`; ``extraction: last_equation`` selects the older reading);
  the right one wins, both right or both wrong is a tie. Exact, free, no model.
- :class:`~lit_idpo.evaluation.openai_judge.OpenAIJudge` (``openai``): any OpenAI-compatible
  chat-completions server (its own module).
- :class:`RewardModelJudge` (``reward-model``): any Hugging Face sequence-classification model
  directory scores each response; the higher score wins.

:func:`lit_idpo.evaluation.judge_factory.build_judge` makes a judge from its name and options.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from lit_idpo.errors import ConfigError
from lit_idpo.evaluation.answer_reading import DEFAULT_EXTRACTION, EXTRACTIONS, score_response
from lit_idpo.evaluation.prompts import Prompt

WINNERS = ("A", "B", "tie")


@dataclass(frozen=True)
class Comparison:
    """One pairwise question: which of ``response_a`` (shown first) and ``response_b`` is better.

    ``prompt`` is the prompt as the data holds it (a string, or a list of chat messages); ``row`` is
    the prompt's source row, for judges that read extra fields (the rule judge reads ``answer``).
    ``truncated_a`` / ``truncated_b``: whether that response's generation stopped at its length limit
    (the rule judge then ignores a number cut at the end). Only the rule judge reads them, and it caches
    no verdicts, so they are not part of the verdict cache's key.
    """

    prompt: Prompt
    response_a: str
    response_b: str
    row: Mapping[str, Any] = field(default_factory=dict)
    truncated_a: bool = False
    truncated_b: bool = False


@dataclass(frozen=True)
class Verdict:
    """A judge's answer: ``winner`` is ``"A"``, ``"B"``, ``"tie"`` or None (no usable verdict; see ``reason``)."""

    winner: Optional[str]
    reason: str = ""

    def __post_init__(self):
        if self.winner is not None and self.winner not in WINNERS:
            raise ConfigError(f"Verdict.winner={self.winner!r}; it must be one of {WINNERS} or None")


class Judge(ABC):
    """The judge interface: :meth:`judge` a batch of comparisons; :meth:`describe` it for reports."""

    #: Short name used in reports and on the command line.
    name: str = "judge"
    #: Whether the evaluation should cache this judge's verdicts on disk (worth it when they cost money).
    cache_verdicts: bool = False

    @abstractmethod
    def judge(self, comparisons: Sequence[Comparison]) -> List[Verdict]:
        """One verdict per comparison, in order."""

    def describe(self) -> Dict[str, Any]:
        """The judge's settings as plain data, free of secrets (saved in results and cache keys)."""
        return {"name": self.name}

    def score(self, prompt: Prompt, response: str, row: Mapping[str, Any], *,
              truncated: bool = False) -> Optional[float]:
        """An absolute score of one response, if the judge has one (rule: 1.0 right / 0.0 wrong); else None.

        ``truncated``: the response's generation stopped at its length limit (``max_new_tokens``).
        """
        return None


# --------------------------------------------------------------------------------------------------
# Rule-based judge
# --------------------------------------------------------------------------------------------------


class RuleJudge(Judge):
    """Exact judge for verifiable tasks: the response that states the right answer wins.

    Args:
        answer_field: the row field holding the true integer answer (``answer`` in ``bundled:arithmetic``).
        extraction: how the stated answer is read (:mod:`lit_idpo.evaluation.answer_reading`):
            ``asked_expression`` (default; the result stated for the asked ``a op b``, every such result
            right, prompts ``"What is a op b? ..."``) or ``last_equation`` (the reading before issue 19:
            the first number after the last ``=``, else the last number; kept for comparison).
    """

    name = "rule"

    def __init__(self, answer_field: str = "answer", extraction: str = DEFAULT_EXTRACTION):
        if extraction not in EXTRACTIONS:
            raise ConfigError(f"judge.extraction={extraction!r} is unknown; choose one of {', '.join(EXTRACTIONS)} "
                              f"({DEFAULT_EXTRACTION} is the default)")
        self.answer_field = answer_field
        self.extraction = extraction

    def _answer(self, row: Mapping[str, Any]) -> int:
        value = row.get(self.answer_field) if isinstance(row, Mapping) else None
        if value is None or isinstance(value, bool):
            raise ConfigError(
                f"rule judge: the prompt row has no {self.answer_field!r} field "
                f"(fields: {sorted(row) if isinstance(row, Mapping) else row!r}); "
                f"the rule judge needs the true answer of every prompt. Use a verifiable source such as "
                f"bundled:arithmetic, set judge.answer_field to the field that holds the answer, or choose "
                f"another judge (openai, reward-model)."
            )
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"rule judge: field {self.answer_field!r} is {value!r}; it must be an integer "
                              f"answer.") from None

    def score(self, prompt: Prompt, response: str, row: Mapping[str, Any], *, truncated: bool = False) -> float:
        return self.score_with(self.extraction, prompt, response, row, truncated=truncated)

    def score_with(self, extraction: str, prompt: Prompt, response: str, row: Mapping[str, Any], *,
                   truncated: bool = False) -> float:
        """The score (1.0 right, 0.0 wrong) under the named reading, whichever this judge uses (for audits)."""
        answer = self._answer(row)
        try:
            right = score_response(response, answer, prompt=prompt, truncated=truncated, extraction=extraction)
        except ValueError as err:  # a prompt that asks no "a op b"
            raise ConfigError(f"rule judge: {err}") from None
        return 1.0 if right else 0.0

    def judge(self, comparisons: Sequence[Comparison]) -> List[Verdict]:
        verdicts = []
        for c in comparisons:
            a = self.score(c.prompt, c.response_a, c.row, truncated=c.truncated_a)
            b = self.score(c.prompt, c.response_b, c.row, truncated=c.truncated_b)
            if a == b:
                verdicts.append(Verdict("tie", "both right" if a else "both wrong"))
            else:
                verdicts.append(Verdict("A" if a > b else "B", "only A is right" if a > b else "only B is right"))
        return verdicts

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "answer_field": self.answer_field, "extraction": self.extraction}



# --------------------------------------------------------------------------------------------------
# Reward-model judge
# --------------------------------------------------------------------------------------------------


class RewardModelJudge(Judge):
    """Scores each response with a Hugging Face sequence-classification model; the higher score wins.

    The prompt and response are rendered with the reward model's own chat template (user turn, then
    assistant turn) when its tokenizer has one, else as ``prompt + "\\n\\n" + response``. Scores are
    cached per (prompt, response), so asking both orders costs one forward pass per response.

    Args:
        path: a local model directory (or Hub id) that ``AutoModelForSequenceClassification`` loads.
        label_index: for a model with one output (``num_labels == 1``) leave null: that logit is the
            score. For a classifier with several labels, the index of the label meaning "good"; the
            score is its log-probability.
        tie_margin: scores closer than this are a tie.
        batch_size: responses scored per forward pass.
        max_length: longer inputs are cut from the left (the response's end is kept); counted in
            :attr:`truncated`.
        dtype: weights' dtype (``float32``, ``bfloat16``, ``float16``).
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
    """

    name = "reward-model"

    def __init__(self, path: str, label_index: Optional[int] = None, tie_margin: float = 0.0, batch_size: int = 8,
                 max_length: int = 2048, dtype: str = "float32", device: str = "auto", trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from lit_idpo.models import parse_dtype

        if not path:
            raise ConfigError("judge.reward_model is empty; give a sequence-classification model directory or Hub id")
        if tie_margin < 0:
            raise ConfigError(f"judge.tie_margin={tie_margin}; it must be >= 0")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"judge.batch_size={batch_size!r}; it must be an integer >= 1")
        self.path = path
        self.tie_margin = float(tie_margin)
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=parse_dtype(dtype), trust_remote_code=trust_remote_code).to(self.device).eval()
        except (OSError, ValueError) as err:
            raise ConfigError(f"judge.reward_model={path!r} could not be loaded as a sequence-classification model "
                             f"with its tokenizer: {err}") from err
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.truncation_side = "left"
        num_labels = self.model.config.num_labels
        if num_labels == 1 and label_index not in (None, 0):
            raise ConfigError(f"judge.label_index={label_index}, but {path} has a single output; "
                              f"leave label_index null")
        if num_labels > 1 and (label_index is None or not 0 <= label_index < num_labels):
            raise ConfigError(f"judge.label_index={label_index!r}: {path} is a classifier with {num_labels} labels "
                             f"({self.model.config.id2label}); set judge.label_index to the label meaning 'good'")
        self.label_index = label_index
        self.has_template = bool(getattr(self.tokenizer, "chat_template", None))
        self._scores: Dict[str, float] = {}
        self.truncated = 0

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "path": self.path, "label_index": self.label_index, "tie_margin": self.tie_margin}

    def render(self, prompt: Prompt, response: str) -> str:
        """The text the reward model scores for one response."""
        if self.has_template:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            return self.tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                                      tokenize=False)
        if not isinstance(prompt, str):
            prompt = "\n\n".join(m["content"] for m in prompt)
        return f"{prompt}\n\n{response}"

    def _score_texts(self, texts: List[str]) -> List[float]:
        import torch

        missing = [t for t in dict.fromkeys(texts) if t not in self._scores]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start: start + self.batch_size]
            full = self.tokenizer(chunk, add_special_tokens=False)["input_ids"]
            self.truncated += sum(len(ids) > self.max_length for ids in full)
            encoded = self.tokenizer(chunk, add_special_tokens=False, padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.no_grad():
                logits = self.model(**encoded).logits.float()  # [b, num_labels]
            if self.label_index is None:
                scores = logits[:, 0]
            else:
                scores = torch.log_softmax(logits, dim=-1)[:, self.label_index]
            for text, value in zip(chunk, scores.tolist()):
                self._scores[text] = float(value)
        return [self._scores[t] for t in texts]

    def score(self, prompt: Prompt, response: str, row: Mapping[str, Any], *, truncated: bool = False) -> float:
        return self._score_texts([self.render(prompt, response)])[0]

    def judge(self, comparisons: Sequence[Comparison]) -> List[Verdict]:
        texts = []
        for c in comparisons:
            texts += [self.render(c.prompt, c.response_a), self.render(c.prompt, c.response_b)]
        scores = self._score_texts(texts)
        verdicts = []
        for i in range(len(comparisons)):
            a, b = scores[2 * i], scores[2 * i + 1]
            reason = f"scores A={a:.4f} B={b:.4f}"
            if abs(a - b) <= self.tie_margin:
                verdicts.append(Verdict("tie", reason))
            else:
                verdicts.append(Verdict("A" if a > b else "B", reason))
        return verdicts
