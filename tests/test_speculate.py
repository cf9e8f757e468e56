"""``lit-idpo speculate``: exit layers as draft models, measured on the tiny models (lit_idpo.speculate)."""

import json
import subprocess
import sys

import pytest
import torch

from lit_idpo import cli
from lit_idpo.errors import ConfigError
from lit_idpo.evaluation.options import DataOptions
from lit_idpo.models import load_model, load_tokenizer
from lit_idpo.speculate import (
    DraftCounter,
    OutputMismatchError,
    SpeculateOptions,
    check_early_exit_support,
    layer_agreement,
    resolve_exit_layers,
    speculate,
)
from lit_idpo.speculate.report import mismatch_message

LAYER_KEYS = {"layer", "agreement", "acceptance_rate", "tokens_per_s", "baseline_tokens_per_s", "speedup", "identical",
              "proposed", "accepted", "rounds", "tokens", "agreement_positions", "agreement_matches"}


def _run(tmp_path, model="tiny-llama", layers=(2, 4), limit=2, **options):
    options = {"max_new_tokens": 6, "device": "cpu", **options}
    return speculate(model, tmp_path / "out", layers=list(layers), data=DataOptions(limit=limit),
                     options=SpeculateOptions(**options), progress=False)


def test_exit_layers_auto_all_lists_text_and_errors():
    assert resolve_exit_layers("auto", 30) == [8, 10, 15, 20, 22]
    assert resolve_exit_layers("auto", 4) == [1, 2, 3]
    assert resolve_exit_layers("all", 3) == [1, 2, 3]
    assert resolve_exit_layers("10, 20,-1", 30) == [10, 20, 30]
    assert resolve_exit_layers([2, 2, -4], 4) == [1, 2]
    for bad in ("ten", [0], [5], ""):
        with pytest.raises(ConfigError, match="layers"):
            resolve_exit_layers(bad, 4)


@pytest.mark.parametrize("source", ["tiny-qwen2", "tiny-llama"])
def test_agreement_equals_a_naive_full_logits_computation(source):
    model = load_model(source).eval()
    with torch.no_grad():  # sharper weights than the random init, so that layers disagree somewhere
        for p in model.parameters():
            p.mul_(4.0)
    sequence = torch.randint(0, model.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(0))
    prompt_length, layers = 7, [1, 2, 3, 4]
    matches, final_ids, gap = layer_agreement(model, sequence, prompt_length, layers)
    with torch.no_grad():
        out = model(input_ids=sequence, output_hidden_states=True)
        rows = slice(prompt_length - 1, sequence.shape[1] - 1)
        final_logits = out.logits[0, rows]
        naive = [model.lm_head(model.model.norm(out.hidden_states[k][0, rows])) if k < 4 else final_logits
                 for k in layers]
    assert torch.equal(final_ids, final_logits.argmax(-1))
    top2 = final_logits.topk(2, dim=-1).values
    assert torch.allclose(gap, top2[:, 0] - top2[:, 1])
    expected = torch.stack([logits.argmax(-1) == final_ids for logits in naive])
    assert torch.equal(matches, expected)
    assert matches[-1].all()  # the final layer agrees with itself exactly
    assert not matches[:-1].all()  # and the earlier layers do not, so the comparison above means something
    assert matches.shape == (4, 13)


def test_gpt2_is_refused_naming_the_model_type_and_what_is_supported(tmp_path):
    with pytest.raises(ConfigError, match=r"'gpt2'.*llama, mistral, qwen2, qwen3"):
        check_early_exit_support(load_model("tiny-gpt2"))
    with pytest.raises(ConfigError, match="draft_decoding false"):
        _run(tmp_path, model="tiny-gpt2")
    for supported in ("tiny-llama", "tiny-qwen2"):
        check_early_exit_support(load_model(supported))


