"""The ``lit-idpo`` command's error wrapper: a user error ends with ``lit-idpo: error: ...`` and exit code 2,
no traceback (LIT_IDPO_DEBUG=1 shows it); a bug keeps its traceback. Run through the real command in a
child process, plus in-process checks that a UserError raised inside Lightning's fit reaches the wrapper."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lit_idpo import cli
from lit_idpo.errors import ConfigError, DataError, UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


def _lit_idpo(*args, debug=False, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "LIT_IDPO_DEBUG"}
    if debug:
        env["LIT_IDPO_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", "lit_idpo.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def _assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("lit-idpo: error: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_a_bad_config_value_is_one_line_without_traceback(tmp_path):
    result = _lit_idpo("fit", "--config", TINY, "--model.beta", "abc", cwd=tmp_path)
    _assert_one_line_error(result, "model.beta", "abc", "lit-idpo fit --help")
    assert "usage:" not in result.stderr  # not the ~80-line usage text


@pytest.mark.slow
def test_debug_shows_the_traceback(tmp_path):
    debug = _lit_idpo("fit", "--config", TINY, "--model.beta", "abc", debug=True, cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


@pytest.mark.slow  # each starts Lightning in a child process
@pytest.mark.parametrize("args, needles", [
    (["fit", "--config", TINY, "--model.nonexistent", "1"], ["--model.nonexistent"]),
    (["fit", "--config", "/nonexistent/fit.yaml"], ["/nonexistent/fit.yaml", "does not exist"]),
    (["validate", "--config", TINY, "--trainer.max_steps", "many"], ["trainer.max_steps", "many"]),
], ids=["unknown-key", "missing-config", "bad-validate-value"])
def test_fit_config_errors_are_one_line_without_traceback(tmp_path, args, needles):
    _assert_one_line_error(_lit_idpo(*args, cwd=tmp_path), *needles)


@pytest.mark.parametrize("args, needles", [
    (["sweep", "--config", str(ROOT / "configs" / "sweeps" / "tiny.yaml"), "--settings", "[{layer: [1]}]"],
     ["settings", "'layer'"]),
    (["sweep", "--config", "/nonexistent/sweep.yaml"], ["/nonexistent/sweep.yaml", "does not exist"]),
    (["nonsense"], ["unknown subcommand 'nonsense'", "fit", "sweep"]),
], ids=["bad-sweep-setting", "missing-sweep-file", "unknown-subcommand"])
def test_sweep_and_command_errors_are_one_line_without_traceback(tmp_path, args, needles):
    _assert_one_line_error(_lit_idpo(*args, cwd=tmp_path), *needles)


@pytest.mark.slow
def test_a_model_path_that_does_not_exist_is_one_line(tmp_path):
    # The error itself (a ModelSourceError naming the path) comes from lit_idpo.models; the wrapper prints it.
    args = ["fit", "--config", TINY, "--model.model", str(tmp_path / "no_such_model"), "--trainer.max_steps", "1",
            "--trainer.default_root_dir", str(tmp_path)]
    _assert_one_line_error(_lit_idpo(*args, cwd=tmp_path), str(tmp_path / "no_such_model"))
    debug = _lit_idpo(*args, debug=True, cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def _fit_args(tmp_path):
    return ["fit", "--config", TINY, "--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger", "false"]


@pytest.mark.slow  # loads Lightning and the models
def test_a_user_error_raised_inside_lightnings_fit_reaches_the_wrapper(tmp_path, monkeypatch, capsys):
    # Lightning runs DataModule.setup inside Trainer.fit (_call_and_handle_interrupt); the UserError must
    # come out as itself, not wrapped, so the wrapper prints it as one line.
    from lit_idpo.data import PreferenceDataModule

    def broken_setup(self, stage=None):
        raise DataError("train.jsonl line 3: field 'chosen' is missing; give each row a 'chosen' completion")

    monkeypatch.setattr(PreferenceDataModule, "setup", broken_setup)
    monkeypatch.delenv("LIT_IDPO_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["lit-idpo"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(_fit_args(tmp_path))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lit-idpo: error: train.jsonl line 3: field 'chosen' is missing" in err and "Traceback" not in err

    monkeypatch.setenv("LIT_IDPO_DEBUG", "1")  # debugging: the exception itself propagates
    with pytest.raises(DataError, match="line 3"):
        cli.main(_fit_args(tmp_path))


def test_a_bug_keeps_its_traceback(monkeypatch):
    def buggy(args=None):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "run", buggy)
    monkeypatch.delenv("LIT_IDPO_DEBUG", raising=False)
    with pytest.raises(ZeroDivisionError):
        cli.main(["fit"])


def test_a_two_line_message_stays_two_lines_and_a_longer_one_is_joined(monkeypatch, capsys):
    messages = iter([ConfigError("data.format='x' is not a format\nfix: choose auto or standard"),
                     UserError("one\ntwo\nthree")])

    def failing(args=None):
        raise next(messages)

    monkeypatch.setattr(cli, "run", failing)
    monkeypatch.delenv("LIT_IDPO_DEBUG", raising=False)
    for _ in range(2):
        with pytest.raises(SystemExit):
            cli.main([])
    assert capsys.readouterr().err.splitlines() == [
        "lit-idpo: error: data.format='x' is not a format", "  fix: choose auto or standard",
        "lit-idpo: error: one two three"]


@pytest.mark.slow  # loads Lightning and the models
def test_no_import_cycle_between_cli_fit_and_sweep():
    # Each module imports on its own in a fresh interpreter, and the sweep and fit logic never load the CLI.
    code = ("import sys, importlib\n"
            "for name in ('lit_idpo.sweep.spec', 'lit_idpo.sweep.report', 'lit_idpo.sweep', 'lit_idpo.fit'):\n"
            "    importlib.import_module(name)\n"
            "print('lit_idpo.cli' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "False\n"
