"""The ``openai`` judge: any OpenAI-compatible chat-completions server (OpenAI, vLLM, llama.cpp, ...).

The API key is read from an environment variable, sent only in the ``Authorization`` header, and
never logged, printed or saved. Retries with exponential backoff on 429 and 5xx answers and on
network errors; bad credentials (401/403) stop the run at once with a clear error; a reply without a
readable verdict is retried, then recorded as no verdict.
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
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence

from lit_idpo.errors import ConfigError, UserError
from lit_idpo.evaluation.judges import Comparison, Judge, Verdict
from lit_idpo.evaluation.prompts import Message, Prompt

log = logging.getLogger(__name__)

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
#: The judge's sampling temperature and reply-length limit unless set (also the command line's defaults).
DEFAULT_TEMPERATURE = 0.0
DEFAULT_MAX_TOKENS = 512

_VERDICT_LINE = re.compile(r"verdict\s*[:\-]\s*\**\s*\[?\s*(A|B|tie)\b", re.IGNORECASE)
_BARE_VERDICT = re.compile(r"^\W*(A|B|tie)\W*$", re.IGNORECASE)


class JudgeError(UserError, RuntimeError):
    """A judge request that failed for good (after retries, or one that retrying cannot fix).

    A user error: the message names the judge option to check (credentials, ``judge.base_url``,
    ``judge.model``, retries), so the command shows it without a traceback.
    """


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
    """Read ``A``, ``B`` or ``tie`` from a judge reply (its last ``Verdict:`` line, or a bare answer); else None."""
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
        temperature: Optional[float] = DEFAULT_TEMPERATURE,
        max_tokens: Optional[int] = DEFAULT_MAX_TOKENS,
        token_limit_field: str = "auto",
        workers: int = 4,
    ):
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"judge.base_url={base_url!r}; give the API root with its scheme, e.g. "
                             f"https://api.openai.com/v1 or http://127.0.0.1:8000/v1")
        if not model:
            raise ConfigError("judge.model is empty; give the judge model's name on the server (e.g. gpt-4o)")
        for name, value, least in (("max_retries", max_retries, 0), ("parse_retries", parse_retries, 0),
                                   ("workers", workers, 1)):
            if not isinstance(value, int) or value < least:
                raise ConfigError(f"judge.{name}={value!r}; it must be an integer >= {least}")
        if timeout <= 0:
            raise ConfigError(f"judge.timeout={timeout}; it must be > 0 seconds")
        if token_limit_field not in TOKEN_LIMIT_FIELDS:
            raise ConfigError(f"judge.token_limit_field={token_limit_field!r}; choose one of {TOKEN_LIMIT_FIELDS}")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ConfigError(f"judge.max_tokens={max_tokens!r}; it must be a positive integer, or null to send none")
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
                raise ConfigError(
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
            start = self._scrub(raw[:200].decode("utf-8", "replace"))
            raise _MalformedReply(f"the reply is not a chat completion: {start!r}") from None
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
                                     f"attempts (last: {err}). Try later, or raise judge.max_retries / "
                                     f"judge.timeout.") from None
                wait = min(self.max_backoff, self.backoff * (2 ** attempt))
                if err.retry_after is not None:
                    wait = min(self.max_backoff, max(wait, err.retry_after))
                wait *= 1.0 + 0.1 * random.random()  # a little jitter, so parallel workers do not retry in step
                log.warning("judge: %s; retrying in %.1f s (attempt %d of %d)", err, wait, attempt + 2,
                            self.max_retries + 1)
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
