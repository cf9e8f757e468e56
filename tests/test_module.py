"""The LightningModule and the CLI on tiny models."""

import glob
import math
import os
from pathlib import Path

import pytest
import torch
import yaml
from helpers import pair_batch

from lit_idpo.cli import main
from lit_idpo.data import PreferenceDataModule
from lit_idpo.errors import ConfigError
from lit_idpo.fit import IntermediateDPOCLI
from lit_idpo.layers import default_intermediate_layer
from lit_idpo.logprobs import sequence_logprobs
from lit_idpo.losses import preference_loss
from lit_idpo.module import IntermediateDPO, LoraOptions

CONFIGS = sorted(glob.glob(str(Path(__file__).resolve().parents[1] / "configs" / "*.yaml")))


def test_loss_is_intermediate_dpo_of_the_two_models():
    module = IntermediateDPO(model="tiny-llama", layers=[1, 3], beta=0.2, gamma=0.25, init_seed=3)
    # Make the policy differ from the reference so the loss is not log 2.
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = pair_batch()
    loss, metrics = module.compute_loss(batch)
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"], [4, 1, 3])
    pol = sequence_logprobs(module.policy, *args, backend="naive")
    ref = sequence_logprobs(module.reference_network, *args, backend="naive")
    per_layer = preference_loss(pol[:, :2] - ref[:, :2], pol[:, 2:] - ref[:, 2:], beta=0.2).mean(1)
    expected = 0.25 * per_layer[0] + 0.75 * per_layer[1:].mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert module.layer_names == ["final", "layer1", "layer3"]


def test_dropout_is_off_and_reference_frozen():
    module = IntermediateDPO(model="tiny-gpt2", layers=[2])
    module.train()
    batch = pair_batch()
    a, _ = module.compute_loss(batch)
    b, _ = module.compute_loss(batch)
    assert a.item() == b.item()  # no dropout noise in train mode
    assert not any(p.requires_grad for p in module.reference_network.parameters())
    # A fresh policy equals its reference: every layer's loss is exactly log 2.
    assert a.item() == pytest.approx(math.log(2), abs=1e-6)


def test_default_layer_is_the_papers_relative_depth():
    assert default_intermediate_layer(32) == 22
    assert default_intermediate_layer(30) == 21
    module = IntermediateDPO(model="tiny-llama")
    assert module.layer_ids == [4, 3]


@pytest.mark.parametrize("kwargs, match", [
    (dict(layers=[4]), r"model\.layers lists the final layer \(4\).*remove it"),
    (dict(layers=[2, 2]), r"model\.layers=\[2, 2\] lists a layer twice"),
    (dict(layers=[9]), r"model\.layers: 9 is out of range .* use 1\.\.4"),
    (dict(loss_type="bad"), r"model\.loss_type='bad' is unknown; choose one of"),
    (dict(gamma=2.0), r"model\.gamma=2\.0 must be in \[0, 1\]"),
    (dict(beta=0.0), r"model\.beta=0\.0 must be > 0"),
    (dict(label_smoothing=0.5), r"model\.label_smoothing=0\.5 must be in \[0, 0\.5\)"),
    (dict(label_smoothing=0.1, loss_type="ipo"), r"model\.label_smoothing applies to .*'ipo'; set it to 0"),
    (dict(on_nonfinite_loss="ignore"), r"model\.on_nonfinite_loss='ignore': choose 'error' or 'skip'"),
    (dict(lora={"rank": 4, "size": 2}), r"model\.lora: unknown option\(s\) \['size'\]"),
    (dict(lora={"rank": 4}, reference_model="tiny-llama"),
     r"model\.reference_model cannot be combined with model\.lora"),
])
def test_bad_options_are_config_errors_naming_the_option(kwargs, match):
    """A user error (``lit-idpo: error: ...`` without a traceback), still a ValueError for old ``except`` clauses."""
    with pytest.raises(ConfigError, match=match) as raised:
        IntermediateDPO(model="tiny-llama", **kwargs)
    assert isinstance(raised.value, ValueError)


def test_reference_of_another_depth_is_a_config_error(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=1000)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "two-layers")
    with pytest.raises(ConfigError, match=r"model\.reference_model must have as many decoder blocks as model \(4"):
        IntermediateDPO(model="tiny-llama", reference_model=str(tmp_path / "two-layers"))


def test_nonfinite_loss_stops_with_step_and_batch():
    module = IntermediateDPO(model="tiny-llama", layers=[2])
    with torch.no_grad():
        module.policy.model.norm.weight.fill_(float("nan"))
    module.log = lambda *a, **k: None  # no trainer attached
    with pytest.raises(FloatingPointError, match="global step 0, batch 7"):
        module.training_step(pair_batch(), 7)
    module.hparams.on_nonfinite_loss = "skip"
    assert module.training_step(pair_batch(), 7) is None


def test_overfit_raises_reward_accuracy():
    """A few steps on the same pairs make the policy prefer the chosen completions at every layer."""
    module = IntermediateDPO(model="tiny-llama", layers=[2], beta=0.1, init_seed=0)
    optimizer = torch.optim.AdamW(module.policy.parameters(), lr=3e-3)
    batch = pair_batch(pairs=4, seed=5)
    _, before = module.compute_loss(batch)
    for _ in range(12):
        loss, _ = module.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _, after = module.compute_loss(batch)
    assert before["rewards/accuracies"].tolist() == [0.0, 0.0]  # policy == reference: no strict wins
    assert after["rewards/accuracies"].tolist() == [1.0, 1.0]
    assert (after["rewards/margins"] > 0.1).all()
    assert (after["loss"] < before["loss"]).all()


