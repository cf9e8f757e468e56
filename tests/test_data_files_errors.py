"""Bad local files named the ``datasets`` way (``data.source: json`` / ``csv`` / ``parquet`` or a directory, with
``data.data_files`` as a file, a list or a split -> files mapping) get the same one-line errors as the same files
given as ``data.source``: naming the file and the line (or data row) and the field.

Most cases run the real ``lit-idpo`` entry point (:func:`lit_idpo.cli.main`: argument parsing, Lightning's fit,
the error wrapper) in this process, which is quick; a few run it in a fresh interpreter, as a user does.
Every expected message is written out here (byte offsets and line numbers counted from the bytes written).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_data_errors import GOOD, ROOT, assert_user_error, jsonl, run_fit

from lit_idpo import cli
from lit_idpo.data import load_split
from lit_idpo.errors import UserError

NO_REJECTED = {"prompt": "Why?", "chosen": "Because."}


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    # CSV and Parquet files are parsed by datasets, which caches what it builds: keep that out of the home folder.
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.delenv("LIT_IDPO_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["lit-idpo"])


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def good_jsonl(tmp_path: Path, name: str = "good.jsonl") -> Path:
    return jsonl(tmp_path / name, json.dumps(GOOD))


def parquet(path: Path, rejected) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(rejected)
    pq.write_table(pa.table({"prompt": ["What?"] * n, "chosen": ["a"] * n, "rejected": rejected}), path)
    return path


def option(value) -> str:
    """A data.data_files value as typed on the command line (a list or a mapping in JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def run_cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """``lit-idpo *args`` in this process, as the result of a child process (for ``assert_user_error``)."""
    code = 0
    try:
        cli.main(list(args))
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["lit-idpo", *args], code, captured.out, captured.err)


def fit(capsys, tmp_path: Path, source: str, data_files, val_split=None) -> subprocess.CompletedProcess:
    return run_cli(capsys, "fit", "--config", str(ROOT / "configs" / "tiny.yaml"), "--trainer.max_steps", "1",
                   "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "runs"),
                   "--data.source", source, "--data.data_files", option(data_files),
                   "--data.val_split", val_split or "null")


def evaluate(capsys, tmp_path: Path, source: str, data_files, split: str) -> subprocess.CompletedProcess:
    return run_cli(capsys, "evaluate", "--model", "a=tiny-llama", "--model", "b=tiny-gpt2", "--output_dir",
                   str(tmp_path / "out"), "--no_progress", "--data.source", source,
                   "--data.data_files", option(data_files), "--data.split", split)


def assert_exit_2(result: subprocess.CompletedProcess, *parts: str) -> str:
    assert result.returncode == 2, result.stderr
    return assert_user_error(result, *parts)


# ------------------------------------------------------------------------------------------ lit-idpo fit: JSON


def test_fit_json_malformed_line_data_files_string(tmp_path, capsys):
    bad = write(tmp_path / "bad.jsonl", json.dumps(GOOD).encode() + b'\n{"prompt": \n')
    assert_exit_2(fit(capsys, tmp_path, "json", str(bad)),
                  f"{bad}, line 2: invalid JSON (Expecting value at column 12)", "one JSON object per line")


def test_fit_json_empty_file_in_a_list(tmp_path, capsys):
    empty = write(tmp_path / "empty.jsonl", b"\n  \n")
    assert_exit_2(fit(capsys, tmp_path, "json", [str(good_jsonl(tmp_path)), str(empty)]),
                  f"{empty}: the file holds no rows")


def test_fit_json_not_utf8_validation_split(tmp_path, capsys):
    latin = write(tmp_path / "latin1.jsonl", json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "caf\xe9"}\n')
    offset = len(json.dumps(GOOD)) + 1 + len('{"prompt": "caf')
    result = fit(capsys, tmp_path, "json", {"train": str(good_jsonl(tmp_path)), "validation": str(latin)},
                 val_split="validation")
    assert_exit_2(result, f"{latin}: not UTF-8 text (byte 0xe9 at byte offset {offset}, line 2)",
                  "save the file as UTF-8")


