"""Pairwise judges: which of two responses to the same prompt is better.

Every judge answers one question through one method, :meth:`Judge.judge`: given a list of
:class:`Comparison` (a prompt, response A shown first, response B shown second, and the prompt's
source row), return one :class:`Verdict` per comparison: ``"A"``, ``"B"``, ``"tie"``, or no verdict
(``winner=None``, with the reason) when the judge could not give a usable one. The evaluation
(:mod:`lit_idpo.evaluate`) asks every comparison in both orders, so a judge need not correct its own
position bias.

Judges:

- :class:`RuleJudge` (``rule``): for verifiable tasks such as ``bundled:arithmetic``. A response is
  right when it states the row's ``answer`` (:func:`lit_idpo.bundled.is_correct`); the right one wins,
  both right or both wrong is a tie. Exact, free, no model.
- :class:`OpenAIJudge` (``openai``): any OpenAI-compatible chat-completions server (OpenAI, vLLM,
  llama.cpp, ...). The API key is read from an environment variable, sent only in the
  ``Authorization`` header, and never logged, printed or saved. Retries with exponential backoff on
  429 and 5xx answers and on network errors; bad credentials (401/403) stop the run at once with a
  clear error; a reply without a readable verdict is retried, then recorded as no verdict.
- :class:`RewardModelJudge` (``reward-model``): any Hugging Face sequence-classification model
  directory scores each response; the higher score wins.

:func:`build_judge` makes a judge from its name and options (what ``lit-idpo evaluate --judge``
and the sweep configs use).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

log = logging.getLogger(__name__)

Message = Dict[str, str]
Prompt = Union[str, List[Message]]
WINNERS = ("A", "B", "tie")


@dataclass(frozen=True)
class Comparison:
    """One pairwise question: which of ``response_a`` (shown first) and ``response_b`` is better.

    ``prompt`` is the prompt as the data holds it (a string, or a list of chat messages); ``row`` is
    the prompt's source row, for judges that read extra fields (the rule judge reads ``answer``).
    """

    prompt: Prompt
    response_a: str
    response_b: str
    row: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """A judge's answer: ``winner`` is ``"A"``, ``"B"``, ``"tie"`` or None (no usable verdict; see ``reason``)."""

    winner: Optional[str]
    reason: str = ""

    def __post_init__(self):
        if self.winner is not None and self.winner not in WINNERS:
            raise ValueError(f"Verdict.winner={self.winner!r}; it must be one of {WINNERS} or None")


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

    def score(self, prompt: Prompt, response: str, row: Mapping[str, Any]) -> Optional[float]:
        """An absolute score of one response, if the judge has one (rule: 1.0 right / 0.0 wrong); else None."""
        return None


# --------------------------------------------------------------------------------------------------
# Rule-based judge
# --------------------------------------------------------------------------------------------------


class RuleJudge(Judge):
    """Exact judge for verifiable tasks: the response that states the right answer wins.

    Args:
        answer_field: the row field holding the true integer answer (``answer`` in ``bundled:arithmetic``).
    """

    name = "rule"

    def __init__(self, answer_field: str = "answer"):
        self.answer_field = answer_field

    def _answer(self, row: Mapping[str, Any]) -> int:
        value = row.get(self.answer_field) if isinstance(row, Mapping) else None
        if value is None or isinstance(value, bool):
            raise ValueError(
                f"rule judge: the prompt row has no {self.answer_field!r} field (fields: {sorted(row) if isinstance(row, Mapping) else row!r}); "
                f"the rule judge needs the true answer of every prompt. Use a verifiable source such as "
                f"bundled:arithmetic, set judge.answer_field to the field that holds the answer, or choose "
                f"another judge (openai, reward-model)."
            )
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"rule judge: field {self.answer_field!r} is {value!r}; it must be an integer answer.") from None

    def score(self, prompt: Prompt, response: str, row: Mapping[str, Any]) -> float:
        from lit_idpo.bundled import is_correct

        return 1.0 if is_correct(response, self._answer(row)) else 0.0

    def judge(self, comparisons: Sequence[Comparison]) -> List[Verdict]:
        verdicts = []
        for c in comparisons:
            a = self.score(c.prompt, c.response_a, c.row)
            b = self.score(c.prompt, c.response_b, c.row)
            if a == b:
                verdicts.append(Verdict("tie", "both right" if a else "both wrong"))
            else:
                verdicts.append(Verdict("A" if a > b else "B", "only A is right" if a > b else "only B is right"))
        return verdicts

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "answer_field": self.answer_field}


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible chat-completions judge
# --------------------------------------------------------------------------------------------------

