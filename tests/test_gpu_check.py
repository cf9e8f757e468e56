"""The CPU-side logic of benchmarks/gpu_check.sh: arguments, the wheel folder, the steps and their budgets.

No GPU and no network: the script runs in --dry_run mode, or in run mode with PYTHON pointing at a stub
that records its arguments (so the control flow, the summary and the exit status are checked).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def run(*args, env=None, timeout=60):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout)


@pytest.fixture
def wheels(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    (folder / "datasets-5.2.0-py3-none-any.whl").write_bytes(b"")
    return folder


def test_help_exits_zero_and_names_the_modes():
    proc = run("--help")
    assert proc.returncode == 0
    for word in ("--prepare", "--dry_run", "carry", ".gpu_wheels"):
        assert word in proc.stdout


def test_unknown_argument_is_a_one_line_error():
    proc = run("--bogus")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["gpu_check: unknown argument '--bogus' (try --help)"]
    assert proc.stdout == ""


def test_missing_wheel_folder_names_the_prepare_command(tmp_path):
    for mode in ((), ("--dry_run",)):
        proc = run(*mode, env={"WHEELS": str(tmp_path / "absent"), "OUT": str(tmp_path / "out")})
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "bash benchmarks/gpu_check.sh --prepare" in lines[0]
        assert not (tmp_path / "out").exists()  # nothing ran


def test_dry_run_prints_the_install_from_the_folder_and_three_steps_with_budgets(tmp_path, wheels):
    env = {"WHEELS": str(wheels), "OUT": str(tmp_path / "out"), "PYTHON": "py3", "TEST_BUDGET_S": "77"}
    proc = run("--dry_run", "--", "--no-memory", env=env)
    assert proc.returncode == 0, proc.stderr
    steps = [line for line in proc.stdout.splitlines() if line.startswith("[dry_run] step ")]
    assert [line.split()[2] for line in steps] == ["install", "tests", "bench", "train"]
    install, tests, bench, train = steps
    assert f"--no-index --find-links {wheels} --no-deps" in install and f"{wheels}/*.whl" in install
    assert "--no-build-isolation -e ." in install
    assert "(budget 45s)" in install
    assert "(budget 77s)" in tests and "py3 -m pytest -m cuda tests" in tests
    assert "(budget 150s)" in bench
    for option in ("--device cuda", "--dtypes bfloat16", "--rows 8192", "--hidden 4096", "--vocab 151936"):
        assert option in bench
    assert bench.endswith("--no-memory")  # arguments after -- go to the benchmark
    assert "(budget 105s)" in train
    for option in ("configs/tiny.yaml", "--trainer.accelerator gpu", "--model.backend triton", "--trainer.max_steps 3"):
        assert option in train
    assert "total budget 460s" in proc.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def _stub(tmp_path, body: str) -> Path:
    stub = tmp_path / "fakepython"
    stub.write_text("#!/usr/bin/env bash\n" f'echo "$@" >> {tmp_path}/calls.txt\n' + body)
    stub.chmod(0o755)
    return stub


def test_run_mode_reports_each_step_and_fails_when_one_fails(tmp_path, wheels):
    # The stub "python" succeeds except for pytest, and overruns the benchmark's (tiny) budget.
    stub = _stub(tmp_path, 'case "$*" in\n  *"-m pytest -m cuda"*) exit 3 ;;\n'
                           '  *bench_linear_logprobs.py*) exec sleep 30 ;;\nesac\nexit 0\n')
    out = tmp_path / "out"
    env = {"WHEELS": str(wheels), "OUT": str(out), "PYTHON": str(stub), "BENCH_BUDGET_S": "2"}
    proc = run(env=env)
    assert proc.returncode == 1
    summary = (out / "gpu_summary.txt").read_text().strip().splitlines()
    assert summary[-1].startswith("== summary: install=ok tests=failed(3) bench=timeout train=ok")
    calls = (tmp_path / "calls.txt").read_text()
    assert f"-m pip install -q --no-index --find-links {wheels}" in calls
    assert "lit_idpo.cli fit --config configs/tiny.yaml" in calls
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_bench.log", "gpu_install.log", "gpu_summary.txt", "gpu_tests.log", "gpu_train.log"]


def test_run_mode_exits_zero_when_every_step_passes_and_skips_past_the_total(tmp_path, wheels):
    stub = _stub(tmp_path, "exit 0\n")
    env = {"WHEELS": str(wheels), "OUT": str(tmp_path / "out"), "PYTHON": str(stub)}
    proc = run(env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "install=ok tests=ok bench=ok train=ok" in proc.stdout

    # A total budget too small for any step: each is skipped, and that counts as a failure.
    proc = run(env={**env, "TOTAL_BUDGET_S": "3"})
    assert proc.returncode == 1
    assert "install=skipped tests=skipped bench=skipped train=skipped" in proc.stdout
