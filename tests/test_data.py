"""PreferenceDataModule: formats, templating, truncation, bad rows, collation, loaders, Hub path.

Expected token ids are built independently: ChatML text written out by hand for SmolLM2's template,
tokenised with the real tokenizer, rather than through the code under test.
"""

import copy
import json
import logging

import pytest
import torch

from lit_idpo import data as data_mod
from lit_idpo.data import BadRowError, PreferenceCollator, PreferenceDataModule, tokenize_rows
from lit_idpo.models import load_tokenizer

TOK = "embedded:smollm2-135m-instruct"
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

STANDARD = [
    {"prompt": "What is 2 + 2?", "chosen": "2 + 2 = 4.", "rejected": "2 + 2 = 5."},
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven, probably."},
    {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
]


def as_conversational(row):
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}]}


def as_implicit(row):
    user = {"role": "user", "content": row["prompt"]}
    # UltraFeedback also stores a string prompt column; the implicit format ignores it.
    return {"prompt": "ignored " + row["prompt"], "chosen": [user, {"role": "assistant", "content": row["chosen"]}],
            "rejected": [user, {"role": "assistant", "content": row["rejected"]}]}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TOK)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def chatml_prompt(user, system=SYSTEM):
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def expected_pair(tok, row):
    """(prompt ids, chosen ids, rejected ids) for a standard row, from hand-written ChatML."""
    return (ids(tok, chatml_prompt(row["prompt"])), ids(tok, row["chosen"] + "<|im_end|>"),
            ids(tok, row["rejected"] + "<|im_end|>"))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def module(source, **kw):
    kw.setdefault("val_split", None)
    return PreferenceDataModule(TOK, source=str(source), **kw)


def pairs_of(dm, split="train"):
    pairs = dm.train_pairs if split == "train" else dm.val_pairs
    return [(pairs[i]["prompt_ids"], pairs[i]["chosen_ids"], pairs[i]["rejected_ids"]) for i in range(len(pairs))]


# ------------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize("suffix", ["jsonl", "json", "parquet", "csv"])
def test_standard_format_from_each_file_type(tmp_path, tok, suffix):
    path = tmp_path / f"pairs.{suffix}"
    if suffix == "jsonl":
        write_jsonl(path, STANDARD)
    elif suffix == "json":
        path.write_text(json.dumps(STANDARD))
    else:
        import pandas as pd

        frame = pd.DataFrame(STANDARD)
        frame.to_parquet(path) if suffix == "parquet" else frame.to_csv(path, index=False)
    dm = module(path)
    dm.setup("fit")
    assert dm.stats["train"]["format"] == "standard"
    assert pairs_of(dm) == [expected_pair(tok, r) for r in STANDARD]


def test_all_formats_give_the_same_tokens(tmp_path, tok):
    results = {}
    for fmt, convert in (("standard", dict), ("conversational", as_conversational), ("implicit", as_implicit)):
        path = tmp_path / f"{fmt}.parquet"
        import datasets

        datasets.Dataset.from_list([convert(r) for r in STANDARD]).to_parquet(str(path))
        for requested in ("auto", fmt):
            dm = module(path, format=requested)
            dm.setup("fit")
            assert dm.stats["train"]["format"] == fmt
            results[fmt, requested] = pairs_of(dm)
    expected = [expected_pair(tok, r) for r in STANDARD]
    assert all(v == expected for v in results.values())