JUDGE_SYSTEM_PROMPT = (
    "You are an impartial judge of AI assistants. You read one user request and two responses to it, "
    "and decide which response serves the user better: which follows the request, is correct, is "
    "relevant and useful, and is clear. Accuracy matters more than style. Do not favour a response "
    "because of where it is shown, because it is longer, or because of how confident it sounds."
)

JUDGE_USER_TEMPLATE = """{conversation}

[Response A]
{response_a}
[End of response A]

[Response B]
{response_b}
[End of response B]

Compare the two responses to the request above. Explain your reasoning in at most three sentences. \
Then write your verdict alone on the last line, exactly as one of:
Verdict: A
Verdict: B
Verdict: tie
("tie" only if neither response is better than the other)."""

#: Bump when the prompt text changes, so cached verdicts of an older prompt are not reused.
JUDGE_PROMPT_VERSION = 1
TOKEN_LIMIT_FIELDS = ("auto", "max_tokens", "max_completion_tokens")

_VERDICT_LINE = re.compile(r"verdict\s*[:\-]\s*\**\s*\[?\s*(A|B|tie)\b", re.IGNORECASE)
_BARE_VERDICT = re.compile(r"^\W*(A|B|tie)\W*$", re.IGNORECASE)


class JudgeError(RuntimeError):
    """A judge request that failed for good (after retries, or one that retrying cannot fix)."""


class JudgeAuthError(JudgeError):
    """The judge's server refused the credentials (HTTP 401 / 403)."""


class _MalformedReply(Exception):
    pass


class _WantsCompletionTokens(Exception):
    """HTTP 400 whose message asks for ``max_completion_tokens`` instead of ``max_tokens``."""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.retry_after = retry_after


def render_conversation(prompt: Prompt) -> str:
    """The prompt as the judge reads it: a string as the user's request; messages turn by turn."""
    if isinstance(prompt, str):
        return f"[User request]\n{prompt}\n[End of user request]"
    lines = ["[Conversation so far; the responses continue it as the assistant]"]
    for message in prompt:
        lines.append(f"{message.get('role', 'user').capitalize()}: {message.get('content', '')}")
    lines.append("[End of conversation]")
    return "\n".join(lines)


def parse_verdict(reply: str) -> Optional[str]:
    """Read ``A``, ``B`` or ``tie`` from a judge reply (its last ``Verdict:`` line, or a bare answer); None if absent."""
    matches = _VERDICT_LINE.findall(reply)
    if matches:
        found = matches[-1]
    else:
        bare = _BARE_VERDICT.match(reply.strip())
        if not bare:
            return None
        found = bare.group(1)
    return "tie" if found.lower() == "tie" else found.upper()


