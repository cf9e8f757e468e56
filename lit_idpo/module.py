"""The LightningModule: a trainable policy, a frozen reference, the Intermediate DPO loss, metrics."""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from lit_idpo.logprobs import _unwrap, call_as_forward, find_head_path, resolve_layers, sequence_logprobs
from lit_idpo.losses import LOSS_TYPES, intermediate_dpo_loss
from lit_idpo.models import load_model, load_tokenizer
from lit_idpo.reference_cache import (CacheKey, ReferenceCacheError, ReferenceTable, pair_digests, pair_tokens,
                                      read_split, reference_fingerprint, score_pairs, shard_indices, write_split)

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


def _lora_options(lora: Union[LoraOptions, Dict[str, Any], None]) -> Optional[LoraOptions]:
    # A dict comes back from checkpoints (hyperparameters are stored as plain dicts, see IntermediateDPO).
    if lora is None or isinstance(lora, LoraOptions):
        return lora
    if isinstance(lora, dict):
        unknown = sorted(set(lora) - set(LoraOptions.__dataclass_fields__))
        if unknown:
            raise ValueError(f"model.lora: unknown option(s) {unknown}; known: {sorted(LoraOptions.__dataclass_fields__)}.")
        return LoraOptions(**lora)
    raise ValueError(f"model.lora must be LoRA options (rank, alpha, dropout, target_modules, save_merged) or null, "
                     f"got {type(lora).__name__}.")


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a causal LM (``model.layers`` for Llama/Qwen2, ``transformer.h`` for GPT-2)."""
    path = find_head_path(model)
    for child in path.backbone.children():
        if isinstance(child, nn.ModuleList) and len(child) == path.num_layers:
            return child
    raise ValueError(f"cannot find the {path.num_layers} decoder blocks of {type(_unwrap(model)).__name__}.")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, damaged, not a Lightning checkpoint, or holding objects
    that only unpickling code could restore."""