def test_lora_reference_is_the_adapter_free_policy():
    pytest.importorskip("peft")
    module = IntermediateDPO(model="tiny-llama", layers=[2], lora=LoraOptions(rank=4, alpha=8, dropout=0.0))
    assert module.reference_network is None
    trainable = {n for n, p in module.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # Perturb the adapters: the reference must still be the untouched base model.
    with torch.no_grad():
        for n, p in module.policy.named_parameters():
            if "lora_B" in n:
                p.add_(0.1 * torch.randn_like(p))
    base = IntermediateDPO(model="tiny-llama", layers=[2], reference_model=None).reference_network
    batch = pair_batch()
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"], [4, 2])
    with torch.no_grad(), module.policy.disable_adapter():
        ref_lora = sequence_logprobs(module.policy, *args)
    ref_base = sequence_logprobs(base, *args)
    torch.testing.assert_close(ref_lora, ref_base, rtol=1e-5, atol=1e-5)
    pol = sequence_logprobs(module.policy, *args)
    assert not torch.allclose(pol, ref_base)


class _ParseOnlyCLI(IntermediateDPOCLI):
    """The real CLI parser (trainer, model, data, links), without loading any model or data."""

    def instantiate_classes(self) -> None:
        pass


@pytest.mark.parametrize("config", CONFIGS, ids=[os.path.basename(c) for c in CONFIGS])
def test_every_config_parses(config):
    text = yaml.safe_load(Path(config).read_text())
    cli = _ParseOnlyCLI(IntermediateDPO, PreferenceDataModule, run=False, args=["--config", config])
    assert cli.config.model.model == text["model"]["model"]
    assert cli.config.data.tokenizer == text["model"]["model"]  # linked
    for key, value in text["data"].items():
        assert cli.config.data[key] == value


def test_bad_config_value_is_refused(tmp_path):
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    with pytest.raises(ConfigError, match=r"model\.beta.*not-a-number"):
        _ParseOnlyCLI(IntermediateDPO, PreferenceDataModule, run=False,
                      args=["--config", str(config), "--model.beta", "not-a-number"])


def test_cli_fit_tiny_writes_a_loadable_model(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    out = tmp_path / "hf"
    # Seeds that differ between model and data: Lightning merges both hyperparameter sets for the logger.
    main(["fit", "--config", str(config), "--model.hf_output_dir", str(out), "--trainer.max_steps", "2",
          "--trainer.val_check_interval", "2", "--data.seed", "3", "--model.init_seed", "1"])
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 4
    ids = tokenizer("What is 2 + 2?", return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 3
    metrics = (tmp_path / "runs" / "tiny").rglob("metrics.csv")
    text = next(metrics).read_text()
    assert "val/layer2/rewards/accuracies" in text and "train/loss_total" in text


def test_model_and_data_hyperparameters_share_no_name():
    """Lightning logs the model's and the data module's hyperparameters merged and stops at a name both
    have with different values (a model ``seed`` once broke every ``data.seed`` other than 0)."""
    import inspect

    model_names = set(inspect.signature(IntermediateDPO.__init__).parameters) - {"self"}
    data_names = set(inspect.signature(PreferenceDataModule.__init__).parameters) - {"self"}
    assert model_names & data_names == set()


def test_checkpoint_leaves_out_the_reference_and_resumes(tmp_path):
    module = IntermediateDPO(model="tiny-llama", layers=[2])
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert any(k.startswith("policy.") for k in checkpoint["state_dict"])
    assert not any(k.startswith(("reference.", "reference_network.")) for k in checkpoint["state_dict"])
    restored = IntermediateDPO(model="tiny-llama", layers=[2])
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"], strict=True)


@pytest.mark.slow
def test_quickstart_config_runs_on_the_embedded_model(tmp_path, monkeypatch):
    """The README's main command, shortened to two steps: the real SmolLM2-135M-Instruct learns."""
    pytest.importorskip("gguf")
    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    out = tmp_path / "hf"
    main(["fit", "--config", str(config), "--trainer.limit_train_batches", "2", "--data.limit_val_pairs", "8",
          "--data.batch_size", "4", "--model.hf_output_dir", str(out)])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 30
    metrics = next((tmp_path / "runs" / "quickstart").rglob("metrics.csv")).read_text().splitlines()
    header = metrics[0].split(",")
    last = metrics[-1].split(",")
    # Two steps already move the held-out pairs' DPO loss below log 2 (where policy == reference).
    assert float(last[header.index("val/loss")]) < math.log(2) - 0.005
    # The accuracy is a fraction of the 8 held-out pairs (one validation pass, not a running mean).
    accuracy = float(last[header.index("val/rewards/accuracies")])
    assert accuracy * 8 == pytest.approx(round(accuracy * 8), abs=1e-6)


def test_lora_without_peft_is_a_one_line_user_error(monkeypatch):
    import sys

    from lit_idpo.errors import UserError
    from lit_idpo.lora import wrap_lora

    monkeypatch.setitem(sys.modules, "peft", None)  # as if it were not installed
    with pytest.raises(UserError, match=r"model\.lora needs peft, which is not installed: pip install peft") as info:
        wrap_lora(torch.nn.Linear(2, 2), LoraOptions())
    assert isinstance(info.value, ImportError) and "\n" not in str(info.value)
