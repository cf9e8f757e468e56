"""Training at scale on tiny models: precision, gradient checkpointing, resume, faults, safe checkpoints,
and the fused head reading a weight that is only whole inside its module's forward (as under FSDP)."""

import importlib
import math
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from scale_common import Crash, LossRecorder, make_module_kwargs, make_trainer, one_thread  # noqa: F401 (fixture)

from lit_idpo.checkpoint import CheckpointError, SafeCheckpointIO, load_checkpoint_safely
from lit_idpo.data import PreferenceDataModule
from lit_idpo.errors import UserError
from lit_idpo.logprobs import sequence_logprobs
from lit_idpo.models import load_model
from lit_idpo.module import IntermediateDPO, LoraOptions
from lit_idpo.sharding import decoder_blocks


def _data(pairs=4, batch_size=4, **kwargs):
    return PreferenceDataModule(tokenizer="tiny-llama", batch_size=batch_size, limit_train_pairs=pairs, val_split=None,
                                **kwargs)


def _module(tmp_path, lr=1e-2, **overrides):
    return IntermediateDPO(**make_module_kwargs(hf_output_dir=str(tmp_path / "hf"), **overrides),
                           optimizer=lambda params: torch.optim.AdamW(params, lr=lr))


# ------------------------------------------------------------------------------------------ precision


@pytest.mark.slow
def test_bf16_precisions_use_the_low_precision_head_and_stay_close_to_fp32(tmp_path, monkeypatch):
    seen = []
    op = importlib.import_module("lit_idpo.kernels.linear_logprobs")  # the op's module (the op casts for autocast)
    real = op._dispatch

    def spy(backend, hidden, weight, targets, options):
        seen.append((hidden.dtype, weight.dtype, torch.is_autocast_enabled("cpu")))
        return real(backend, hidden, weight, targets, options)

    monkeypatch.setattr(op, "_dispatch", spy)
    runs = {}
    for precision, backend in (("32-true", "torch"), ("bf16-mixed", "torch"), ("bf16-mixed", "naive"),
                               ("bf16-true", "torch")):
        seen.clear()
        pl.seed_everything(0)
        recorder = LossRecorder()
        # Padded batches: the two bf16 runs below are compared after two AdamW steps at lr 1e-2, which turn bf16
        # rounding differences between the heads into sign flips of tiny (tied embedding) gradients. With
        # prefix_shared's row layout those rounding differences are larger (measured: per-parameter gradients of
        # the two heads differ by up to 0.7 % relative, against 0.3 % padded, both at bf16 rounding level) and the
        # step-3 losses drift 6e-3 apart; packing's exactness is tested in float64/float32 in test_packing.py.
        make_trainer(3, [recorder], precision=precision).fit(_module(tmp_path, backend=backend),
                                                             _data(packing="none"))
        runs[precision, backend] = [recorder.losses[s] for s in (1, 2, 3)]
        expected = torch.float32 if precision == "32-true" else torch.bfloat16
        # The kernel gets bf16 operands (its low-precision path), with autocast off inside it.
        assert set(seen) == {(expected, expected, False)}, (precision, set(seen))
    fp32 = runs["32-true", "torch"]
    assert all(math.isfinite(x) for losses in runs.values() for x in losses)
    assert abs(fp32[2] - fp32[0]) > 0.05  # training moves the loss by much more than the tolerance below
    for key, losses in runs.items():
        assert losses == pytest.approx(fp32, abs=0.02), key
    # The fused head against eager PyTorch, both in bf16-mixed.
    assert runs["bf16-mixed", "torch"] == pytest.approx(runs["bf16-mixed", "naive"], abs=2e-3)


# ------------------------------------------------------------------------------------------ checkpointing


