"""Judges: the rule judge, the OpenAI-compatible HTTP judge against a local server, the reward-model judge."""

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from lit_idpo import evaluation as ev
from lit_idpo.evaluation import (
    Comparison,
    JudgeAuthError,
    JudgeError,
    OpenAIJudge,
    RewardModelJudge,
    RuleJudge,
    build_judge,
    parse_verdict,
)

KEY = "sk-test-SECRET-1234567890"


# --------------------------------------------------------------------------------------------------
# Rule judge
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("a, b, winner", [
    ("41 + 35 = 76.", "41 + 35 = 77.", "A"),
    ("The answer is 70.", "41 + 35 = 76", "B"),
    ("76", "It is 76.", "tie"),           # both right
    ("75", "I am not sure.", "tie"),      # both wrong
])
def test_rule_judge(a, b, winner):
    [verdict] = RuleJudge().judge([Comparison("What is 41 + 35?", a, b, {"answer": 76})])
    assert verdict.winner == winner


def test_rule_judge_needs_the_answer_field():
    with pytest.raises(ValueError, match=r"no 'answer' field.*judge.answer_field"):
        RuleJudge().judge([Comparison("What is 1 + 1?", "1", "2", {"id": 3})])
    [verdict] = RuleJudge(answer_field="result").judge([Comparison("What is 1 + 1?", "1", "2", {"result": 2})])
    assert verdict.winner == "B"


RUN_ON = "962 + 3 = 965\n965 + 3 = 968"  # issue 19: right for 962 + 3, but its last equation states 968


def test_rule_judge_reads_the_asked_expression_by_default_and_the_last_equation_on_request():
    c = Comparison("What is 962 + 3? Answer briefly.", RUN_ON, "962 + 3 = 966", {"answer": 965})
    assert RuleJudge().extraction == "asked_expression"
    assert RuleJudge().judge([c])[0].winner == "A"  # only A is right
    assert RuleJudge(extraction="last_equation").judge([c])[0].winner == "tie"  # both read as wrong
    assert RuleJudge().describe() == {"name": "rule", "answer_field": "answer", "extraction": "asked_expression"}
    assert RuleJudge(extraction="last_equation").describe()["extraction"] == "last_equation"
    with pytest.raises(ValueError, match=r"judge.extraction='last'.*asked_expression, last_equation"):
        RuleJudge(extraction="last")


def test_rule_judge_ignores_a_number_cut_at_the_length_limit():
    cut = "54 * 10 = 540. 54 * 10 = 540. 54 * 10 = 5"
    prompt, row = "What is 54 * 10? Answer briefly.", {"answer": 540}
    judge = RuleJudge()
    assert judge.score(prompt, cut, row, truncated=True) == 1.0
    assert judge.score(prompt, cut, row) == 0.0  # ended by the model: it states 5 for 54 * 10
    [verdict] = judge.judge([Comparison(prompt, cut, "54 * 10 = 504.", row, truncated_a=True)])
    assert verdict.winner == "A"
    [verdict] = judge.judge([Comparison(prompt, "54 * 10 = 504.", cut, row, truncated_b=True)])
    assert verdict.winner == "B"
    [verdict] = judge.judge([Comparison(prompt, cut, "54 * 10 = 504.", row)])
    assert verdict.winner == "tie"


def test_rule_judge_names_the_fix_for_a_prompt_without_an_expression():
    with pytest.raises(ValueError, match=r"asks no arithmetic expression.*judge.extraction: last_equation"):
        RuleJudge().score("Tell me a story.", "42", {"answer": 42})
    assert RuleJudge(extraction="last_equation").score("Tell me a story.", "42", {"answer": 42}) == 1.0


def test_the_extraction_option_reaches_the_rule_judge():
    assert build_judge("rule", extraction="last_equation").extraction == "last_equation"
    assert ev.JudgeOptions().build().extraction == "asked_expression"
    assert ev.JudgeOptions(extraction="last_equation").build().extraction == "last_equation"
    with pytest.raises(ValueError, match=r"does not read judge option\(s\) judge.extraction"):
        ev.JudgeOptions(name="openai", base_url="http://127.0.0.1:1/v1", model="m", extraction="last_equation").build()


@pytest.mark.parametrize("reply, winner", [
    ("A is clearer.\nVerdict: A", "A"),
    ("Both fine.\nVerdict: tie", "tie"),
    ("verdict: **b**", "B"),
    ("Verdict: A ... on reflection\nVerdict: B", "B"),  # the last verdict line counts
    ("B", "B"),
    ("I cannot decide.", None),
    ("", None),
])
def test_parse_verdict(reply, winner):
    assert parse_verdict(reply) == winner


