"""lit-idpo evaluate: win-rate arithmetic and intervals against hand computation, both orders, ties,
the generation cache, prompt loading, implicit-reward accuracy and the command line."""

import itertools
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import layer_logprob_sums

from lit_idpo import evaluation as ev
from lit_idpo.errors import ConfigError
from lit_idpo.evaluation import Judge, RuleJudge, Verdict

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------------
# Statistics against hand-computed values
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452),
                                          (199, 1.9720), (10_000, 1.9602)])
def test_t_quantile_matches_the_printed_table(df, expected):
    # Two-sided 95 % critical values of Student's t, as printed in statistics tables.
    assert ev.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert ev.t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-4)


def test_t_cdf_known_points():
    assert ev.t_cdf(0.0, 5) == pytest.approx(0.5)
    # df = 1 is the Cauchy distribution: F(t) = 1/2 + atan(t) / pi.
    for t in (-3.0, -0.5, 0.7, 4.0):
        assert ev.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    # df = 2 has the closed form F(t) = 1/2 + t / (2 sqrt(2 + t^2)).
    for t in (-2.0, 0.3, 5.0):
        assert ev.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_wilson_interval_matches_published_values():
    # 5 of 10 and 0 of 10 (Newcombe 1998, table I style values).
    assert ev.wilson_interval(0.5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert ev.wilson_interval(0.0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)


def test_t_interval_against_a_hand_computed_value():
    # 1, 2, 3, 4: mean 2.5, s = sqrt(5/3) = 1.290994; t(0.975, 3) = 3.182446 (printed table);
    # half-width 3.182446 * 1.290994 / 2 = 2.054260 -> [0.445740, 4.554260].
    interval = ev.t_interval([1.0, 2.0, 3.0, 4.0], 0.95)
    assert (interval.low, interval.high, interval.method) == (pytest.approx(0.445740, abs=2e-6),
                                                              pytest.approx(4.554260, abs=2e-6), "t")
    # Clipped to the range the values can take, and only there.
    clipped = ev.t_interval([1.0, 2.0, 3.0, 4.0], 0.95, bounds=(0.0, 4.0))
    assert (clipped.low, clipped.high) == (pytest.approx(0.445740, abs=2e-6), 4.0)
    with pytest.raises(ValueError, match="at least 2"):
        ev.t_interval([1.0])


def test_score_summary_uses_the_one_t_interval_unclipped_and_wilson_for_right_wrong():
    # Reward-model scores have no range: the same t-interval as above, not clipped.
    summary = ev.score_summary([1.0, 2.0, 3.0, 4.0], 0.95)
    assert summary["ci_method"] == "t" and summary["mean"] == 2.5 and summary["n"] == 4
    assert (summary["ci_low"], summary["ci_high"]) == (pytest.approx(0.445740, abs=2e-6),
                                                       pytest.approx(4.554260, abs=2e-6))
    # Right/wrong scores: 5 of 10 right -> the Wilson interval (0.2366, 0.7634).
    binary = ev.score_summary([1.0] * 5 + [0.0] * 5, 0.95)
    assert binary["ci_method"] == "wilson" and binary["mean"] == 0.5
    assert (binary["ci_low"], binary["ci_high"]) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert ev.score_summary([0.3], 0.95)["ci_low"] is None  # one non-binary score: no interval


def test_judge_errors_are_user_errors_with_their_old_bases():
    from lit_idpo.errors import UserError

    assert issubclass(ev.JudgeError, UserError) and issubclass(ev.JudgeError, RuntimeError)
    assert issubclass(ev.JudgeAuthError, ev.JudgeError)


def test_statistics_import_no_torch():
    code = "import lit_idpo.evaluation.statistics, sys; assert 'torch' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_win_rate_counts_and_interval_by_hand():
    # Prompt by prompt, first model's score (order 1: first shown as A; order 2: first shown as B):
    #   p1: A, B   -> 1, 1    -> 1
    #   p2: A, tie -> 1, 1/2  -> 3/4
    #   p3: tie, tie          -> 1/2
    #   p4: B, A   -> 0, 0    -> 0
    #   p5: A, A   -> 1, 0    -> 1/2   (a judge that prefers whatever it sees first)
    order1 = ["A", "A", "tie", "B", "A"]
    order2 = ["B", "tie", "tie", "A", "A"]
    r = ev.summarize_verdicts("x", "y", order1, order2)
    assert (r.wins, r.ties, r.losses) == (4, 3, 3)
    assert r.judgments == 10 and r.prompts == 5 and r.invalid == 0
    assert r.win_rate == pytest.approx(0.55)  # = (4 + 3/2) / 10
    assert (r.prompt_wins, r.prompt_ties, r.prompt_losses) == (2, 2, 1)
    # Sample variance of (1, .75, .5, 0, .5) around .55: (.2025 + .04 + .0025 + .3025 + .0025) / 4 = .1375.
    half = 2.776445 * math.sqrt(0.1375 / 5)
    assert r.ci_method == "t"
    assert r.ci_low == pytest.approx(0.55 - half, abs=1e-5)
    assert r.ci_high == 1.0  # 0.55 + 0.4604 is clipped
    # Decisive judgments: order 1 A, A, B, A; order 2 B, A, A -> the response shown first won 5 of 7.
    assert r.first_shown_preference == pytest.approx(5 / 7)
    assert r.order_agreement == pytest.approx(3 / 5)  # p1, p3, p4


def test_ties_count_half_and_all_ties_use_the_wilson_bound():
    r = ev.summarize_verdicts("x", "y", ["tie"] * 10, ["tie"] * 10)
    assert r.win_rate == 0.5 and (r.wins, r.ties, r.losses) == (0, 20, 0)
    assert r.ci_method == "wilson"
    assert (r.ci_low, r.ci_high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert r.first_shown_preference is None


def test_every_prompt_won_gives_a_wilson_interval_not_a_point():
    r = ev.summarize_verdicts("x", "y", ["A"] * 10, ["B"] * 10)
    assert r.win_rate == 1.0 and r.ci_method == "wilson"
    assert (r.ci_low, r.ci_high) == pytest.approx((0.7225, 1.0), abs=1e-4)


def test_missing_verdicts_are_left_out_and_counted():
    # p1 has one verdict (order 1: first wins) -> 1; p2 none -> left out; p3: loss, loss -> 0.
    r = ev.summarize_verdicts("x", "y", ["A", None, "B"], [None, None, "A"])
    assert r.invalid == 3 and r.prompts == 2 and r.judgments == 3
    assert r.win_rate == pytest.approx(0.5)


def test_swapping_the_models_mirrors_the_result():
    order1 = ["A", "tie", "B", "A", "A", "B"]
    order2 = ["B", "B", "tie", "A", "B", "A"]
    forward = ev.summarize_verdicts("x", "y", order1, order2)
    # y vs x: y's order 1 is x's order 2 and vice versa.
    backward = ev.summarize_verdicts("y", "x", order2, order1)
    assert backward.win_rate == pytest.approx(1 - forward.win_rate)
    assert (backward.wins, backward.ties, backward.losses) == (forward.losses, forward.ties, forward.wins)
    assert backward.ci_low == pytest.approx(1 - forward.ci_high)
    assert backward.ci_high == pytest.approx(1 - forward.ci_low)


def test_bootstrap_interval_against_the_exact_bootstrap_distribution():
    scores = [0.0, 0.5, 0.5, 1.0, 1.0, 1.0]
    n = len(scores)
    # The exact bootstrap distribution of the mean: all n^n resamples are equally likely.
    counts = Counter(sum(c) for c in itertools.product(scores, repeat=n))
    total = n ** n
    def cdf_at(x, strict=False):
        return sum(v for s, v in counts.items() if (s / n < x - 1e-12 if strict else s / n <= x + 1e-12)) / total
    interval = ev.bootstrap_interval(scores, 0.95, resamples=20_000, seed=1)
    # A quantile q of a discrete distribution: P(X < q) <= alpha <= P(X <= q) (with Monte Carlo slack).
    for q, alpha in ((interval.low, 0.025), (interval.high, 0.975)):
        assert cdf_at(q, strict=True) <= alpha + 0.01
        assert cdf_at(q) >= alpha - 0.01


# --------------------------------------------------------------------------------------------------
# Judging every pair in both orders
# --------------------------------------------------------------------------------------------------


class _FirstShownJudge(Judge):
    """Always prefers the response shown first: pure position bias."""

    name = "first-shown"

    def __init__(self):
        self.calls = 0

    def judge(self, comparisons):
        self.calls += len(comparisons)
        return [Verdict("A") for _ in comparisons]


class _LongerJudge(Judge):
    """Prefers the longer response wherever it is shown."""

    name = "longer"

    def judge(self, comparisons):
        return [Verdict("tie" if len(c.response_a) == len(c.response_b) else
                        "A" if len(c.response_a) > len(c.response_b) else "B") for c in comparisons]


def _records(n):
    return [ev.PromptRecord(i, f"prompt {i}", "c", "r", {"answer": i}) for i in range(n)]


def test_both_orders_cancel_position_bias():
    responses = {"x": ["aa", "bb", "cc"], "y": ["a", "b", "c"]}
    judge = _FirstShownJudge()
    [result], records = ev.judge_pairs([("x", "y")], responses, _records(3), judge, progress=False)
    assert judge.calls == 6  # 3 prompts x 2 orders
    assert result.win_rate == 0.5 and (result.wins, result.losses) == (3, 3)
    assert result.first_shown_preference == 1.0 and result.order_agreement == 0.0
    shown = {(r["prompt_index"], r["A"]) for r in records}
    assert shown == {(p, m) for p in range(3) for m in ("x", "y")}  # each model shown first once per prompt


def test_a_consistent_preference_wins_in_both_orders():
    responses = {"x": ["aaa", "bbb", "c"], "y": ["a", "b", "ccc"], "z": ["aa", "bb", "cc"]}
    results, _ = ev.judge_pairs([("x", "y"), ("x", "z"), ("y", "z")], responses, _records(3), _LongerJudge(),
                                progress=False)
    by_pair = {(r.first, r.second): r for r in results}
    assert by_pair[("x", "y")].win_rate == pytest.approx(2 / 3)
    assert by_pair[("x", "z")].win_rate == pytest.approx(2 / 3)
    assert by_pair[("y", "z")].win_rate == pytest.approx(1 / 3)
    assert by_pair[("x", "y")].first_shown_preference == 0.5  # wins split evenly over positions


def test_identical_responses_tie_without_asking_the_judge():
    responses = {"x": ["same", "x-only"], "y": ["same", "y"]}
    judge = _FirstShownJudge()
    [result], _ = ev.judge_pairs([("x", "y")], responses, _records(2), judge, progress=False)
    assert judge.calls == 2  # only prompt 1, both orders
    assert result.identical == 1 and result.prompt_ties == 2


def test_rule_judge_pairwise_matches_correctness():
    records = [ev.PromptRecord(i, f"What is {i} + 1?", "", "", {"answer": i + 1}) for i in range(4)]
    responses = {"good": ["0 + 1 = 1.", "1 + 1 = 2.", "2 + 1 = 4.", "3 + 1 = 4."],
                 "bad": ["0 + 1 = 2.", "1 + 1 = 2.", "2 + 1 = 5.", "I don't know"]}
    [r], _ = ev.judge_pairs([("good", "bad")], responses, records, RuleJudge(), progress=False)
    # Prompt 0: good right, bad wrong -> win; 1: both right -> tie; 2: both wrong -> tie; 3: win.
    assert (r.prompt_wins, r.prompt_ties, r.prompt_losses) == (2, 2, 0)
    assert r.win_rate == pytest.approx(0.75)


# --------------------------------------------------------------------------------------------------
# Prompts and model specs
# --------------------------------------------------------------------------------------------------


def test_load_prompts_keeps_rows_and_counts_skips(tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "assistant", "content": "go away"}], "answer": 3},
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "same"}],
         "rejected": [{"role": "assistant", "content": "same"}]},
        {"prompt": [{"role": "user", "content": "bye"}], "chosen": [{"role": "assistant", "content": "bye!"}],
         "rejected": [{"role": "assistant", "content": "no"}]},
    ]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, stats = ev.load_prompts(ev.DataOptions(source=str(path), split="train", on_bad_row="skip"))
    assert [r.index for r in records] == [0, 2]
    assert records[0].prompt == [{"role": "user", "content": "hi"}] and records[0].row["answer"] == 3
    assert stats["skipped"] == {"identical_completions": 1} and stats["format"] == "conversational"
    with pytest.raises(ValueError, match=r"prefs.jsonl, line 2: fields 'chosen' and 'rejected' are identical\. Fix the "
                                         r"row, or set data.on_bad_row=skip"):
        ev.load_prompts(ev.DataOptions(source=str(path), split="train"))


