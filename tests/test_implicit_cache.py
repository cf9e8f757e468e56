"""The implicit-reward pass's per-model cache: a cached run reports exactly what a fresh pass does, without
loading a model; each key component recomputes what depends on it, and only that; adding a model to an
evaluation scores only the new model."""

import json

import pytest
import torch

from lit_idpo import evaluation as ev
from lit_idpo.evaluation import implicit, implicit_cache

OPTIONS = ev.ImplicitOptions(layers=[1, 3, -1], beta=0.5, batch_size=4)
DATA = ev.DataOptions(limit=4)  # one batch of 4 pairs per model: seconds


def _save_perturbed(folder, seed: int, scale: float = 0.05) -> str:
    from lit_idpo.models import load_model, load_tokenizer

    model = load_model("tiny-llama")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    model.save_pretrained(folder)
    load_tokenizer("tiny-llama").save_pretrained(folder)
    return str(folder)


@pytest.fixture
def trained(tmp_path):
    """Two 'trained' models: tiny-llama with seeded perturbations, saved as model directories."""
    return [ev.ModelSpec(f"s{seed}", _save_perturbed(tmp_path / f"trained{seed}", seed)) for seed in (1, 2)]


@pytest.fixture
def loads(monkeypatch):
    """The sources the implicit pass loads, in order."""
    seen = []
    original = implicit.load_eval_model

    def counting(source, dtype="float32"):
        seen.append(source)
        return original(source, dtype)

    monkeypatch.setattr(implicit, "load_eval_model", counting)
    return seen


def _run(models, cache_dir, options=OPTIONS, data=DATA, reference="tiny-llama", **kwargs):
    return ev.implicit_reward_accuracy(models, reference, data, options, progress=False, cache_dir=cache_dir, **kwargs)


def _without_cache(result):
    return {k: v for k, v in result.items() if k != "cache"}


def test_a_cached_pass_equals_a_fresh_one_without_running_a_model(tmp_path, trained, monkeypatch):
    fresh = _run(trained, None)
    assert "cache" not in fresh
    first = _run(trained, tmp_path / "cache")
    assert first["cache"]["reference"] == "computed" and set(first["cache"]["models"].values()) == {"computed"}
    assert _without_cache(first) == fresh
    assert len(list((tmp_path / "cache" / "implicit").glob("*.json"))) == 3  # the reference and each model

    def boom(*args, **kwargs):
        raise AssertionError("a model was run although its log-probs are cached")

    from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaModel

    other_beta = ev.ImplicitOptions(layers=[1, 3, -1], beta=0.1, batch_size=4)
    fresh_beta = _run(trained, None, other_beta)
    with monkeypatch.context() as m:
        m.setattr(implicit, "load_eval_model", boom)
        m.setattr("lit_idpo.logprobs.sequence_logprobs", boom)
        m.setattr(LlamaModel, "forward", boom)
        m.setattr(LlamaForCausalLM, "forward", boom)
        second = _run(trained, tmp_path / "cache")
        # beta is applied to the cached log-probs: another beta recomputes nothing and equals a fresh pass.
        assert _without_cache(_run(trained, tmp_path / "cache", other_beta)) == fresh_beta
    assert second == {**first, "cache": {**first["cache"], "reference": "cached",
                                         "models": {"s1": "cached", "s2": "cached"}}}
    assert _without_cache(second) == fresh  # bit for bit: every float compares equal

