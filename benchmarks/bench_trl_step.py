"""TRL's ``DPOTrainer`` as the peer row of ``benchmarks/bench_packing.py``: one configuration in this process.

The trainer gets what lit-idpo's rows get (see that script's docstring): the Hugging Face directory of the same
model (``lit_idpo.models.resolve_model_dir``), the same pairs in the same batch order, fp32, AdamW at the same
constant learning rate without weight decay, no gradient checkpointing (TRL defaults to it, and to bf16), the
reference model loaded by TRL and run live (``precompute_ref_log_probs=False``), sigmoid loss at the same beta,
no length cut (``max_length=None``), dropout off (TRL's default), and the input embeddings frozen
(``requires_grad`` off; SmolLM2 ties them to the LM head, so the head is frozen too). Everything else is TRL's
default (gradient clipping at norm 1.0 included: a user gets it).

Same pairs: TRL tokenises text itself, so it gets lit-idpo's token sequences decoded (chat template already
applied, special tokens kept) in lit-idpo's batch order (``train_sampling_strategy="sequential"``); after its
tokenisation the sequences are compared token for token (``same_tokens``).

Not meant to be run alone: ``python benchmarks/bench_packing.py --systems trl`` runs it in a fresh process.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Dict

from step_rows import StepRecord, batch_order, data_module, pair_tokens, steps_of


def run_trl(args) -> Dict:
    """One TRL configuration (``args.packing``: ``none``, or ``padding_free`` for TRL's own setting)."""
    import datasets
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from lit_idpo.models import resolve_model_dir

    order = batch_order(args)
    dm = data_module(args, "none")
    dm.setup("fit")
    pairs, tokenizer_lit = dm.train_pairs, dm.tokenizer
    flat = [i for batch in order for i in batch]

    def text(ids):
        return tokenizer_lit.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    rows = [dict(prompt=text(pairs.prompt_ids[i]), chosen=text(pairs.chosen_ids[i]),
                 rejected=text(pairs.rejected_ids[i])) for i in flat]
    model_dir = resolve_model_dir(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.get_input_embeddings().requires_grad_(False)  # tied to the LM head: both frozen, as in lit-idpo's rows

    record = StepRecord()

    class Timer(TrainerCallback):
        def on_train_begin(self, train_args, state, control, **kwargs):
            record.train_start()

        def on_step_end(self, train_args, state, control, **kwargs):
            record.step_end()

    out_dir = tempfile.mkdtemp(prefix="lit_idpo_bench_trl_")
    config = trl.DPOConfig(
        output_dir=out_dir, per_device_train_batch_size=args.batch_pairs,
        max_steps=steps_of(args), learning_rate=args.lr, lr_scheduler_type="constant", weight_decay=0.0,
        optim="adamw_torch", bf16=args.precision == "bf16-mixed", fp16=False, gradient_checkpointing=False,
        use_cpu=True, beta=args.beta,
        loss_type=["sigmoid"], max_length=None, precompute_ref_log_probs=False,
        padding_free=args.packing == "padding_free", train_sampling_strategy="sequential", report_to="none",
        logging_steps=1, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=args.seed)
    trainer = trl.DPOTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=tokenizer, callbacks=[Timer()])
    base = dict(system="trl", packing=args.packing, k=0, layers="[]")
    if args.packing == "padding_free" and not getattr(trainer, "padding_free", False):
        return dict(base, status=f"not run: trl {trl.__version__} warns that padding_free is unavailable and "
                                 f"falls back to padding (same as the padded TRL row)")
    processed = trainer.train_dataset
    same = all(list(processed[row]["prompt_ids"]) == pairs.prompt_ids[i]
               and list(processed[row]["chosen_ids"]) == pairs.chosen_ids[i]
               and list(processed[row]["rejected_ids"]) == pairs.rejected_ids[i] for row, i in enumerate(flat))
    try:
        trainer.train()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    real_tokens = [sum(pair_tokens(pairs, i) for i in batch) for batch in order]
    # TRL's collator pads both halves to the batch's longest prompt + completion (no pad_to_multiple_of on CPU).
    positions = [2 * len(batch) * max(len(pairs.prompt_ids[i]) + max(len(pairs.chosen_ids[i]),
                                                                      len(pairs.rejected_ids[i])) for i in batch)
                 for batch in order]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return dict(base, **record.summary(real_tokens, positions), loss_first=round(losses[0], 5) if losses else None,
                loss_last=round(losses[-1], 5) if losses else None, same_tokens=same, status="ok")
