"""lit-idpo sweep: spec checks, the command's --print_config / --dry_run, every sweep file parses, and
configs/sweeps/tiny.yaml end to end (child-process trainings, resuming, a failing training)."""

import glob
import json
import os
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from lit_idpo.errors import ConfigError
from lit_idpo.sweep import runner as sw

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted(glob.glob(str(ROOT / "configs" / "sweeps" / "*.yaml")))


def _write(tmp_path, spec, name="s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


BASE = {"base_config": str(ROOT / "configs" / "tiny.yaml"), "output_dir": "out", "settings": [{"layers": [1]}]}


@pytest.mark.parametrize("change, message", [
    ({"setings": []}, r"sweep config .*s\.yaml: .*'setings' is not accepted"),
    ({"settings": [{"layers": []}]}, r"settings\[0\].layers=\[\].*non-empty"),
    ({"settings": [{"layers": [1], "gamma": 1.0}]}, r"gamma=1.0.*'dpo' baseline"),
    ({"settings": [{"layers": [], "name": "v", "overrides": {}}]}, r"a variant of it needs a name and overrides"),
    ({"settings": [{"layers": [], "overrides": {"model.beta": 0.2}}]}, r"needs a name and overrides"),
    ({"settings": [{"layers": [], "name": "v", "gamma": 0.5, "overrides": {"model.beta": 0.2}}]},
     r"gamma=0.5 with no layers"),
    ({"settings": [{"layers": [1], "name": "dpo"}]}, "clash"),
    ({"settings": [{"layers": [1]}, {"layers": [1]}]}, "used twice"),
    ({"settings": [{"layers": [1], "overrides": {"model.gamma": 0.3}}]}, "sets 'model.gamma'"),
    ({"base_config": "nope.yaml"}, "not found"),
    ({"evaluate": {"judges": {"name": "rule"}}}, r"'evaluate' does not accept option 'judges"),
    ({"baselines": {"dop": False}}, r"'baselines' does not accept option 'dop'"),
    ({"evaluate": {"data": {"limt": 3}}}, r"evaluate.data has unknown key\(s\) \['limt'\]"),
    ({"settings": [{"layers": "seven"}]}, r"settings"),
    ({"output_dir": None}, r"give output_dir"),
])
def test_spec_errors_name_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        sw.load_spec(_write(tmp_path, {**BASE, **change}))


def test_grid_expands_and_names(tmp_path):
    spec = sw.load_spec(_write(tmp_path, {**BASE, "grid": {"layers": [[2], [1, 3]], "gamma": [0.25, 0.5]}}))
    assert [(s.name, s.layers, s.gamma, s.k) for s in spec.settings] == [
        ("L1", [1], None, 1), ("L2-g0.25", [2], 0.25, 1), ("L2-g0.5", [2], 0.5, 1),
        ("L1+3-g0.25", [1, 3], 0.25, 2), ("L1+3-g0.5", [1, 3], 0.5, 2)]


def test_a_variant_of_plain_dpo_is_a_setting(tmp_path):
    """layers [] with a name and overrides: plain DPO (gamma 1, no layers) with other fit options, e.g. bf16."""
    spec = sw.load_spec(_write(tmp_path, {**BASE, "output_dir": str(tmp_path / "out"), "settings": [
        {"layers": [], "name": "dpo-bf16", "overrides": {"trainer.precision": "bf16-mixed"}}]}))
    assert [(s.name, s.layers, s.gamma, s.k) for s in spec.settings] == [("dpo-bf16", [], 1.0, 0)]
    sweep = sw.Sweep(spec)
    sweep.plan()
    path = tmp_path / "out" / "runs" / "dpo-bf16" / "setting.yaml"
    full = sw._parse_fit_config(sweep.common_configs + [str(path)])
    assert (full.model.layers, full.model.gamma, full.trainer.precision) == ([], 1.0, "bf16-mixed")
    assert sweep.config_hash(sweep.runs["dpo-bf16"]) != sweep.config_hash(sweep.runs["dpo"])


@pytest.mark.parametrize("path", SWEEPS, ids=[os.path.basename(p) for p in SWEEPS])
def test_every_sweep_file_parses_with_its_fit_config(path, tmp_path):
    spec = sw.load_spec(path, output_dir=str(tmp_path / "out"))
    sweep = sw.Sweep(spec)  # parses the full fit config (base + overrides) with the real CLI parser
    plan = sweep.plan()
    seeds = spec.seeds or [None]
    assert len(plan) == (len(spec.settings) + spec.baselines["dpo"]) * len(seeds)
    for setting in spec.settings:
        for seed in seeds:
            path = tmp_path / "out" / "runs" / sw.run_key(setting.name, seed) / "setting.yaml"
            config = yaml.safe_load(path.read_text())
            assert config["model"]["layers"] == setting.layers
            full = sw._parse_fit_config(sweep.common_configs + [str(path)])
            assert full.model.layers == setting.layers
            assert full.model.gamma == (setting.gamma if setting.gamma is not None else sweep.base.model.gamma)
            if seed is not None:
                assert full.seed_everything == seed and full.data.seed == seed


def test_relative_base_config_is_read_from_the_sweep_files_folder(tmp_path, monkeypatch):
    folder = tmp_path / "sweeps"
    folder.mkdir()
    (tmp_path / "fit.yaml").write_text((ROOT / "configs" / "tiny.yaml").read_text())
    path = _write(folder, {**BASE, "base_config": "../fit.yaml"})
    monkeypatch.chdir(ROOT)  # the working directory has no ../fit.yaml
    assert sw.load_spec(path).base_config == (tmp_path / "fit.yaml").resolve()
    with pytest.raises(ConfigError, match=r"base_config 'fit.yaml' not found \(relative paths are read from .*sweeps"):
        sw.load_spec(_write(folder, {**BASE, "base_config": "fit.yaml"}, "other.yaml"))


def test_print_config_prints_a_full_sweep_file_that_parses_again(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sw.main(["--config", str(ROOT / "configs" / "sweeps" / "tiny.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["settings"][1] == {"layers": [1, 3], "gamma": 0.25, "name": None, "overrides": {}}
    assert printed["evaluate"]["generation"]["max_new_tokens"] == 6  # the file's value
    assert printed["evaluate"]["generation"]["do_sample"] is False  # a default, printed too
    assert printed["baselines"] == {"dpo": True, "sft": True} and printed["grid"] is None
    printed["base_config"] = str(ROOT / "configs" / "tiny.yaml")
    spec = sw.load_spec(_write(tmp_path, printed, "printed.yaml"))
    assert [s.name for s in spec.settings] == ["L1", "L1+3-g0.25"]


def test_dry_run_prints_each_runs_exact_fit_command_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert sw.main(["--config", str(ROOT / "configs" / "sweeps" / "tiny.yaml"), "--dry_run",
                    "--output_dir", str(out)]) is None
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["[to train] dpo", "[to train] L1", "[to train] L1+3-g0.25"]
    for line, name in zip(lines, ["dpo", "L1", "L1+3-g0.25"]):
        assert line.endswith(f"lit-idpo fit --config {ROOT / 'configs' / 'tiny.yaml'} "
                             f"--config {out / 'fit_overrides.yaml'} --config {out / 'runs' / name / 'setting.yaml'}")
    assert not (out / "manifest.json").exists() and not (out / "runs" / "L1" / "hf_model").exists()


def test_the_sweep_does_not_import_the_cli():
    import subprocess

    code = "import sys, lit_idpo.sweep; print('lit_idpo.cli' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.mark.slow
def test_tiny_sweep_end_to_end_resumes(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    real_run = sw.run_logged
    calls = []

    def counting_run(argv, log_path):
        calls.append(list(argv))
        if fail_on is not None and len(calls) == fail_on:
            raise KeyboardInterrupt("simulated interruption during training")
        return real_run(argv, log_path)

    monkeypatch.setattr(sw, "run_logged", counting_run)
    config = ROOT / "configs" / "sweeps" / "tiny.yaml"

    # First invocation is interrupted during the second training run.
    fail_on = 2
    with pytest.raises(KeyboardInterrupt):
        sw.run_sweep(config, output_dir=str(out), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["settings"]) == ["dpo"]
    # What ran is what is recorded: the child's exact command, in the manifest and in the run folder.
    dpo_command = calls[0]
    assert dpo_command[:4] == [sys.executable, "-m", "lit_idpo.cli", "fit"]
    assert manifest["settings"]["dpo"]["command"] == dpo_command
    assert (out / "runs" / "dpo" / "command.txt").read_text() == shlex.join(dpo_command) + "\n"
    assert "lit-idpo: fit finished" in (out / "runs" / "dpo" / "fit.log").read_text()

    # The second one trains the two missing runs (not dpo again) and evaluates.
    calls.clear()
    fail_on = None
    summary = sw.run_sweep(config, output_dir=str(out), progress=False)
    assert len(calls) == 2
    trained_layers = [yaml.safe_load(Path(args[-1]).read_text())["model"]["layers"] for args in calls]  # setting.yaml
    assert trained_layers == [[1], [1, 3]]
    rows = {r["name"]: r for r in summary["rows"]}
    assert set(rows) == {"dpo", "L1", "L1+3-g0.25"}
    assert rows["L1+3-g0.25"]["gamma"] == 0.25 and rows["L1"]["gamma"] == 0.5 and rows["L1+3-g0.25"]["k"] == 2
    evaluation = json.loads((out / "eval" / "results.json").read_text())
    pairs = {(p["first"], p["second"]): p for p in evaluation["pairs"]}
    assert set(pairs) == {("L1", "dpo"), ("L1", "sft"), ("L1+3-g0.25", "dpo"), ("L1+3-g0.25", "sft"), ("dpo", "sft")}
    assert rows["L1"]["vs_dpo"]["win_rate"] == pairs[("L1", "dpo")]["win_rate"]
    assert rows["dpo"]["vs_sft"]["prompts"] == 4
    assert evaluation["implicit_reward"]["layers"] == [1, 2, 3, 4]
    table = (out / "sweep_results.md").read_text()
    assert "| L1+3-g0.25 | 1,3 | 2 | 0.25 |" in table
    png = (out / "sweep_plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # A third invocation trains nothing and regenerates nothing.
    from transformers.generation.utils import GenerationMixin

    generated = []
    original = GenerationMixin.generate
    monkeypatch.setattr(GenerationMixin, "generate",
                        lambda self, *a, **k: generated.append(1) or original(self, *a, **k))
    calls.clear()
    again = sw.run_sweep(config, output_dir=str(out), progress=False)
    assert calls == [] and generated == []
    assert [r["vs_sft"] for r in again["rows"]] == [r["vs_sft"] for r in summary["rows"]]

    # Changing one setting's configuration retrains that setting only.
    spec = yaml.safe_load(config.read_text())
    spec["base_config"] = str(ROOT / "configs" / "tiny.yaml")
    spec["settings"][1]["gamma"] = 0.75
    spec["settings"][1]["name"] = "L1+3-g0.25"  # same name, new configuration
    changed = _write(tmp_path, spec, "changed.yaml")
    calls.clear()
    sw.run_sweep(changed, output_dir=str(out), train_only=True, progress=False)
    assert len(calls) == 1


@pytest.mark.slow
def test_a_failing_training_names_the_setting_and_its_log_and_is_not_marked_finished(tmp_path):
    spec = {**BASE, "output_dir": str(tmp_path / "out"), "baselines": {"dpo": False, "sft": True},
            "settings": [{"layers": [1], "name": "broken", "overrides": {"trainer.max_steps": "many"}}]}
    message = r"training broken failed \(exit code 2\); its output is in .*broken/fit\.log"
    with pytest.raises(sw.TrainingRunError, match=message):
        sw.run_sweep(_write(tmp_path, spec), train_only=True, progress=False)
    log = (tmp_path / "out" / "runs" / "broken" / "fit.log").read_text()
    assert "lit-idpo: error:" in log and "trainer.max_steps" in log
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_reproduction_script_dry_run_prints_the_exact_commands(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "benchmarks" / "reproduce_intermediate_dpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--dry_run", "--output_dir", str(tmp_path / "repro")])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("lit-idpo sweep --config ") and "smollm2_arithmetic.yaml" in printed[0]
    runs = [line.split("]", 1)[1].split(":", 1)[0].strip() for line in printed[1:]]
    assert runs == ["dpo", "L5", "L21", "L27", "L14+21", "L7+14+21"]
    for line in printed[1:]:
        assert "lit-idpo fit --config" in line and (tmp_path / "repro" / "fit_overrides.yaml").is_file()
