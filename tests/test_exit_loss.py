"""model.exit_loss_weight: the early-exit NLL of the chosen completions at the intermediate layers.

Truths are float64 and built from the model's full logits (tests/helpers.py), never through lit-idpo's
log-prob code; the loss is checked against its closed form
``gamma * DPO(final) + (1 - gamma) * mean_k DPO(k) + w * mean_k NLL(k)``.
"""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import layer_logprob_sums, padded_rows
from scale_common import LossRecorder, make_module_kwargs, make_trainer, one_thread  # noqa: F401 (fixture)

import lit_idpo.module as module_lib
from lit_idpo.data import PreferenceCollator, PreferenceDataModule
from lit_idpo.errors import ConfigError
from lit_idpo.logprobs import batch_logprobs
from lit_idpo.losses import exit_nll, intermediate_dpo_loss, sequence_logps_for_loss
from lit_idpo.module import METRIC_NAMES, IntermediateDPO

BETA, GAMMA, WEIGHT = 0.2, 0.25, 0.7


def _module(**overrides) -> IntermediateDPO:
    """A float64 tiny-llama module whose policy differs from its reference (so the DPO part is not log 2)."""
    kwargs = make_module_kwargs(layers=[1, 3], beta=BETA, gamma=GAMMA, exit_loss_weight=WEIGHT, init_seed=3)
    kwargs.update(overrides)
    module = IntermediateDPO(**kwargs).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.policy.parameters():
            if p.requires_grad:  # with LoRA: the adapters only, so the reference stays the base model
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _ragged_batch(vocab: int) -> dict:
    """Two pairs whose completions have 3, 4 (chosen) and 6, 5 (rejected) tokens: a token mean differs from a
    mean of per-sequence means."""
    g = torch.Generator().manual_seed(7)
    ids, attention, completion = padded_rows(vocab, g, lengths=(7, 6, 11, 7), prompt_lengths=(4, 2, 5, 2))
    return dict(input_ids=ids, attention_mask=attention, completion_mask=completion, pair_index=torch.arange(2))


def _truth(policy, reference, batch, layer_ids, weight=WEIGHT):
    """``(loss, nll [K])`` in closed form from float64 full-logit log-prob sums."""
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"], layer_ids)
    pol, ref = layer_logprob_sums(policy, *args), layer_logprob_sums(reference, *args)  # [1+K, 2B]
    pairs = pol.shape[1] // 2
    margin = (pol[:, :pairs] - ref[:, :pairs]) - (pol[:, pairs:] - ref[:, pairs:])
    dpo = -F.logsigmoid(BETA * margin).mean(1)  # [1+K]
    chosen_tokens = batch["completion_mask"][:pairs].sum()
    nll = -pol[1:, :pairs].sum(1) / chosen_tokens  # [K]
    return GAMMA * dpo[0] + (1 - GAMMA) * dpo[1:].mean() + weight * nll.mean(), nll


def test_exit_nll_is_a_token_mean_over_the_batch():
    sums = torch.tensor([[-2.0, -9.0], [-1.0, -3.0]])  # [K=2, B=2]
    lengths = torch.tensor([1, 3])
    torch.testing.assert_close(exit_nll(sums, lengths), torch.tensor([11 / 4, 4 / 4]))
    assert exit_nll(sums, lengths)[0] != pytest.approx((2 / 1 + 9 / 3) / 2)  # not a mean of sequence means
    with pytest.raises(ValueError, match=r"exit_nll: expected sums \[K, B\]"):
        exit_nll(sums, torch.tensor([1, 2, 3]))