def test_a_mismatch_names_the_prompt_and_position_and_says_whether_it_is_a_near_tie():
    tokenizer = load_tokenizer("tiny-llama")
    message = mismatch_message(3, 17, 10, [5, 6, 7], [5, 6, 8], [2.0, 3.0, 1e-6], tokenizer, near_tie=1e-3)
    assert "layer 10" in message and "prompt 3" in message and "row index 17" in message
    assert "new token 2" in message and "gave 7" in message and "gave 8" in message and "near-tie" in message
    shorter = mismatch_message(0, 0, 2, [5, 6, 7], [5, 6], [2.0, 3.0, 4.0], tokenizer, near_tie=1e-3)
    assert "new token 2" in shorter and "the end" in shorter and "not a near-tie" in shorter


def test_speculate_on_tiny_llama_identical_outputs_rates_and_reports(tmp_path):
    results = _run(tmp_path)
    rows = results["layers"]
    assert [r["layer"] for r in rows] == [2, 4]
    for row in rows:
        assert LAYER_KEYS <= set(row)
        assert row["identical"] is True
        assert 0.0 <= row["agreement"] <= 1.0 and 0.0 <= row["acceptance_rate"] <= 1.0
        assert 0 <= row["accepted"] <= row["proposed"] and row["rounds"] >= 1
        assert row["tokens"] == results["baseline"]["tokens"] == row["agreement_positions"]
        assert row["speedup"] == pytest.approx(row["tokens_per_s"] / row["baseline_tokens_per_s"])
    assert rows[-1]["agreement"] == 1.0
    assert rows[-1]["acceptance_rate"] == 1.0  # the final layer drafting for itself
    for row in rows:  # the shared-cache loop: same tokens, its own counts
        loop = row["shared_cache"]
        assert loop["identical"] is True and loop["tokens"] == row["tokens"]
        assert 0 <= loop["accepted"] <= loop["proposed"] <= 4 * loop["rounds"]
        assert loop["accepted"] + loop["rounds"] >= loop["tokens"]  # each round: kept drafts + one verified token
        assert loop["speedup"] == pytest.approx(loop["tokens_per_s"] / row["baseline_tokens_per_s"])
        assert loop["speedup_vs_same_loop"] == pytest.approx(
            loop["tokens_per_s"] / results["baseline"]["same_loop_tokens_per_s"])
    assert rows[-1]["shared_cache"]["acceptance_rate"] == 1.0
    on_disk = json.loads((tmp_path / "out" / "speculate.json").read_text())
    assert on_disk["layers"] == rows and on_disk["machine"]["torch_threads"] >= 1
    assert on_disk["settings"]["num_assistant_tokens"] == 4 and on_disk["prompts"]["prompts"] == 2
    markdown = (tmp_path / "out" / "speculate.md").read_text()
    assert "| 2 |" in markdown and "Shared-cache draft loop" in markdown
    assert (tmp_path / "out" / "speculate.png").read_bytes()[:4] == b"\x89PNG"


def test_the_draft_counter_sees_every_round_and_is_removed_afterwards():
    from transformers import GenerationConfig
    from transformers.generation.candidate_generator import EarlyExitCandidateGenerator

    model = load_model("tiny-qwen2").eval()
    original = EarlyExitCandidateGenerator.get_candidates
    model.generation_config.assistant_confidence_threshold = 0.0
    config = GenerationConfig(max_new_tokens=7, do_sample=False, assistant_early_exit=2, num_assistant_tokens=3,
                              eos_token_id=[], pad_token_id=0)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode(), DraftCounter() as counter:
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        plain = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                               generation_config=GenerationConfig(max_new_tokens=7, do_sample=False, pad_token_id=0))
    assert EarlyExitCandidateGenerator.get_candidates is original
    assert torch.equal(out, plain)
    # every round adds its accepted drafts and one token of the verifying model
    assert counter.accepted + counter.rounds == out.shape[1] - ids.shape[1]
    assert 0 <= counter.accepted <= counter.proposed <= 3 * counter.rounds