def test_multi_turn_conversations_and_implicit_prefix(tmp_path, tok):
    system = {"role": "system", "content": "Be terse."}
    turns = [system, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "2 + 3?"}]
    row = {"chosen": turns + [{"role": "assistant", "content": "5"}],
           "rejected": turns + [{"role": "assistant", "content": "6"}]}
    dm = module(write_jsonl(tmp_path / "p.jsonl", [row]))
    dm.setup("fit")
    assert dm.stats["train"]["format"] == "implicit"
    (prompt, chosen, rejected), = pairs_of(dm)
    text = ("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            "Hello.<|im_end|>\n<|im_start|>user\n2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    assert prompt == ids(tok, text)
    assert chosen == ids(tok, "5<|im_end|>") and rejected == ids(tok, "6<|im_end|>")


def test_template_prefix_bos_and_eos_with_real_tokenizer(tmp_path, tok):
    dm = module(write_jsonl(tmp_path / "p.jsonl", [as_conversational(r) for r in STANDARD]))
    dm.setup("fit")
    for row, (prompt, chosen, rejected) in zip(STANDARD, pairs_of(dm)):
        messages = as_conversational(row)
        full = ids(tok, tok.apply_chat_template(messages["prompt"] + messages["chosen"], tokenize=False))
        generation_prompt = ids(tok, tok.apply_chat_template(messages["prompt"], add_generation_prompt=True,
                                                             tokenize=False))
        assert full[: len(generation_prompt)] == generation_prompt == prompt  # the prefix property
        # The template's newline after <|im_end|> is the only thing left out of the sequence.
        assert full == prompt + chosen + ids(tok, "\n")
        assert prompt[0] == tok.bos_token_id and prompt[1] != tok.bos_token_id  # one BOS
        assert tok.decode(chosen) == row["chosen"] + "<|im_end|>"
        assert tok.decode(rejected) == row["rejected"] + "<|im_end|>"
        assert chosen[-1] == rejected[-1] == tok.eos_token_id
        assert tok.eos_token_id not in chosen[:-1]


class BosAddingTokenizer:
    """The real tokenizer, but putting BOS in front by itself, as Llama's does (optionally no template)."""

    def __init__(self, tok, template=True):
        self.tok = tok
        self.chat_template = tok.chat_template if template else None
        self.bos_token_id, self.eos_token_id, self.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id

    def __call__(self, text, add_special_tokens=True):
        out = self.tok(text, add_special_tokens=False)
        if add_special_tokens:
            lead = [self.bos_token_id]
            ids = out["input_ids"]
            out["input_ids"] = [lead + x for x in ids] if isinstance(text, list) else lead + ids
        return out

    def apply_chat_template(self, *args, **kwargs):
        return self.tok.apply_chat_template(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tok.decode(*args, **kwargs)


def test_no_double_bos_when_tokenizer_adds_bos_and_template_has_it(tok):
    pairs, _ = tokenize_rows(STANDARD, BosAddingTokenizer(tok))
    assert [(pairs[i]["prompt_ids"], pairs[i]["chosen_ids"], pairs[i]["rejected_ids"]) for i in range(3)] == \
        [expected_pair(tok, r) for r in STANDARD]


def test_plain_text_without_template(tok):
    bos, eos = tok.bos_token_id, tok.eos_token_id
    rows = [{"prompt": "Q: 2 + 2?\nA:", "chosen": " 4", "rejected": " 5"}]
    for tokenizer, lead in ((BosAddingTokenizer(tok, template=False), [bos]), (_no_template(tok), [])):
        pairs, stats = tokenize_rows(rows, tokenizer)
        assert pairs[0]["prompt_ids"] == lead + ids(tok, "Q: 2 + 2?\nA:")
        assert pairs[0]["chosen_ids"] == ids(tok, " 4") + [eos]
        assert pairs[0]["rejected_ids"] == ids(tok, " 5") + [eos]
        assert stats.format == "standard"
    with pytest.raises(ValueError, match="no chat template"):
        tokenize_rows([as_conversational(STANDARD[0])], _no_template(tok))


def _no_template(tok):
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    return plain


# ------------------------------------------------------------------------------------------ truncation


def test_too_long_pairs_are_dropped_and_counted(tmp_path, tok, caplog):
    rows = [{"prompt": "Hi", "chosen": "Hello there, friend." * k, "rejected": "Go."} for k in (1, 2, 4, 8)]
    prompt_len = len(ids(tok, chatml_prompt("Hi")))
    lengths = [prompt_len + len(ids(tok, r["chosen"] + "<|im_end|>")) for r in rows]
    max_length = lengths[2]  # the first three fit exactly or below, the last does not
    dm = module(write_jsonl(tmp_path / "p.jsonl", rows), max_length=max_length)
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    assert len(dm.train_pairs) == 3 and dm.train_pairs.row_index == [0, 1, 2]
    assert dm.stats["train"]["dropped"] == {"too_long": 1}
    assert dm.stats["train"]["max_tokens"] == max_length
    assert "too_long=1" in caplog.text and "3 pairs kept from 4 rows" in caplog.text
    # Completions are never cut.
    assert [len(p) + len(c) for p, c, _ in pairs_of(dm)] == lengths[:3]


def test_long_prompts_keep_bos_and_their_end(tmp_path, tok):
    row = {"prompt": "word " * 40 + "end?", "chosen": "Yes.", "rejected": "No."}
    full_prompt = ids(tok, chatml_prompt(row["prompt"]))
    dm = module(write_jsonl(tmp_path / "p.jsonl", [row, STANDARD[2]]), max_prompt_length=20)
    dm.setup("fit")
    (prompt, chosen, _), (short_prompt, _, _) = pairs_of(dm)
    assert prompt == [tok.bos_token_id] + full_prompt[-19:]
    assert short_prompt == [tok.bos_token_id] + ids(tok, chatml_prompt("Say hi."))[-19:]
    assert dm.stats["train"]["prompt_truncated"] == 2  # both prompts are longer than 20 tokens (system prompt)
    assert chosen == ids(tok, "Yes.<|im_end|>")


def test_empty_split_after_filtering_is_an_error(tmp_path):
    dm = module(write_jsonl(tmp_path / "p.jsonl", STANDARD), max_length=5)
    with pytest.raises(ValueError, match="no usable pairs left.*too_long=3"):
        dm.setup("fit")


# ------------------------------------------------------------------------------------------ bad rows

GOOD = STANDARD[0]
USER = {"role": "user", "content": "Hi"}
BAD_ROWS = [
    # (row, reason, field)
    ({"chosen": "a", "rejected": "b"}, "missing_field", "prompt"),
    ({"prompt": "p", "chosen": "a"}, "missing_field", "rejected"),
    ({"prompt": "p", "chosen": "a", "rejected": None}, "missing_field", "rejected"),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "wrong_type", "prompt"),
    ({"prompt": "p", "chosen": "a", "rejected": ["b"]}, "wrong_type", "rejected"),
    ({"prompt": "p", "chosen": "  ", "rejected": "b"}, "empty_completion", "chosen"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "empty_prompt", "prompt"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "identical_completions", "chosen/rejected"),
    ({"prompt": "p", "rejected": "b"}, "missing_field", "chosen"),
    ({"prompt": "p", "chosen": 7, "rejected": "b"}, "wrong_type", "chosen"),
]
CONV_BAD_ROWS = [
    ({"prompt": [USER], "chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "assistant",
                                                                                     "content": "b"}]},
     "bad_roles", "chosen[0].role"),
    ({"prompt": [USER], "chosen": [{"role": "assistant"}], "rejected": [{"role": "assistant", "content": "b"}]},
     "wrong_type", "chosen[0].content"),
    ({"prompt": [USER], "chosen": [], "rejected": [{"role": "assistant", "content": "b"}]},
     "empty_completion", "chosen"),
    ({"prompt": [USER], "chosen": ["a"], "rejected": [{"role": "assistant", "content": "b"}]},
     "wrong_type", "chosen[0]"),
    ({"prompt": [USER], "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]},
     "wrong_type", "chosen"),
]
IMPLICIT_BAD_ROWS = [
    ({"chosen": [USER, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "Other"}, {"role": "assistant", "content": "b"}]},
     "no_shared_prompt", "chosen/rejected"),
    ({"chosen": [USER], "rejected": [USER, {"role": "assistant", "content": "b"}]}, "empty_completion", "chosen"),
    ({"chosen": [USER, {"role": "assistant", "content": "a"}], "rejected": [USER, {"role": "assistant",
                                                                                 "content": "a"}]},
     "identical_completions", "chosen/rejected"),
    ({"chosen": [USER, {"role": "assistant", "content": ""}], "rejected": [USER, {"role": "assistant",
                                                                                "content": "b"}]},
     "empty_completion", "chosen"),
]
CASES = ([("standard", *c) for c in BAD_ROWS] + [("conversational", *c) for c in CONV_BAD_ROWS]
         + [("implicit", *c) for c in IMPLICIT_BAD_ROWS])


