"""The LightningModule: a trainable policy, a reference seam, the Intermediate DPO loss, metrics.

Its parts live beside it: LoRA options (:mod:`lit_idpo.lora`), the reference (:mod:`lit_idpo.reference`,
:mod:`lit_idpo.reference.cache`), FSDP2 sharding (:mod:`lit_idpo.sharding`), the Hugging Face export
(:mod:`lit_idpo.export`) and safe checkpoint loading (:mod:`lit_idpo.checkpoint`).
"""

from __future__ import annotations

import math
import os
import weakref
from dataclasses import asdict
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from lit_idpo import export
from lit_idpo.batch import PackingResolver, ScoringPlan, check_packable, is_packed, scoring_plan
from lit_idpo.errors import ConfigError
from lit_idpo.layers import default_intermediate_layer, resolve_layers
from lit_idpo.logprobs import batch_logprobs, call_as_forward, find_head_path
from lit_idpo.lora import LoraOptions, as_lora_options, wrap_lora
from lit_idpo.losses import LOSS_TYPES, exit_nll, intermediate_dpo_loss, sequence_logps_for_loss
from lit_idpo.models import disable_dropout, load_model, load_tokenizer
from lit_idpo.reference.cache import ReferenceCache
from lit_idpo.reference.seam import AdapterDisabledReference, CachedReference, LiveReference, ReferenceLogprobs
from lit_idpo.sharding import decoder_blocks, gathered_state, is_sharded, shard_fsdp2

METRIC_NAMES = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)
#: Logged for the intermediate layers only, and only with ``model.exit_loss_weight > 0``.
EXIT_METRIC = "exit_nll"
EXIT_TOKENS = "exit_tokens"  # compute_loss's count of the chosen completion tokens behind exit_nll (not logged)
def _check_options(beta: float, gamma: float, loss_type: str, label_smoothing: float, on_nonfinite_loss: str,
                   exit_loss_weight: float) -> None:
    if loss_type not in LOSS_TYPES:
        raise ConfigError(f"model.loss_type={loss_type!r} is unknown; choose one of {LOSS_TYPES}.")
    if on_nonfinite_loss not in ("error", "skip"):
        raise ConfigError(f"model.on_nonfinite_loss={on_nonfinite_loss!r}: choose 'error' or 'skip'.")
    if not 0.0 <= gamma <= 1.0:
        raise ConfigError(f"model.gamma={gamma} must be in [0, 1] (1 is plain DPO).")
    if not beta > 0:
        raise ConfigError(f"model.beta={beta} must be > 0 (0.1 is the usual DPO value).")
    if not 0.0 <= label_smoothing < 0.5:
        raise ConfigError(f"model.label_smoothing={label_smoothing} must be in [0, 0.5).")
    if label_smoothing and loss_type not in ("sigmoid", "robust"):
        raise ConfigError(f"model.label_smoothing applies to model.loss_type 'sigmoid' or 'robust', not {loss_type!r}; "
                          f"set it to 0.")
    if (not isinstance(exit_loss_weight, (int, float)) or isinstance(exit_loss_weight, bool)
            or not math.isfinite(exit_loss_weight) or exit_loss_weight < 0):
        raise ConfigError(f"model.exit_loss_weight={exit_loss_weight!r} must be a finite number >= 0: set it to 0 "
                          f"(off) or to a positive weight for the intermediate layers' early-exit loss.")