@pytest.mark.slow
def test_agreement_only_runs_on_gpt2_and_qwen2_speculates(tmp_path):
    gpt2 = _run(tmp_path / "gpt2", model="tiny-gpt2", limit=3, draft_decoding=False)
    assert [r["agreement"] for r in gpt2["layers"]][-1] == 1.0 and "acceptance_rate" not in gpt2["layers"][0]
    qwen2 = _run(tmp_path / "qwen2", model="tiny-qwen2", layers=(1, 2, -1), limit=3, max_new_tokens=10,
                 num_assistant_tokens=2)
    assert all(r["identical"] for r in qwen2["layers"]) and qwen2["layers"][-1]["agreement"] == 1.0


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lit_idpo.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_help_lists_the_options():
    result = _cli("speculate", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--layers", "--generation.num_assistant_tokens", "--data.limit", "--print_config"):
        assert option in result.stdout


@pytest.mark.parametrize("args, needle", [
    (["--generation.max_new_tokens", "0"], "generation.max_new_tokens=0"),
    (["--layers", "99"], "out of range"),
    (["--no_such_option", "1"], "(the options: lit-idpo speculate --help)"),
])
def test_cli_bad_options_are_one_line_errors(tmp_path, capsys, args, needle):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["speculate", "--model", "tiny-llama", "--output_dir", str(tmp_path), "--data.limit", "1", *args])
    assert exit_info.value.code == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("lit-idpo: error:") and needle in err and "Traceback" not in err


def test_a_differing_early_exit_output_stops_the_run(tmp_path, monkeypatch):
    from lit_idpo.speculate.decoding import TransformersDecoder

    decode = TransformersDecoder.decode

    def corrupted(self, ids, layer=None, **kwargs):
        tokens, seconds = decode(self, ids, layer, **kwargs)
        if layer is not None and kwargs.get("counter") is not None:  # a timed early-exit decoding
            tokens = tokens[:1] + [tokens[1] + 1] + tokens[2:]
        return tokens, seconds

    monkeypatch.setattr(TransformersDecoder, "decode", corrupted)
    with pytest.raises(OutputMismatchError, match=r"layer 2 \(transformers' assistant_early_exit\) .* on prompt 0 "
                                                  r".*first difference at new token 1"):
        _run(tmp_path, limit=1)
    assert not (tmp_path / "out" / "speculate.json").exists()


def test_reports_keep_the_measurement_when_matplotlib_is_missing(tmp_path, monkeypatch, capsys):
    from lit_idpo.speculate import report as speculate_report

    def no_matplotlib(results):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(speculate_report, "plot_png", no_matplotlib)
    monkeypatch.setattr(speculate_report, "format_markdown", lambda results: "| table |")
    results = {"model": "m", "layers": [{"layer": 1, "agreement": 0.5}]}
    speculate_report.write_reports(results, tmp_path)
    assert json.loads((tmp_path / "speculate.json").read_text()) == results
    assert (tmp_path / "speculate.md").read_text() == "| table |\n"
    assert not (tmp_path / "speculate.png").exists()
    assert "pip install 'lit-idpo[plot]'" in capsys.readouterr().err


def test_shared_cache_loop_alone_and_both_decoders_off(tmp_path):
    results = _run(tmp_path, layers=(1, 4), transformers_early_exit=False)
    for row in results["layers"]:
        assert "acceptance_rate" not in row and row["shared_cache"]["identical"] is True
        assert row["shared_cache"]["tokens"] == results["baseline"]["tokens"]
    assert results["layers"][-1]["shared_cache"]["acceptance_rate"] == 1.0
    markdown = (tmp_path / "out" / "speculate.md").read_text()
    assert "Shared-cache draft loop" in markdown and "assistant_early_exit` (a separate" not in markdown
    assert (tmp_path / "out" / "speculate.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="generation.transformers_early_exit and generation.shared_cache"):
        SpeculateOptions(transformers_early_exit=False, shared_cache=False)
