"""Training batches from the stateful PairBatchSampler: each epoch's batches (fixed-size or bounded by
tokens), each rank's share, and a run killed mid-epoch that resumes with ``ckpt_path`` on exactly the
batches, and with the losses, of the uninterrupted run."""

import json

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from scale_common import Crash, make_module_kwargs, make_trainer, one_thread  # noqa: F401 (fixture)
from test_distributed import _launch

from lit_idpo.data import PreferenceDataModule
from lit_idpo.data.sampler import PairBatchSampler, ResumableDataLoader, pair_token_counts, token_bounded_batches
from lit_idpo.errors import ConfigError, DataError
from lit_idpo.module import IntermediateDPO

TOKENS = [5, 1, 9, 3, 3, 7, 2, 8, 4, 6, 12, 1, 1]  # pair 10 alone exceeds the budget below
BUDGET = 10


def _flat(batches):
    return sorted(i for batch in batches for i in batch)


# ------------------------------------------------------------------------------------------ the sampler


@pytest.mark.parametrize("tokens", [None, TOKENS], ids=["fixed", "tokens"])
def test_every_epoch_serves_every_pair_once_in_a_new_reproducible_order(tokens):
    def make():
        return PairBatchSampler(None, 4, num_pairs=len(TOKENS), seed=3, pair_tokens=tokens,
                                max_tokens=None if tokens is None else BUDGET)

    sampler, again = make(), make()
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        again.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)  # len() is exact, and the same every epoch
        assert _flat(batches) == list(range(len(TOKENS)))
        assert list(again) == batches == sampler.epoch_batches(epoch)
        epochs.append(batches)
    assert epochs[0] != epochs[1] != epochs[2]
    if tokens is None:
        assert [len(b) for b in epochs[0]] == [4, 4, 4, 1]


def test_token_bounded_batches_stay_within_the_budget_and_an_oversized_pair_is_alone():
    batches = token_bounded_batches(TOKENS, BUDGET, seed=0)
    assert _flat(batches) == list(range(len(TOKENS)))
    assert [10] in batches
    for batch in batches:
        if batch != [10]:
            assert sum(TOKENS[i] for i in batch) <= BUDGET
    # Greedy: no batch could have taken the first pair of the next one (pairs are taken shortest first).
    for batch, following in zip(batches, batches[1:]):
        assert sum(TOKENS[i] for i in batch) + TOKENS[following[0]] > BUDGET
    assert token_bounded_batches(TOKENS, BUDGET, seed=0) == batches


@pytest.mark.parametrize("tokens", [None, TOKENS], ids=["fixed", "tokens"])
@pytest.mark.parametrize("replicas", [2, 3])
def test_ranks_take_disjoint_equal_shares_of_the_epoch(tokens, replicas):
    options = dict(num_pairs=len(TOKENS), seed=1, pair_tokens=tokens, max_tokens=None if tokens is None else BUDGET)
    whole = PairBatchSampler(None, 2, **options)
    ranks = [PairBatchSampler(None, 2, num_replicas=replicas, rank=r, **options) for r in range(replicas)]
    for sampler in [whole, *ranks]:
        sampler.set_epoch(4)
    shares = [list(r) for r in ranks]
    assert len({len(s) for s in shares}) == 1 and all(len(s) == len(r) for s, r in zip(shares, ranks))
    # Step s consumes batches s*W .. s*W + W-1 of the epoch's list; only the padding repeats batches.
    served = [shares[r][s] for s in range(len(shares[0])) for r in range(replicas)]
    expected = list(whole)
    assert served[:len(expected)] == expected
    assert served[len(expected):] == expected[:len(served) - len(expected)]


def test_a_distributed_sampler_from_lightning_gives_the_rank():
    injected = torch.utils.data.DistributedSampler(range(6), num_replicas=2, rank=1, shuffle=True)
    sampler = PairBatchSampler(injected, 2, num_pairs=6, seed=0)
    assert (sampler.num_replicas, sampler.rank) == (2, 1)
    assert isinstance(sampler.sampler, type(PairBatchSampler(None, 2, num_pairs=6).sampler))  # own order kept