def test_bundled_prompts_are_the_200_held_out_ones():
    records, stats = ev.load_prompts(ev.DataOptions())
    assert len(records) == 200 and stats["skipped"] == {}
    assert all(isinstance(r.row["answer"], int) for r in records)


def test_model_specs_names():
    specs = ev.parse_model_specs(["sft=embedded:smollm2-135m-instruct", "runs/dpo/hf_model", "org/model-x",
                                  "embedded:smollm2-135m-instruct"])
    assert [s.name for s in specs] == ["sft", "dpo", "model-x", "smollm2-135m-instruct"]
    assert specs[1].source == "runs/dpo/hf_model"
    with pytest.raises(ValueError, match="used twice"):
        ev.parse_model_specs(["a=x", "a=y"])


def test_render_prompt_uses_the_chat_template_like_training():
    from lit_idpo.data import NormalizedRow, PairTokenizer
    from lit_idpo.data.tasks.arithmetic_data import load_rows
    from lit_idpo.models import load_tokenizer

    tokenizer = load_tokenizer("tiny-llama")
    row = load_rows("arithmetic", "test")[0]
    ids = ev.render_prompt_ids(tokenizer, row["prompt"])
    # The data module's own tokenisation of the same row: its prompt ids must be the same.
    pair_tok = PairTokenizer(tokenizer)
    rendered = pair_tok.render(NormalizedRow("text", row["prompt"], row["chosen"], row["rejected"]))
    [(prompt_ids, _, _)] = pair_tok.encode_rendered([rendered])
    assert ids == prompt_ids
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