class IntermediateDPO(LightningModule):
    """Intermediate DPO: DPO at the final layer plus DPO at selected intermediate layers.

    The policy is trained; the reference only scores, through one :class:`~lit_idpo.reference.seam.ReferenceLogprobs`
    chosen at construction: a frozen copy of the model, the LoRA policy with its adapters disabled, or the
    reference cache. Both networks run with dropout off.
    Loss: ``gamma * L_DPO(final) + (1 - gamma) * mean_k L_DPO(layer k)``, plus
    ``exit_loss_weight * mean_k NLL(layer k)`` when that weight is set (:func:`lit_idpo.losses.exit_nll`).

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
        exit_loss_weight: weight ``w`` of an early-exit loss: ``w * mean over model.layers`` of the chosen
            completions' token-averaged NLL at that layer, so it drafts for ``lit-idpo speculate``; ``0`` (the
            default) is off. Logged as ``train/layer<k>/exit_nll`` (docs/training.md).
        reference_model: reference source; ``null`` uses a fresh copy of ``model``.
        reference_cache: directory for reference log-probs computed once before fit and read by pair index
            after (a complete cache never loads the reference); ``null`` runs the reference every step. A
            cache that does not match the pairs, model, dtype, precision or layers is refused (docs/reference_cache.md).
        dtype: weights' dtype when loading (``float32``, ``bfloat16``, ``float16``); mixed precision
            is ``trainer.precision`` (``auto``: bf16-mixed where the device multiplies natively in bf16).
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
        init_seed: initialisation seed of the tiny random models (ignored for pretrained ones; not ``seed``,
            which Lightning would merge with ``data.seed``).
    """

    def __init__(
        self,
        model: str = "embedded:smollm2-135m-instruct",
        layers: Optional[List[int]] = None,
        beta: float = 0.1,
        gamma: float = 0.5,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        exit_loss_weight: float = 0.0,
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
        _check_options(beta, gamma, loss_type, label_smoothing, on_nonfinite_loss, exit_loss_weight)
        lora = as_lora_options(lora)
        if lora is not None and reference_model is not None:
            raise ConfigError("model.reference_model cannot be combined with model.lora: with LoRA the reference is "
                              "the policy with its adapters disabled. Remove one of them.")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        # Checkpoints keep hyperparameters; plain types only, so they load with torch.load(weights_only=True).
        self.hparams["lora"] = asdict(lora) if lora is not None else None
        self._lora = lora
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler

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
            policy = wrap_lora(policy, lora)
        self.policy = policy
        num_layers = find_head_path(self.policy).num_layers
        if layers is None:
            layers = [default_intermediate_layer(num_layers)]
        try:
            intermediate = resolve_layers(list(layers), num_layers)
        except ValueError as error:
            # resolve_layers names the option "layers"; the user knows it as model.layers.
            message = str(error) if str(error).startswith("layers") else f"layers: {error}"
            raise ConfigError("model." + message) from error
        if num_layers in intermediate:
            raise ConfigError(f"model.layers lists the final layer ({num_layers}); it is always included: remove it.")
        if len(set(intermediate)) != len(intermediate):
            raise ConfigError(f"model.layers={list(layers)} lists a layer twice; list each layer once.")
        if exit_loss_weight > 0 and not intermediate:
            raise ConfigError(f"model.exit_loss_weight={exit_loss_weight} trains intermediate layers as early exits, "
                              f"but model.layers selects none: list one (e.g. [{default_intermediate_layer(num_layers)}"
                              f"]) or set model.exit_loss_weight=0.")
        # Row 0 is the final layer; rows 1..K the intermediate ones (the loss's convention).
        self.layer_ids: List[int] = [num_layers] + intermediate
        self.layer_names: List[str] = ["final"] + [f"layer{layer}" for layer in intermediate]
        #: Every logged (layer name, metric) pair: METRIC_NAMES at every layer, exit_nll at the intermediate ones.
        self.metric_pairs: List[Tuple[str, str]] = [(layer, metric) for layer in self.layer_names
                                                    for metric in METRIC_NAMES]
        if exit_loss_weight > 0:
            self.metric_pairs += [(layer, EXIT_METRIC) for layer in self.layer_names[1:]]

        #: The frozen reference copy, when one is loaded: never with LoRA; with a cache only while it is built.
        self.reference_network: Optional[nn.Module] = None
        self._packable: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # networks checked for packed batches
        # The live reference scores batches (every step, or once to build the cache); chosen here, once.
        self._live_reference: ReferenceLogprobs = (
            AdapterDisabledReference(lambda: self.policy, self._sums) if lora is not None
            else LiveReference(lambda: self.reference_network, self._sums))
        self.reference: ReferenceLogprobs = self._live_reference
        if reference_cache is not None:
            self.reference = CachedReference(ReferenceCache(reference_cache, self.layer_ids,
                                                            source=reference_model or model, dtype=dtype,
                                                            revision=revision, seed=init_seed))
        elif lora is None:
            self.reference_network = self._load_reference_network()

        self.val_metrics = nn.ModuleDict({self._metric_key(*pair): MeanMetric() for pair in self.metric_pairs})
        self.last_val_table: Optional[str] = None
        self.saved_model_dir: Optional[str] = None
        self._fsdp2_applied = False

    def _load_reference_network(self) -> nn.Module:
        reference = load_model(self.hparams.reference_model or self.hparams.model, **self._load_kwargs)
        reference.config.use_cache = False
        disable_dropout(reference)
        reference.eval().requires_grad_(False)
        if find_head_path(reference).num_layers != self.layer_ids[0]:
            raise ConfigError(f"model.reference_model must have as many decoder blocks as model ({self.layer_ids[0]}; "
                              f"layers are read at the same depth): use a reference of the same architecture.")
        return reference

    @property
    def uses_lora(self) -> bool:
        return self._lora is not None

    @staticmethod
    def _metric_key(layer_name: str, metric: str) -> str:
        return f"{layer_name}__{metric.replace('/', '__')}"

    # ------------------------------------------------------------------ forward + loss
    def _sums(self, network: nn.Module, batch: Dict[str, torch.Tensor],
              plan: Optional[ScoringPlan] = None) -> torch.Tensor:
        if is_packed(batch) and network not in self._packable:
            # A packed batch built without the module's resolution (a data module used directly) must still be exact.
            check_packable(network)
            self._packable.add(network)
        return batch_logprobs(network, batch, self.layer_ids, backend=self.hparams.backend, plan=plan)  # [1+K, 2B]

    @staticmethod
    def num_pairs(batch: Dict[str, torch.Tensor]) -> int:
        """Pairs in a batch of any packing mode."""
        return batch["pair_index"].numel() if "pair_index" in batch else batch["input_ids"].shape[0] // 2

    def compute_loss(self, batch: Dict[str, torch.Tensor], split: Optional[str] = None):
        """Loss and per-layer metrics of one batch of pairs (chosen rows first, then rejected).

        ``batch`` may be of any packing mode (padded, ``padding_free``, ``prefix_shared``): the values are the same.
        ``split`` (``"train"`` or ``"val"``) names the split the batch's ``pair_index`` refers to; it is
        needed with ``reference_cache``, where reference log-probs are looked up instead of computed.
        With ``exit_loss_weight > 0`` the metrics also hold ``exit_nll`` (``[K]``, intermediate layers only) and
        ``exit_tokens`` (the chosen completion tokens it averages over).
        """
        num_pairs = self.num_pairs(batch)
        plan = scoring_plan(batch)  # once per batch; the policy, the reference and the lengths read it
        lengths = plan.lengths()  # [2B] scored tokens (the first token has no target)
        loss_type = self.hparams.loss_type
        sums = self._sums(self.policy, batch, plan)  # [1+K, 2B]
        policy = sequence_logps_for_loss(sums, lengths, loss_type)  # [1+K, 2B]
        reference = self.reference.sums(batch, split, plan).to(policy.dtype)  # [1+K, 2B]
        reference = sequence_logps_for_loss(reference, lengths, loss_type)
        loss, metrics = intermediate_dpo_loss(
            policy[:, :num_pairs], policy[:, num_pairs:], reference[:, :num_pairs], reference[:, num_pairs:],
            beta=self.hparams.beta, gamma=self.hparams.gamma, loss_type=loss_type,
            label_smoothing=self.hparams.label_smoothing,
        )
        weight = self.hparams.exit_loss_weight
        if weight > 0:
            # The policy's own sums (never the reference's, never length-averaged): chosen columns, intermediate rows.
            nll = exit_nll(sums[1:, :num_pairs], lengths[:num_pairs])  # [K]
            loss = loss + weight * nll.mean()
            metrics[EXIT_METRIC] = nll.detach()
            metrics[EXIT_TOKENS] = lengths[:num_pairs].sum()  # the token mean's denominator, for validation's weight
        return loss, metrics

    def _per_layer(self, metrics: Dict[str, torch.Tensor]) -> Iterator[Tuple[str, str, torch.Tensor]]:
        """``(layer name, metric, value)`` for every pair in :attr:`metric_pairs`, from compute_loss's metrics."""
        for layer_name, metric in self.metric_pairs:
            row = self.layer_names.index(layer_name)
            yield layer_name, metric, metrics[metric][row - 1 if metric == EXIT_METRIC else row]

    @staticmethod
    def _log_name(stage: str, layer_name: str, metric: str) -> str:
        return f"{stage}/{metric}" if layer_name == "final" else f"{stage}/{layer_name}/{metric}"

    def _named(self, stage: str, metrics: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {self._log_name(stage, layer, metric): value for layer, metric, value in self._per_layer(metrics)}

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        if self.hparams.on_nonfinite_loss == "skip" and stage == "fit" and self.trainer.world_size > 1:
            raise ConfigError("model.on_nonfinite_loss=skip works in a single process only: Lightning cannot skip an "
                              "optimiser step (training_step returning None) under DDP/FSDP. Use 'error'.")
        if isinstance(self.reference, CachedReference):
            cache = self.reference.cache
            cache.open(self.trainer, stage)
            # Load the reference now if it must build splits, so that the strategy places, converts and shards it.
            if cache.pending and not self.uses_lora and self.reference_network is None:
                self.reference_network = self._load_reference_network()
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, PackingResolver):
            # Only here are both the data's packing option and the model's attention implementation known.
            datamodule.resolve_packing([self.policy, self.reference_network])

    def configure_model(self) -> None:
        """Under Lightning's ``ModelParallelStrategy`` (FSDP2), shard the policy and the reference network (if
        loaded); see :func:`lit_idpo.sharding.shard_fsdp2`. Other strategies: nothing."""
        if self.device_mesh is None or self._fsdp2_applied:
            return
        shard_fsdp2((self.policy, self.reference_network), self.device_mesh)
        self._fsdp2_applied = True

    def on_fit_start(self) -> None:
        if self.reference_network is not None:
            self.reference_network.eval()
        self._build_reference_cache()

    def on_validation_start(self) -> None:
        self._build_reference_cache()

    def _build_reference_cache(self) -> None:
        """Score the cache's missing splits with the live reference, then release the reference copy."""
        if not isinstance(self.reference, CachedReference) or not self.reference.cache.pending:
            return

        def score(batch: Dict[str, torch.Tensor]) -> torch.Tensor:
            # Under the precision plugin's context, as in a training step, so the values equal the live ones.
            with self.trainer.precision_plugin.forward_context():
                return self._live_reference.sums(batch)  # [1+K, 2B]

        # Run as the forward of the strategy's wrapper (as Lightning runs validation_step): an FSDP1 root
        # then gathers its parameters. Under a single device or FSDP2 there is no wrapper to go through.
        wrapper = self.trainer.strategy.model
        run = score if wrapper is None or wrapper is self else (lambda batch: call_as_forward(wrapper, score, batch))
        self.reference.cache.build(self.trainer, run, self.device)
        # Not needed any more; under DDP its tensors stay referenced by the DDP wrapper until the run ends.
        self.reference_network = None

    def training_step(self, batch: Dict[str, torch.Tensor], batch_idx: int):
        loss, metrics = self.compute_loss(batch, "train")
        finite = bool(torch.isfinite(loss))
        if self._trainer is not None and self.trainer.world_size > 1:
            # Every rank must take the same branch, or the others wait forever in the next collective.
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            value = (f"{loss.item()}" if not torch.isfinite(loss)
                     else f"finite here ({loss.item():.4g}), non-finite on another rank")
            message = (f"non-finite training loss ({value}) at global step {self.global_step}, batch {batch_idx} "
                       f"(pair indices {batch.get('pair_index', torch.tensor([])).tolist()}).")
            if self.hparams.on_nonfinite_loss == "error":
                raise FloatingPointError(message + " Lower the learning rate or set model.on_nonfinite_loss=skip.")
            rank_zero_info("lit-idpo: skipping " + message)
            return None
        batch_size = self.num_pairs(batch)
        self.log("train/loss_total", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict(self._named("train", metrics), batch_size=batch_size)
        return loss

    def validation_step(self, batch: Dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, metrics = self.compute_loss(batch, "val")
        batch_size = self.num_pairs(batch)
        # exit_nll is a token mean: weighted by the batch's chosen tokens, the epoch value is the token mean too.
        for layer_name, metric, value in self._per_layer(metrics):
            weight = metrics[EXIT_TOKENS] if metric == EXIT_METRIC else batch_size
            self.val_metrics[self._metric_key(layer_name, metric)].update(value, weight=weight)
        self.log("val/loss_total", loss, batch_size=batch_size, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        values = {}
        for pair in self.metric_pairs:
            meter = self.val_metrics[self._metric_key(*pair)]
            values[pair] = meter.compute()
            meter.reset()
        for (layer_name, metric), value in values.items():
            self.log(self._log_name("val", layer_name, metric), value)
        self.last_val_table = self.format_table(values)
        if not self.trainer.sanity_checking:
            rank_zero_info(f"\nValidation metrics per layer (step {self.global_step}):\n{self.last_val_table}\n")

    def format_table(self, values: Dict[tuple, torch.Tensor]) -> str:
        """A markdown table: one row per layer, TRL's metric names as columns (and exit_nll when it is trained)."""
        columns = list(dict.fromkeys(metric for _, metric in self.metric_pairs))
        header = "| layer | " + " | ".join(columns) + " |"
        lines = [header, "|" + "---|" * (len(columns) + 1)]
        for layer_id, layer_name in zip(self.layer_ids, self.layer_names):
            label = f"final ({layer_id})" if layer_name == "final" else str(layer_id)
            cells = []
            for metric in columns:
                if (layer_name, metric) not in values:  # exit_nll of the final layer: not an exit
                    cells.append("-")
                    continue
                value = float(values[(layer_name, metric)])
                cells.append("nan" if math.isnan(value) else f"{value:.4f}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the policy has no trainable parameters: unset model.freeze_embeddings or check the "
                              "model.lora options (target_modules).")
        optimizer = self.optimizer_factory(params) if self.optimizer_factory else torch.optim.AdamW(params, lr=1e-6)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints and export
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The reference is frozen and reloaded from its source; keep it out of checkpoints (half the size).
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("reference_network.")]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Put the freshly loaded reference back so that strict loading still checks every policy key.
        if self.reference_network is None:
            return
        state = checkpoint["state_dict"]
        for key, value in self.reference_network.state_dict().items():
            state.setdefault("reference_network." + key, value)

    def on_train_end(self) -> None:
        # Sharded policies (FSDP) are gathered first, by every rank: the gather is a collective.
        state = gathered_state(self.trainer.strategy.model, "policy.") if is_sharded(self._trainer) else None
        # trainer.log_dir is a collective too (a broadcast under DDP/FSDP): read it on every rank or not at all.
        target = self.hparams.hf_output_dir or os.path.join(self.trainer.log_dir or self.trainer.default_root_dir,
                                                            "hf_model")
        if not self.trainer.is_global_zero:
            return
        self.save_hf_model(target, state_dict=state)
        rank_zero_info(f"lit-idpo: saved the trained policy as a Hugging Face model directory: {target}")

    def save_hf_model(self, directory: str, state_dict: Optional[Dict[str, torch.Tensor]] = None) -> str:
        """Write the policy and its tokenizer with ``save_pretrained`` (see :func:`lit_idpo.export.save_hf_model`).

        ``state_dict``: the policy's full weights when the live ones are sharded (FSDP).
        """
        tokenizer = load_tokenizer(self.hparams.model, revision=self.hparams.revision,
                                   trust_remote_code=self.hparams.trust_remote_code)
        export.save_hf_model(self.policy, tokenizer, directory, lora=self._lora, state_dict=state_dict,
                             unsharded_copy=lambda: wrap_lora(load_model(self.hparams.model, **self._load_kwargs),
                                                              self._lora))
        self.saved_model_dir = directory
        return directory


__all__ = ["IntermediateDPO", "LoraOptions", "METRIC_NAMES", "decoder_blocks"]