def test_resume_state_skips_the_batches_done_once():
    sampler = PairBatchSampler(None, 2, num_pairs=10, seed=0)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.load_state_dict({"epoch": 2, "batches_done": 3})
    assert list(sampler) == full[3:]
    assert sampler.state_dict() == {"epoch": 2, "batches_done": 5, "batch_size": 2, "max_tokens": None}
    assert list(sampler) == full  # the state applied to one iterator only
    sampler.load_state_dict({"epoch": 1, "batches_done": 3})  # an earlier epoch's position: nothing to skip
    assert list(sampler) == full


def test_max_tokens_per_batch_must_be_a_positive_integer():
    with pytest.raises(ConfigError, match=r"data\.max_tokens_per_batch=0"):
        PreferenceDataModule(tokenizer="tiny-llama", max_tokens_per_batch=0)


def test_datamodule_serves_token_bounded_batches():
    data = PreferenceDataModule(tokenizer="tiny-llama", limit_train_pairs=10, val_split=None, max_tokens_per_batch=200)
    loader = data.train_dataloader()
    tokens = {i: int(n) for i, n in enumerate(torch.tensor([len(p) + len(c) + len(r) for p, c, r in zip(
        data.train_pairs.prompt_ids, data.train_pairs.chosen_ids, data.train_pairs.rejected_ids)]))}
    batches = [b["pair_index"].tolist() for b in loader]
    assert len(batches) == len(loader) and _flat(batches) == list(range(10))
    assert all(sum(tokens[i] for i in b) <= 200 for b in batches)
    assert max(len(b) for b in batches) > 1


def test_a_budget_smaller_than_a_pair_is_refused_naming_the_option_and_the_pair():
    data = PreferenceDataModule(tokenizer="tiny-llama", limit_train_pairs=10, val_split=None, max_tokens_per_batch=3)
    data.setup("fit")
    tokens = [len(p) + len(c) + len(r) for p, c, r in zip(
        data.train_pairs.prompt_ids, data.train_pairs.chosen_ids, data.train_pairs.rejected_ids)]
    longest = max(tokens)
    expected = (rf"data\.max_tokens_per_batch=3 is smaller than the longest training pair \({longest} tokens.*"
                rf"pair_index {tokens.index(longest)}\).*at least {longest}.*data\.on_over_budget=drop")
    with pytest.raises(ConfigError, match=expected):
        data.train_dataloader()