# --------------------------------------------------------------------------------------------------
# Generation cache
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def count_generate(monkeypatch):
    """Counts calls of transformers' generate (and the prompts they carry); ``fail_after`` makes one raise."""
    from transformers.generation.utils import GenerationMixin

    original = GenerationMixin.generate
    state = {"calls": 0, "prompts": 0, "fail_after": None}

    def counting(self, *args, **kwargs):
        if state["fail_after"] is not None and state["calls"] >= state["fail_after"]:
            raise KeyboardInterrupt("simulated interruption")
        state["calls"] += 1
        state["prompts"] += kwargs["input_ids"].shape[0]
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", counting)
    return state


@pytest.mark.slow
def test_cache_second_judge_and_interrupted_run_do_not_regenerate(tmp_path, count_generate):
    models = ev.parse_model_specs(["a=tiny-llama", "b=tiny-qwen2"])
    data = ev.DataOptions(limit=5)
    gen = ev.GenerationOptions(max_new_tokens=3, batch_size=2)
    cache = tmp_path / "cache"

    # An interrupted first run: the second generate call never happens.
    count_generate["fail_after"] = 1
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(models, tmp_path / "r0", judge=RuleJudge(), data=data, generation=gen, cache_dir=cache,
                    progress=False)
    assert count_generate["prompts"] == 2  # one batch of model a was generated and cached

    count_generate.update(fail_after=None, calls=0, prompts=0)
    first = ev.evaluate(models, tmp_path / "r1", judge=RuleJudge(), data=data, generation=gen, cache_dir=cache,
                        progress=False)
    assert count_generate["prompts"] == 3 + 5  # a: the 3 missing prompts; b: all 5
    assert [m["generation"]["cached"] for m in first["models"]] == [2, 0]

    count_generate.update(calls=0, prompts=0)
    second = ev.evaluate(models, tmp_path / "r2", judge=_FirstShownJudge(), data=data, generation=gen, cache_dir=cache,
                         progress=False)
    assert count_generate["calls"] == 0  # another judge: nothing regenerated
    def responses(run, name):
        path = tmp_path / run / "responses" / f"{name}.jsonl"
        return [json.loads(line)["response"] for line in path.read_text().splitlines()]

    for name in ("a", "b"):
        assert responses("r1", name) == responses("r2", name)
    assert second["judge"]["name"] == "first-shown"

    # Generating again into a fresh cache gives the same responses as the resumed, cached run.
    count_generate.update(calls=0, prompts=0)
    fresh, _ = ev.generate_responses(models[0], ev.load_prompts(data)[0], gen, tmp_path / "fresh", progress=False)
    assert count_generate["prompts"] == 5
    assert [g.response for g in fresh] == responses("r1", "a")

    # Other generation settings are another cache entry.
    count_generate.update(calls=0, prompts=0)
    ev.generate_responses(models[0], ev.load_prompts(data)[0], ev.GenerationOptions(max_new_tokens=4, batch_size=5),
                          cache, progress=False)
    assert count_generate["prompts"] == 5


