"""data.packing: padding_free and prefix_shared batches score exactly as padded ones, or are refused."""

from pathlib import Path

import pytest
import torch
from scale_common import LossRecorder, make_module_kwargs, make_trainer, one_thread  # noqa: F401 (fixture)

import lit_idpo.module as module_lib
from lit_idpo.batch import PackingResolver, resolve_packing, scoring_plan, sequence_token_counts
from lit_idpo.cli import main
from lit_idpo.data import PreferenceCollator, PreferenceDataModule
from lit_idpo.errors import ConfigError
from lit_idpo.logprobs import batch_logprobs, sequence_logprobs
from lit_idpo.models import load_model
from lit_idpo.module import METRIC_NAMES, IntermediateDPO

MODES = ("padding_free", "prefix_shared")
TINY = ("tiny-llama", "tiny-qwen2", "tiny-gpt2")


def _bundled_and_ragged(tokenizer: str = "tiny-llama", pairs: int = 4):
    """Bundled pairs plus synthetic ones of very different lengths (1-token completions, long rejected, ...)."""
    data = PreferenceDataModule(tokenizer=tokenizer, limit_train_pairs=pairs, limit_val_pairs=1, packing="none")
    data.setup("fit")
    examples = [data.train_pairs[i] for i in range(pairs)]
    g = torch.Generator().manual_seed(0)
    for i, (p, c, k) in enumerate([(3, 1, 9), (12, 7, 1), (1, 2, 2), (6, 14, 5)]):
        ids = [torch.randint(1, 5000, (n,), generator=g).tolist() for n in (p, c, k)]
        examples.append({"pair_index": pairs + i, "prompt_ids": ids[0], "chosen_ids": ids[1], "rejected_ids": ids[2]})
    return examples, data.tokenizer.pad_token_id


def _tiny(name: str, attn_implementation: str = "sdpa", float64_norms: bool = False):
    model = load_model(name, seed=1).double().eval()
    model.config._attn_implementation = attn_implementation
    if float64_norms:
        # Llama/Qwen2 RMSNorm computes in float32 whatever the input dtype. A prompt shared by two completions
        # sums their gradients BEFORE that float32 rounding, padded rows after it: the same math, rounded at
        # another point. Computing the norm in the input dtype makes the float64 comparison a pure test of packing.
        for module in model.modules():
            if type(module).__name__.endswith("RMSNorm"):
                module.forward = lambda x, m=module: m.weight * (
                    x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + m.variance_epsilon))
    return model


def _padded_sums(model, examples, pad, side, layers):
    batch = PreferenceCollator(pad, side)(examples)
    return sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"], layers)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logprobs_equal_padded_for_every_pair_and_layer(name, attn):
    model = _tiny(name, attn)
    examples, pad = _bundled_and_ragged()
    layers = list(range(1, model.config.num_hidden_layers + 1))
    right = _padded_sums(model, examples, pad, "right", layers)  # [L, 2B]
    if attn == "sdpa":
        # (Eager float64 attention turns a left-padded row's fully masked pad queries into NaN: its float32
        # softmax reads float64's most negative mask value as -inf. Packed pad tokens attend to themselves.)
        torch.testing.assert_close(_padded_sums(model, examples, pad, "left", layers), right, rtol=1e-10, atol=0)
    # Eager Llama/Qwen2 attention takes its softmax in float32: padded rows hold other (masked) columns.
    rtol = 1e-10 if attn == "sdpa" or name == "tiny-gpt2" else 1e-7
    for mode in MODES:
        batch = PreferenceCollator(pad, packing=mode)(examples)
        packed = batch_logprobs(model, batch, layers)
        assert packed.shape == (len(layers), 2 * len(examples))
        torch.testing.assert_close(packed, right, rtol=rtol, atol=0, msg=f"{name} {attn} {mode}")


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("float64_norms", [True, False])
def test_packed_gradients_equal_padded(name, float64_norms):
    model = _tiny(name, float64_norms=float64_norms)  # eval mode: no dropout; gradients flow all the same
    # Unpatched RMSNorm rounds to float32 (see _tiny): exact to float32 precision only.
    rtol, atol = (1e-10, 1e-13) if float64_norms or name == "tiny-gpt2" else (1e-5, 1e-6)
    examples, pad = _bundled_and_ragged(pairs=2)
    layers = [1, -1]
    weights = torch.randn(len(layers), 2 * len(examples), generator=torch.Generator().manual_seed(1),
                          dtype=torch.float64)
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(batch):
        return torch.autograd.grad((batch_logprobs(model, batch, layers) * weights).sum(), params)

    padded = grads(PreferenceCollator(pad, "left")(examples))
    for mode in MODES:
        for got, want in zip(grads(PreferenceCollator(pad, packing=mode)(examples)), padded):
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