def test_fit_json_row_missing_rejected_second_file_of_the_train_split(tmp_path, capsys):
    # The second file's bad row is on its line 3 (line 2 is blank): counted within that file, not across files.
    second = jsonl(tmp_path / "second.jsonl", json.dumps(GOOD), "", json.dumps(NO_REJECTED))
    result = fit(capsys, tmp_path, "json", {"train": [str(good_jsonl(tmp_path)), str(second)]})
    line = assert_exit_2(result, f"{second}, line 3: field 'rejected' is missing (the row has fields "
                                 f"['chosen', 'prompt'])", "data.on_bad_row=skip")
    assert "0-based dataset index" not in line


def test_fit_json_list_file_row_missing_rejected_test_split(tmp_path, capsys):
    listed = write(tmp_path / "test.json", b'[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n'
                                           b'  {"prompt": "Why?", "chosen": "Because."}\n]\n')
    result = fit(capsys, tmp_path, "json", {"train": str(good_jsonl(tmp_path)), "test": str(listed)},
                 val_split="test")
    assert_exit_2(result, f"{listed}, item 2 of the list (1-based), line 3: field 'rejected' is missing")


# ------------------------------------------------------------------------------------------ lit-idpo fit: CSV


def test_fit_csv_malformed_row_names_file_and_line(tmp_path, capsys):
    bad = write(tmp_path / "wide.csv", b"prompt,chosen,rejected\nWhat?,a,b\nWhy?,c,d,e\n")
    assert_exit_2(fit(capsys, tmp_path, "csv", str(bad)),
                  f"{bad}: cannot be read as csv", "Expected 3 fields in line 3, saw 4")


def test_fit_csv_not_utf8_validation_split_given_as_a_list(tmp_path, capsys):
    good = write(tmp_path / "train.csv", b"prompt,chosen,rejected\nWhat?,a,b\n")
    latin = write(tmp_path / "val.csv", b"prompt,chosen,rejected\ncaf\xe9,a,b\n")
    result = fit(capsys, tmp_path, "csv", {"train": str(good), "validation": [str(latin)]}, val_split="validation")
    assert_exit_2(result, f"{latin}: not UTF-8 text (byte 0xe9 at byte offset 26, line 2)")


def test_fit_csv_row_missing_rejected(tmp_path, capsys):
    csv = write(tmp_path / "pairs.csv", b"prompt,chosen,rejected\nWhat?,a,b\nWhy?,c,\n")
    assert_exit_2(fit(capsys, tmp_path, "csv", {"train": [str(csv)]}),
                  f"{csv}, data row 2 (1-based, not counting the header line): field 'rejected' is null")


@pytest.mark.parametrize("content, why", [(b"", "it is empty or blank"), (b"prompt,chosen,rejected\n",
                                                                         "only a header line")])
def test_fit_csv_empty_file(tmp_path, capsys, content, why):
    csv = write(tmp_path / "empty.csv", content)
    assert_exit_2(fit(capsys, tmp_path, "csv", str(csv)), f"{csv}: the file holds no rows ({why})")


# ------------------------------------------------------------------------------------------ lit-idpo fit: Parquet


def test_fit_parquet_row_missing_rejected(tmp_path, capsys):
    table = parquet(tmp_path / "pairs.parquet", ["b", None])
    assert_exit_2(fit(capsys, tmp_path, "parquet", [str(table)]),
                  f"{table}, row 2 (1-based): field 'rejected' is null")


def test_fit_parquet_empty_file_validation_split(tmp_path, capsys):
    empty = write(tmp_path / "val.parquet", b"")
    result = fit(capsys, tmp_path, "parquet", {"train": str(parquet(tmp_path / "train.parquet", ["b"])),
                                               "validation": str(empty)}, val_split="validation")
    assert_exit_2(result, f"{empty}: the file holds no rows (it is 0 bytes)")