def test_generation_and_verdict_caches_skip_a_torn_last_line(tmp_path):
    cache = ev.GenerationCache(tmp_path, "sha256:abc", {"max_new_tokens": 3}, "tiny-llama")
    cache.append([("k1", ev.Generation("4", 1, "eos", 7)), ("k2", ev.Generation("5 + 1", 3, "length", 9))])
    with cache.path.open("a") as f:
        f.write('{"key": "k3", "response": "cut sh')  # a run killed mid-write
    assert ev.GenerationCache(tmp_path, "sha256:abc", {"max_new_tokens": 3}, "tiny-llama").load() == {
        "k1": ev.Generation("4", 1, "eos", 7), "k2": ev.Generation("5 + 1", 3, "length", 9)}
    meta = json.loads(cache.path.with_name(cache.path.stem + ".meta.json").read_text())
    assert meta == {"source": "tiny-llama", "fingerprint": "sha256:abc", "settings": {"max_new_tokens": 3}}

    judge = _FirstShownJudge()
    verdicts = ev.JudgmentCache(tmp_path, judge)
    comparison = ev.Comparison("p", "a", "b")
    verdicts.add([(comparison, Verdict("A", "why")), (ev.Comparison("p", "b", "a"), Verdict(None, "no verdict"))])
    with verdicts.path.open("a") as f:
        f.write('{"key": "x", "win')
    again = ev.JudgmentCache(tmp_path, judge)
    assert again.entries == {again.key(comparison): Verdict("A", "why")}  # no-verdicts are asked again