class OpenAIJudge(Judge):
    """A pairwise judge behind any OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        base_url: the API root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``;
            requests go to ``<base_url>/chat/completions``.
        model: the judge model's name on that server (e.g. ``gpt-4o``).
        api_key_env: name of the environment variable holding the API key. The key is sent only as
            ``Authorization: Bearer ...`` and never logged or saved. ``""``: send no key (a local
            server without authentication).
        timeout: seconds to wait for one reply before retrying.
        max_retries: retries after a 429, a 5xx, a timeout or a network error (then the run stops).
        backoff: first retry waits this many seconds, each later one twice as long (a server's
            ``Retry-After`` header is honoured), at most ``max_backoff``.
        max_backoff: longest wait between two attempts, seconds.
        parse_retries: extra attempts when a reply holds no readable verdict; after them the
            comparison is recorded as no verdict (counted in the report).
        temperature: sampling temperature of the judge (0: as deterministic as the server allows);
            null sends none (reasoning models such as OpenAI's o-series accept only their default).
        max_tokens: reply length limit sent to the server; null sends none.
        token_limit_field: the request field that carries ``max_tokens``: ``"max_tokens"`` (what
            OpenAI-compatible servers such as vLLM or llama.cpp read), ``"max_completion_tokens"``
            (what OpenAI's reasoning models require), or ``"auto"``: send ``max_tokens`` and, if the
            server answers HTTP 400 asking for ``max_completion_tokens``, switch to it for this and
            every later request.
        workers: requests in flight at once.
    """

    name = "openai"
    cache_verdicts = True
    #: Options where null means "send none" rather than "use the default" (see build_judge).
    nullable_options = ("temperature", "max_tokens")

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        parse_retries: int = 1,
        temperature: Optional[float] = 0.0,
        max_tokens: Optional[int] = 512,
        token_limit_field: str = "auto",
        workers: int = 4,
    ):
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge.base_url={base_url!r}; give the API root with its scheme, e.g. "
                             f"https://api.openai.com/v1 or http://127.0.0.1:8000/v1")
        if not model:
            raise ValueError("judge.model is empty; give the judge model's name on the server (e.g. gpt-4o)")
        for name, value, least in (("max_retries", max_retries, 0), ("parse_retries", parse_retries, 0), ("workers", workers, 1)):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"judge.{name}={value!r}; it must be an integer >= {least}")
        if timeout <= 0:
            raise ValueError(f"judge.timeout={timeout}; it must be > 0 seconds")
        if token_limit_field not in TOKEN_LIMIT_FIELDS:
            raise ValueError(f"judge.token_limit_field={token_limit_field!r}; choose one of {TOKEN_LIMIT_FIELDS}")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ValueError(f"judge.max_tokens={max_tokens!r}; it must be a positive integer, or null to send none")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.parse_retries = parse_retries
        self.temperature = None if temperature is None else float(temperature)
        self.max_tokens = max_tokens
        self.token_limit_field = token_limit_field
        # The field actually sent; "auto" starts with max_tokens and may switch once (see _body).
        self._limit_field = "max_tokens" if token_limit_field == "auto" else token_limit_field
        self.workers = workers
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ValueError(
                    f"judge.api_key_env: the environment variable {api_key_env} is not set (or empty). Export the "
                    f"judge's API key in it (export {api_key_env}=...), name another variable with "
                    f"judge.api_key_env, or set judge.api_key_env to '' for a server without authentication."
                )
            self.__key: Optional[str] = key
        else:
            self.__key = None
        #: Replaced in tests to skip real waiting.
        self.sleep: Callable[[float], None] = time.sleep
        self._lock = threading.Lock()
        self.requests_sent = 0

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIJudge(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "base_url": self.base_url, "model": self.model, "api_key_env": self.api_key_env,
                "temperature": self.temperature, "max_tokens": self.max_tokens, "prompt_version": JUDGE_PROMPT_VERSION}

    def _body(self, comparison: Comparison) -> Dict[str, Any]:
        body: Dict[str, Any] = {"model": self.model, "messages": self.messages(comparison)}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body[self._limit_field] = self.max_tokens
        return body

    def messages(self, comparison: Comparison) -> List[Message]:
        """The chat messages sent for one comparison."""
        user = JUDGE_USER_TEMPLATE.format(conversation=render_conversation(comparison.prompt),
                                          response_a=comparison.response_a, response_b=comparison.response_b)
        return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]

    def _scrub(self, text: str) -> str:
        return text.replace(self.__key, "***") if self.__key else text

    def _post(self, body: Dict[str, Any]) -> str:
        """One HTTP request; returns the reply's text or raises _Retryable / _MalformedReply / JudgeError."""
        url = self.base_url + "/chat/completions"
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "lit-idpo-judge"}
        if self.__key:
            headers["Authorization"] = "Bearer " + self.__key
        request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
        with self._lock:
            self.requests_sent += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = self._scrub(err.read()[:300].decode("utf-8", "replace")) if err.fp is not None else ""
            if err.code in (401, 403):
                raise JudgeAuthError(
                    f"judge: {url} refused the credentials (HTTP {err.code}). Check the API key in the environment "
                    f"variable {self.api_key_env or '(none: judge.api_key_env is empty)'} (its value is not shown) and "
                    f"that it may use model {self.model!r}. Server said: {detail!r}"
                ) from None
            if err.code == 429 or err.code >= 500:
                retry_after = None
                header = err.headers.get("Retry-After") if err.headers is not None else None
                if header:
                    try:
                        retry_after = float(header)
                    except ValueError:
                        retry_after = None
                raise _Retryable(f"HTTP {err.code} {detail!r}", retry_after) from None
            if err.code == 400 and "max_completion_tokens" in detail and "max_tokens" in body:
                raise _WantsCompletionTokens(detail) from None
            hint = ""
            if err.code == 400 and "temperature" in detail and "temperature" in body:
                hint = " If the model accepts only its default temperature, set judge.temperature to null."
            raise JudgeError(f"judge: {url} answered HTTP {err.code}: {detail!r}. Check judge.base_url and "
                             f"judge.model ({self.model!r}).{hint}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise _Retryable(f"network error: {self._scrub(str(reason))}") from None
        try:
            payload = json.loads(raw.decode("utf-8"))
            content = payload["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError):
            raise _MalformedReply(f"the reply is not a chat completion: {self._scrub(raw[:200].decode('utf-8', 'replace'))!r}") from None
        if not isinstance(content, str):
            raise _MalformedReply(f"the reply's message content is {type(content).__name__}, not text")
        return content

    def _request(self, body: Dict[str, Any]) -> str:
        """POST with retries on 429 / 5xx / network errors (exponential backoff)."""
        attempt = 0
        while True:
            try:
                return self._post(body)
            except _Retryable as err:
                if attempt >= self.max_retries:
                    raise JudgeError(f"judge: {self.base_url}/chat/completions still failing after {attempt + 1} "
                                     f"attempts (last: {err}). Try later, or raise judge.max_retries / judge.timeout.") from None
                wait = min(self.max_backoff, self.backoff * (2 ** attempt))
                if err.retry_after is not None:
                    wait = min(self.max_backoff, max(wait, err.retry_after))
                wait *= 1.0 + 0.1 * random.random()  # a little jitter, so parallel workers do not retry in step
                log.warning("judge: %s; retrying in %.1f s (attempt %d of %d)", err, wait, attempt + 2, self.max_retries + 1)
                self.sleep(wait)
                attempt += 1

    def _ask(self, comparison: Comparison) -> str:
        """One comparison's reply text, switching the token-limit field once if the server asks for it."""
        try:
            return self._request(self._body(comparison))
        except _WantsCompletionTokens as err:
            if self.token_limit_field != "auto":
                raise JudgeError(f"judge: the server refuses 'max_tokens' and asks for 'max_completion_tokens' "
                                 f"({err}); set judge.token_limit_field to max_completion_tokens or auto.") from None
            with self._lock:
                if self._limit_field != "max_completion_tokens":
                    log.warning("judge: %s asks for max_completion_tokens instead of max_tokens; sending that "
                                "from now on", self.model)
                    self._limit_field = "max_completion_tokens"
            return self._request(self._body(comparison))

    def judge_one(self, comparison: Comparison) -> Verdict:
        """Ask the server about one comparison."""
        problem = ""
        for _ in range(self.parse_retries + 1):
            try:
                reply = self._ask(comparison)
            except _MalformedReply as err:
                problem = str(err)
                continue
            winner = parse_verdict(reply)
            if winner is not None:
                return Verdict(winner, reply.strip()[-300:])
            problem = f"no 'Verdict: A/B/tie' line in the reply: {reply.strip()[-200:]!r}"
        log.warning("judge: no usable verdict after %d attempt(s): %s", self.parse_retries + 1, problem)
        return Verdict(None, problem)

    def judge(self, comparisons: Sequence[Comparison]) -> List[Verdict]:
        if self.workers == 1 or len(comparisons) <= 1:
            return [self.judge_one(c) for c in comparisons]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(self.judge_one, comparisons))


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
            raise ValueError("judge.reward_model is empty; give a sequence-classification model directory or Hub id")
        if tie_margin < 0:
            raise ValueError(f"judge.tie_margin={tie_margin}; it must be >= 0")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"judge.batch_size={batch_size!r}; it must be an integer >= 1")
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
            raise ValueError(f"judge.reward_model={path!r} could not be loaded as a sequence-classification model "
                             f"with its tokenizer: {err}") from err
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.truncation_side = "left"
        num_labels = self.model.config.num_labels
        if num_labels == 1 and label_index not in (None, 0):
            raise ValueError(f"judge.label_index={label_index}, but {path} has a single output; leave label_index null")
        if num_labels > 1 and (label_index is None or not 0 <= label_index < num_labels):
            raise ValueError(f"judge.label_index={label_index!r}: {path} is a classifier with {num_labels} labels "
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

    def score(self, prompt: Prompt, response: str, row: Mapping[str, Any]) -> float:
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


# --------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------

JUDGES = ("rule", "openai", "reward-model")


def build_judge(name: str, **options: Any) -> Judge:
    """Make a judge from its name (``rule``, ``openai``, ``reward-model``) and its options.

    Options that are None are left at the judge's default, except the judge's ``nullable_options``
    (the OpenAI judge's ``temperature`` and ``max_tokens``: null sends none); an option the judge
    does not take is an error naming it. ``reward-model`` takes its model directory as ``reward_model`` (or ``path``).
    """
    classes = {"rule": RuleJudge, "openai": OpenAIJudge, "reward-model": RewardModelJudge}
    if name not in classes:
        raise ValueError(f"judge={name!r} is unknown; choose one of {', '.join(JUDGES)}")
    # None means "not given", except for options where null has a meaning of its own ("send none").
    nullable = getattr(classes[name], "nullable_options", ())
    options = {k: v for k, v in options.items() if v is not None or k in nullable}
    if name == "reward-model" and "reward_model" in options:
        options["path"] = options.pop("reward_model")
    import inspect

    accepted = set(inspect.signature(classes[name].__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"judge {name!r} does not take option(s) {unknown}; it takes {sorted(accepted)}")
    return classes[name](**options)