def test_fit_parquet_not_parquet(tmp_path, capsys):
    bad = write(tmp_path / "bad.parquet", b"not parquet at all\n")
    assert_exit_2(fit(capsys, tmp_path, "parquet", str(bad)),
                  f"{bad}: cannot be read as parquet (ArrowInvalid: ", "magic bytes not found")


# ------------------------------------------------------------------------------------------ lit-idpo fit: data_files


def test_fit_data_files_without_the_validation_split(tmp_path, capsys):
    good = str(good_jsonl(tmp_path))
    assert_exit_2(fit(capsys, tmp_path, "json", {"train": good}, val_split="validation"),
                  "data.data_files has no entry for split 'validation' (it has ['train'])", "data.val_split")
    assert_exit_2(fit(capsys, tmp_path, "json", good, val_split="test"),
                  f"data.data_files='{good}' is read as the one split 'train', but split 'test' was asked for",
                  "data.val_split: null")


def test_fit_data_file_that_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert_exit_2(fit(capsys, tmp_path, "json", {"train": [str(missing)]}),
                  f"data.data_files: '{missing}' (split 'train'): no such file")


def test_fit_directory_source_with_relative_data_files(tmp_path, capsys):
    folder = tmp_path / "prefs"
    folder.mkdir()
    good_jsonl(folder, "train.jsonl")
    jsonl(folder / "dev.jsonl", json.dumps(NO_REJECTED))
    result = fit(capsys, tmp_path, str(folder), {"train": "train.jsonl", "dev": "dev.jsonl"}, val_split="dev")
    assert_exit_2(result, f"{folder / 'dev.jsonl'}, line 1: field 'rejected' is missing")


def test_fit_glob_reads_files_in_name_order(tmp_path, capsys):
    folder = tmp_path / "shards"
    folder.mkdir()
    write(folder / "part-2.jsonl", b'{"prompt": \n')  # written first, named last
    write(folder / "part-1.jsonl", json.dumps(GOOD).encode() + b'\n{"prompt": "p", \n')
    good_jsonl(folder, "part-0.jsonl")
    pattern = str(folder / "part-*.jsonl")
    assert_exit_2(fit(capsys, tmp_path, "json", pattern),
                  f"{folder / 'part-1.jsonl'}, line 2: invalid JSON (Expecting property name enclosed in double quotes")
    good_jsonl(folder, "part-2.jsonl")
    jsonl(folder / "part-1.jsonl", json.dumps(GOOD), json.dumps(NO_REJECTED))
    assert_exit_2(fit(capsys, tmp_path, "json", pattern),
                  f"{folder / 'part-1.jsonl'}, line 2: field 'rejected' is missing")


# ------------------------------------------------------------------------------------------ lit-idpo evaluate


def test_evaluate_json_malformed_line(tmp_path, capsys):
    bad = write(tmp_path / "test.jsonl", b'{"prompt": "p", "chosen": }\n')
    result = evaluate(capsys, tmp_path, "json", {"train": str(good_jsonl(tmp_path)), "test": str(bad)}, "test")
    assert_exit_2(result, f"{bad}, line 1: invalid JSON (Expecting value at column 27)")


def test_evaluate_jsonl_row_missing_rejected(tmp_path, capsys):
    second = jsonl(tmp_path / "second.jsonl", json.dumps(GOOD), json.dumps(GOOD), json.dumps(NO_REJECTED))
    result = evaluate(capsys, tmp_path, "json", [str(good_jsonl(tmp_path)), str(second)], "train")
    assert_exit_2(result, f"{second}, line 3: field 'rejected'", "is missing")


def test_evaluate_csv_not_utf8(tmp_path, capsys):
    latin = write(tmp_path / "held_out.csv", b"prompt,chosen,rejected\nWhat?,a,b\ncaf\xe9,a,b\n")
    assert_exit_2(evaluate(capsys, tmp_path, "csv", {"test": str(latin)}, "test"),
                  f"{latin}: not UTF-8 text (byte 0xe9 at byte offset 36, line 3)")