def test_fingerprint_follows_the_weights(tmp_path):
    from lit_idpo.models import load_model, load_tokenizer

    model = load_model("tiny-llama")
    model.save_pretrained(tmp_path / "m")
    load_tokenizer("tiny-llama").save_pretrained(tmp_path / "m")
    first = ev.model_fingerprint(str(tmp_path / "m"), memo_file=tmp_path / "memo.json")
    assert first.startswith("sha256:") and first == ev.model_fingerprint(str(tmp_path / "m"),
                                                                          memo_file=tmp_path / "memo.json")
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)
    model.save_pretrained(tmp_path / "m")
    assert ev.model_fingerprint(str(tmp_path / "m"), memo_file=tmp_path / "memo.json") != first


@pytest.mark.slow
def test_sampling_is_seeded(tmp_path):
    spec = ev.ModelSpec("a", "tiny-llama")
    prompts = ev.load_prompts(ev.DataOptions(limit=3))[0]
    def run(seed, folder):
        options = ev.GenerationOptions(max_new_tokens=6, do_sample=True, temperature=1.0, seed=seed, batch_size=3)
        return [g.response for g in ev.generate_responses(spec, prompts, options, tmp_path / folder, progress=False)[0]]
    assert run(1, "c1") == run(1, "c2")
    assert run(1, "c1") != run(2, "c3")


