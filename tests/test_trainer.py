"""``trainer.precision: auto`` (lit_idpo/trainer.py): bf16-mixed where the device multiplies natively in bf16,
32-true elsewhere, with one log line; an explicit value always wins. The detection is faked here, so these
tests pass on CPUs with and without bf16; then tiny fits under ``auto`` in every packing mode, with LoRA and
with the reference cache (keyed by the resolved precision)."""

import importlib
import json
import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from safetensors import safe_open
from scale_common import LossRecorder, make_module_kwargs, one_thread  # noqa: F401 (fixture)

import lit_idpo.trainer as trainer_lib
from lit_idpo.data import PreferenceDataModule
from lit_idpo.errors import ConfigError
from lit_idpo.fit import parse_fit_config
from lit_idpo.lora import LoraOptions
from lit_idpo.module import IntermediateDPO
from lit_idpo.trainer import Trainer

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
QUIET = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False)


@pytest.fixture
def detection(monkeypatch):
    """Fakes the detector; ``detection(True)`` or ``detection(False)``. Returns the calls and the log lines."""
    seen = dict(devices=[], logged=[])

    def fake(native):
        def native_bf16(device_type):
            seen["devices"].append(device_type)
            return native, "faked for the test"

        monkeypatch.setattr(trainer_lib, "native_bf16", native_bf16)
        monkeypatch.setattr(trainer_lib, "rank_zero_info", seen["logged"].append)
        return seen

    return fake


# ------------------------------------------------------------------------------------------ resolution
@pytest.mark.parametrize("native,expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_resolves_from_the_detection_and_logs_one_line(detection, native, expected):
    seen = detection(native)
    trainer = Trainer(precision="auto", **QUIET)
    assert trainer.precision == expected
    assert seen["devices"] == ["cpu"]
    assert seen["logged"] == [f"lit-idpo: trainer.precision auto -> {expected}: faked for the test."]


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true", 32])
def test_an_explicit_precision_always_wins(detection, native, precision):
    seen = detection(native)
    trainer = Trainer(precision=precision, **QUIET)
    assert trainer.precision == {32: "32-true"}.get(precision, precision)
    assert seen["devices"] == [] and seen["logged"] == []


@pytest.mark.parametrize("precision, warned", [("bf16-true", True), ("bf16-mixed", False), ("32-true", False)])
def test_16_bit_weights_are_warned_about(precision, warned):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert Trainer(precision=precision, **QUIET).precision == precision
    messages = [str(w.message) for w in caught if "keeps the weights in 16 bits" in str(w.message)]
    assert len(messages) == int(warned)
    if warned:
        assert "trainer.precision=bf16-true" in messages[0] and "bf16-mixed" in messages[0]


def test_unset_is_lightnings_default_and_one_switch_moves_it(detection, monkeypatch):
    seen = detection(True)
    assert Trainer(**QUIET).precision == "32-true" and seen["devices"] == []
    monkeypatch.setattr(trainer_lib, "DEFAULT_PRECISION", "auto")  # the one switch, should a study ever move it
    assert Trainer(**QUIET).precision == "bf16-mixed" and seen["devices"] == ["cpu"]


def test_the_accelerator_decides_which_device_is_asked(detection):
    seen = detection(False)
    trainer_lib.resolve_precision("auto", "cpu")
    trainer_lib.resolve_precision("auto", pl.accelerators.CPUAccelerator())
    trainer_lib.resolve_precision("auto", pl.accelerators.CUDAAccelerator())
    trainer_lib.resolve_precision("auto", "auto")
    auto = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert seen["devices"] == ["cpu", "cpu", "cuda", auto]


# ------------------------------------------------------------------------------------------ the detector
@pytest.mark.parametrize("flags,native,names", [
    ("fpu sse avx2 avx512f avx512_vnni", False, "no avx512_bf16 or amx_bf16 flag)"),
    ("fpu avx512f avx512_bf16 avx512_fp16", True, "flags avx512_bf16)"),
    ("fpu avx512_bf16 amx_bf16 amx_tile", True, "flags avx512_bf16, amx_bf16)"),
], ids=["none", "avx512-bf16", "amx"])
def test_cpu_detection_reads_the_flags(tmp_path, monkeypatch, flags, native, names):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("".join(f"processor\t: {i}\nmodel name\t: Some CPU bf16\nflags\t\t: {flags}\n\n"
                               for i in range(2)))
    monkeypatch.setattr(trainer_lib, "_CPUINFO", cpuinfo)
    got, why = trainer_lib.native_bf16("cpu")
    assert got is native and why.endswith(names), why  # a model name saying "bf16" changes nothing


def test_other_devices_are_not_guessed():
    native, why = trainer_lib.native_bf16("mps")
    assert native is False and "'mps'" in why
    if not torch.cuda.is_available():
        assert trainer_lib.native_bf16("cuda") == (False, "no CUDA device is available")


# ------------------------------------------------------------------------------------------ through the CLI
def test_the_cli_accepts_auto_and_still_refuses_a_bad_precision(tmp_path):
    def parse(precision):
        override = tmp_path / "precision.yaml"
        override.write_text(f"trainer:\n  precision: {precision}\n")
        return parse_fit_config([TINY, str(override)]).trainer.precision

    assert parse("auto") == "auto"  # resolved when the Trainer is built, not when the config is read
    assert parse("bf16-mixed") == "bf16-mixed"
    with pytest.raises(ConfigError, match=r"trainer\.precision"):
        parse("bf17-mixed")


# ------------------------------------------------------------------------------------------ training under auto
@pytest.mark.parametrize("packing,lora,cache", [
    ("none", False, False), ("padding_free", False, False), ("prefix_shared", False, True),
    ("prefix_shared", True, False),
], ids=["padded", "padding_free", "prefix_shared+reference_cache", "prefix_shared+lora"])
def test_auto_trains_in_bf16_mixed_where_detected(tmp_path, monkeypatch, detection, packing, lora, cache):
    detection(True)
    op = importlib.import_module("lit_idpo.kernels.linear_logprobs")
    seen, real = [], op._dispatch
    monkeypatch.setattr(op, "_dispatch", lambda backend, h, w, *rest: seen.append((h.dtype, w.dtype))
                        or real(backend, h, w, *rest))
    pl.seed_everything(0)
    kwargs = make_module_kwargs(hf_output_dir=str(tmp_path / "hf"),
                                reference_cache=str(tmp_path / "cache") if cache else None,
                                lora=LoraOptions(rank=4, alpha=8, dropout=0.0) if lora else None)
    module = IntermediateDPO(**kwargs, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))
    data = PreferenceDataModule(tokenizer="tiny-llama", batch_size=2, limit_train_pairs=4, limit_val_pairs=2,
                                packing=packing)
    recorder = LossRecorder()
    trainer = Trainer(precision="auto", max_steps=2, callbacks=[recorder], limit_val_batches=1,
                      num_sanity_val_steps=0, **QUIET)
    trainer.fit(module, data)
    assert trainer.precision == "bf16-mixed"
    assert len(recorder.losses) == 2 and all(math.isfinite(x) for x in recorder.losses.values())
    assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}  # the head took its bf16 path
    if cache:  # the cache is keyed by the resolved precision, never by "auto"
        with safe_open(str(tmp_path / "cache" / "train.safetensors"), "pt") as f:
            assert json.loads(f.metadata()["lit_idpo"])["precision"] == "bf16-mixed"