def test_prefix_shared_layout():
    example = {"pair_index": 7, "prompt_ids": [11, 12], "chosen_ids": [21, 22, 23], "rejected_ids": [31, 32]}
    batch = PreferenceCollator(0, packing="prefix_shared")([example])
    assert batch["input_ids"].tolist() == [[11, 12, 21, 22, 23, 31, 32]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3]]  # rejected continues from the prompt
    allowed = batch["packed_attention"][0, 0]
    assert allowed[5:, 2:5].sum() == 0  # rejected never sees chosen
    assert allowed[5:, :2].all() and allowed[5:, 5:].tolist() == [[True, False], [True, True]]
    assert allowed[:5, :5].equal(torch.ones(5, 5, dtype=torch.bool).tril())
    # The prompt's last state predicts both first completion tokens.
    assert batch["score_index"].tolist() == [1, 2, 3, 1, 5]
    assert batch["score_target"].tolist() == [21, 22, 23, 31, 32]
    assert batch["score_sequence"].tolist() == [0, 0, 0, 1, 1]
    assert sequence_token_counts(batch).tolist() == [[5, 4], [3, 2]]
    padded = PreferenceCollator(0)([example])
    assert sequence_token_counts(padded).tolist() == [[5, 4], [3, 2]]
    assert scoring_plan(padded).lengths().tolist() == scoring_plan(batch).lengths().tolist() == [3, 2]


def test_padding_free_rows_never_exceed_the_longest_sequence_and_hold_no_duplicate():
    examples, pad = _bundled_and_ragged()
    batch = PreferenceCollator(pad, packing="padding_free")(examples)
    longest = max(len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"])) for e in examples)
    assert batch["input_ids"].shape[1] == longest
    real = sum(2 * len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples)
    assert int(batch["sequence_tokens"].sum()) == real
    assert batch["input_ids"].shape[0] < 2 * len(examples)  # short sequences share rows


def _perturbed_module(**kwargs):
    module = IntermediateDPO(**make_module_kwargs(**kwargs)).double()
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2), dtype=p.dtype))
    return module


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_compute_loss_is_the_same_in_every_mode(loss_type):
    module = _perturbed_module(layers=[1, 3], loss_type=loss_type)
    examples, pad = _bundled_and_ragged()
    loss, metrics = module.compute_loss(PreferenceCollator(pad)(examples))
    for mode in MODES:
        packed_loss, packed_metrics = module.compute_loss(PreferenceCollator(pad, packing=mode)(examples))
        torch.testing.assert_close(packed_loss, loss, rtol=1e-10, atol=1e-12)
        for name in METRIC_NAMES:
            torch.testing.assert_close(packed_metrics[name], metrics[name], rtol=1e-10, atol=1e-12)


def test_auto_resolves_to_prefix_shared_and_refuses_or_falls_back_where_inexact():
    model = load_model("tiny-llama")
    assert resolve_packing("auto", [model, None]) == ("prefix_shared", None)
    assert resolve_packing("none", [model]) == ("none", None)
    model.config._attn_implementation = "flash_attention_2"  # ignores a custom 4-D mask
    with pytest.raises(ConfigError, match=r"data\.packing=prefix_shared.*'llama'.*flash_attention_2"):
        resolve_packing("prefix_shared", [model])
    with pytest.raises(ConfigError, match=r"data\.packing=padding_free.*'llama'"):
        resolve_packing("padding_free", [model])
    mode, reason = resolve_packing("auto", [load_model("tiny-gpt2"), model])  # any model that cannot: fall back
    assert mode == "none" and "flash_attention_2" in reason and "data.packing=none" in reason
    with pytest.raises(ConfigError, match=r"data\.packing='tight'"):
        resolve_packing("tight", [model])
    sliding = load_model("tiny-qwen2")
    sliding.config.use_sliding_window, sliding.config.sliding_window = True, 8
    with pytest.raises(ConfigError, match="sliding_window=8"):
        resolve_packing("prefix_shared", [sliding])


def test_packed_batch_on_a_model_that_cannot_take_it_is_refused():
    module = IntermediateDPO(**make_module_kwargs())
    module.policy.config._attn_implementation = "flash_attention_2"
    examples, pad = _bundled_and_ragged(pairs=1)
    with pytest.raises(ConfigError, match=r"data\.packing.*'llama'.*flash_attention_2"):
        module.compute_loss(PreferenceCollator(pad, packing="padding_free")(examples))


def _fit(tmp_path, packing, cache=None, steps=3):
    import lightning.pytorch as pl

    pl.seed_everything(0)
    module = IntermediateDPO(**make_module_kwargs(reference_cache=cache, hf_output_dir=str(tmp_path / "hf")),
                             optimizer=lambda params: torch.optim.SGD(params, lr=0.5))
    data = PreferenceDataModule(tokenizer="tiny-llama", batch_size=2, limit_train_pairs=6, limit_val_pairs=2,
                                packing=packing)
    recorder = LossRecorder()
    make_trainer(steps, [recorder]).fit(module, data)
    return module, data, recorder.losses


