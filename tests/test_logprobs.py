"""sequence_logprobs against an independent computation from the CausalLM's own forward."""

import pytest
import torch
from helpers import layer_logprob_sums, padded_rows

from lit_idpo.kernels import LinearLogprobsOptions, linear_logprobs
from lit_idpo.layers import resolve_layers
from lit_idpo.logprobs import find_head_path, sequence_logprobs
from lit_idpo.models import load_model


@pytest.mark.parametrize("source", ["tiny-llama", "tiny-gpt2", "tiny-qwen2"])
@pytest.mark.parametrize("backend", ["torch", "naive"])
def test_matches_full_forward(source, backend):
    model = load_model(source, seed=1).eval()
    g = torch.Generator().manual_seed(0)
    ids, attn, comp = padded_rows(model.config.vocab_size, g)
    layers = [-1, 1, 3, -2, 4]
    got = sequence_logprobs(model.double(), ids, attn, comp, layers, backend=backend)
    want = layer_logprob_sums(model, ids, attn, comp, layers)
    assert got.shape == (len(layers), 3)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    # -1 and 4 are both the final layer of a 4-block model.
    torch.testing.assert_close(got[0], got[4])


@pytest.mark.parametrize("source", ["tiny-llama", "tiny-gpt2"])
def test_left_padding_equals_right_padding(source):
    model = load_model(source, seed=2).eval()
    g = torch.Generator().manual_seed(3)
    right = padded_rows(model.config.vocab_size, g)
    ids_r, attn_r, comp_r = right
    # Same rows, moved to the right end.
    ids_l, attn_l, comp_l = (torch.zeros_like(t) for t in right)
    for b in range(ids_r.shape[0]):
        n = int(attn_r[b].sum())
        for src, dst in ((ids_r, ids_l), (attn_r, attn_l), (comp_r, comp_l)):
            dst[b, -n:] = src[b, :n]
    layers = [2, -1]
    a = sequence_logprobs(model, ids_r, attn_r, comp_r, layers)
    b = sequence_logprobs(model, ids_l, attn_l, comp_l, layers)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_gradients_flow_to_intermediate_layers_only_below_them():
    model = load_model("tiny-llama", seed=0)
    g = torch.Generator().manual_seed(0)
    ids, attn, comp = padded_rows(model.config.vocab_size, g)
    out = sequence_logprobs(model, ids, attn, comp, [1])
    out.sum().backward()
    blocks = model.model.layers
    assert blocks[0].mlp.down_proj.weight.grad is not None and blocks[0].mlp.down_proj.weight.grad.abs().sum() > 0
    # Blocks after layer 1 do not influence layer 1's output.
    assert blocks[3].mlp.down_proj.weight.grad is None or blocks[3].mlp.down_proj.weight.grad.abs().sum() == 0


@pytest.mark.parametrize("layers, match",
                         [([0], "out of range"), ([5], "out of range"), ([-5], "out of range"), ([], "empty")])
def test_bad_layers(layers, match):
    model = load_model("tiny-llama")
    g = torch.Generator().manual_seed(0)
    ids, attn, comp = padded_rows(model.config.vocab_size, g)
    with pytest.raises(ValueError, match=match):
        sequence_logprobs(model, ids, attn, comp, layers)


def test_bad_masks():
    model = load_model("tiny-llama")
    g = torch.Generator().manual_seed(0)
    ids, attn, comp = padded_rows(model.config.vocab_size, g)
    bad = comp.clone()
    bad[:, 0] = 1
    with pytest.raises(ValueError, match="position 0"):
        sequence_logprobs(model, ids, attn, bad, [-1])
    bad = comp.clone()
    bad[1, -1] = 1  # row 1 is padded at the end
    with pytest.raises(ValueError, match="padding"):
        sequence_logprobs(model, ids, attn, bad, [-1])
    with pytest.raises(ValueError, match="shape"):
        sequence_logprobs(model, ids, attn[:, :-1], comp, [-1])


def test_logit_softcapping_is_refused():
    model = load_model("tiny-llama")
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="LlamaForCausalLM.*final_logit_softcapping"):
        find_head_path(model)


@pytest.mark.parametrize("backend", ["torch", "naive"])
def test_direct_call_under_autocast_gives_trainings_numbers(backend):
    # Mixed precision as Lightning's bf16-mixed runs it on CPU: the backbone and the head under
    # torch.autocast. A direct linear_logprobs call on the same rows, under the same autocast, must
    # give exactly what sequence_logprobs computes, because the autocast policy lives in the op.
    model = load_model("tiny-llama", seed=4).eval()
    g = torch.Generator().manual_seed(5)
    ids, attn, comp = padded_rows(model.config.vocab_size, g)  # right-padded: positions are 0..T-1
    layers = [2, -1]
    path = find_head_path(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        trained = sequence_logprobs(model, ids, attn, comp, layers, backend=backend)
        hidden_states = path.backbone(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states
        batch_index, position = comp[:, 1:].bool().nonzero(as_tuple=True)
        targets = ids[:, 1:][batch_index, position]
        direct = []
        for layer in resolve_layers(layers, path.num_layers):
            rows = hidden_states[layer][:, :-1][batch_index, position]
            rows = rows if layer == path.num_layers else path.final_norm(rows)
            token = linear_logprobs(rows, path.lm_head.weight, targets, options=LinearLogprobsOptions(backend=backend))
            direct.append(token.new_zeros(ids.shape[0]).index_add(0, batch_index, token))
    assert trained.dtype == torch.float32
    torch.testing.assert_close(trained, torch.stack(direct), rtol=0, atol=0)
    # Both are the bf16 computation, within bf16 accuracy of the float64 truth (and not float32-exact).
    want = layer_logprob_sums(model, ids, attn, comp, layers)
    with torch.no_grad():
        full = sequence_logprobs(model, ids, attn, comp, layers, backend=backend)
    torch.testing.assert_close(trained.double(), want, rtol=0.02, atol=0.05)
    assert (trained - full).abs().max() > 1e-4
