"""Cached reference log-probs: built once, used without the reference, refused when stale or damaged."""

import json
import shutil

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import load_file
from scale_common import LossRecorder, make_module_kwargs, make_trainer, one_thread  # noqa: F401 (fixture)

import lit_idpo.module as module_lib
from lit_idpo.data import PreferenceCollator, PreferenceDataModule
from lit_idpo.logprobs import sequence_logprobs
from lit_idpo.models import load_model
from lit_idpo.module import IntermediateDPO
from lit_idpo.reference.cache import ReferenceCacheError

TRAIN_PAIRS, VAL_PAIRS = 6, 4


def _data(**overrides):
    kwargs = dict(tokenizer="tiny-llama", batch_size=2, limit_train_pairs=TRAIN_PAIRS, limit_val_pairs=VAL_PAIRS)
    kwargs.update(overrides)
    return PreferenceDataModule(**kwargs)


def _fit(tmp_path, cache, steps=3, data_kwargs=None, trainer_kwargs=None, **module_kwargs):
    pl.seed_everything(0)
    kwargs = make_module_kwargs(reference_cache=cache, hf_output_dir=str(tmp_path / "hf"), **module_kwargs)
    module = IntermediateDPO(**kwargs, optimizer=lambda params: torch.optim.SGD(params, lr=0.5))
    data = _data(**(data_kwargs or {}))
    recorder = LossRecorder()
    options = dict(limit_val_batches=2, val_check_interval=steps)
    options.update(trainer_kwargs or {})
    trainer = make_trainer(steps, [recorder], **options)
    trainer.fit(module, data)
    return module, data, recorder.losses, trainer.callback_metrics


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory):
    """A cache built by a real fit, plus that run's losses and validation loss."""
    tmp = tmp_path_factory.mktemp("cache")
    module, data, losses, metrics = _fit(tmp, str(tmp / "cache"))
    return tmp / "cache", losses, float(metrics["val/loss_total"])


