"""Runs a short tiny-model fit under a multi-process strategy on CPU and writes what the tests compare.

Started by tests/test_distributed.py as ``python tests/distributed_worker.py --strategy ddp --out DIR``;
Lightning's launcher starts the second process by running this script again. Each rank writes
``rank<r>.json`` (its per-step losses); rank 0 also writes ``params.safetensors`` (the full trained policy
weights, gathered from shards under FSDP2).
"""

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402


def full_state(module) -> dict:
    state = {}
    for name, param in module.policy.named_parameters():
        value = param.detach()
        if hasattr(value, "full_tensor"):  # an FSDP2 shard (DTensor)
            value = value.full_tensor()
        state[name] = value.clone().contiguous()
    return state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", choices=["ddp", "fsdp2"], required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache", default=None)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=None, help="training pairs (default: PAIRS, one global batch)")
    parser.add_argument("--max_tokens_per_batch", type=int, default=None)
    args = parser.parse_args()

    from scale_common import LR, PAIRS, LossRecorder, make_module_kwargs

    from lit_idpo.data import PreferenceDataModule
    from lit_idpo.module import IntermediateDPO

    if args.strategy == "ddp":
        strategy = "ddp"
    else:
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    pl.seed_everything(0)
    kwargs = make_module_kwargs(reference_cache=args.cache, hf_output_dir=os.path.join(args.out, "hf"))
    module = IntermediateDPO(**kwargs, optimizer=lambda params: torch.optim.SGD(params, lr=LR))
    data = PreferenceDataModule(tokenizer="tiny-llama", batch_size=PAIRS // 2, limit_train_pairs=args.pairs or PAIRS,
                                limit_val_pairs=PAIRS, val_split="test" if args.cache else None,
                                max_tokens_per_batch=args.max_tokens_per_batch)
    recorder = LossRecorder()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=args.steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[recorder],
                         default_root_dir=args.out)
    trainer.fit(module, data)
    rank = trainer.global_rank
    state = full_state(module)  # a collective under FSDP2: every rank takes part
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump({"losses": [recorder.losses[step] for step in sorted(recorder.losses)],
                   "world_size": trainer.world_size,
                   "pair_index": [recorder.pair_index[step] for step in sorted(recorder.pair_index)],
                   "batches_per_epoch": len(trainer.train_dataloader),
                   "reference_loaded": module.reference_network is not None,
                   "cached_splits": sorted(getattr(module.reference, "tables", {}))}, f)
    if rank == 0:
        from safetensors.torch import save_file

        save_file(state, os.path.join(args.out, "params.safetensors"))


if __name__ == "__main__":
    main()