def load_checkpoint_safely(path: Union[str, Path], map_location: Any = "cpu") -> dict:
    """Read a Lightning checkpoint file with ``torch.load(weights_only=True)`` (tensors and plain Python
    values only, never code), or raise :class:`CheckpointError` naming the file, the cause and the fix.

    lit-idpo's own checkpoints always load this way (hyperparameters are stored as plain values).
    """
    import pickle

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory (a sharded checkpoint); this reader takes one file. "
                              f"Resume sharded runs with the same strategy, which reads the directory itself.")
    size = path.stat().st_size
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[-1][:300]
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain values ({first_line}). lit-idpo loads "
            f"checkpoints without unpickling code; a checkpoint written by lit-idpo never needs it. If you wrote this "
            f"file yourself and trust it, convert it once with torch.load(..., weights_only=False).") from error
    except Exception as error:  # a truncated or foreign file: zip/format errors of several types
        raise CheckpointError(
            f"cannot read checkpoint {path} ({size} bytes): {type(error).__name__}: {str(error)[:300]}. The file is "
            f"damaged (e.g. cut short by an interrupted save or a full disk) or not a PyTorch checkpoint; resume from "
            f"an earlier checkpoint.") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict' entry).")
    return checkpoint


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that reads with :func:`load_checkpoint_safely`: never unpickles code, and a
    damaged file gives a :class:`CheckpointError` naming it. ``Trainer(plugins=[SafeCheckpointIO()])``."""

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        if weights_only is False:
            raise CheckpointError("SafeCheckpointIO loads checkpoints with weights_only=True only.")
        return load_checkpoint_safely(path, map_location=map_location or (lambda storage, loc: storage))


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
        reference_cache: directory for cached reference log-probs, or ``null`` to run the reference in
            every step. When set, the reference scores every training and validation pair once before
            fit (progress bar; under DDP/FSDP each rank scores a share) and its per-layer log-probs are
            stored there as safetensors; training then reads them by pair index, and a run that finds the
            cache complete never loads the reference. The cache is keyed by the token ids of every pair,
            a SHA-256 of the reference's weight files, its ``dtype``, ``trainer.precision`` and the layers;
            a cache that does not match (or cannot be read) stops the run with an error naming what
            differs: delete the directory to rebuild it. Needs the data as a ``PreferenceDataModule``.
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
        on_nonfinite_loss: ``error`` stops with the step and batch named; ``skip`` skips that batch (no
            optimiser step; single-process only, as Lightning cannot skip a step under DDP/FSDP). Under
            several processes the check is agreed between all ranks, so every rank stops together.
        hf_output_dir: where the trained policy is written as a Hugging Face model directory at the end
            of ``fit``; ``null`` is ``<log_dir>/hf_model``.
        optimizer: optimiser factory; ``null`` is AdamW(lr=1e-6).
        lr_scheduler: learning-rate scheduler factory (stepped every optimiser step); ``null`` for none.
        init_seed: initialisation seed of the tiny random models (ignored for pretrained ones). Not
            ``seed``: Lightning merges the model's and the data module's hyperparameters, and
            ``data.seed`` (the shuffling seed) must be free to differ.
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
        reference_cache: Optional[str] = None,
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
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"model.loss_type={loss_type!r} is unknown; choose one of {LOSS_TYPES}.")
        if on_nonfinite_loss not in ("error", "skip"):
            raise ValueError(f"model.on_nonfinite_loss={on_nonfinite_loss!r}: choose 'error' or 'skip'.")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"model.gamma={gamma} must be in [0, 1] (1 is plain DPO).")
        lora = _lora_options(lora)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        # Checkpoints keep hyperparameters; plain types only, so they load with torch.load(weights_only=True).
        self.hparams["lora"] = asdict(lora) if lora is not None else None
        self._lora = lora
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler

        if lora is not None and reference_model is not None:
            raise ValueError("model.reference_model cannot be combined with model.lora: with LoRA the reference is "
                             "the policy with its adapters disabled. Remove one of them.")
        self._load_kwargs = dict(dtype=dtype, revision=revision, trust_remote_code=trust_remote_code, seed=init_seed)
        policy = load_model(model, **self._load_kwargs)
        policy.config.use_cache = False
        disable_dropout(policy)  # before LoRA, so that the adapters keep the dropout the user asked for
        if freeze_embeddings:
            policy.get_input_embeddings().requires_grad_(False)
            policy.get_output_embeddings().requires_grad_(False)
        if gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            policy = self._wrap_lora(policy, lora)
        self.policy = policy
        num_layers = find_head_path(self.policy).num_layers
        # With LoRA the reference is the policy without its adapters; with a cache it is loaded only if
        # the cache must be built (in setup, once the data is known).
        self.reference: Optional[nn.Module] = None
        if lora is None and reference_cache is None:
            self.reference = self._load_reference(num_layers)
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
        #: Cached reference log-probs per split ("train", "val"), filled in setup / on_fit_start.
        self.reference_tables: Dict[str, ReferenceTable] = {}
        self._cache_key: Optional[CacheKey] = None
        self._cache_to_build: List[str] = []
        self._pair_digests: Dict[str, tuple] = {}
        self._fsdp2_applied = False

    def _load_reference(self, num_layers: int) -> nn.Module:
        reference = load_model(self.hparams.reference_model or self.hparams.model, **self._load_kwargs)
        reference.config.use_cache = False
        disable_dropout(reference)
        reference.eval().requires_grad_(False)
        if find_head_path(reference).num_layers != num_layers:
            raise ValueError("model.reference_model must have as many decoder blocks as model (layers are read at the "
                             "same depth).")
        return reference

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
        return self._lora is not None

    @property
    def uses_reference_cache(self) -> bool:
        return self.hparams.get("reference_cache") is not None

    @staticmethod
    def _metric_key(layer_name: str, metric: str) -> str:
        return f"{layer_name}__{metric.replace('/', '__')}"

    # ------------------------------------------------------------------ forward + loss
    def _sums(self, network: nn.Module, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return sequence_logprobs(network, batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                                 self.layer_ids, backend=self.hparams.backend)  # [1+K, 2B]

    def _loss_logps(self, sums: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        if self.hparams.loss_type == "ipo":
            lengths = batch["completion_mask"][:, 1:].sum(-1).clamp(min=1)  # [2B]
            return sums / lengths
        return sums

    @torch.no_grad()
    def reference_sums(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """``[1+K, 2B]`` summed completion log-probs of the live reference (never the cache)."""
        if self.uses_lora:
            with self.policy.disable_adapter():
                return self._sums(self.policy, batch)
        if self.reference is None:
            raise RuntimeError("the reference model is not loaded: with model.reference_cache it is loaded only to build "
                               "the cache; read cached values through compute_loss(batch, split=...).")
        return self._sums(self.reference, batch)

    def compute_loss(self, batch: Dict[str, torch.Tensor], split: Optional[str] = None):
        """Loss and per-layer metrics of one batch of pairs (chosen rows first, then rejected).

        ``split`` (``"train"`` or ``"val"``) names the split the batch's ``pair_index`` refers to; it is
        needed with ``reference_cache``, where reference log-probs are looked up instead of computed.
        """
        num_pairs = batch["input_ids"].shape[0] // 2
        policy = self._loss_logps(self._sums(self.policy, batch), batch)  # [1+K, 2B]
        if self.uses_reference_cache:
            table = self.reference_tables.get(split) if split is not None else None
            if table is None:
                raise ReferenceCacheError(
                    f"model.reference_cache is set but no cached reference log-probs are loaded for split={split!r} "
                    f"(loaded: {sorted(self.reference_tables)}); they are loaded by the Trainer (setup/on_fit_start) "
                    f"from the data module's pairs.")
            reference = table.lookup(batch["pair_index"], self.layer_ids, batch, split)  # [1+K, 2B]
        else:
            reference = self.reference_sums(batch)  # [1+K, 2B]
        reference = self._loss_logps(reference.to(policy.dtype), batch)
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
    def setup(self, stage: str) -> None:
        if self.hparams.on_nonfinite_loss == "skip" and stage == "fit" and self.trainer.world_size > 1:
            raise ValueError("model.on_nonfinite_loss=skip works in a single process only: Lightning cannot skip an "
                             "optimiser step (training_step returning None) under DDP/FSDP. Use 'error'.")
        if self.uses_reference_cache:
            self._open_reference_cache(stage)

    def configure_model(self) -> None:
        """Under Lightning's ``ModelParallelStrategy`` (FSDP2), shard each decoder block and then the rest of
        the policy (and of the reference, if loaded) over the data-parallel mesh. Other strategies: nothing."""
        mesh = self._device_mesh
        if mesh is None or self._fsdp2_applied:
            return
        if "tensor_parallel" in (mesh.mesh_dim_names or ()) and mesh["tensor_parallel"].size() > 1:
            raise ValueError("lit-idpo supports ModelParallelStrategy as FSDP2 only: set tensor_parallel_size=1.")
        from torch.distributed.fsdp import fully_shard

        data_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
        for network in (self.policy, self.reference):
            if network is None:
                continue
            for block in decoder_blocks(network):
                fully_shard(block, mesh=data_mesh)
            # The causal LM is the root unit: sequence_logprobs runs as its forward (see call_as_forward),
            # so embeddings, final norm and the LM head are gathered for the whole computation.
            fully_shard(_unwrap(network), mesh=data_mesh)
        self._fsdp2_applied = True

    def on_fit_start(self) -> None:
        if self.reference is not None:
            self.reference.eval()
        self._build_reference_cache()

    def on_validation_start(self) -> None:
        self._build_reference_cache()

    def training_step(self, batch: Dict[str, torch.Tensor], batch_idx: int):
        loss, metrics = self.compute_loss(batch, "train")
        finite = bool(torch.isfinite(loss))
        if self._trainer is not None and self.trainer.world_size > 1:
            # Every rank must take the same branch, or the others wait forever in the next collective.
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            value = f"{loss.item()}" if not torch.isfinite(loss) else f"finite here ({loss.item():.4g}), non-finite on another rank"
            message = (f"non-finite training loss ({value}) at global step {self.global_step}, batch {batch_idx} "
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
        loss, metrics = self.compute_loss(batch, "val")
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

    # ------------------------------------------------------------------ reference cache
    def _open_reference_cache(self, stage: str) -> None:
        """Load the complete cached splits this stage needs; note the missing ones and, if the reference is
        needed to build them, load it now (so that the strategy places, converts and shards it as usual).

        Rank 0 alone reads files and hashes the reference; the outcome is broadcast, so every rank takes
        the same path (and every rank raises the same error for a stale cache)."""
        datamodule = self.trainer.datamodule
        wanted = (["train"] if stage == "fit" else []) + (["val"] if stage in ("fit", "validate") else [])
        if not wanted:
            return
        if datamodule is None or not hasattr(datamodule, "train_pairs"):
            raise ReferenceCacheError("model.reference_cache needs the data as a PreferenceDataModule (trainer.fit(model, "
                                      "datamodule=...)): the cache is keyed by its tokenised pairs.")
        splits = [s for s in wanted if self._pairs(datamodule, s) is not None
                  and s not in self.reference_tables and s not in self._cache_to_build]
        if not splits:
            return
        strategy = self.trainer.strategy
        outcome: Any = None
        failure: Optional[BaseException] = None
        if strategy.global_rank == 0:
            try:
                key = self._make_cache_key(datamodule)
                tables = {s: read_split(self.hparams.reference_cache, s, key, self._digests(datamodule, s)) for s in splits}
                outcome = ("ok", key, tables)
            except Exception as error:  # every rank must learn of it, or the others wait at the next collective
                failure = error
                outcome = ("error", f"{type(error).__name__}: {error}", None)
        outcome = strategy.broadcast(outcome, src=0)
        if outcome[0] == "error":
            if failure is not None:
                raise failure
            raise ReferenceCacheError(f"(raised on rank 0) {outcome[1]}")
        _, self._cache_key, tables = outcome
        for split, table in tables.items():
            if table is None:
                self._cache_to_build.append(split)
            else:
                self.reference_tables[split] = table
        loaded = [s for s in splits if tables[s] is not None]
        if loaded:
            rank_zero_info(f"lit-idpo: reference log-probs of {', '.join(loaded)} read from {self.hparams.reference_cache}; "
                           f"the reference model is not loaded for them.")
        if self._cache_to_build and not self.uses_lora and self.reference is None:
            self.reference = self._load_reference(find_head_path(self.policy).num_layers)

    def _digests(self, datamodule, split: str) -> torch.Tensor:
        pairs = self._pairs(datamodule, split)
        if self._pair_digests.get(split, (None,))[0] is not pairs:
            self._pair_digests[split] = (pairs, pair_digests(pairs))
        return self._pair_digests[split][1]

    @staticmethod
    def _pairs(datamodule, split: str):
        return datamodule.train_pairs if split == "train" else getattr(datamodule, "val_pairs", None)

    def _make_cache_key(self, datamodule) -> CacheKey:
        directory = Path(self.hparams.reference_cache)
        directory.mkdir(parents=True, exist_ok=True)
        reference = reference_fingerprint(self.hparams.reference_model or self.hparams.model, dtype=self.hparams.dtype,
                                          revision=self.hparams.revision, seed=self.hparams.init_seed,
                                          memo_file=directory / "file_hashes.json")
        tokenisation = {name: getattr(datamodule, attr, None) for name, attr in (
            ("tokenizer", "tokenizer_source"), ("source", "source"), ("format", "format"), ("max_length", "max_length"),
            ("max_prompt_length", "max_prompt_length"))}
        return CacheKey(reference=reference, precision=str(self.trainer.precision), layers=list(self.layer_ids),
                        tokenisation=tokenisation)

    def _score_reference_batch(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        # Under the precision plugin's context, as in a training step, so the values equal the live ones.
        with self.trainer.precision_plugin.forward_context():
            return self.reference_sums(batch)  # [1+K, 2B]

    def _build_reference_cache(self) -> None:
        """Score the missing splits with the reference (each rank a share), gather, and let rank 0 write them."""
        if not self._cache_to_build:
            return
        strategy, datamodule = self.trainer.strategy, self.trainer.datamodule
        rank, world = strategy.global_rank, strategy.world_size
        # Run as the forward of the strategy's wrapper (as Lightning runs validation_step): an FSDP1 root
        # then gathers its parameters. Under a single device or FSDP2 there is no wrapper to go through.
        wrapper = strategy.model
        score = self._score_reference_batch
        if wrapper is not None and wrapper is not self:
            score = lambda batch: call_as_forward(wrapper, self._score_reference_batch, batch)  # noqa: E731
        # The reference is in eval mode; the LoRA policy without its adapters has no dropout left.
        for split in list(self._cache_to_build):
            pairs = self._pairs(datamodule, split)
            indices = shard_indices(len(pairs), rank, world)
            values = score_pairs(score, pairs, datamodule.collator, indices,
                                 batch_size=getattr(datamodule, "val_batch_size", None) or datamodule.batch_size,
                                 device=self.device, show_progress=rank == 0,
                                 description=f"lit-idpo: reference log-probs ({split}, {len(pairs)} pairs)")
            index = torch.tensor(indices, dtype=torch.long)
            if world > 1:
                values = strategy.all_gather(values.to(self.device)).cpu().flatten(0, 1)  # [world * n, 2, L]
                index = strategy.all_gather(index.to(self.device)).cpu().flatten()  # [world * n]
            full = torch.empty(len(pairs), *values.shape[1:])  # [N, 2, L]
            full[index] = values
            table = ReferenceTable(layers=list(self.layer_ids), chosen=full[:, 0].contiguous(),
                                   rejected=full[:, 1].contiguous(), tokens=pair_tokens(pairs))
            problem = None
            if rank == 0:
                try:
                    path = write_split(self.hparams.reference_cache, split, self._cache_key,
                                       self._digests(datamodule, split), table)
                    rank_zero_info(f"lit-idpo: wrote the reference log-probs of {split} to {path}")
                except Exception as error:
                    problem = f"{type(error).__name__}: {error}"
            problem = strategy.broadcast(problem, src=0)
            if problem is not None:
                raise ReferenceCacheError(f"reference_cache: cannot write {self.hparams.reference_cache}: {problem}")
            self.reference_tables[split] = table
            self._cache_to_build.remove(split)
        if not self.uses_lora and self.reference is not None:
            # Not needed any more; under DDP its tensors stay referenced by the DDP wrapper until the run ends.
            self.reference = None

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
        # Sharded policies (FSDP) are gathered first, by every rank: the gather is a collective.
        state = self._gathered_policy_state() if self._policy_is_sharded() else None
        if not self.trainer.is_global_zero:
            return
        target = self.hparams.hf_output_dir or os.path.join(self.trainer.log_dir or self.trainer.default_root_dir, "hf_model")
        self.save_hf_model(target, state_dict=state)
        rank_zero_info(f"lit-idpo: saved the trained policy as a Hugging Face model directory: {target}")

    def _policy_is_sharded(self) -> bool:
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        return self._trainer is not None and isinstance(self.trainer.strategy, (FSDPStrategy, ModelParallelStrategy))

    def _gathered_policy_state(self) -> Dict[str, torch.Tensor]:
        """The policy's full state dict on CPU (on rank 0; other ranks get an empty dict)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.trainer.strategy.model,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k[len("policy."):]: v for k, v in full.items() if k.startswith("policy.")}

    def save_hf_model(self, directory: str, state_dict: Optional[Dict[str, torch.Tensor]] = None) -> str:
        """Write the policy and its tokenizer with ``save_pretrained``.

        A full fine-tune gives a model directory that ``AutoModelForCausalLM.from_pretrained`` loads;
        with LoRA it is the adapter (peft format), plus ``<directory>/merged`` when ``lora.save_merged``.
        ``state_dict``: the policy's full weights when the live ones are sharded (FSDP).
        """
        os.makedirs(directory, exist_ok=True)
        tokenizer = load_tokenizer(self.hparams.model, revision=self.hparams.revision,
                                   trust_remote_code=self.hparams.trust_remote_code)
        self.policy.config.use_cache = True
        try:
            self.policy.save_pretrained(directory, safe_serialization=True, state_dict=state_dict)
            tokenizer.save_pretrained(directory)
            if self.uses_lora and self._lora.save_merged:
                if state_dict is None:
                    # Merge into a CPU copy: the live policy keeps its adapters (training may go on).
                    merged = copy.deepcopy(self.policy).cpu().merge_and_unload()
                else:  # sharded: rebuild an unsharded copy from the gathered weights
                    merged = self._wrap_lora(load_model(self.hparams.model, **self._load_kwargs), self._lora)
                    merged.load_state_dict(state_dict)
                    merged = merged.merge_and_unload()
                merged.save_pretrained(os.path.join(directory, "merged"), safe_serialization=True)
                tokenizer.save_pretrained(os.path.join(directory, "merged"))
        finally:
            self.policy.config.use_cache = False
        self.saved_model_dir = directory
        return directory