def test_loss_and_logged_metric_match_the_closed_form():
    module = _module()
    batch = _ragged_batch(module.policy.config.vocab_size)
    expected_loss, expected_nll = _truth(module.policy, module.reference_network, batch, [4, 1, 3])
    loss, metrics = module.compute_loss(batch)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(metrics["exit_nll"], expected_nll, rtol=1e-10, atol=1e-12)

    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)
    module.log_dict = lambda values, **kw: logged.update(values)
    module.training_step(batch, 0)
    assert {n for n in logged if n.endswith("exit_nll")} == {"train/layer1/exit_nll", "train/layer3/exit_nll"}
    torch.testing.assert_close(torch.stack([logged["train/layer1/exit_nll"], logged["train/layer3/exit_nll"]]),
                               expected_nll, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(logged["train/loss_total"], expected_loss, rtol=1e-10, atol=1e-12)


def _full_logit_nll(model, batch, layers):
    """Differentiable float64 mean over ``layers`` of the chosen-token NLL, from explicit full logits."""
    pairs = batch["input_ids"].shape[0] // 2
    ids, mask = batch["input_ids"][:pairs], batch["completion_mask"][:pairs, 1:]
    positions = (batch["attention_mask"][:pairs].cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=batch["attention_mask"][:pairs], position_ids=positions,
                output_hidden_states=True)
    head, norm = model.get_output_embeddings(), model.model.norm
    per_layer = []
    for layer in layers:
        logp = torch.log_softmax(head(norm(out.hidden_states[layer]))[:, :-1], -1)
        token = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        per_layer.append(-(token * mask).sum() / mask.sum())
    return torch.stack(per_layer).mean()


def test_gradient_is_the_sum_of_the_parts_and_spares_blocks_above_the_exit():
    module = _module(layers=[2])
    batch = _ragged_batch(module.policy.config.vocab_size)
    params = dict(module.policy.named_parameters())

    def grads(loss):
        return dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)))

    total = grads(module.compute_loss(batch)[0])
    module.hparams.exit_loss_weight = 0.0
    dpo = grads(module.compute_loss(batch)[0])
    nll = grads(_full_logit_nll(module.policy, batch, [2]))
    changed = set()
    for name in params:
        expected = dpo[name] + WEIGHT * (nll[name] if nll[name] is not None else 0)
        # Not 1e-10: Llama's RMSNorm computes in float32 even in a float64 model, and the fused head's backward
        # rounds at other points than autograd through full logits (measured: <= 6e-8 absolute).
        torch.testing.assert_close(total[name], expected, rtol=1e-4, atol=2e-7)
        if not torch.equal(total[name], dpo[name]):
            changed.add(name)
    # Blocks 1-2, the embeddings, the final norm and the head feed layer 2's readout; blocks 3-4 do not.
    assert any(n.startswith("model.layers.0.") for n in changed) and "model.norm.weight" in changed
    assert not any(n.startswith(("model.layers.2.", "model.layers.3.")) for n in changed)


@pytest.mark.parametrize("kwargs, match", [
    (dict(exit_loss_weight=-0.1), r"model\.exit_loss_weight=-0\.1 must be a finite number >= 0: set it to 0"),
    (dict(exit_loss_weight=math.nan), r"model\.exit_loss_weight=nan must be a finite number >= 0"),
    (dict(exit_loss_weight=math.inf), r"model\.exit_loss_weight=inf must be a finite number >= 0"),
    (dict(exit_loss_weight="1"), r"model\.exit_loss_weight='1' must be a finite number"),
    (dict(exit_loss_weight=0.5, layers=[]),
     r"model\.exit_loss_weight=0\.5 .* model\.layers selects none: list one \(e\.g\. \[3\]\) or set "
     r"model\.exit_loss_weight=0"),
])
def test_bad_weight_is_a_config_error_naming_the_option(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        IntermediateDPO(**make_module_kwargs(**kwargs))


def test_weight_zero_changes_nothing(monkeypatch):
    """Off by default: the loss is bit-identical to the Intermediate DPO loss alone, and no exit NLL is computed."""
    monkeypatch.setattr(module_lib, "exit_nll", lambda *a: pytest.fail("exit_nll computed with weight 0"))
    module = _module(exit_loss_weight=0.0)
    assert inspect.signature(IntermediateDPO).parameters["exit_loss_weight"].default == 0.0
    batch = _ragged_batch(module.policy.config.vocab_size)
    loss, metrics = module.compute_loss(batch)
    lengths = batch["completion_mask"].sum(1)
    pol = sequence_logps_for_loss(batch_logprobs(module.policy, batch, [4, 1, 3]), lengths, "sigmoid")
    ref = sequence_logps_for_loss(batch_logprobs(module.reference_network, batch, [4, 1, 3]), lengths, "sigmoid")
    expected, _ = intermediate_dpo_loss(pol[:, :2], pol[:, 2:], ref[:, :2], ref[:, 2:], beta=BETA, gamma=GAMMA)
    assert loss.item() == expected.item()
    assert set(metrics) == set(METRIC_NAMES)
    assert all(metric != "exit_nll" for _, metric in module.metric_pairs)
    assert "exit_nll" not in module.format_table({pair: torch.tensor(0.0) for pair in module.metric_pairs})


def _examples(pairs: int = 3):
    """Bundled pairs plus two of very different completion lengths."""
    data = PreferenceDataModule(tokenizer="tiny-llama", limit_train_pairs=pairs, limit_val_pairs=1, packing="none")
    data.setup("fit")
    examples = [data.train_pairs[i] for i in range(pairs)]
    g = torch.Generator().manual_seed(3)
    for i, (p, c, r) in enumerate([(2, 1, 8), (9, 12, 2)]):
        ids = [torch.randint(1, 5000, (n,), generator=g).tolist() for n in (p, c, r)]
        examples.append({"pair_index": pairs + i, "prompt_ids": ids[0], "chosen_ids": ids[1], "rejected_ids": ids[2]})
    return examples, data.tokenizer.pad_token_id


def test_same_value_in_every_packing_mode():
    module = _module()
    examples, pad = _examples()
    padded = PreferenceCollator(pad)(examples)
    expected_loss, expected_nll = _truth(module.policy, module.reference_network, padded, [4, 1, 3])
    for mode in ("none", "padding_free", "prefix_shared"):
        loss, metrics = module.compute_loss(PreferenceCollator(pad, packing=mode)(examples))
        torch.testing.assert_close(metrics["exit_nll"], expected_nll, rtol=1e-10, atol=1e-12, msg=mode)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-10, atol=1e-12, msg=mode)