def _good(fmt):
    return {"standard": GOOD, "conversational": as_conversational(GOOD), "implicit": as_implicit(GOOD)}[fmt]


@pytest.mark.parametrize("fmt, row, reason, field", CASES)
def test_bad_row_errors_name_row_and_field(fmt, row, reason, field, tok):
    rows = [_good(fmt), row, _good(fmt)]
    with pytest.raises(BadRowError) as info:
        tokenize_rows(rows, tok, format="auto" if fmt == "standard" else fmt)
    assert info.value.reason == reason and info.value.field == field
    message = str(info.value)
    assert "row 1 (0-based" in message and "data.on_bad_row=skip" in message
    # The field is named ("fields 'chosen' and 'rejected'" for the pair); a missing one is never called empty.
    assert f"field {field!r}" in message or all(f"'{part}'" in message for part in field.split("/"))
    if reason == "missing_field":
        assert ("is missing" in message or "is null" in message) and "empty" not in message


@pytest.mark.parametrize("fmt, row, reason, field", CASES)
def test_bad_rows_skipped_and_counted(fmt, row, reason, field, tok):
    rows = [_good(fmt), row, _good(fmt)]
    pairs, stats = tokenize_rows(rows, tok, format=fmt, on_bad_row="skip")
    assert len(pairs) == 2 and pairs.row_index == [0, 2]
    assert stats.dropped == {reason: 1} and stats.rows_read == 3


