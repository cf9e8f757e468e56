"""Prompt-only rows: evaluation generates and judges prompts that have no (chosen, rejected) pair, the
implicit-reward pass reads its pairs from ``implicit.data``, and ``bundled:instructions`` ships every sampled
request of the instruction task that way."""

import json

import pytest

from lit_idpo import evaluation as ev
from lit_idpo.data.tasks import load_rows
from lit_idpo.errors import ConfigError

PROMPTS = [{"id": "p0", "prompt": "Name a colour.", "task": "instructions",
            "constraints": [{"type": "include_word", "word": "blue"}]},
           {"id": "p1", "prompt": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Name a fruit."}], "expected": "apple"},
           {"id": "p2", "prompt": "Name a tree.", "chosen": "Oak.", "rejected": "No."}]  # a pair row among them


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_prompt_only_rows_are_kept_whole_beside_pair_rows(tmp_path):
    source = _write(tmp_path / "prompts.jsonl", PROMPTS)
    records, stats = ev.load_prompts(ev.DataOptions(source=source, split="train"))
    assert [r.index for r in records] == [0, 1, 2]
    assert records[0].prompt == "Name a colour." and records[0].chosen is None and records[0].rejected is None
    assert records[0].row == PROMPTS[0]  # every field, for the judges' verifiers
    assert records[1].prompt == PROMPTS[1]["prompt"] and records[1].chosen is None
    assert (records[2].chosen, records[2].rejected) == ("Oak.", "No.")
    assert stats["prompts"] == 3 and stats["format"] == "standard"  # the pair rows' format
    only = ev.load_prompts(ev.DataOptions(source=_write(tmp_path / "only.jsonl", PROMPTS[:2]), split="train"))[1]
    assert only["format"] == "prompt_only"


@pytest.mark.parametrize("prompt, message", [
    ("   ", r"only.jsonl, line 1: field 'prompt' holds only whitespace\. Fix the row, or set data.on_bad_row=skip"),
    ([], r"field 'prompt' is an empty list of messages"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
     r"field 'prompt\[1\].role' is 'assistant': the prompt must end before the assistant's reply"),
    (7, r"field 'prompt' is a int"),
])
def test_a_bad_prompt_only_row_is_named_or_skipped_and_counted(tmp_path, prompt, message):
    source = _write(tmp_path / "only.jsonl", [{"prompt": prompt}, {"prompt": "Fine."}])
    with pytest.raises(ValueError, match=message):
        ev.load_prompts(ev.DataOptions(source=source, split="train"))
    records, stats = ev.load_prompts(ev.DataOptions(source=source, split="train", on_bad_row="skip"))
    assert [r.index for r in records] == [1] and sum(stats["skipped"].values()) == 1


def test_training_on_prompt_only_rows_says_they_serve_evaluation(tmp_path):
    from lit_idpo.data import BadRowError, detect_format

    with pytest.raises(BadRowError, match=r"field 'chosen' is missing \(the row has fields \['prompt'\]\); it is a "
                                          r"prompt-only row, which serves lit-idpo evaluate's generation only"):
        detect_format({"prompt": "hi"})
    with pytest.raises(BadRowError) as err:  # a pair row missing 'chosen' gets no such hint
        detect_format({"prompt": "hi", "rejected": "no"})
    assert "prompt-only" not in str(err.value)


def test_implicit_data_takes_the_data_options_and_names_a_bad_key():
    options = ev.ImplicitOptions(data={"source": "bundled:instructions_onpolicy", "split": "test"})
    assert options.data == ev.DataOptions(source="bundled:instructions_onpolicy", split="test")
    assert ev.ImplicitOptions().data is None
    with pytest.raises(ConfigError, match=r"implicit.data has unknown key\(s\) \['splt'\]"):
        ev.ImplicitOptions(data={"splt": "test"})


def test_bundled_instructions_are_every_sampled_request_and_hold_the_pairs_prompts():
    train, test = load_rows("instructions", "train"), load_rows("instructions", "test")
    assert (len(train), len(test)) == (576, 176)
    assert all("chosen" not in r and r["task"] == "instructions" and r["constraints"] for r in train + test)
    assert not {r["request"] for r in train} & {r["request"] for r in test}  # disjoint requests
    by_id = {r["id"]: r for r in train + test}
    for split in ("train", "test"):  # each pair's prompt is its source request's, with the same constraints
        for pair in load_rows("instructions_onpolicy", split):
            source = by_id[pair["source_id"]]
            assert (source["prompt"], source["constraints"]) == (pair["prompt"], pair["constraints"])
    records, stats = ev.load_prompts(ev.DataOptions(source="bundled:instructions", split="test"))
    assert len(records) == 176 and stats["format"] == "prompt_only" and stats["skipped"] == {}


def test_evaluate_judges_prompt_only_rows_and_reads_implicit_pairs_apart(tmp_path):
    """End to end with tiny models: the rule judge verifies prompt-only instruction rows; the implicit pass
    reads the pairs named by implicit.data, not the prompts (which have none)."""
    from test_implicit_cache import _save_perturbed

    prompts = _write(tmp_path / "prompts.jsonl", load_rows("instructions", "test")[:3])
    pairs = ev.DataOptions(source="bundled:instructions_onpolicy", split="test", limit=2)
    trained = _save_perturbed(tmp_path / "trained", seed=1)
    models = [ev.ModelSpec("base", "tiny-llama"), ev.ModelSpec("trained", trained)]
    results = ev.evaluate(models, tmp_path / "out", judge=ev.build_judge("rule"),
                          data=ev.DataOptions(source=prompts, split="train"),
                          generation=ev.GenerationOptions(max_new_tokens=4, device="cpu"), pairs=[("trained", "base")],
                          reference="tiny-llama", implicit=ev.ImplicitOptions(layers=[-1], batch_size=2, data=pairs),
                          progress=False)
    assert results["prompts"]["format"] == "prompt_only" and results["prompts"]["prompts"] == 3
    assert results["pairs"][0]["prompts"] == 3
    # Four new tokens never make a real answer: every response fails the instruction verifier.
    for model in ("base", "trained"):
        lines = [json.loads(x) for x in (tmp_path / "out" / "responses" / f"{model}.jsonl").read_text().splitlines()]
        assert [line["score"] for line in lines] == [0.0, 0.0, 0.0]
    implicit = results["implicit_reward"]
    assert implicit["pairs"] == 2 and implicit["data"]["source"] == "bundled:instructions_onpolicy"
    assert list(implicit["models"]) == ["trained"]
    for model in results["models"]:  # the per-constraint profile, and its table in the report
        assert set(model["responses"]["constraints"]) == {c["type"] for r in load_rows("instructions", "test")[:3]
                                                          for c in r["constraints"]}
    report = (tmp_path / "out" / "results.md").read_text()
    assert "Pass rate (%) per constraint type" in report
    assert "arithmetic answer reading" not in report  # the rule judge's reading is arithmetic's, unused here


@pytest.mark.parametrize("flags", [
    ["--implicit.data.source", "bundled:instructions_onpolicy", "--implicit.data.split", "test"],
    ["--implicit.data", "{source: bundled:instructions_onpolicy, split: test}"],
])
def test_the_command_line_spells_implicit_data_both_ways(flags):
    from lit_idpo.errors import parse_command
    from lit_idpo.evaluation.command import build_parser

    options = parse_command(build_parser(), ["--model", "a=x", "--output_dir", "o", *flags], "evaluate")
    assert options["implicit"].data == ev.DataOptions(source="bundled:instructions_onpolicy", split="test")
    assert parse_command(build_parser(), ["--model", "a=x", "--output_dir", "o"], "evaluate")["implicit"].data is None


def test_a_pair_rows_prompt_and_a_prompt_only_rows_prompt_are_checked_alike():
    from lit_idpo.data import BadRowError, normalize_row
    from lit_idpo.data.rows import normalize_prompt

    prompt = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    pair = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}
    messages = []
    for check in (lambda: normalize_row(pair, "conversational"), lambda: normalize_prompt({"prompt": prompt})):
        with pytest.raises(BadRowError) as err:
            check()
        messages.append((err.value.reason, err.value.field, str(err.value)))
    assert messages[0] == messages[1] == ("bad_roles", "prompt[1].role", "field 'prompt[1].role' is 'assistant': "
                                          "the prompt must end before the assistant's reply (the completion is that "
                                          "reply)")