# ------------------------------------------------------------------------------- what a fit prints, and does not
def test_a_max_steps_run_shows_no_negative_epoch_count_nor_lightning_tips(caplog):
    import logging

    from lightning.pytorch.callbacks import RichProgressBar

    with caplog.at_level(logging.INFO):
        trainer = Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_model_summary=False)
    assert not [r for r in caplog.records if "Tip:" in r.getMessage()]
    bars = [c for c in trainer.callbacks if isinstance(c, RichProgressBar)]
    if bars:  # rich installed: Lightning's bar, without "Epoch 0/-2" (max_epochs is -1 under max_steps)
        (bar,) = bars
        assert isinstance(bar, trainer_lib.StepsProgressBar)
        bar._trainer = trainer  # what Lightning's setup does before it draws
        trainer.fit_loop.max_epochs = -1  # what fit sets for a run bounded by max_steps only
        assert bar._get_train_description(0).strip() == "Epoch 0"
        trainer.fit_loop.max_epochs = 3
        assert bar._get_train_description(0).strip() == "Epoch 0/2"  # a real last epoch is still shown
    trainer = Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_model_summary=False,
                      enable_progress_bar=False)
    assert not [c for c in trainer.callbacks if isinstance(c, RichProgressBar)]  # the user's choice stands


def test_the_frozen_reference_raises_no_eval_mode_warning():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        trainer_lib.quiet_lightning()  # what lit_idpo's Trainer does when it is built
        warnings.warn("Found 59 module(s) in eval mode at the start of training. This may lead to ...", UserWarning,
                      stacklevel=1)
    assert not caught