def test_prompt_not_prefix_is_a_bad_row(tok):
    odd = copy.deepcopy(tok)
    # A template that names the assistant differently in the generation prompt than in a finished turn.
    odd.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>bot\n{% endif %}")
    with pytest.raises(BadRowError, match="row 0 .*field 'chosen'.*not a prefix"):
        tokenize_rows(STANDARD, odd)
    pairs, stats = tokenize_rows(STANDARD, odd, on_bad_row="skip")
    assert stats.dropped == {"prompt_not_prefix": 3}


def test_completions_with_identical_tokens_are_a_bad_row(tok):
    trimming = copy.deepcopy(tok)
    trimming.chat_template = tok.chat_template.replace("message['content']", "message['content'] | trim")
    rows = [{"prompt": "p", "chosen": "Same.", "rejected": "Same.  "}]
    with pytest.raises(BadRowError, match="row 0 .*fields 'chosen' and 'rejected'.*same tokens"):
        tokenize_rows(rows, trimming)
    assert tokenize_rows(rows, trimming, on_bad_row="skip")[1].dropped == {"identical_completions": 1}


def test_first_row_bad_in_skip_mode_still_detects_format(tmp_path, tok):
    rows = [{"prompt": "p"}] + [as_conversational(r) for r in STANDARD]
    dm = module(write_jsonl(tmp_path / "p.jsonl", rows), on_bad_row="skip")
    dm.setup("fit")
    assert dm.stats["train"]["format"] == "conversational"
    assert dm.stats["train"]["dropped"] == {"missing_field": 1} and len(dm.train_pairs) == 3


# ------------------------------------------------------------------------------------------ collation


