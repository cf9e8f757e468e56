"""Pairwise judges: which of two responses to the same prompt is better.

Every judge answers one question through one method, :meth:`Judge.judge`: given a list of
:class:`Comparison` (a prompt, response A shown first, response B shown second, and the prompt's
source row), return one :class:`Verdict` per comparison: ``"A"``, ``"B"``, ``"tie"``, or no verdict
(``winner=None``, with the reason) when the judge could not give a usable one. The evaluation
(:mod:`lit_idpo.evaluation.judging`) asks every comparison in both orders, so a judge need not
correct its own position bias.

Judges:

- :class:`RuleJudge` (``rule``): for verifiable tasks. A response is right or wrong by the verifier
  of the bundled task its row belongs to (:mod:`lit_idpo.data.tasks`: ``bundled:arithmetic`` reads
  the result stated for the asked expression, the instructions task checks each constraint), or by
  the user's own (``judge.verifier: package.module:function``); the right one wins, both right or both
  wrong is a tie. Exact, free, no model.
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

from lit_idpo.data.tasks import TASK_FIELD, TASKS, task_of, task_verifier
from lit_idpo.data.tasks.arithmetic import is_correct as score_arithmetic
from lit_idpo.data.tasks.arithmetic_reading import DEFAULT_EXTRACTION, EXTRACTIONS
from lit_idpo.errors import ConfigError, UserError
from lit_idpo.evaluation.prompts import Prompt
from lit_idpo.evaluation.verifiers import EXAMPLE as VERIFIER_EXAMPLE
from lit_idpo.evaluation.verifiers import call_verifier, describe_row, load_verifier

WINNERS = ("A", "B", "tie")


@dataclass(frozen=True)
class Comparison:
    """One pairwise question: which of ``response_a`` (shown first) and ``response_b`` is better.

    ``prompt`` is the prompt as the data holds it (a string, or a list of chat messages); ``row`` is
    the prompt's source row, for judges that read extra fields (the rule judge's verifiers read ``answer``,
    ``constraints`` or whatever the user's own verifier needs).
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
    """Exact judge for verifiable tasks: a right response beats a wrong one; both right or both wrong tie.

    Right and wrong come from a verifier, ``is_correct(row, response, truncated) -> bool``:

    - with ``verifier`` (``judge.verifier: package.module:function``), the user's own, for every prompt,
      called with the prompt's whole source row (:mod:`lit_idpo.evaluation.verifiers`);
    - without it, the verifier of the bundled task each row belongs to (:mod:`lit_idpo.data.tasks`):
      its ``task`` field, else ``constraints`` -> the instructions task, else the answer field ->
      the arithmetic task (the result the response states for the asked ``a op b``). A row of no
      task is an error that names ``judge.verifier``. The bundled verifiers see the row with its
      ``prompt`` set to the prompt the model was shown.

    Args:
        answer_field: arithmetic: the row field holding the true integer answer (default ``answer``).
        extraction: arithmetic: how the stated answer is read (:mod:`lit_idpo.data.tasks.arithmetic_reading`):
            ``asked_expression`` (default; the result stated for the asked ``a op b``, every such result
            right, prompts ``"What is a op b? ..."``) or ``last_equation`` (the reading before issue 19:
            the first number after the last ``=``, else the last number; kept for comparison).
        verifier: ``package.module:function``, the user's verifier for every prompt (then
            ``answer_field`` and ``extraction``, which only the arithmetic task reads, may not be given).
    """

    name = "rule"

    def __init__(self, answer_field: Optional[str] = None, extraction: Optional[str] = None,
                 verifier: Optional[str] = None):
        if verifier is not None and (answer_field is not None or extraction is not None):
            given = [f"judge.{k}" for k, v in (("answer_field", answer_field), ("extraction", extraction)) if v]
            raise ConfigError(f"judge.verifier is set, so {' and '.join(given)} (read only by the bundled arithmetic "
                              f"task) would be ignored; remove {'them' if len(given) > 1 else 'it'}, or remove "
                              f"judge.verifier")
        extraction = DEFAULT_EXTRACTION if extraction is None else extraction
        if extraction not in EXTRACTIONS:
            raise ConfigError(f"judge.extraction={extraction!r} is unknown; choose one of {', '.join(EXTRACTIONS)} "
                              f"({DEFAULT_EXTRACTION} is the default)")
        self.answer_field = "answer" if answer_field is None else answer_field
        self.extraction = extraction
        self.verifier = verifier
        self._verifier = load_verifier(verifier) if verifier is not None else None

    def task_of(self, row: Mapping[str, Any]) -> str:
        """The bundled task whose verifier judges this row (``verifier`` when the user's own does)."""
        if self._verifier is not None:
            return "verifier"
        try:
            task = task_of(row, self.answer_field)
        except ValueError as err:
            raise ConfigError(f"rule judge: {err} ({describe_row(row)}); or name your own verifier with "
                              f"{VERIFIER_EXAMPLE}") from None
        if task is None:
            fields = sorted(row) if isinstance(row, Mapping) else row
            raise ConfigError(
                f"rule judge: the prompt row ({describe_row(row)}) belongs to no bundled task (fields: {fields}): it "
                f"has no {TASK_FIELD!r} field naming one of {', '.join(TASKS)}, no 'constraints' (instructions) "
                f"and no {self.answer_field!r} field (arithmetic). Name your own verifier with {VERIFIER_EXAMPLE}, "
                f"set judge.answer_field to the field that holds the arithmetic answer, or choose another judge "
                f"(openai, reward-model).")
        return task

    def is_correct(self, prompt: Prompt, response: str, row: Mapping[str, Any], *, truncated: bool = False,
                   extraction: Optional[str] = None) -> bool:
        """Whether the response is right, by the verifier this row gets (``extraction``: arithmetic's reading)."""
        if self._verifier is not None:
            return call_verifier(self._verifier, self.verifier, row, response, truncated)
        task = self.task_of(row)
        shown = {**row, "prompt": prompt}
        try:
            if task == "arithmetic":
                return score_arithmetic(shown, response, truncated, answer_field=self.answer_field,
                                        extraction=self.extraction if extraction is None else extraction)
            return bool(task_verifier(task)(shown, response, truncated))
        except UserError:
            raise
        except ValueError as err:  # a row the task cannot read (no integer answer, a prompt without "a op b")
            raise ConfigError(f"rule judge ({task} task): {err}") from None

    def score(self, prompt: Prompt, response: str, row: Mapping[str, Any], *, truncated: bool = False) -> float:
        return 1.0 if self.is_correct(prompt, response, row, truncated=truncated) else 0.0

    def score_with(self, extraction: str, prompt: Prompt, response: str, row: Mapping[str, Any], *,
                   truncated: bool = False) -> float:
        """The score (1.0 right, 0.0 wrong) under the named arithmetic reading, whichever this judge uses (audits)."""
        return 1.0 if self.is_correct(prompt, response, row, truncated=truncated, extraction=extraction) else 0.0

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
        if self.verifier is not None:
            return {"name": self.name, "verifier": self.verifier}
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