def test_gradient_checkpointing_recomputes_and_gives_the_same_loss_and_gradients():
    data = _data()
    data.setup("fit")
    batch = data.collator([data.train_pairs[i] for i in range(4)])
    results = {}
    for checkpointing in (False, True):
        module = IntermediateDPO(**make_module_kwargs(gradient_checkpointing=checkpointing))
        with torch.no_grad():  # a policy unlike its reference, so that the loss has a gradient
            for p in module.policy.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        module.train()
        calls = []
        for block in decoder_blocks(module.policy):
            # A pre-hook on the block's first child: transformers checkpoints the block's forward (not
            # __call__), so the block's own hooks never see the recomputation, and torch's early stop ends
            # the recomputation once the last saved tensor is back, before later children's post-hooks.
            block.input_layernorm.register_forward_pre_hook(lambda *args, calls=calls: calls.append(1))
        loss, _ = module.compute_loss(batch)
        forward_calls = len(calls)
        loss.backward()
        results[checkpointing] = (loss.detach(), {n: p.grad.clone() for n, p in module.policy.named_parameters()},
                                  forward_calls, len(calls) - forward_calls)
    (loss_a, grads_a, fwd_a, recomputed_a), (loss_b, grads_b, fwd_b, recomputed_b) = results[False], results[True]
    assert fwd_a == fwd_b == 4 and recomputed_a == 0 and recomputed_b == 4  # each block re-run once in backward
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-7)
    assert any(g.abs().max() > 0 for g in grads_a.values())
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-7, msg=name)


# ------------------------------------------------------------------------------------------ resume


def _resume_runs(tmp_path, pairs, batch_size, crash_at, steps):
    def run(root, callbacks, ckpt_path=None):
        pl.seed_everything(0)
        module = _module(root, lr=2e-2)
        recorder = LossRecorder()
        checkpoints = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=-1)
        trainer = make_trainer(steps, [recorder, checkpoints, *callbacks], enable_checkpointing=True,
                               default_root_dir=str(root))
        try:
            trainer.fit(module, _data(pairs, batch_size), ckpt_path=ckpt_path)
        except RuntimeError as error:
            assert "simulated crash" in str(error)
        return recorder, module

    whole, whole_module = run(tmp_path / "whole", [])
    crashed, _ = run(tmp_path / "crashed", [Crash(crash_at)])
    assert max(crashed.losses) == crash_at
    latest = max((tmp_path / "crashed" / "ckpt").glob("*.ckpt"), key=lambda p: int(p.stem.split("step=")[1]))
    resumed, resumed_module = run(tmp_path / "resumed", [], ckpt_path=str(latest))
    return whole, whole_module, crashed, resumed, resumed_module, int(latest.stem.split("step=")[1])


@pytest.mark.slow
def test_resumed_run_gives_the_same_losses_as_an_uninterrupted_one(tmp_path):
    """One batch per epoch (the whole set): what is restored is the weights, the AdamW moments and the
    loop counters, and the continued run must match step for step."""
    whole, whole_module, crashed, resumed, resumed_module, saved_at = _resume_runs(tmp_path, 4, 4, crash_at=3, steps=5)
    assert saved_at == 2  # the crash hit before the step-3 checkpoint was written
    assert sorted(resumed.losses) == [3, 4, 5]
    # Bit-equal, not merely close: the sampler gives the resumed epoch the uninterrupted run's batch (same
    # pairs, same row order), weights and AdamW moments are restored exactly, and the CPU runs one thread.
    for step in (1, 2, 3):
        assert crashed.losses[step] == whole.losses[step]
    assert resumed.pair_index == {step: whole.pair_index[step] for step in (3, 4, 5)}
    for step in (3, 4, 5):
        assert resumed.losses[step] == whole.losses[step]
    assert resumed.losses[3] != pytest.approx(whole.losses[1], abs=1e-3)  # it did continue, not restart
    for (name, a), b in zip(whole_module.policy.named_parameters(), resumed_module.policy.parameters()):
        assert torch.equal(b, a), name


@pytest.mark.slow
def test_resume_at_an_epoch_boundary_with_several_batches_per_epoch(tmp_path):
    whole, _, _, resumed, _, saved_at = _resume_runs(tmp_path, 6, 2, crash_at=4, steps=7)
    assert saved_at == 3  # end of epoch 0
    assert resumed.pair_index == {step: whole.pair_index[step] for step in (4, 5, 6, 7)}
    for step in (4, 5, 6, 7):
        assert resumed.losses[step] == whole.losses[step]  # bit-equal, as above


# ------------------------------------------------------------------------------------------ faults


class _Weights(Callback):
    def __init__(self):
        self.after = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.after[batch_idx] = (outputs, [p.detach().clone() for p in module.policy.parameters()])


def _poison_second_training_batch(module):
    real, calls = module.compute_loss, []

    def poisoned(batch, split=None):
        loss, metrics = real(batch, split)
        calls.append(split)
        return (loss * float("nan"), metrics) if len(calls) == 2 else (loss, metrics)

    module.compute_loss = poisoned