def test_collator_right_and_left_padding():
    examples = [
        {"pair_index": 5, "prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 4, 4]},
        {"pair_index": 2, "prompt_ids": [7], "chosen_ids": [8, 8], "rejected_ids": [9]},
    ]
    right = PreferenceCollator(pad_token_id=0)(examples)
    assert right["input_ids"].tolist() == [[1, 2, 3, 0, 0], [7, 8, 8, 0, 0], [1, 2, 4, 4, 4], [7, 9, 0, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert right["completion_mask"].tolist() == [[0, 0, 1, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert right["pair_index"].tolist() == [5, 2]
    left = PreferenceCollator(pad_token_id=0, padding_side="left")(examples)
    assert left["input_ids"].tolist() == [[0, 0, 1, 2, 3], [0, 0, 7, 8, 8], [1, 2, 4, 4, 4], [0, 0, 0, 7, 9]]
    assert left["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]
    assert left["completion_mask"].tolist() == [[0, 0, 0, 0, 1], [0, 0, 0, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]]
    for batch in (right, left):
        assert all(v.dtype == torch.long for v in batch.values())


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batches_from_the_module(tmp_path, tok, padding_side):
    rows = STANDARD * 2
    dm = module(write_jsonl(tmp_path / "p.jsonl", rows), batch_size=4, padding_side=padding_side)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert [b["pair_index"].shape[0] for b in batches] == [4, 2]
    seen = []
    for batch in batches:
        n = batch["pair_index"].shape[0]
        width = batch["input_ids"].shape[1]
        for key in ("input_ids", "attention_mask", "completion_mask"):
            assert batch[key].shape == (2 * n, width) and batch[key].dtype == torch.long
        for i, pair in enumerate(batch["pair_index"].tolist()):
            seen.append(pair)
            prompt, chosen, rejected = expected_pair(tok, rows[pair])
            for row, completion in ((i, chosen), (n + i, rejected)):  # chosen first, then rejected
                seq = prompt + completion
                pad = width - len(seq)
                lead, tail = (pad, 0) if padding_side == "left" else (0, pad)
                assert batch["input_ids"][row].tolist() == [tok.pad_token_id] * lead + seq + [tok.pad_token_id] * tail
                assert batch["attention_mask"][row].tolist() == [0] * lead + [1] * len(seq) + [0] * tail
                assert batch["completion_mask"][row].tolist() == \
                    [0] * (lead + len(prompt)) + [1] * len(completion) + [0] * tail
                masked = batch["input_ids"][row][batch["completion_mask"][row].bool()]
                completion = rows[pair]["chosen"] if row < n else rows[pair]["rejected"]
                assert tok.decode(masked) == completion + "<|im_end|>"
    assert sorted(seen) == list(range(len(rows)))


def test_train_order_is_seeded_and_val_is_in_order(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(16)])

    def order(seed, loader="train_dataloader"):
        dm = module(path, batch_size=4, seed=seed)
        dm.setup("fit")
        return [p for b in getattr(dm, loader)() for p in b["pair_index"].tolist()]

    assert order(0) == order(0) != order(1)
    assert sorted(order(0)) == list(range(16)) and order(0) != list(range(16))


def test_bundled_default_setup_is_idempotent_and_limits(caplog):
    dm = PreferenceDataModule(TOK, batch_size=2, limit_val_pairs=10)
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    train, val = dm.train_pairs, dm.val_pairs
    dm.setup("fit")
    dm.setup("validate")
    assert dm.train_pairs is train and dm.val_pairs is val
    assert len(train) == 2000 and len(val) == 10
    assert dm.stats["val"]["stopped_at_limit"] and dm.stats["val"]["rows_read"] == 10
    assert caplog.text.count("lit-idpo data:") == 2  # one line per split
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and batch["pair_index"].tolist() == [0, 1]


def test_limit_counts_skipped_rows_only_up_to_the_limit(tmp_path):
    rows = [STANDARD[0], {"prompt": "p"}, STANDARD[1], {"prompt": "p"}, STANDARD[2]]
    dm = module(write_jsonl(tmp_path / "p.jsonl", rows), on_bad_row="skip", limit_train_pairs=2)
    dm.setup("fit")
    stats = dm.stats["train"]
    assert stats["pairs"] == 2 and stats["rows_read"] == 3 and stats["dropped"] == {"missing_field": 1}
    assert stats["stopped_at_limit"]


# ------------------------------------------------------------------------------------------ sources


def test_hub_source_calls_load_dataset_with_id_and_splits(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, data_files=None, split=None, **kwargs):
        calls.append((path, name, data_files, split))
        return [as_implicit(r) for r in STANDARD]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dm = PreferenceDataModule(TOK, source="HuggingFaceH4/ultrafeedback_binarized", train_split="train_prefs",
                              val_split="test_prefs")
    dm.setup("fit")
    assert calls == [("HuggingFaceH4/ultrafeedback_binarized", None, None, "train_prefs"),
                     ("HuggingFaceH4/ultrafeedback_binarized", None, None, "test_prefs")]
    assert dm.stats["train"]["format"] == dm.stats["val"]["format"] == "implicit"
    assert dm.stats["train"]["source_split"] == "train_prefs"


def test_local_directory_with_split_files(tmp_path, monkeypatch, tok):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "prefs"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", STANDARD[:2])
    write_jsonl(folder / "test.jsonl", STANDARD[2:])
    dm = PreferenceDataModule(TOK, source=str(folder), train_split="train", val_split="test")
    dm.setup("fit")
    assert pairs_of(dm) == [expected_pair(tok, r) for r in STANDARD[:2]]
    assert pairs_of(dm, "val") == [expected_pair(tok, STANDARD[2])]


def test_source_and_argument_errors(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", STANDARD)
    with pytest.raises(ValueError, match="single file.*val_split: null"):
        PreferenceDataModule(TOK, source=str(path), val_split="test").setup("fit")
    with pytest.raises(ValueError, match="'.txt' are not supported"):
        (tmp_path / "p.txt").write_text("x")
        PreferenceDataModule(TOK, source=str(tmp_path / "p.txt"), val_split=None).setup("fit")
    with pytest.raises(ValueError, match="bundled:arithmetic has no split 'validation'"):
        PreferenceDataModule(TOK, val_split="validation").setup("validate")
    with pytest.raises(ValueError, match="format='xml'"):
        PreferenceDataModule(TOK, format="xml")
    with pytest.raises(ValueError, match="batch_size=0"):
        PreferenceDataModule(TOK, batch_size=0)
    with pytest.raises(ValueError, match="max_prompt_length=64 must be smaller than data.max_length=64"):
        PreferenceDataModule(TOK, max_length=64, max_prompt_length=64)
    with pytest.raises(ValueError, match=r"broken.jsonl, line 2: invalid JSON \(Expecting property name"):
        (tmp_path / "broken.jsonl").write_text(json.dumps(STANDARD[0]) + "\n{oops\n")
        PreferenceDataModule(TOK, source=str(tmp_path / "broken.jsonl"), val_split=None).setup("fit")


# ------------------------------------------------------------------------------------------ Lightning


def test_trainer_runs_on_the_module_without_val_split(tmp_path):
    # val_dataloader() returns [] then; Lightning warns that it is empty and skips validation.
    import lightning.pytorch as pl

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.shapes, self.val_shapes = [], []

        def training_step(self, batch, batch_idx):
            self.shapes.append(tuple(batch["input_ids"].shape))
            return (self.weight * batch["completion_mask"].sum()).sum()

        def validation_step(self, batch, batch_idx):
            self.val_shapes.append(tuple(batch["input_ids"].shape))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = module(write_jsonl(tmp_path / "p.jsonl", STANDARD), batch_size=2)
    probe = Probe()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         num_sanity_val_steps=0)
    trainer.fit(probe, datamodule=dm)
    assert [s[0] for s in probe.shapes] == [4, 2] and probe.val_shapes == []  # val_split null: no validation


def test_cli_help_shows_documented_arguments():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(PreferenceDataModule, "data")
    help_text = parser.format_help()
    for name in ("--data.tokenizer", "--data.source", "--data.on_bad_row", "--data.max_prompt_length"):
        assert name in help_text
    assert "never cut" in help_text and "ultrafeedback_binarized" in help_text
    assert data_mod.FORMATS[0] == "auto"