def test_each_key_component_recomputes_what_depends_on_it(tmp_path, trained, loads, monkeypatch):
    cache = tmp_path / "cache"
    model = trained[:1]
    source = model[0].source
    base = _run(model, cache)
    assert loads == ["tiny-llama", source]
    loads.clear()
    assert _run(model, cache) == {**base, "cache": {**base["cache"], "reference": "cached", "models": {"s1": "cached"}}}
    assert loads == []

    def recomputes(expected, **kwargs):
        loads.clear()
        result = _run(model, cache, **kwargs)
        assert loads == expected, kwargs
        return result

    # The layers; the new entry is then cached under its own key.
    layers = ev.ImplicitOptions(layers=[2, -1], beta=0.5, batch_size=4)
    result = recomputes(["tiny-llama", source], options=layers)
    assert result["layers"] == [2, 4]
    assert recomputes([], options=layers) == {**result, "cache": {**result["cache"], "reference": "cached",
                                                                  "models": {"s1": "cached"}}}
    # The dtype.
    recomputes(["tiny-llama", source], dtype="bfloat16")
    # The pairs: more of them, or max_length dropping some (tokenisation options act through the token ids).
    recomputes(["tiny-llama", source], data=ev.DataOptions(limit=5))
    short = recomputes(["tiny-llama", source], options=ev.ImplicitOptions(layers=[1, 3, -1], beta=0.5, batch_size=4,
                                                                          max_length=55))
    assert short["data"]["dropped"]["too_long"] > 0  # pairs of 56 tokens give way to later, shorter ones
    # The package versions.
    real = implicit_cache.package_versions()
    with monkeypatch.context() as m:
        m.setattr(implicit_cache, "package_versions", lambda: {**real, "torch": real["torch"] + "+other"})
        recomputes(["tiny-llama", source])
    # The model's weights (its content fingerprint, not its path): only the model is scored again.
    _save_perturbed(source, seed=3)
    changed = recomputes([source])
    assert changed["models"]["s1"] != base["models"]["s1"]
    # The reference: only the reference is scored again, and the results are those of a fresh pass.
    other_reference = _save_perturbed(tmp_path / "reference", seed=4, scale=0.02)
    loads.clear()
    with_reference = _run(model, cache, reference=other_reference)
    assert loads == [other_reference]
    assert _without_cache(with_reference) == _run(model, None, reference=other_reference)


def test_adding_a_model_to_an_evaluation_scores_only_that_model(tmp_path, trained, loads):
    first = ev.evaluate(trained[:1], tmp_path / "r1", reference="tiny-llama", data=DATA, implicit=OPTIONS,
                        cache_dir=tmp_path / "cache", progress=False)["implicit_reward"]
    assert loads == ["tiny-llama", trained[0].source]
    loads.clear()
    second = ev.evaluate(trained, tmp_path / "r2", reference="tiny-llama", data=DATA, implicit=OPTIONS,
                         cache_dir=tmp_path / "cache", progress=False)["implicit_reward"]
    assert loads == [trained[1].source]
    assert second["cache"] == {"dir": str(tmp_path / "cache" / "implicit"), "reference": "cached",
                               "models": {"s1": "cached", "s2": "computed"}}
    assert second["models"]["s1"] == first["models"]["s1"]
    assert _without_cache(second) == _run(trained, None)
    # The default cache directory is <output_dir>/cache, next to the generation cache.
    ev.evaluate(trained[:1], tmp_path / "r3", reference="tiny-llama", data=DATA, implicit=OPTIONS, progress=False)
    assert len(list((tmp_path / "r3" / "cache" / "implicit").glob("*.json"))) == 2


def test_a_damaged_or_foreign_entry_is_computed_again(tmp_path, trained, loads):
    cache = tmp_path / "cache"
    base = _run(trained[:1], cache)
    files = sorted((cache / "implicit").glob("*.json"))
    assert len(files) == 2
    stored = [json.loads(f.read_text()) for f in files]
    assert {s["source"] for s in stored} == {"tiny-llama", trained[0].source}
    for s in stored:
        assert set(s["key"]) == {"format", "model", "pairs", "layers", "dtype", "versions"}
        assert s["layers"] == [1, 3, 4] and s["num_layers"] == 4 and len(s["chosen"][0]) == 4
    files[0].write_text(files[0].read_text()[:100])  # a torn file
    entry = json.loads(files[1].read_text())
    entry["key"]["dtype"] = "float16"  # an entry whose key does not match its name
    files[1].write_text(json.dumps(entry))
    loads.clear()
    again = _run(trained[:1], cache)
    assert sorted(loads) == sorted(["tiny-llama", trained[0].source])
    assert _without_cache(again) == _without_cache(base)


def test_pairs_digest_follows_every_token():
    from lit_idpo.data.collate import PreferencePairs

    pairs = PreferencePairs([[1, 2], [3]], [[4], [5, 6]], [[7], [8]])
    same = PreferencePairs([[1, 2], [3]], [[4], [5, 6]], [[7], [8]])
    assert implicit_cache.pairs_digest(pairs) == implicit_cache.pairs_digest(same)
    for other in (PreferencePairs([[1, 2], [3]], [[4], [5, 6]], [[7], [9]]),
                  PreferencePairs([[1], [2, 3]], [[4], [5, 6]], [[7], [8]]),
                  PreferencePairs([[1, 2]], [[4]], [[7]])):
        assert implicit_cache.pairs_digest(other) != implicit_cache.pairs_digest(pairs)