@pytest.mark.slow
def test_nonfinite_loss_in_a_trainer_skips_the_step_or_stops_naming_it(tmp_path):
    module = _module(tmp_path, on_nonfinite_loss="skip")
    _poison_second_training_batch(module)
    weights = _Weights()
    make_trainer(3, [weights]).fit(module, _data(6, 2))
    (out0, w0), (out1, w1), (out2, w2) = weights.after[0], weights.after[1], weights.after[2]
    assert out1 == {} and "loss" in out0 and "loss" in out2  # Lightning saw no loss for the skipped batch
    assert all(torch.equal(a, b) for a, b in zip(w0, w1))  # no update from the NaN batch
    assert not all(torch.equal(a, b) for a, b in zip(w1, w2))  # training went on
    assert all(torch.isfinite(p).all() for p in w2)

    module = _module(tmp_path, on_nonfinite_loss="error")
    _poison_second_training_batch(module)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss \(nan\) at global step 1, batch 1 "
                                                 r"\(pair indices \[\d+, \d+\]\).*on_nonfinite_loss=skip"):
        make_trainer(3).fit(module, _data(6, 2))


def test_checkpoints_load_without_unpickling_code(tmp_path):
    pytest.importorskip("peft")
    pl.seed_everything(0)
    lora = LoraOptions(rank=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"])
    module = _module(tmp_path, lr=5e-2, lora=lora)
    trainer = make_trainer(2, [ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)],
                           enable_checkpointing=True, default_root_dir=str(tmp_path))
    trainer.fit(module, _data())
    path = tmp_path / "ckpt" / "epoch=1-step=2.ckpt"
    raw = torch.load(path, weights_only=True)  # raises if anything in it needs unpickling code
    assert raw["hyper_parameters"]["lora"] == {"rank": 2, "alpha": 4, "dropout": 0.0,
                                                "target_modules": ["q_proj", "v_proj"], "save_merged": False}
    restored = IntermediateDPO.load_from_checkpoint(path, weights_only=True)
    assert restored.uses_lora and restored.reference_network is None
    trained = dict(module.policy.named_parameters())
    adapters = [n for n, _ in restored.policy.named_parameters() if "lora_B" in n]
    assert adapters and all(trained[n].abs().max() > 0 for n in adapters)  # lora_B starts at 0: it was trained
    for name, value in restored.policy.named_parameters():
        torch.testing.assert_close(value, trained[name], msg=name)
    # And a Trainer resumes from it with its default (torch's weights_only=True) and with SafeCheckpointIO.
    make_trainer(3, plugins=[SafeCheckpointIO()], default_root_dir=str(tmp_path)).fit(
        _module(tmp_path, lora=LoraOptions(rank=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"])),
        _data(), ckpt_path=str(path))


def test_unreadable_checkpoints_give_a_clear_error(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}, "hyper_parameters": {"beta": 0.1}}, good)
    assert load_checkpoint_safely(good)["hyper_parameters"] == {"beta": 0.1}
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*truncated\.ckpt \(200 bytes\).*damaged"):
        load_checkpoint_safely(truncated)
    code = tmp_path / "code.ckpt"
    torch.save({"state_dict": {}, "callback": Path("/")}, code)  # an object only unpickling can rebuild
    with pytest.raises(CheckpointError, match=r"code\.ckpt holds objects other than tensors"):
        load_checkpoint_safely(code)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_safely(tmp_path / "missing.ckpt")
    not_lightning = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(1)}, not_lightning)
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        load_checkpoint_safely(not_lightning)
    # Through a Trainer with SafeCheckpointIO: the error names the file.
    with pytest.raises(CheckpointError, match="truncated.ckpt"):
        make_trainer(1, plugins=[SafeCheckpointIO()], default_root_dir=str(tmp_path)).fit(
            _module(tmp_path), _data(), ckpt_path=str(truncated))



def test_cli_names_a_damaged_ckpt_path(tmp_path, monkeypatch, capsys):
    """``lit-idpo fit --ckpt_path`` with a cut-short file: one error line naming it, not a zip error's traceback."""
    from lit_idpo.cli import main

    monkeypatch.chdir(tmp_path)
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(64)}, "hyper_parameters": {"beta": 0.1}}, good)
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(good.read_bytes()[:300])
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", str(config), "--trainer.max_steps", "1", "--ckpt_path", str(truncated)])
    assert exited.value.code != 0
    err = capsys.readouterr().err
    assert re.search(r"^lit-idpo: error: cannot read checkpoint .*cut\.ckpt \(300 bytes\).*damaged", err, re.M), err
    assert "Traceback" not in err
    assert issubclass(CheckpointError, UserError) and issubclass(CheckpointError, RuntimeError)