def _pairs_file(path, count=8):
    """``count`` pairs whose prompts grow by a word each (so their token counts differ)."""
    rows = [{"prompt": "Count: " + " ".join(["one"] * (i + 1)), "chosen": str(i + 1), "rejected": str(i + 2)}
            for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_over_budget_pairs_are_dropped_and_counted_only_when_asked(tmp_path):
    path = _pairs_file(tmp_path / "pairs.jsonl")
    options = dict(tokenizer="tiny-llama", source="json", data_files={"train": path, "test": path}, batch_size=2)
    whole = PreferenceDataModule(**options)
    whole.setup("fit")
    tokens = pair_token_counts(whole.train_pairs)
    budget = sorted(tokens)[len(tokens) // 2]
    within = [i for i, n in enumerate(tokens) if n <= budget]
    assert 0 < len(within) < len(tokens)
    with pytest.raises(ConfigError, match=r"data\.on_over_budget=drop"):  # the default refuses
        PreferenceDataModule(**options, max_tokens_per_batch=budget).train_dataloader()
    with pytest.raises(ConfigError, match=r"data\.on_over_budget='skip' is not an option"):
        PreferenceDataModule(**options, max_tokens_per_batch=budget, on_over_budget="skip")

    data = PreferenceDataModule(**options, max_tokens_per_batch=budget, on_over_budget="drop")
    batches = [b["pair_index"].tolist() for b in data.train_dataloader()]
    assert data.train_pairs.row_index == within  # the rest were dropped, and pair_index counts the kept ones
    assert data.stats["train"]["dropped"] == {"over_budget": len(tokens) - len(within)}
    assert _flat(batches) == list(range(len(within)))
    assert all(sum(tokens[within[i]] for i in batch) <= budget for batch in batches)
    assert len(data.val_pairs) == len(tokens) and data.stats["val"]["dropped"] == {}  # validation keeps every pair

    # A budget below every pair leaves nothing to train on: refused, saying why and what to raise.
    empty = PreferenceDataModule(**options, max_tokens_per_batch=3, on_over_budget="drop")
    with pytest.raises(DataError, match=rf"no usable pairs left .*over_budget={len(tokens)}.*"
                                        r"raise data\.max_tokens_per_batch"):
        empty.setup("fit")


@pytest.mark.parametrize("saved,now,option", [
    (dict(batch_size=2), dict(batch_size=3), r"data\.batch_size is 3 but the checkpoint was saved with "
                                              r"data\.batch_size=2"),
    (dict(max_tokens=200), dict(max_tokens=150), r"data\.max_tokens_per_batch is 150 .* "
                                                  r"data\.max_tokens_per_batch=200"),
    (dict(), dict(max_tokens=200), r"data\.max_tokens_per_batch is 200 .* data\.max_tokens_per_batch=None"),
])
def test_resuming_with_other_batch_options_is_refused(saved, now, option):
    def sampler(batch_size=2, max_tokens=None):
        return PairBatchSampler(None, batch_size, num_pairs=len(TOKENS), seed=0, max_tokens=max_tokens,
                                pair_tokens=TOKENS if max_tokens else None)

    state = sampler(**saved).state_dict()
    with pytest.raises(ConfigError, match=option):
        sampler(**now).load_state_dict(state)
    loader = ResumableDataLoader(range(len(TOKENS)), batch_sampler=sampler(**now))
    with pytest.raises(ConfigError, match=option):
        loader.load_state_dict(state)
    sampler(**saved).load_state_dict(state)  # the same options resume
    old = {k: v for k, v in state.items() if k in ("epoch", "batches_done")}  # a state without them: nothing to check
    sampler(**now).load_state_dict(old)


# ------------------------------------------------------------------------------------------ resume in a Trainer


class _Record(Callback):
    """Every training batch in order: (global step after it, batch_idx, pair indices, loss)."""

    def __init__(self):
        self.batches = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.batches.append((trainer.global_step, batch_idx, batch["pair_index"].tolist(), float(outputs["loss"])))


def _run(root, steps, data_options, callbacks=(), ckpt_path=None, accumulate=1):
    pl.seed_everything(0)
    module = IntermediateDPO(**make_module_kwargs(hf_output_dir=str(root / "hf")),
                             optimizer=lambda params: torch.optim.AdamW(params, lr=2e-2))
    data = PreferenceDataModule(tokenizer="tiny-llama", val_split=None, **data_options)
    record = _Record()
    checkpoints = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=-1)
    trainer = make_trainer(steps, [record, checkpoints, *callbacks], enable_checkpointing=True,
                           default_root_dir=str(root), accumulate_grad_batches=accumulate)
    try:
        trainer.fit(module, data, ckpt_path=ckpt_path)
    except RuntimeError as error:
        assert "simulated crash" in str(error)
    if "packing" in data_options:
        assert data.packing_mode == data_options["packing"]  # the batches were laid out in that mode
    return record.batches


def _resume_matches(tmp_path, data_options, steps, crash_at, accumulate=1):
    """Whole run, a run crashing at ``crash_at``, and its resume from the last checkpoint before the crash."""
    whole = _run(tmp_path / "whole", steps, data_options, accumulate=accumulate)
    _run(tmp_path / "crashed", steps, data_options, [Crash(crash_at)], accumulate=accumulate)
    saved = crash_at - 1  # the step-`crash_at` checkpoint is written after the crash callback ran
    path = next((tmp_path / "crashed" / "ckpt").glob(f"*-step={saved}.ckpt"))
    state, = torch.load(path, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    per_epoch = len({b[1] for b in whole})
    epoch, done = divmod(saved * accumulate, per_epoch)
    options = {"batch_size": data_options.get("batch_size", 8), "max_tokens": data_options.get("max_tokens_per_batch")}
    if done:  # a mid-epoch checkpoint
        assert state == {"epoch": epoch, "batches_done": done, **options}
    else:  # written after the last batch of an epoch: the whole epoch is done
        assert state == {"epoch": epoch - 1, "batches_done": per_epoch, **options}
    resumed = _run(tmp_path / "resumed", steps, data_options, ckpt_path=str(path), accumulate=accumulate)
    expected = whole[saved * accumulate:]
    assert [b[:3] for b in resumed] == [b[:3] for b in expected]  # steps, batch indices, pairs
    # Bit-equal: same batches, weights and optimiser state restored exactly, one deterministic CPU thread.
    assert [b[3] for b in resumed] == [b[3] for b in expected]
    assert expected[0][3] != pytest.approx(whole[0][3], abs=1e-4)  # it continued, not restarted


PACKINGS = ["none", "padding_free", "prefix_shared"]
# Lightning warns when it resumes mid-epoch with a loader it cannot restore; ours must not be one.
pytestmark = pytest.mark.filterwarnings("error:You're resuming from a checkpoint that ended before the epoch")


@pytest.mark.slow
@pytest.mark.parametrize("packing", PACKINGS)
def test_resume_mid_epoch_fixed_size_batches(tmp_path, packing):
    # 10 pairs in batches of 2: 5 steps per epoch; the step-7 checkpoint is 2 batches into epoch 1.
    _resume_matches(tmp_path, dict(limit_train_pairs=10, batch_size=2, packing=packing), steps=11, crash_at=8)


@pytest.mark.slow
@pytest.mark.parametrize("packing", PACKINGS)
def test_resume_mid_epoch_token_bounded_batches(tmp_path, packing):
    # About 65 tokens a pair: batches of 2 or 3 pairs, 4 per epoch; the step-6 checkpoint is inside epoch 1.
    _resume_matches(tmp_path, dict(limit_train_pairs=10, max_tokens_per_batch=200, packing=packing),
                    steps=10, crash_at=7)


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", [8, 6], ids=["mid-epoch", "epoch-end"])
def test_resume_with_a_loader_worker(tmp_path, crash_at):
    # A worker takes its first batches when the loader's iterator is made, before Lightning's set_epoch:
    # the resumed loader must already be on the checkpoint's epoch (step 7: 2 batches into epoch 1), or on
    # the next one when the checkpoint closed its epoch (step 5: the end of epoch 0).
    _resume_matches(tmp_path, dict(limit_train_pairs=10, batch_size=2, num_workers=1), steps=11, crash_at=crash_at)


@pytest.mark.slow
def test_resume_mid_epoch_with_gradient_accumulation(tmp_path):
    # 4 batches per epoch, two per optimiser step: the checkpoint after step 3 holds 6 batches, 2 into epoch 1.
    _resume_matches(tmp_path, dict(limit_train_pairs=8, batch_size=2), steps=6, crash_at=4, accumulate=2)


@pytest.mark.slow
def test_ddp_ranks_share_each_epochs_token_bounded_batches(tmp_path):
    """Two DDP processes (Lightning re-creates the batch sampler with its distributed sampler): every step,
    the ranks take consecutive batches of the single-process epoch list, so each epoch is served once."""
    pairs, budget, steps = 10, 200, 6
    ranks, _ = _launch(tmp_path, "ddp", "--pairs", str(pairs), "--max_tokens_per_batch", str(budget),
                       "--steps", str(steps))
    data = PreferenceDataModule(tokenizer="tiny-llama", limit_train_pairs=pairs, val_split=None,
                                max_tokens_per_batch=budget)
    single = data.train_dataloader().batch_sampler
    per_rank = ranks[0]["batches_per_epoch"]
    assert per_rank == ranks[1]["batches_per_epoch"] == len(single) // 2 and len(single) % 2 == 0
    assert [len(r["pair_index"]) for r in ranks] == [steps, steps]
    for epoch in range(steps // per_rank):
        served = [ranks[r]["pair_index"][epoch * per_rank + s] for s in range(per_rank) for r in (0, 1)]
        assert served == single.epoch_batches(epoch)
