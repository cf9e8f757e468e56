"""The shared-cache self-speculative loop (LayerSkip's scheme) against plain greedy ``generate`` and against a
cache-free reimplementation of the same draft-and-verify rule that recomputes every forward from scratch."""

import pytest
import torch
from transformers import GenerationConfig

from lit_idpo.errors import ConfigError
from lit_idpo.models import load_model
from lit_idpo.speculate.decoding import DraftStats, SharedCacheDecoder

PROMPTS = ([1, 5, 9, 3], [7], [2, 3, 4, 5, 6, 7, 8, 9, 10, 11])


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-qwen2"])
def model(request):
    torch.manual_seed(0)
    return load_model(request.param).eval()


def _greedy(model, prompt, max_new_tokens, eos=()):
    ids = torch.tensor([prompt])
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, eos_token_id=list(eos))
    with torch.inference_mode():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)[
            0, len(prompt):].tolist()


def _readout(model, tokens, layer):
    """Arg-max of layer ``layer``'s readout after ``tokens``, from a fresh full forward (no cache)."""
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([tokens]), output_hidden_states=True, use_cache=False)
        if layer == model.config.num_hidden_layers:
            return out.logits[0].argmax(-1).tolist()
        hidden = out.hidden_states[layer][0]
        return model.lm_head(model.model.norm(hidden)).argmax(-1).tolist()


def _cache_free(model, prompt, layer, num_draft, max_new_tokens):
    """The draft-and-verify rule without any cache: (new tokens, proposed, accepted, rounds)."""
    sequence, new, proposed, accepted, rounds = list(prompt), [], 0, 0, 0
    while len(new) < max_new_tokens:
        drafts = []
        for _ in range(min(num_draft, max_new_tokens - len(new) - 1)):
            drafts.append(_readout(model, sequence + drafts, layer)[-1])
        verified = _readout(model, sequence + drafts, model.config.num_hidden_layers)[len(sequence) - 1:]
        kept = 0
        while kept < len(drafts) and drafts[kept] == verified[kept]:
            kept += 1
        step = drafts[:kept] + [verified[kept]]
        sequence, new = sequence + step, new + step
        proposed, accepted, rounds = proposed + len(drafts), accepted + kept, rounds + 1
    return new, proposed, accepted, rounds


def test_every_exit_layer_and_draft_length_gives_plain_greedy_output(model):
    for prompt in PROMPTS:
        plain = _greedy(model, prompt, 12)
        for layer in range(1, model.config.num_hidden_layers + 1):
            for num_draft in (0, 1, 3):
                stats = DraftStats()
                tokens, seconds = SharedCacheDecoder(model, layer, num_draft, []).decode(prompt, 12, stats)
                assert tokens == plain, (prompt, layer, num_draft)
                assert seconds > 0 and stats.tokens == 12
                # every round keeps its accepted drafts and adds one verified token
                assert stats.accepted + stats.rounds == 12 and stats.proposed <= num_draft * stats.rounds


def test_counts_equal_a_cache_free_reimplementation(model):
    total = model.config.num_hidden_layers
    for prompt in PROMPTS[:2]:
        for layer in range(1, total + 1):
            stats = DraftStats()
            tokens, _ = SharedCacheDecoder(model, layer, 3, []).decode(prompt, 9, stats)
            expected, proposed, accepted, rounds = _cache_free(model, prompt, layer, 3, 9)
            assert tokens == expected
            assert (stats.proposed, stats.accepted, stats.rounds) == (proposed, accepted, rounds)
            # layer calls: per round, (drafts + 1) passes through layers 1..k and one through k+1..L
            assert stats.layer_calls == stats.proposed * layer + stats.rounds * total
    final = DraftStats()
    SharedCacheDecoder(model, total, 3, []).decode(PROMPTS[0], 9, final)
    assert final.accepted == final.proposed > 0  # the last layer drafting for itself is always right


def test_stops_at_eos_like_generate(model):
    prompt = PROMPTS[2]
    plain = _greedy(model, prompt, 12)
    eos = plain[4]  # a token plain greedy produces: decoding must stop at its first occurrence, included
    expected = _greedy(model, prompt, 12, eos=[eos])
    assert expected[-1] == eos and len(expected) <= 5
    for layer in (1, model.config.num_hidden_layers):
        stats = DraftStats()
        tokens, _ = SharedCacheDecoder(model, layer, 3, [eos]).decode(prompt, 12, stats)
        assert tokens == expected and stats.tokens == len(expected)


def test_bad_exit_layer_and_sliding_window_are_refused():
    from transformers import MistralConfig, MistralForCausalLM

    model = load_model("tiny-llama").eval()
    with pytest.raises(ConfigError, match="out of range"):
        SharedCacheDecoder(model, model.config.num_hidden_layers + 1, 2, [])
    config = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=8)
    mistral = MistralForCausalLM(config).eval()
    decoder = SharedCacheDecoder(mistral, 1, 2, [])
    assert decoder.decode([1, 2, 3], 5)[0] == _greedy(mistral, [1, 2, 3], 5)  # within the window: exact
    with pytest.raises(ConfigError, match=r"sliding window \(8\).*generation.shared_cache false"):
        decoder.decode([1, 2, 3, 4], 6)