def test_lora_exit_nll_reads_the_adapted_policy():
    pytest.importorskip("peft")
    module = _module(layers=[2], lora={"rank": 4, "alpha": 8, "dropout": 0.0})
    examples, pad = _examples(pairs=2)
    batch = PreferenceCollator(pad)(examples)
    base = module.policy.get_base_model()  # the adapters stay active inside it
    _, adapted = _truth(base, base, batch, [4, 2])
    with module.policy.disable_adapter():
        _, plain = _truth(base, base, batch, [4, 2])
    assert not torch.allclose(adapted, plain)
    for mode in ("none", "prefix_shared"):
        loss, metrics = module.compute_loss(PreferenceCollator(pad, packing=mode)(examples))
        torch.testing.assert_close(metrics["exit_nll"], adapted, rtol=1e-10, atol=1e-12, msg=mode)
    # The exit term reaches the adapters (the only trainable weights).
    adapters = [p for p in module.policy.parameters() if p.requires_grad]
    with_exit = torch.autograd.grad(loss, adapters)
    module.hparams.exit_loss_weight = 0.0
    without = torch.autograd.grad(module.compute_loss(batch)[0], adapters)
    assert any(not torch.allclose(a, b) for a, b in zip(with_exit, without))


def _fit(tmp_path, cache):
    import lightning.pytorch as pl

    pl.seed_everything(0)
    module = IntermediateDPO(**make_module_kwargs(exit_loss_weight=0.5, reference_cache=cache,
                                                  hf_output_dir=str(tmp_path / "hf")),
                             optimizer=lambda params: torch.optim.SGD(params, lr=0.5))
    # 3 validation pairs in batches of 2 and 1 with different token counts: a pair-weighted mean would differ.
    data = PreferenceDataModule(tokenizer="tiny-llama", batch_size=2, limit_train_pairs=4, limit_val_pairs=3)
    recorder = LossRecorder()
    trainer = make_trainer(2, [recorder], limit_val_batches=2, val_check_interval=2)
    trainer.fit(module, data)
    return module, data, recorder.losses, trainer.callback_metrics


@pytest.mark.slow
def test_fit_logs_the_validation_token_mean_and_the_cache_gives_the_same(tmp_path):
    module, data, live_losses, live = _fit(tmp_path, None)
    assert {"train/layer2/exit_nll", "val/layer2/exit_nll"} <= set(live) and "val/exit_nll" not in live
    assert "| exit_nll |" in module.last_val_table and "| final (4) |" in module.last_val_table
    # The validation value is the token mean over all validation pairs, from the trained policy's full logits.
    collate = PreferenceCollator(data.tokenizer.pad_token_id)
    _, nll = _truth(module.policy, module.policy, collate([data.val_pairs[i] for i in range(3)]), [4, 2])
    assert float(live["val/layer2/exit_nll"]) == pytest.approx(float(nll[0]), rel=1e-5)
    # Not the mean of the two batches' values weighted by pairs (2 and 1), which the other metrics use.
    by_batch = [_truth(module.policy, module.policy, collate([data.val_pairs[i] for i in rows]), [4, 2])[1][0]
                for rows in ((0, 1), (2,))]
    assert float(nll[0]) != pytest.approx(float(2 * by_batch[0] + by_batch[1]) / 3, rel=1e-5)

    _, _, cached_losses, cached = _fit(tmp_path, str(tmp_path / "cache"))
    for step in live_losses:
        assert cached_losses[step] == pytest.approx(live_losses[step], abs=1e-6)
    for name in ("train/layer2/exit_nll", "val/layer2/exit_nll"):
        assert float(cached[name]) == pytest.approx(float(live[name]), abs=1e-6)