def test_remote_code_is_not_run_unless_trusted(tmp_path):
    """A model directory whose config points at its own Python code: loading it must refuse, not import it."""
    import json

    marker = tmp_path / "imported"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({
        "model_type": "lit-idpo-remote-test", "architectures": ["RemoteForCausalLM"],
        "auto_map": {"AutoConfig": "modeling_remote.RemoteConfig",
                     "AutoModelForCausalLM": "modeling_remote.RemoteForCausalLM"}}))
    (tmp_path / "model" / "modeling_remote.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(ValueError, match="trust_remote_code"):
        IntermediateDPO(model=str(tmp_path / "model"))
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ sharded head weight


class _ShardLike:
    """Makes a module's weight look like an FSDP2 shard outside its forward: outside, ``weight`` is a
    useless 1-row slice; forward hooks swap the full tensor in and out, as FSDP2's hooks do."""

    def __init__(self, module):
        self.module, self.full = module, module.weight
        module.register_forward_pre_hook(lambda *a: self._swap(self.full))
        module.register_forward_hook(lambda *a: self._swap(torch.nn.Parameter(self.full.detach()[:1].clone())))
        self._swap(torch.nn.Parameter(self.full.detach()[:1].clone()))

    def _swap(self, value):
        self.module._parameters["weight"] = value


@pytest.mark.parametrize("part", ["lm_head", "model"])
def test_head_weight_is_read_inside_the_owning_module_forward(part):
    """The kernel must see the full LM-head weight even when it is whole only inside a forward: of the LM
    head (a separately sharded head) or of the whole causal LM (the head in the root unit)."""
    truth_model = load_model("tiny-qwen2", seed=0)  # untied head: the embedding stays whole, only the head is swapped
    model = load_model("tiny-qwen2", seed=0)
    data = _data()
    data.setup("fit")
    batch = data.collator([data.train_pairs[i] for i in range(2)])
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"], [4, 2])
    expected = sequence_logprobs(truth_model, *args, backend="naive")
    full = model.lm_head.weight
    if part == "lm_head":
        _ShardLike(model.lm_head)
    else:  # whole only during the causal LM's own forward
        head = model.lm_head
        model.register_forward_pre_hook(lambda *a: head._parameters.__setitem__("weight", full))
        model.register_forward_hook(
            lambda *a: head._parameters.__setitem__("weight", torch.nn.Parameter(full.detach()[:1])))
        head._parameters["weight"] = torch.nn.Parameter(full.detach()[:1])
    assert model.lm_head.weight.shape[0] == 1  # outside any forward the weight is not usable
    got = sequence_logprobs(model, *args, backend="torch")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    got.sum().backward()  # the backward reaches the full weight
    assert full.grad is not None and full.grad.abs().max() > 0


def test_cli_fit_ckpt_path_continues_the_run(tmp_path, monkeypatch):
    """``lit-idpo fit --ckpt_path`` (the LightningCLI path, which reads the checkpoint's hyperparameters
    with weights_only=True first) continues at the saved step instead of starting over."""
    import csv

    from lit_idpo.cli import main

    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    common = ["--config", str(config), "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
              "--model.hf_output_dir", str(tmp_path / "hf"), "--trainer.enable_checkpointing", "true"]
    main(["fit", *common, "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path / "first"),
          "--trainer.logger.init_args.save_dir", str(tmp_path / "first")])
    checkpoint = next((tmp_path / "first").rglob("*.ckpt"))
    assert "step=2" in checkpoint.name
    main(["fit", *common, "--trainer.max_steps", "4", "--trainer.default_root_dir", str(tmp_path / "second"),
          "--trainer.logger.init_args.save_dir", str(tmp_path / "second"), "--ckpt_path", str(checkpoint)])
    rows = list(csv.DictReader(open(next((tmp_path / "second").rglob("metrics.csv")))))
    trained_steps = sorted({int(r["step"]) for r in rows if r.get("train/loss_total")})
    assert trained_steps == [2, 3]  # Lightning logs the step index before the update: steps 3 and 4 of the run