@pytest.mark.parametrize("content", [b"", b"\n"])
def test_evaluate_empty_jsonl(tmp_path, capsys, content):
    empty = write(tmp_path / "empty.jsonl", content)
    assert_exit_2(evaluate(capsys, tmp_path, "json", str(empty), "train"), f"{empty}: the file holds no rows")


def test_evaluate_parquet_row_missing_rejected(tmp_path, capsys):
    table = parquet(tmp_path / "held_out.parquet", ["b", "c", None])
    assert_exit_2(evaluate(capsys, tmp_path, "parquet", {"test": [str(table)]}, "test"),
                  f"{table}, row 3 (1-based): field 'rejected'", "is null")


def test_evaluate_data_files_without_the_split(tmp_path, capsys):
    result = evaluate(capsys, tmp_path, "json", {"train": str(good_jsonl(tmp_path))}, "test")
    assert_exit_2(result, "data.data_files has no entry for split 'test' (it has ['train'])", "data.split")


# ------------------------------------------------------------------------------------------ both spellings agree


@pytest.mark.parametrize("name, content", [
    ("broken.jsonl", json.dumps(GOOD).encode() + b'\n{"prompt": \n'),
    ("broken.json", b'[{"prompt": "p",}]'),
    ("empty.jsonl", b""),
    ("latin1.jsonl", b'{"prompt": "caf\xe9"}\n'),
    ("latin1.csv", b"prompt,chosen,rejected\ncaf\xe9,a,b\n"),
    ("wide.csv", b"prompt,chosen,rejected\nWhat?,a,b\nWhy?,c,d,e\n"),
    ("empty.csv", b""),
    ("empty.parquet", b""),
    ("bad.parquet", b"PAR1 but no footer"),
])
def test_a_bad_file_gets_the_same_error_either_way(tmp_path, name, content):
    path = write(tmp_path / name, content)
    builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}[path.suffix]
    errors = []
    for source, data_files in [(str(path), None), (builder, str(path)), (builder, [str(path)]),
                               (builder, {"train": str(path)}), (str(tmp_path), {"train": name})]:
        with pytest.raises(UserError) as info:
            load_split(source, "train", data_files=data_files)
        errors.append(str(info.value))
    assert str(path) in errors[0] and errors == [errors[0]] * len(errors)


# ------------------------------------------------------------------------------------------ a fresh interpreter


@pytest.mark.slow  # starts Lightning in a child process
def test_real_command_fit_validation_split(tmp_path):
    bad = jsonl(tmp_path / "val.jsonl", json.dumps(GOOD), json.dumps(NO_REJECTED))
    data_files = json.dumps({"train": str(good_jsonl(tmp_path)), "validation": str(bad)})
    result = run_fit(tmp_path, "--data.source", "json", "--data.data_files", data_files, "--data.val_split",
                     "validation", env={"HF_DATASETS_CACHE": str(tmp_path / "hf-cache")})
    assert_user_error(result, f"{bad}, line 2: field 'rejected' is missing")


@pytest.mark.slow  # starts the CLI in a child process
def test_real_command_evaluate(tmp_path):
    bad = write(tmp_path / "test.jsonl", json.dumps(GOOD).encode() + b"\n\xff\n")
    result = subprocess.run([sys.executable, "-m", "lit_idpo.cli", "evaluate", "--model", "a=tiny-llama", "--model",
                             "b=tiny-gpt2", "--output_dir", str(tmp_path / "out"), "--data.source", "json",
                             "--data.data_files", json.dumps({"test": str(bad)}), "--data.split", "test"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if k != "LIT_IDPO_DEBUG"})
    offset = len(json.dumps(GOOD)) + 1
    assert_user_error(result, f"{bad}: not UTF-8 text (byte 0xff at byte offset {offset}, line 2)")
