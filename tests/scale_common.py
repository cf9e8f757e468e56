"""Helpers shared by the scale tests and the multi-process worker (tests/distributed_worker.py)."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

PAIRS = 4  # multi-process tests: the training set is one global batch, so every step sees every pair
LR = 0.5


def make_module_kwargs(**overrides) -> dict:
    kwargs = dict(model="tiny-llama", layers=[2], beta=0.1, gamma=0.5, init_seed=0)
    kwargs.update(overrides)
    return kwargs


class LossRecorder(Callback):
    """Per-step training losses, keyed by the global step after the step (Lightning counts from 1 there)."""

    def __init__(self):
        self.losses = {}
        self.pair_index = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if outputs is not None:
            self.losses[trainer.global_step] = float(outputs["loss"])
            self.pair_index[trainer.global_step] = batch["pair_index"].tolist()


class Crash(Callback):
    """Raises "simulated crash" at the end of the first batch after which the global step is ``at_step``
    (before ModelCheckpoint, which Lightning runs last, saves that step)."""

    def __init__(self, at_step):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


def make_trainer(max_steps: int, callbacks=(), **kwargs) -> pl.Trainer:
    """A quiet CPU Trainer. Give the module an ``hf_output_dir`` or the trainer a ``default_root_dir``
    under tmp_path: the trained policy is written at the end of fit."""
    options = dict(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   limit_val_batches=0)
    options.update(kwargs)
    return pl.Trainer(callbacks=list(callbacks), **options)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one intra-op thread; two threads on a busy 2-core machine spin against
    each other (a 220x64 @ 64x128 matmul: 0.04 ms on one thread, 14 ms on two under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
