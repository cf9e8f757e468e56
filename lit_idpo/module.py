"""The LightningModule: a trainable policy, a frozen reference, the Intermediate DPO loss, metrics."""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from lit_idpo.logprobs import find_head_path, resolve_layers, sequence_logprobs
from lit_idpo.losses import LOSS_TYPES, intermediate_dpo_loss
from lit_idpo.models import load_model, load_tokenizer

METRIC_NAMES = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)
# The paper's best setting read layer 22 of a 32-block model; by default we take the same relative depth.
PAPER_RELATIVE_LAYER = 22 / 32


@dataclass
class LoraOptions:
    """LoRA adapters (peft) on the policy. The reference is then the same network with its adapters
    disabled, so no second copy of the model is held in memory.

    Args:
        rank: adapter rank r (the paper used 16).
        alpha: LoRA scaling numerator (the update is scaled by alpha / rank).
        dropout: dropout on the adapters' input (the base model's own dropout stays off).
        target_modules: module names to adapt, or ``all-linear`` (every linear layer but the LM head).
        save_merged: also write the merged model (adapters folded into the weights) to ``<hf_output_dir>/merged``.
    """

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Union[str, List[str]] = "all-linear"
    save_merged: bool = False


def disable_dropout(model: nn.Module) -> None:
    """Turn every dropout off (modules and the float rates attention layers read from their config)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout_p"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def default_intermediate_layer(num_layers: int) -> int:
    return max(1, min(num_layers - 1, round(num_layers * PAPER_RELATIVE_LAYER)))


class IntermediateDPO(LightningModule):
    """Intermediate DPO: DPO at the final layer plus DPO at selected intermediate layers.

    The policy is trained; the reference (a second, frozen copy) only scores. Both run with dropout off.
    Loss: ``gamma * L_DPO(final) + (1 - gamma) * mean_k L_DPO(layer k)``.

    Args:
        model: policy source: a Hub id, a local model directory, a ``.gguf`` file,
            ``embedded:smollm2-135m-instruct`` (the PyPI-shipped SmolLM2) or ``tiny-llama`` /
            ``tiny-gpt2`` / ``tiny-qwen2`` (random tiny models for tests).
        layers: intermediate layers that get the auxiliary DPO loss, 1..L (the output of decoder block
            l) or negative from the end. ``null`` picks the paper's relative depth, round(L * 22/32);
            ``[]`` is plain DPO. The final layer is always included; do not list it.
        beta: DPO temperature (strength of the implicit KL to the reference).
        gamma: weight of the final layer's loss; ``1 - gamma`` goes to the mean intermediate loss.
            1.0 is plain DPO.
        loss_type: ``sigmoid`` (DPO), ``robust``, ``hinge`` or ``ipo`` (TRL's definitions; ``ipo`` uses
            length-averaged log-probs).
        label_smoothing: label-noise rate for ``sigmoid`` (conservative DPO) and ``robust``.
        reference_model: reference source; ``null`` uses a fresh copy of ``model``.
        dtype: weights' dtype when loading (``float32``, ``bfloat16``, ``float16``); mixed precision
            is Lightning's ``trainer.precision``.
        backend: LM-head kernel: ``auto`` (triton on CUDA, torch elsewhere), ``torch``, ``triton``, or
            ``naive`` (materialises full logits; for comparison).
        freeze_embeddings: keep the input embeddings and the LM head frozen (with tied embeddings they
            are one tensor). Cheaper on CPU: the fused head then needs no weight gradient.
        lora: LoRA adapters on the policy (needs ``pip install peft``); ``null`` trains every weight.
        gradient_checkpointing: recompute the policy's activations in backward to save memory.
        trust_remote_code: allow model code from the Hub (off unless you trust the repository).
        revision: Hub revision (branch, tag or commit) of ``model``.
        on_nonfinite_loss: ``error`` stops with the step and batch named; ``skip`` skips that batch.
        hf_output_dir: where the trained policy is written as a Hugging Face model directory at the end
            of ``fit``; ``null`` is ``<log_dir>/hf_model``.
        optimizer: optimiser factory; ``null`` is AdamW(lr=1e-6).
        lr_scheduler: learning-rate scheduler factory (stepped every optimiser step); ``null`` for none.
        seed: initialisation seed of the tiny random models (ignored for pretrained ones).
    """

    def __init__(
        self,
        model: str = "embedded:smollm2-135m-instruct",
        layers: Optional[List[int]] = None,
        beta: float = 0.1,
        gamma: float = 0.5,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        reference_model: Optional[str] = None,
        dtype: str = "float32",
        backend: str = "auto",
        freeze_embeddings: bool = False,
        lora: Optional[LoraOptions] = None,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        revision: Optional[str] = None,
        on_nonfinite_loss: str = "error",
        hf_output_dir: Optional[str] = None,
        optimizer: Optional[OptimizerCallable] = None,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"model.loss_type={loss_type!r} is unknown; choose one of {LOSS_TYPES}.")
        if on_nonfinite_loss not in ("error", "skip"):
            raise ValueError(f"model.on_nonfinite_loss={on_nonfinite_loss!r}: choose 'error' or 'skip'.")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"model.gamma={gamma} must be in [0, 1] (1 is plain DPO).")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler

        if lora is not None and reference_model is not None:
            raise ValueError("model.reference_model cannot be combined with model.lora: with LoRA the reference is "
                             "the policy with its adapters disabled. Remove one of them.")
        load_kwargs = dict(dtype=dtype, revision=revision, trust_remote_code=trust_remote_code, seed=seed)
        policy = load_model(model, **load_kwargs)
        policy.config.use_cache = False
        disable_dropout(policy)  # before LoRA, so that the adapters keep the dropout the user asked for
        if freeze_embeddings:
            policy.get_input_embeddings().requires_grad_(False)
            policy.get_output_embeddings().requires_grad_(False)
        if gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            policy = self._wrap_lora(policy, lora)
            self.reference = None
        else:
            self.reference = load_model(reference_model or model, **load_kwargs)
            self.reference.config.use_cache = False
            disable_dropout(self.reference)
            self.reference.eval().requires_grad_(False)
        self.policy = policy

        num_layers = find_head_path(self.policy).num_layers
        if self.reference is not None and find_head_path(self.reference).num_layers != num_layers:
            raise ValueError("model.reference_model must have as many decoder blocks as model (layers are read at the same depth).")
        if layers is None:
            layers = [default_intermediate_layer(num_layers)]
        intermediate = resolve_layers(list(layers), num_layers)
        if num_layers in intermediate:
            raise ValueError(f"model.layers lists the final layer ({num_layers}); it is always included, so remove it.")
        if len(set(intermediate)) != len(intermediate):
            raise ValueError(f"model.layers={list(layers)} lists a layer twice.")
        # Row 0 is the final layer; rows 1..K the intermediate ones (the loss's convention).
        self.layer_ids: List[int] = [num_layers] + intermediate
        self.layer_names: List[str] = ["final"] + [f"layer{layer}" for layer in intermediate]

        self.val_metrics = nn.ModuleDict(
            {self._metric_key(layer, metric): MeanMetric() for layer in self.layer_names for metric in METRIC_NAMES}
        )
        self.last_val_table: Optional[str] = None
        self.saved_model_dir: Optional[str] = None

    @staticmethod
    def _wrap_lora(policy: nn.Module, lora: LoraOptions) -> nn.Module:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as error:
            raise ImportError("model.lora needs peft: pip install peft (or pip install 'lit-idpo[lora]').") from error
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora.target_modules, task_type="CAUSAL_LM")
        return get_peft_model(policy, config)

    @property
    def uses_lora(self) -> bool:
        return self.reference is None

    @staticmethod
    def _metric_key(layer_name: str, metric: str) -> str:
        return f"{layer_name}__{metric.replace('/', '__')}"

    # ------------------------------------------------------------------ forward + loss
    def _logprobs(self, network: nn.Module, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        logps = sequence_logprobs(network, batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                                  self.layer_ids, backend=self.hparams.backend)  # [1+K, 2B]
        if self.hparams.loss_type == "ipo":
            lengths = batch["completion_mask"][:, 1:].sum(-1).clamp(min=1)  # [2B]
            logps = logps / lengths
        return logps

    def compute_loss(self, batch: Dict[str, torch.Tensor]):
        """Loss and per-layer metrics of one batch of pairs (chosen rows first, then rejected)."""
        num_pairs = batch["input_ids"].shape[0] // 2
        policy = self._logprobs(self.policy, batch)  # [1+K, 2B]
        with torch.no_grad():
            if self.uses_lora:
                with self.policy.disable_adapter():
                    reference = self._logprobs(self.policy, batch)  # [1+K, 2B]
            else:
                reference = self._logprobs(self.reference, batch)  # [1+K, 2B]
        return intermediate_dpo_loss(
            policy[:, :num_pairs], policy[:, num_pairs:], reference[:, :num_pairs], reference[:, num_pairs:],
            beta=self.hparams.beta, gamma=self.hparams.gamma, loss_type=self.hparams.loss_type,
            label_smoothing=self.hparams.label_smoothing,
        )

    def _named(self, stage: str, metrics: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        named = {}
        for row, layer_name in enumerate(self.layer_names):
            prefix = f"{stage}/" if layer_name == "final" else f"{stage}/{layer_name}/"
            for metric in METRIC_NAMES:
                named[prefix + metric] = metrics[metric][row]
        return named

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self) -> None:
        if self.reference is not None:
            self.reference.eval()

    def training_step(self, batch: Dict[str, torch.Tensor], batch_idx: int):
        loss, metrics = self.compute_loss(batch)
        if not torch.isfinite(loss):
            message = (f"non-finite training loss ({loss.item()}) at global step {self.global_step}, batch {batch_idx} "
                       f"(pair indices {batch.get('pair_index', torch.tensor([])).tolist()}).")
            if self.hparams.on_nonfinite_loss == "error":
                raise FloatingPointError(message + " Lower the learning rate or set model.on_nonfinite_loss=skip.")
            rank_zero_info("lit-idpo: skipping " + message)
            return None
        batch_size = batch["input_ids"].shape[0] // 2
        self.log("train/loss_total", loss, prog_bar=True, batch_size=batch_size)
        named = self._named("train", metrics)
        self.log_dict(named, batch_size=batch_size)
        self.log("train/acc", metrics["rewards/accuracies"][0], prog_bar=True, batch_size=batch_size)
        return loss

    def validation_step(self, batch: Dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, metrics = self.compute_loss(batch)
        batch_size = batch["input_ids"].shape[0] // 2
        for row, layer_name in enumerate(self.layer_names):
            for metric in METRIC_NAMES:
                self.val_metrics[self._metric_key(layer_name, metric)].update(metrics[metric][row], weight=batch_size)
        self.log("val/loss_total", loss, batch_size=batch_size, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        values = {}
        for layer_name in self.layer_names:
            for metric in METRIC_NAMES:
                meter = self.val_metrics[self._metric_key(layer_name, metric)]
                values[(layer_name, metric)] = meter.compute()
                meter.reset()
        for (layer_name, metric), value in values.items():
            name = f"val/{metric}" if layer_name == "final" else f"val/{layer_name}/{metric}"
            self.log(name, value)
        self.last_val_table = self.format_table(values)
        if not self.trainer.sanity_checking:
            rank_zero_info(f"\nValidation metrics per layer (step {self.global_step}):\n{self.last_val_table}\n")

    def format_table(self, values: Dict[tuple, torch.Tensor]) -> str:
        """A markdown table: one row per layer, TRL's metric names as columns."""
        header = "| layer | " + " | ".join(METRIC_NAMES) + " |"
        lines = [header, "|" + "---|" * (len(METRIC_NAMES) + 1)]
        for layer_id, layer_name in zip(self.layer_ids, self.layer_names):
            label = f"final ({layer_id})" if layer_name == "final" else str(layer_id)
            cells = []
            for metric in METRIC_NAMES:
                value = float(values[(layer_name, metric)])
                cells.append("nan" if math.isnan(value) else f"{value:.4f}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the policy has no trainable parameters (check model.freeze_embeddings and LoRA settings).")
        optimizer = self.optimizer_factory(params) if self.optimizer_factory else torch.optim.AdamW(params, lr=1e-6)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints and export
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The reference is frozen and reloaded from its source; keep it out of checkpoints (half the size).
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("reference.")]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Put the freshly loaded reference back so that strict loading still checks every policy key.
        if self.reference is None:
            return
        state = checkpoint["state_dict"]
        for key, value in self.reference.state_dict().items():
            state.setdefault("reference." + key, value)

    def on_train_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        target = self.hparams.hf_output_dir or os.path.join(self.trainer.log_dir or self.trainer.default_root_dir, "hf_model")
        self.save_hf_model(target)
        rank_zero_info(f"lit-idpo: saved the trained policy as a Hugging Face model directory: {target}")

    def save_hf_model(self, directory: str) -> str:
        """Write the policy and its tokenizer with ``save_pretrained``.

        A full fine-tune gives a model directory that ``AutoModelForCausalLM.from_pretrained`` loads;
        with LoRA it is the adapter (peft format), plus ``<directory>/merged`` when ``lora.save_merged``.
        """
        os.makedirs(directory, exist_ok=True)
        tokenizer = load_tokenizer(self.hparams.model, revision=self.hparams.revision,
                                   trust_remote_code=self.hparams.trust_remote_code)
        self.policy.config.use_cache = True
        try:
            self.policy.save_pretrained(directory, safe_serialization=True)
            tokenizer.save_pretrained(directory)
            lora = self.hparams.lora
            if self.uses_lora and lora is not None and getattr(lora, "save_merged", False):
                # Merge into a CPU copy: the live policy keeps its adapters (training may go on).
                merged = copy.deepcopy(self.policy).cpu().merge_and_unload()
                merged.save_pretrained(os.path.join(directory, "merged"), safe_serialization=True)
                tokenizer.save_pretrained(os.path.join(directory, "merged"))
        finally:
            self.policy.config.use_cache = False
        self.saved_model_dir = directory
        return directory