def test_fit_resolves_auto_and_every_mode_trains_alike(tmp_path):
    _, data, padded = _fit(tmp_path, "none")
    _, auto_data, auto = _fit(tmp_path, "auto")
    assert data.packing_mode == "none" and auto_data.packing_mode == "prefix_shared"
    assert auto_data.collator.packing == "prefix_shared"
    for step in padded:
        assert auto[step] == pytest.approx(padded[step], rel=1e-5)


@pytest.mark.parametrize("packing", ["none", "prefix_shared"])
def test_a_users_own_datamodule_trains_as_it_is(tmp_path, packing):
    """The module tells the data the models only through the PackingResolver contract, which
    PreferenceDataModule meets; a plain LightningDataModule is not one and trains on its own batches (a packed
    one is checked by check_packable when scored)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    pairs = PreferenceDataModule(tokenizer="tiny-llama", limit_train_pairs=4, val_split=None)
    assert isinstance(pairs, PackingResolver)
    pairs.setup("fit")
    collate = PreferenceCollator(pairs.tokenizer.pad_token_id, packing=packing)

    class OwnData(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(pairs.train_pairs, batch_size=2, collate_fn=collate)

    data = OwnData()
    assert not isinstance(data, PackingResolver)
    recorder = LossRecorder()
    module = IntermediateDPO(**make_module_kwargs(hf_output_dir=str(tmp_path / "hf")))
    make_trainer(2, [recorder]).fit(module, datamodule=data)
    assert sorted(recorder.losses) == [1, 2] and all(torch.isfinite(torch.tensor(list(recorder.losses.values()))))
    assert recorder.pair_index == {1: [0, 1], 2: [2, 3]}


def test_reference_cache_built_in_one_mode_serves_another(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    _, _, built = _fit(tmp_path, "none", cache)
    loaded = []
    real_load = module_lib.load_model
    monkeypatch.setattr(module_lib, "load_model", lambda source, **kw: loaded.append(source) or real_load(source, **kw))
    for mode in MODES:
        module, data, reused = _fit(tmp_path, mode, cache)
        assert data.packing_mode == mode and module.reference_network is None
        for step in built:
            assert reused[step] == pytest.approx(built[step], rel=1e-5)
    assert loaded == ["tiny-llama", "tiny-llama"]  # the policies only: the cache was never rebuilt


def test_cli_fit_with_prefix_shared(tmp_path, monkeypatch):
    # The option reaches the batches: every batch the module scores is a prefix_shared one (one pair per row,
    # the rejected completion's positions continuing from the prompt's end, never restarting at 0).
    monkeypatch.chdir(tmp_path)
    seen = []
    real = IntermediateDPO.compute_loss

    def recording(self, batch, split=None):
        seen.append({k: v.detach().cpu() for k, v in batch.items()})
        return real(self, batch, split)

    monkeypatch.setattr(IntermediateDPO, "compute_loss", recording)
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    main(["fit", "--config", str(config), "--data.packing", "prefix_shared", "--trainer.max_steps", "2",
          "--trainer.val_check_interval", "2", "--model.hf_output_dir", str(tmp_path / "hf")])
    assert len(seen) >= 2
    for batch in seen:
        assert "packed_attention" in batch and "attention_mask" not in batch
        num_pairs = batch["pair_index"].numel()
        assert batch["input_ids"].shape[0] == num_pairs and batch["sequence_tokens"].numel() == 2 * num_pairs
        # A row holds prompt + chosen + rejected tokens, but its positions stop at prompt + the longer completion
        # (rows are laid out longest first, so compare as sorted lists).
        tokens = batch["sequence_tokens"]
        longer = torch.maximum(tokens[:num_pairs], tokens[num_pairs:])
        assert sorted((batch["position_ids"].max(-1).values + 1).tolist()) == sorted(longer.tolist())
        assert batch["input_ids"].shape[1] > longer.max()  # the shared prompt is laid down once, not twice
    assert (tmp_path / "hf" / "config.json").exists()


@pytest.mark.slow
def test_smollm2_packed_logprobs_equal_padded():
    model = load_model("embedded:smollm2-135m-instruct").eval()
    examples, pad = _bundled_and_ragged("embedded:smollm2-135m-instruct", pairs=8)
    layers = [21, 30]
    with torch.no_grad():
        padded = _padded_sums(model, examples, pad, "right", layers)
        for mode in MODES:
            packed = batch_logprobs(model, PreferenceCollator(pad, packing=mode)(examples), layers)
            torch.testing.assert_close(packed, padded, rtol=1e-4, atol=0)