def test_cache_matches_the_live_reference_and_is_used_without_it(tmp_path, monkeypatch, built_cache):
    cache, build_losses, build_val = built_cache
    _, data, live_losses, live_metrics = _fit(tmp_path, None)
    assert len(live_losses) == 3 and live_losses[2] != live_losses[3]  # the policy does move
    for step in live_losses:
        assert build_losses[step] == pytest.approx(live_losses[step], abs=1e-6)
    assert build_val == pytest.approx(float(live_metrics["val/loss_total"]), abs=1e-6)

    # Reuse: only the policy is loaded, never the reference, and the losses are the same.
    loaded = []
    real_load = module_lib.load_model
    monkeypatch.setattr(module_lib, "load_model", lambda source, **kw: loaded.append(source) or real_load(source, **kw))
    module, _, reuse_losses, reuse_metrics = _fit(tmp_path, str(cache))
    assert loaded == ["tiny-llama"] and module.reference_network is None
    assert sorted(module.reference.tables) == ["train", "val"]
    for step in live_losses:
        assert reuse_losses[step] == pytest.approx(live_losses[step], abs=1e-6)
    assert float(reuse_metrics["val/loss_total"]) == pytest.approx(build_val, abs=1e-6)

    # The stored values are the reference's per-layer sums, computed here independently, pair by pair.
    reference = load_model("tiny-llama", seed=0)
    data.setup("fit")
    for split, pairs in (("train", data.train_pairs), ("val", data.val_pairs)):
        stored = load_file(str(cache / f"{split}.safetensors"))
        assert stored["layers"].tolist() == [4, 2]
        assert stored["chosen"].shape == (len(pairs), 2)
        for i in range(len(pairs)):
            batch = PreferenceCollator(data.tokenizer.pad_token_id)([pairs[i]])  # padded, whatever data.packing
            truth = sequence_logprobs(reference, batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                                      [4, 2], backend="naive").detach()  # [2 layers, 2 rows]
            torch.testing.assert_close(stored["chosen"][i], truth[:, 0], rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(stored["rejected"][i], truth[:, 1], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("change, match", [
    (dict(layers=[1]), r"the layers: the cache holds \[4, 2\], this run also needs \[1\]"),
    (dict(init_seed=1), r"the reference model's weights"),
    (dict(data_kwargs=dict(limit_train_pairs=5)), r"the cache holds 6 pairs, this run has 5"),
    (dict(data_kwargs=dict(max_prompt_length=12)),
     r"first pair whose token ids differ is pair_index 0.*max_prompt_length"),
    (dict(trainer_kwargs=dict(precision="bf16-mixed")), r"precision: cached under 32-true, this run uses bf16-mixed"),
], ids=["layers", "weights", "pair-count", "token-ids", "precision"])
def test_stale_cache_is_refused_naming_the_difference(tmp_path, built_cache, change, match):
    cache, _, _ = built_cache
    before = {p.name: p.read_bytes() for p in cache.glob("*.safetensors")}
    with pytest.raises(ReferenceCacheError, match=match):
        _fit(tmp_path, str(cache), steps=1, **change)
    assert {p.name: p.read_bytes() for p in cache.glob("*.safetensors")} == before  # never overwritten


def test_a_subset_of_the_cached_layers_is_accepted(tmp_path, built_cache):
    cache, build_losses, _ = built_cache
    module, _, losses, _ = _fit(tmp_path, str(cache), steps=1, layers=[])  # plain DPO: the final layer only
    assert module.layer_ids == [4] and module.reference_network is None
    assert losses[1] == pytest.approx(build_losses[1], abs=1e-6)  # log 2 at the first step, as the cache says


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_cache_file_is_refused(tmp_path, built_cache, damage):
    cache = tmp_path / "cache"
    shutil.copytree(built_cache[0], cache)
    path = cache / "train.safetensors"
    data = path.read_bytes()
    path.write_bytes(b"not a cache" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ReferenceCacheError, match=r"cannot read .*train\.safetensors.*delete it"):
        _fit(tmp_path, str(cache), steps=1)


def test_cache_needs_a_preference_data_module(tmp_path):
    data = _data()
    data.setup("fit")
    module = IntermediateDPO(**make_module_kwargs(reference_cache=str(tmp_path / "c")))
    with pytest.raises(ReferenceCacheError, match="PreferenceDataModule"):
        make_trainer(1).fit(module, train_dataloaders=data.train_dataloader())


def test_lookup_refuses_a_batch_from_other_data(tmp_path, built_cache):
    module, data, _, _ = _fit(tmp_path, str(built_cache[0]), steps=1)
    table = module.reference.tables["train"]
    batch = data.collator([data.train_pairs[0], data.train_pairs[1]])
    assert table.lookup(batch["pair_index"], [4, 2], batch, "train").shape == (2, 4)
    batch["pair_index"] = torch.tensor([1, 0])  # the same rows under swapped indices (their lengths differ)
    assert data.train_pairs[0]["chosen_ids"] != data.train_pairs[1]["chosen_ids"]
    with pytest.raises(ReferenceCacheError, match="pair_index 1 of this train batch has other token counts"):
        table.lookup(batch["pair_index"], [4, 2], batch, "train")


def test_ipo_length_averaging_is_applied_to_cached_sums(tmp_path, built_cache):
    """The cache stores sums; an ``ipo`` run must average them itself and match a live-reference ipo loss."""
    cache, _, _ = built_cache
    live = IntermediateDPO(**make_module_kwargs(loss_type="ipo"))
    cached = IntermediateDPO(**make_module_kwargs(loss_type="ipo", reference_cache=str(cache)))
    with torch.no_grad():
        for p_live, p_cached in zip(live.policy.parameters(), cached.policy.parameters()):
            p_live.add_(0.05 * torch.randn_like(p_live))
            p_cached.copy_(p_live)
    reader = _fit(tmp_path, str(cache), steps=1)[0]  # a module whose tables were read through a Trainer
    cached.reference.tables.update(reader.reference.tables)
    data = _data()
    data.setup("fit")
    batch = data.collator([data.train_pairs[i] for i in (3, 0, 5)])
    loss_live, _ = live.compute_loss(batch)
    loss_cached, _ = cached.compute_loss(batch, "train")
    assert loss_live.item() != pytest.approx(0.25, abs=1e-3)  # not the value of identical models
    torch.testing.assert_close(loss_cached, loss_live, rtol=1e-5, atol=1e-6)
    with pytest.raises(ReferenceCacheError, match="split=None"):
        cached.compute_loss(batch)


def test_a_cache_of_the_previous_format_is_refused_with_the_rebuild_error(tmp_path, built_cache):
    """Version 1 keyed the weights on another fingerprint: its key would never match, so the version says why."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from lit_idpo.errors import UserError
    from lit_idpo.reference.cache import CACHE_VERSION

    assert CACHE_VERSION == 2
    cache = tmp_path / "cache"
    shutil.copytree(built_cache[0], cache)
    path = cache / "train.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["lit_idpo"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    meta["version"] = 1
    save_file(tensors, str(path), metadata={"lit_idpo": json.dumps(meta)})
    expected = r"cache format version 1 \(this lit-idpo writes 2\).*Delete"
    with pytest.raises(ReferenceCacheError, match=expected) as raised:
        _fit(tmp_path, str(cache), steps=1)
    assert isinstance(raised.value, UserError) and isinstance(raised.value, RuntimeError)


def test_cached_weights_key_is_the_shared_model_fingerprint(built_cache):
    from safetensors import safe_open

    from lit_idpo.fingerprint import model_fingerprint

    with safe_open(str(built_cache[0] / "train.safetensors"), framework="pt") as f:
        reference = json.loads(f.metadata()["lit_idpo"])["reference"]
    assert reference == {"source": "tiny-llama", "dtype": "float32", "weights": model_fingerprint("tiny-llama", seed=0)}