def test_lora_adapter_directory_loads_merged(tmp_path):
    from peft import LoraConfig, get_peft_model

    from lit_idpo.models import load_model, load_tokenizer

    base_dir = tmp_path / "base"
    load_model("tiny-llama").save_pretrained(base_dir)
    load_tokenizer("tiny-llama").save_pretrained(base_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(load_model(str(base_dir)), lora)
    peft_model.save_pretrained(tmp_path / "adapter")
    load_tokenizer("tiny-llama").save_pretrained(tmp_path / "adapter")
    loaded = ev.load_eval_model(str(tmp_path / "adapter"))
    ids = torch.tensor([[1, 5, 9, 20]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, peft_model(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(loaded(ids).logits, load_model(str(base_dir))(ids).logits)


# --------------------------------------------------------------------------------------------------
# Implicit-reward accuracy against a naive computation
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_implicit_reward_accuracy_matches_a_naive_computation(tmp_path):
    from lit_idpo.data import PreferenceCollator, load_split, tokenize_rows
    from lit_idpo.models import load_model, load_tokenizer

    policy = load_model("tiny-llama")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    policy.save_pretrained(tmp_path / "trained")
    tokenizer = load_tokenizer("tiny-llama")
    tokenizer.save_pretrained(tmp_path / "trained")
    data = ev.DataOptions(limit=6)
    specs = [ev.ModelSpec("p", str(tmp_path / "trained")), ev.ModelSpec("ref", "tiny-llama")]
    result = ev.implicit_reward_accuracy(specs, "tiny-llama", data,
                                         ev.ImplicitOptions(layers=[1, 3, -1], beta=0.5, batch_size=4),
                                         progress=False)
    assert result["layers"] == [1, 3, 4] and result["pairs"] == 6
    assert list(result["models"]) == ["p"]  # the reference itself is skipped

    pairs, _ = tokenize_rows(load_split("bundled:arithmetic", "test"), tokenizer, limit=6, max_length=1024)
    batch = PreferenceCollator(tokenizer.pad_token_id)([pairs[i] for i in range(6)])
    reference = load_model("tiny-llama")
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    with torch.no_grad():
        for i, layer in enumerate([1, 3, 4]):
            delta = layer_logprob_sums(policy, *args, [layer])[0] - layer_logprob_sums(reference, *args, [layer])[0]
            margin = 0.5 * (delta[:6] - delta[6:])
            assert result["models"]["p"]["accuracy"][i] == pytest.approx((margin > 0).double().mean().item())
            assert result["models"]["p"]["margin"][i] == pytest.approx(margin.mean().item(), abs=1e-4)


def test_implicit_auto_layers():
    assert ev.resolve_implicit_layers("auto", 30) == [4, 8, 11, 15, 19, 22, 26, 30]
    assert ev.resolve_implicit_layers("all", 3) == [1, 2, 3]
    assert ev.resolve_implicit_layers([-1, 2, 2], 4) == [2, 4]
    with pytest.raises(ValueError, match="out of range"):
        ev.resolve_implicit_layers([9], 4)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def test_cli_evaluate_writes_json_and_markdown(tmp_path, capsys):
    from lit_idpo.cli import main

    out = tmp_path / "out"
    main(["evaluate", "--model", "a=tiny-llama", "--model", "b=tiny-gpt2", "--data.limit", "3",
          "--generation.max_new_tokens", "3", "--output_dir", str(out), "--no_progress"])
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    [pair] = results["pairs"]
    assert (pair["first"], pair["second"], pair["prompts"]) == ("a", "b", 3)
    assert pair["wins"] + pair["ties"] + pair["losses"] == 6
    table = (out / "results.md").read_text()
    assert "| a | b | 3 |" in table and table.strip() in printed
    assert len((out / "judgments.jsonl").read_text().splitlines()) == 6
    assert len((out / "responses" / "a.jsonl").read_text().splitlines()) == 3


TWO = ["--model", "a=tiny-llama", "--model", "b=tiny-gpt2", "--output_dir", "x"]


@pytest.mark.parametrize("argv, message", [
    (["--model", "a=tiny-llama", "--output_dir", "x"], "at least twice"),
    (TWO + ["--judge", "openai"], "needs judge.base_url"),
    (TWO + ["--judge.name", "openai", "--judge.base_url", "http://127.0.0.1:1/v1"], "needs judge.model"),
    (TWO + ["--pair", "a"], "comma"),
    (TWO + ["--judge.name", "gpt4"], r"judge.name='gpt4' is unknown; choose one of rule, openai, reward-model"),
    (TWO + ["--judge.name", "rule", "--judge.model", "gpt-4o"], r"does not read judge option\(s\) judge.model"),
    (TWO + ["--judge.temperature", "0.5"], r"does not read judge option\(s\) judge.temperature"),
    (TWO + ["--judge.colour", "red"], r"unrecognized arguments: --judge.colour.*--help"),
    (TWO + ["--data.limit", "0"], r"data.limit=0; it must be an integer >= 1"),
    (TWO + ["--judge.extraction", "first"], r"judge.extraction='first' is unknown; choose one of asked_expression"),
    (["--output_dir", "x"], r"required: model"),
])
def test_cli_errors_name_the_fix(argv, message):
    # ConfigError is a UserError: `lit-idpo` prints it as one `lit-idpo: error: ...` line.
    with pytest.raises(ConfigError, match=message):
        ev.main(argv)


@pytest.mark.slow  # a fresh interpreter importing the CLI (Lightning): several seconds
def test_real_cli_prints_a_config_error_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lit_idpo.cli", "evaluate", *TWO, "--judge.name", "gpt4"],
                            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "LIT_IDPO_DEBUG": ""})
    assert result.returncode != 0
    assert result.stderr.startswith("lit-idpo: error: judge.name='gpt4' is unknown")
    assert "Traceback" not in result.stderr


def test_cli_selects_the_answer_reading():
    base = ["--model", "a", "--model", "b", "--output_dir", "o"]
    assert ev.judge_from_args(ev.build_parser().parse_args(base)).extraction == "asked_expression"
    args = ev.build_parser().parse_args(base + ["--judge.extraction", "last_equation"])
    assert ev.judge_from_args(args).extraction == "last_equation"


def test_cli_old_spellings_still_read():
    args = ev.build_parser().parse_args(["--model", "a", "--model=b", "--output_dir", "o", "--judge", "rule",
                                         "--pair", "a,b", "--no_progress", "--judge.max_tokens=none"])
    assert args.model == ["a", "b"] and args.pair == ["a,b"] and args.judge.name == "rule"
    assert args.progress is False and args.judge.max_tokens is None


def _tiny_config(tmp_path):
    """configs/evaluate/tiny.yaml with its output_dir moved under tmp_path."""
    import yaml

    config = yaml.safe_load((REPO / "configs" / "evaluate" / "tiny.yaml").read_text())
    config["output_dir"] = str(tmp_path / "out")
    path = tmp_path / "evaluate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def test_cli_evaluate_with_the_example_config(tmp_path, capsys):
    from lit_idpo.cli import main

    path, config = _tiny_config(tmp_path)
    main(["evaluate", "--config", str(path)])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    [pair] = results["pairs"]
    assert (pair["first"], pair["second"], pair["prompts"]) == ("llama", "qwen2", config["data"]["limit"])
    assert results["generation"]["max_new_tokens"] == config["generation"]["max_new_tokens"]
    assert results["judge"] == {"name": "rule", "answer_field": "answer", "extraction": "asked_expression"}
    assert "| llama | qwen2 |" in capsys.readouterr().out


def test_cli_print_config_round_trips(tmp_path, capsys):
    import yaml

    from lit_idpo.cli import main

    path, config = _tiny_config(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--config", str(path), "--judge.name", "none", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"] == config["model"] and printed["judge"]["name"] == "none"
    assert printed["data"]["limit"] == config["data"]["limit"] and "config" not in printed
    assert not (tmp_path / "out").exists()  # printing the config runs nothing


def test_cli_help_shows_nested_options_with_their_docstrings(capsys):
    with pytest.raises(SystemExit):
        ev.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("--judge.name NAME", "--judge.model MODEL", "--data.limit LIMIT",
                     "--generation.max_new_tokens MAX_NEW_TOKENS", "--config CONFIG", "--print_config",
                     "longest response in tokens", "openai: the judge model's name on that server"):
        assert expected in text