def test_build_judge_rejects_unknown_options():
    assert isinstance(build_judge("rule"), RuleJudge)
    with pytest.raises(ValueError, match="does not take"):
        build_judge("rule", model="gpt-4o")
    with pytest.raises(ValueError, match="unknown"):
        build_judge("gpt4")


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible judge against a local server
# --------------------------------------------------------------------------------------------------


def _completion(content):
    return {"id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


class _Server:
    """A chat-completions server on 127.0.0.1. Each request gets the next scripted (status, body, headers,
    delay), then ``default``; or, with ``respond``, whatever ``respond(request_body)`` returns."""

    def __init__(self, script, default=None, respond=None):
        self.script = list(script)
        self.default = default
        self.respond = respond
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if server.respond is not None:
                    status, payload, headers, delay = server.respond(body)
                else:
                    status, payload, headers, delay = server.script.pop(0) if server.script else server.default
                if delay:
                    time.sleep(delay)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    servers = []

    def start(script=(), default=None, respond=None):
        s = _Server(script, default, respond)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def judge_factory(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", KEY)
    for name in ("NO_PROXY", "no_proxy"):  # the local server must not be reached through a proxy
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    sleeps = []

    def make(url, **kwargs):
        kwargs.setdefault("workers", 1)
        judge = OpenAIJudge(url, "judge-model", api_key_env="JUDGE_KEY", **kwargs)
        judge.sleep = sleeps.append  # no real waiting; record the backoff
        return judge

    make.sleeps = sleeps
    return make


COMPARISON = Comparison("What is 2 + 2?", "2 + 2 = 5.", "2 + 2 = 4.", {"answer": 4})


def test_http_judge_retries_429_then_succeeds(server, judge_factory):
    s = server([(429, {"error": "slow down"}, {"Retry-After": "2"}, 0),
                (200, _completion("B is right.\nVerdict: B"), None, 0)])
    judge = judge_factory(s.url, backoff=0.5)
    [verdict] = judge.judge([COMPARISON])
    assert verdict.winner == "B"
    assert len(s.requests) == 2
    assert judge_factory.sleeps and judge_factory.sleeps[0] >= 2.0  # Retry-After honoured over the 0.5 s backoff
    request = s.requests[-1]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    body = request["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    user = body["messages"][-1]["content"]
    assert "What is 2 + 2?" in user and user.index("2 + 2 = 5.") < user.index("2 + 2 = 4.")  # A shown first


def test_http_judge_backoff_grows_on_5xx_then_gives_up(server, judge_factory):
    s = server([], default=(503, {"error": "busy"}, None, 0))
    judge = judge_factory(s.url, backoff=1.0, max_retries=3)
    with pytest.raises(JudgeError, match="after 4 attempts"):
        judge.judge([COMPARISON])
    assert len(s.requests) == 4
    sleeps = judge_factory.sleeps
    assert len(sleeps) == 3
    for expected, got in zip((1.0, 2.0, 4.0), sleeps):  # exponential, with at most 10 % jitter
        assert expected <= got <= expected * 1.1 + 1e-9


@pytest.mark.parametrize("status", [401, 403])
def test_http_judge_bad_credentials_stop_at_once(server, judge_factory, status, caplog):
    s = server([], default=(status, {"error": {"message": "invalid api key"}}, None, 0))
    judge = judge_factory(s.url)
    with caplog.at_level(logging.DEBUG), pytest.raises(JudgeAuthError) as info:
        judge.judge([COMPARISON])
    assert len(s.requests) == 1  # no retries: they cannot help
    message = str(info.value)
    assert f"HTTP {status}" in message and "JUDGE_KEY" in message
    assert KEY not in message and KEY not in caplog.text


def test_http_judge_malformed_replies(server, judge_factory, caplog):
    s = server([(200, _completion("Both are lovely."), None, 0),
                (200, _completion("Still no opinion."), None, 0),
                (200, b"<html>not json</html>", None, 0),
                (200, {"choices": []}, None, 0)])
    judge = judge_factory(s.url, parse_retries=1)
    with caplog.at_level(logging.WARNING):
        first, second = judge.judge([COMPARISON, COMPARISON])
    assert first.winner is None and "Verdict" in first.reason  # asked twice, no verdict line
    assert second.winner is None and "not a chat completion" in second.reason  # not JSON, then no choices
    assert len(s.requests) == 4
    assert "no usable verdict" in caplog.text and KEY not in caplog.text


def test_http_judge_other_4xx_is_an_error_without_retry(server, judge_factory):
    s = server([], default=(404, {"error": "model not found"}, None, 0))
    with pytest.raises(JudgeError, match=r"HTTP 404.*judge.model"):
        judge_factory(s.url).judge([COMPARISON])
    assert len(s.requests) == 1



# OpenAI's reply when a reasoning model is sent max_tokens (the error body of its chat-completions API).
WANTS_COMPLETION_TOKENS = {"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                               "Use 'max_completion_tokens' instead.",
                                    "type": "invalid_request_error", "param": "max_tokens",
                                    "code": "unsupported_parameter"}}


def _reasoning_server(body):
    if "max_tokens" in body:
        return 400, WANTS_COMPLETION_TOKENS, None, 0
    return 200, _completion("Verdict: B"), None, 0


def test_http_judge_auto_switches_to_max_completion_tokens_once(server, judge_factory, caplog):
    s = server(respond=_reasoning_server)
    judge = judge_factory(s.url, max_tokens=64)
    with caplog.at_level(logging.WARNING):
        verdicts = judge.judge([COMPARISON, COMPARISON])
    assert [v.winner for v in verdicts] == ["B", "B"]
    sent = [r["body"] for r in s.requests]
    assert len(sent) == 3  # one refused request, then the field is remembered for every later one
    assert sent[0]["max_tokens"] == 64 and "max_completion_tokens" not in sent[0]
    assert all(b["max_completion_tokens"] == 64 and "max_tokens" not in b for b in sent[1:])
    assert caplog.text.count("asks for max_completion_tokens") == 1


def test_http_judge_fixed_token_limit_field(server, judge_factory):
    s = server(respond=_reasoning_server)
    with pytest.raises(JudgeError, match=r"asks for 'max_completion_tokens'.*judge.token_limit_field"):
        judge_factory(s.url, token_limit_field="max_tokens").judge([COMPARISON])
    assert len(s.requests) == 1
    [verdict] = judge_factory(s.url, token_limit_field="max_completion_tokens").judge([COMPARISON])
    assert verdict.winner == "B" and len(s.requests) == 2 and s.requests[1]["body"]["max_completion_tokens"] == 512
    with pytest.raises(ValueError, match=r"judge.token_limit_field='max_output_tokens'"):
        judge_factory(s.url, token_limit_field="max_output_tokens")
    with pytest.raises(ValueError, match=r"judge.max_tokens=0"):
        judge_factory(s.url, max_tokens=0)


def test_http_judge_null_temperature_and_limit_send_none(server, judge_factory):
    refuses_temperature = {"error": {"message": "Unsupported value: 'temperature' does not support 0 with this model. "
                                                "Only the default (1) value is supported."}}
    s = server(respond=lambda body: (400, refuses_temperature, None, 0) if "temperature" in body
               else (200, _completion("Verdict: A"), None, 0))
    with pytest.raises(JudgeError, match=r"HTTP 400.*set judge.temperature to null"):
        judge_factory(s.url).judge([COMPARISON])
    [verdict] = judge_factory(s.url, temperature=None, max_tokens=None).judge([COMPARISON])
    body = s.requests[-1]["body"]
    assert verdict.winner == "A" and "temperature" not in body and "max_tokens" not in body
    assert "max_completion_tokens" not in body


def test_build_judge_keeps_a_null_that_means_send_none(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", KEY)
    judge = build_judge("openai", base_url="http://127.0.0.1:1/v1", model="m", api_key_env="JUDGE_KEY",
                        temperature=None, max_tokens=None, timeout=None)
    assert judge.temperature is None and judge.max_tokens is None and judge.timeout == 60.0  # timeout: default
    args = ev.build_parser().parse_args([
        "--model", "a", "--model", "b", "--output_dir", "o", "--judge", "openai", "--judge.base_url", "http://127.0.0.1:1/v1",
        "--judge.model", "m", "--judge.api_key_env", "JUDGE_KEY", "--judge.temperature", "none",
        "--judge.token_limit_field", "max_completion_tokens"])
    judge = ev.judge_from_args(args)
    assert judge.temperature is None and judge.max_tokens == 512 and judge.token_limit_field == "max_completion_tokens"

def test_http_judge_timeout_is_retried(server, judge_factory):
    s = server([(200, _completion("Verdict: A"), None, 1.0), (200, _completion("Verdict: A"), None, 0)])
    [verdict] = judge_factory(s.url, timeout=0.2, max_retries=2).judge([COMPARISON])
    assert verdict.winner == "A" and len(s.requests) == 2


def test_http_judge_needs_its_key_variable(monkeypatch):
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match=r"NO_SUCH_JUDGE_KEY is not set.*api_key_env"):
        OpenAIJudge("http://127.0.0.1:1/v1", "m", api_key_env="NO_SUCH_JUDGE_KEY")
    with pytest.raises(ValueError, match="base_url"):
        OpenAIJudge("127.0.0.1:1/v1", "m", api_key_env="")


def test_http_judge_without_key_sends_no_authorization(server, judge_factory):
    s = server([(200, _completion("Verdict: tie"), None, 0)])
    [verdict] = OpenAIJudge(s.url, "m", api_key_env="", workers=1).judge([COMPARISON])
    assert verdict.winner == "tie" and "Authorization" not in s.requests[0]["headers"]


def test_http_judge_in_both_orders_with_a_verdict_cache_and_no_key_on_disk(server, judge_factory, tmp_path, caplog):
    def respond(body):  # prefers the right arithmetic answer wherever it is shown
        user = body["messages"][-1]["content"]
        a = user.split("[Response A]\n")[1].split("\n[End of response A]")[0]
        return 200, _completion("Verdict: A" if a.endswith("= 4.") else "Verdict: B"), None, 0

    s = server(respond=respond)
    judge = judge_factory(s.url, workers=3)
    records = [ev.PromptRecord(i, f"What is {i} + {4 - i}?", "", "", {"answer": 4}) for i in range(3)]
    responses = {"right": [f"{i} + {4 - i} = 4." for i in range(3)], "wrong": [f"{i} + {4 - i} = 5." for i in range(3)]}
    with caplog.at_level(logging.DEBUG):
        [result], _ = ev.judge_pairs([("right", "wrong")], responses, records, judge, cache_dir=tmp_path,
                                     progress=False)
    assert result.win_rate == 1.0 and result.judgments == 6 and result.first_shown_preference == 0.5
    assert len(s.requests) == 6
    # A second run with the same judge reads the cached verdicts and asks nothing.
    [again], _ = ev.judge_pairs([("right", "wrong")], responses, records, judge_factory(s.url), cache_dir=tmp_path,
                                progress=False)
    assert again.win_rate == 1.0 and len(s.requests) == 6
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text()
    assert KEY not in repr(judge) and KEY not in json.dumps(judge.describe()) and KEY not in caplog.text


# --------------------------------------------------------------------------------------------------
# Reward-model judge
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from lit_idpo.models import load_tokenizer

    tokenizer = load_tokenizer("tiny-llama")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    path = tmp_path_factory.mktemp("rm") / "reward_model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _independent_score(path, prompt, response):
    """Score one response alone (no padding), rendering the chat by hand."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits[0, 0].item()


def test_reward_model_judge_matches_independent_scores(reward_model_dir):
    judge = RewardModelJudge(str(reward_model_dir), batch_size=3)
    prompt = "What is 2 + 2?"
    responses = ["4", "2 + 2 = 4.", "The answer is five, I believe, after long thought.", "22"]
    expected = [_independent_score(reward_model_dir, prompt, r) for r in responses]
    assert len(set(round(e, 6) for e in expected)) == len(expected)  # a random model still separates them
    comparisons = [Comparison(prompt, a, b) for a in responses for b in responses if a != b]
    verdicts = judge.judge(comparisons)
    for c, v in zip(comparisons, verdicts):
        sa, sb = expected[responses.index(c.response_a)], expected[responses.index(c.response_b)]
        assert v.winner == ("A" if sa > sb else "B")
    for r, e in zip(responses, expected):  # batched and padded scoring equals scoring alone
        assert judge.score(prompt, r, {}) == pytest.approx(e, abs=1e-4)


def test_reward_model_tie_margin_and_label_checks(reward_model_dir, tmp_path):
    judge = RewardModelJudge(str(reward_model_dir), tie_margin=1e9)
    assert [v.winner for v in judge.judge([Comparison("q", "a", "b"), Comparison("q", "b", "a")])] == ["tie", "tie"]
    with pytest.raises(ValueError, match="single output"):
        RewardModelJudge(str(reward_model_dir), label_index=1)
    from transformers import AutoModelForSequenceClassification

    two = AutoModelForSequenceClassification.from_pretrained(reward_model_dir, num_labels=2,
                                                             ignore_mismatched_sizes=True)
    two.save_pretrained(tmp_path / "two")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(reward_model_dir).save_pretrained(tmp_path / "two")
    with pytest.raises(ValueError, match="label_index"):
        RewardModelJudge(str(tmp_path / "two"))
    assert RewardModelJudge(str(tmp_path / "two"), label_index=1).score("q", "a", {}) <= 0.0  # a log-probability
    with pytest.raises(ValueError, match="could not be loaded"):
        RewardModelJudge(str(tmp_path / "missing"))
